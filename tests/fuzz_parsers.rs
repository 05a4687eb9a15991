//! Fuzzed parsers (issue 12, item 6): every parser that reads bytes from
//! outside the process gets random and structure-aware input and must never
//! panic, never allocate in proportion to a length field it was sent, and
//! always say what was wrong.
//!
//! Each property runs `SYNCD_FUZZ_CASES` cases (a small default, so the suite
//! stays fast); `scripts/fuzz.sh` runs them with many more in release mode.
//!
//! "No unbounded allocation" is measured, not assumed: a counting global
//! allocator records the largest single allocation made by the current thread
//! while a parser runs, and each property bounds it by the input's size and
//! the configured limit, never by a length the input claims.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use syncd::bus::frame::{self, BusMsg, FrameError};
use syncd::bus::secret::LinkSecret;
use syncd::config::{Config, ConfigError, EMBEDDED_DEFAULT};
use syncd::proto::compact::has_line_break;
use syncd::proto::frames::{check_channel, parse_request, Op};
use syncd::proto::http::{self, Parsed};
use syncd::proto::tcp::{self, Line, TooLong};
use syncd::proto::ws;
use syncd::proto::ws_codec::{Decoder, Event};

// ---------------------------------------------------------------------------
// Measuring allocations

struct Counting;

thread_local! {
    /// Largest single allocation (or reallocation) of this thread since `watch`.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while the thread shuts down.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it made.
fn watch<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------
// Shared strategies

/// Cases per property: `SYNCD_FUZZ_CASES`, or `default` (kept small so the
/// whole file adds a few seconds to `cargo test` in debug).
fn cases(default: u32) -> u32 {
    std::env::var("SYNCD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // Shrinking a long random input can take a while; a failure is
        // printed with its (partly) minimised input either way.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the input at this fraction of its length.
    Truncate(f64),
    /// XOR one byte.
    Flip(f64, u8),
    /// Put a byte in.
    Insert(f64, u8),
    /// Take a run out.
    Delete(f64, usize),
    /// Repeat a run in place.
    Duplicate(f64, usize),
    /// Put a hostile chunk in: huge digits, deep nesting, long text, bad UTF-8.
    Splice(f64, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        at.clone().prop_map(Mutation::Truncate),
        (at.clone(), 1..=255u8).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (at.clone(), 1..16usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at.clone(), 1..64usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (at, 0..HOSTILE.len()).prop_map(|(a, i)| Mutation::Splice(a, i)),
    ]
}

/// Chunks that stress parsers: length fields at and past every limit, deep
/// nesting, long runs, invalid UTF-8, separators.
const HOSTILE: &[&[u8]] = &[
    b"4294967296",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-1",
    b"1e400",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\0",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"\\u0000",
    b"\\ud800",
    b"\"",
    b"{\"op\":",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    b"}}}}]]]]",
    b"Content-Length: 4294967296\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xff\xff\xff\xff",
    b"=",
    b"[[a]]",
    b"\"\"\"",
];

fn apply(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    for m in mutations {
        let len = input.len();
        match *m {
            Mutation::Truncate(f) => input.truncate(pos(f, len)),
            Mutation::Flip(f, x) if len > 0 => {
                let i = pos(f, len - 1);
                input[i] ^= x;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(f, b) => input.insert(pos(f, len), b),
            Mutation::Delete(f, n) => {
                let i = pos(f, len);
                input.drain(i..(i + n).min(len));
            }
            Mutation::Duplicate(f, n) => {
                let i = pos(f, len);
                let run = input[i..(i + n).min(len)].to_vec();
                input.splice(i..i, run);
            }
            Mutation::Splice(f, k) => {
                let i = pos(f, len);
                input.splice(i..i, HOSTILE[k].iter().copied());
            }
        }
    }
    input
}

/// Some valid input from `seeds`, then up to `n` mutations.
fn mutated(seeds: Vec<Vec<u8>>, n: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 0..=n),
    )
        .prop_map(|(seed, ms)| apply(seed, &ms))
}

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

// ---------------------------------------------------------------------------
// JSON requests (both transports end here)

const ERROR_CODES: &[&str] = &["bad_json", "bad_request", "unknown_op", "bad_channel"];

fn valid_requests() -> Vec<Vec<u8>> {
    [
        r#"{"op":"sub","id":1,"channel":"news"}"#,
        r#"{"op":"sub","id":2,"channel":"news","since":38,"epoch":"5f0c"}"#,
        r#"{"op":"unsub","id":3,"channel":"news"}"#,
        r#"{"op":"pub","id":4,"channel":"news","data":{"a":[1,2,{"b":"c d"}]},"ttl":60}"#,
        "{\"op\":\"pub\",\"id\":\"x\",\"channel\":\"n\",\"data\":\n [ 1.50 ,\n\t\"a\\\"b\" ]\n}",
        r#"{"op":"history","id":5,"channel":"news","since":0,"limit":100}"#,
        r#"{"op":"ping","id":6}"#,
        r#"{"op":"auth","id":7,"token":"abc.def.ghi"}"#,
        r#"{"op":"send","id":8,"uid":"bob","data":null,"ttl":60}"#,
        r##"{"op":"ack","id":9,"channel":"#alice","seq":12}"##,
        r#"{"op":"presence","id":10,"channel":"room-1"}"#,
        r#"{"op":"set","id":11,"channel":"seats","key":"F7","value":{"by":"é"},"version":0}"#,
        r#"{"op":"del","id":12,"channel":"seats","key":"F7","version":1}"#,
        r#"{"op":"get","id":13,"channel":"seats","key":"F7"}"#,
        r#"{"op":"state","id":14,"channel":"seats"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// JSON-ish token soup: mostly well-formed pieces in random order.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\n",
        "\"op\"",
        "\"sub\"",
        "\"pub\"",
        "\"set\"",
        "\"channel\"",
        "\"data\"",
        "\"id\"",
        "\"since\"",
        "\"limit\"",
        "\"value\"",
        "\"key\"",
        "\"version\"",
        "\"ttl\"",
        "0",
        "1",
        "-1",
        "1.5e3",
        "18446744073709551616",
        "null",
        "true",
        "\"a b\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"x\"",
    ];
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..40)
        .prop_map(|t| t.concat().into_bytes())
}

/// Parses one frame's text the way a worker does, and checks the result.
fn check_request(text: &str) -> Result<(), TestCaseError> {
    let (result, largest) = watch(|| {
        parse_request(text).map(|r| {
            // What a worker keeps from a good request: it must be sendable
            // as one line.
            match &r.op {
                Op::Pub { data, channel, .. }
                | Op::Send {
                    data, uid: channel, ..
                } => Some((channel.to_string(), Some(data.to_string()))),
                Op::Set { channel, value, .. } => {
                    Some((channel.to_string(), value.as_ref().map(|v| v.to_string())))
                }
                _ => None,
            }
        })
    });
    // Parsing may copy the text (unescaping, compacting) but never more.
    prop_assert!(
        largest <= 2 * text.len() + 4096,
        "{largest} bytes allocated for a {} byte frame",
        text.len()
    );
    match result {
        Ok(Some((_, Some(data)))) => {
            prop_assert!(!has_line_break(&data), "data keeps a line break: {data:?}");
            prop_assert!(serde_json::from_str::<&serde_json::value::RawValue>(&data).is_ok());
        }
        Ok(_) => {}
        Err((id, e)) => {
            prop_assert!(ERROR_CODES.contains(&e.code), "unexpected code {}", e.code);
            prop_assert!(!e.message.is_empty());
            if let Some(id) = id {
                // Echoed as sent: valid JSON, though not always a value
                // serde_json's `Value` holds (`1e400`).
                prop_assert!(
                    serde_json::from_str::<&serde_json::value::RawValue>(id.get()).is_ok()
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn json_random_text_is_refused_clearly(text in ".{0,200}") {
        check_request(&text)?;
    }

    #[test]
    fn json_random_bytes_are_refused_clearly(bytes in random_bytes(300)) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn json_token_soup(bytes in json_soup()) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn json_mutated_requests(bytes in mutated(valid_requests(), 6)) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    /// Good requests stay good, with channel rules and compact data.
    #[test]
    fn json_valid_requests_parse(
        channel in "[a-z#$-]{1,30}",
        id in prop_oneof![Just("1".to_string()), "\"[a-z]{0,8}\"", Just("null".to_string())],
        pretty in any::<bool>(),
    ) {
        let sep = if pretty { ",\n  " } else { "," };
        let text = format!(
            r#"{{"op":"pub"{sep}"id":{id}{sep}"channel":"{channel}"{sep}"data":{{"k":[1{sep}2]}}}}"#
        );
        let r = parse_request(&text).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(r.id.map(|i| i.get()), Some(id.as_str()));
        match r.op {
            Op::Pub { channel: c, data, .. } => {
                prop_assert_eq!(c.as_ref(), channel.as_str());
                prop_assert!(check_channel(&c).is_ok());
                prop_assert_eq!(data.as_ref(), r#"{"k":[1,2]}"#);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

#[test]
fn json_deep_nesting_and_huge_fields_are_refused_without_overflow() {
    let deep = "[".repeat(100_000);
    let deep_obj = "{\"a\":".repeat(100_000);
    let nested_data = format!(
        r#"{{"op":"pub","channel":"a","data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_channel = format!(
        r#"{{"op":"sub","id":1,"channel":"{}"}}"#,
        "c".repeat(1 << 20)
    );
    let long_op = format!(r#"{{"op":"{}","id":1}}"#, "x".repeat(1 << 20));
    let bad_utf8_escape = r#"{"op":"sub","id":1,"channel":"\ud800"}"#.to_string();
    let huge_number = format!(
        r#"{{"op":"ack","id":1,"channel":"a","seq":{}}}"#,
        "9".repeat(5000)
    );
    // Deep `data` is valid JSON and passes through (serde_json's RawValue
    // skips it without recursing): it must come out as one compact line.
    let (r, largest) = watch(|| parse_request(&nested_data).map(|r| format!("{:?}", r.op)));
    let op = r.expect("deep data is valid JSON");
    assert!(!has_line_break(&op) && largest <= 4 * nested_data.len());
    for text in [
        deep,
        deep_obj,
        long_channel,
        long_op,
        bad_utf8_escape,
        huge_number,
    ] {
        let (id, e) = parse_request(&text).expect_err("refused");
        assert!(ERROR_CODES.contains(&e.code), "{}", e.code);
        assert!(
            !e.message.is_empty() && e.message.len() < 1000,
            "{}",
            e.message
        );
        // The id is echoed when it could be read.
        if text.contains("\"id\":1") && e.code != "bad_json" {
            assert_eq!(id.map(|i| i.get().to_string()).as_deref(), Some("1"));
        }
    }
}

// ---------------------------------------------------------------------------
// Raw TCP: splitting input into lines

fn tcp_input() -> impl Strategy<Value = Vec<u8>> {
    let lines = proptest::collection::vec(
        prop_oneof![
            mutated(valid_requests(), 3),
            random_bytes(80),
            Just(b"\r".to_vec()),
            Just(Vec::new()),
        ],
        0..8,
    )
    .prop_map(|ls| ls.join(&b'\n'));
    prop_oneof![random_bytes(400), lines]
}

proptest! {
    #![proptest_config(config(512))]

    /// `next_line` always moves forward, returns each line at most `max`
    /// bytes long and without its end, refuses an over-long line or tail,
    /// and every text line then parses to a request or a clear error.
    #[test]
    fn tcp_lines(input in tcp_input(), max in 0usize..200) {
        let mut start = 0;
        let mut rebuilt: Vec<u8> = Vec::new();
        loop {
            let before = start;
            match tcp::next_line(&input, &mut start, max) {
                Ok(Some(line)) => {
                    prop_assert!(start > before && start <= input.len());
                    prop_assert_eq!(input[start - 1], b'\n');
                    let raw = &input[before..start - 1];
                    prop_assert!(raw.len() <= max);
                    match line {
                        Line::Text(text) => {
                            prop_assert!(!text.contains('\n'));
                            prop_assert!(raw == text.as_bytes() || raw == [text.as_bytes(), b"\r"].concat());
                            check_request(text)?;
                        }
                        Line::NotUtf8 => prop_assert!(std::str::from_utf8(raw).is_err()
                            || std::str::from_utf8(raw.strip_suffix(b"\r").unwrap_or(raw)).is_err()),
                    }
                    rebuilt.extend_from_slice(raw);
                    rebuilt.push(b'\n');
                }
                Ok(None) => {
                    prop_assert_eq!(start, before);
                    let rest = &input[start..];
                    prop_assert!(!rest.contains(&b'\n') && rest.len() <= max);
                    rebuilt.extend_from_slice(rest);
                    prop_assert_eq!(&rebuilt, &input);
                    break;
                }
                Err(TooLong) => {
                    let rest = &input[start..];
                    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                    prop_assert!(end > max);
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket frames, read by the worker's decoder with our limits

const WS_MAX: usize = 4096;

/// A client frame as it goes on the wire: masked unless `mask` is None; the
/// length field may lie (`claimed`).
#[derive(Debug, Clone)]
struct WsFrame {
    first: u8,
    mask: Option<[u8; 4]>,
    claimed: Option<u64>,
    payload: Vec<u8>,
}

impl WsFrame {
    fn encode(&self) -> Vec<u8> {
        let len = self.claimed.unwrap_or(self.payload.len() as u64);
        common::ws_client_frame(self.first, self.mask, len, &self.payload)
    }
}

fn ws_frame() -> impl Strategy<Value = WsFrame> {
    let opcode = prop_oneof![
        6 => prop_oneof![Just(0x1u8), Just(0x2), Just(0x0)],
        2 => prop_oneof![Just(0x8u8), Just(0x9), Just(0xA)],
        1 => 0u8..16,
    ];
    let fin = prop_oneof![4 => Just(0x80u8), 1 => Just(0)];
    let rsv = prop_oneof![8 => Just(0u8), 1 => (0u8..8).prop_map(|r| r << 4)];
    let payload = prop_oneof![
        mutated(valid_requests(), 2),
        random_bytes(200),
        (0usize..3).prop_map(|k| vec![b'x'; [125, WS_MAX, WS_MAX + 1][k]]),
    ];
    let claimed = prop_oneof![
        8 => Just(None),
        1 => prop_oneof![
            Just(1u64 << 63),
            Just(u64::MAX),
            Just(u32::MAX as u64 + 1),
            Just(WS_MAX as u64 + 1),
            0u64..70_000,
        ].prop_map(Some),
    ];
    let mask = prop_oneof![9 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)];
    (fin, rsv, opcode, mask, claimed, payload).prop_map(|(fin, rsv, op, mask, claimed, payload)| {
        WsFrame {
            first: fin | rsv | op,
            mask,
            claimed,
            payload,
        }
    })
}

/// Feeds `input` to the worker's WebSocket decoder in `chunk`-sized reads,
/// and checks every message and violation.
fn read_ws_in(input: Vec<u8>, chunk: usize) -> Result<(), TestCaseError> {
    let len = input.len();
    let mut decoder = Decoder::default();
    for part in input.chunks(chunk.max(1)) {
        let mut events = Vec::new();
        let (result, largest) = watch(|| decoder.feed(part, WS_MAX, &mut events));
        // What came and at most one message of WS_MAX: never what a length
        // field claims.
        prop_assert!(
            largest <= 4 * WS_MAX + 2 * len,
            "{largest} bytes allocated reading {len} bytes"
        );
        prop_assert!(decoder.held() <= WS_MAX + len + 64);
        for event in events {
            match event {
                Event::Text(text) => {
                    prop_assert!(text.len() <= WS_MAX);
                    check_request(&text)?;
                }
                Event::Binary(data) => prop_assert!(data.len() <= WS_MAX),
                Event::Ping(data) => prop_assert!(data.len() <= 125),
                Event::Pong | Event::Close(_) => {}
            }
        }
        if let Err(v) = result {
            // The worker closes with this code and reason.
            prop_assert!([1002, 1007, 1009].contains(&v.code), "{v:?}");
            prop_assert!(!v.reason.is_empty());
            break;
        }
    }
    Ok(())
}

fn read_ws(input: Vec<u8>) -> Result<(), TestCaseError> {
    read_ws_in(input.clone(), input.len())?;
    read_ws_in(input, 7)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn ws_random_bytes(input in random_bytes(600)) {
        read_ws(input)?;
    }

    #[test]
    fn ws_frame_sequences(frames in proptest::collection::vec(ws_frame(), 1..6)) {
        read_ws(frames.iter().flat_map(WsFrame::encode).collect())?;
    }

    #[test]
    fn ws_mutated_frame_streams(
        frames in proptest::collection::vec(ws_frame(), 1..4),
        ms in proptest::collection::vec(mutation(), 1..6),
    ) {
        read_ws(apply(frames.iter().flat_map(WsFrame::encode).collect(), &ms))?;
    }
}

#[test]
fn ws_length_of_2_pow_63_is_refused_before_allocating() {
    for claimed in [1u64 << 63, u64::MAX, 1 << 32, WS_MAX as u64 + 1] {
        let frame = WsFrame {
            first: 0x81,
            mask: Some([1, 2, 3, 4]),
            claimed: Some(claimed),
            payload: b"tiny".to_vec(),
        };
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let (result, largest) = watch(|| decoder.feed(&frame.encode(), WS_MAX, &mut events));
        assert_eq!(result.map_err(|v| v.code), Err(1009), "{claimed}");
        assert!(largest <= 1024, "{largest} bytes for a {claimed} claim");
    }
}

// ---------------------------------------------------------------------------
// HTTP on the ws port, pipelined

const MAX_BODY: usize = 1024;

#[derive(Debug, Clone)]
struct HttpReq {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    http10: bool,
}

impl HttpReq {
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.{}\r\nHost: 127.0.0.1\r\n",
            self.method,
            self.path,
            if self.http10 { 0 } else { 1 }
        )
        .into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn http_req() -> impl Strategy<Value = HttpReq> {
    let method = proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let path = prop_oneof![
        Just("/ws".to_string()),
        Just("/healthz".to_string()),
        "/api/[a-z]{1,10}(\\?[a-z]=[a-z0-9%]{0,10})?",
    ];
    let header = prop_oneof![
        Just(("Connection".to_string(), "keep-alive".to_string())),
        Just(("Upgrade".to_string(), "websocket".to_string())),
        Just((
            "Sec-WebSocket-Key".to_string(),
            "dGhlIHNhbXBsZSBub25jZQ==".to_string()
        )),
        Just(("Sec-WebSocket-Version".to_string(), "13".to_string())),
        Just(("Authorization".to_string(), "Bearer test-key".to_string())),
        ("X-[A-Za-z]{1,10}", "[ -~]{0,30}").prop_map(|(n, v)| (n, v.trim().to_string())),
    ];
    (
        method,
        path,
        proptest::collection::vec(header, 0..5),
        prop_oneof![Just(Vec::new()), random_bytes(MAX_BODY)],
        any::<bool>(),
    )
        .prop_map(|(method, path, headers, body, http10)| HttpReq {
            method,
            path,
            headers,
            body,
            http10,
        })
}

/// Parses `buf` as the worker does (request after request) and checks every
/// outcome; returns the requests parsed.
fn parse_all(mut buf: &[u8]) -> Result<Vec<http::Request>, TestCaseError> {
    let mut out = Vec::new();
    loop {
        let len = buf.len();
        let (parsed, largest) = watch(|| http::parse(buf, MAX_BODY));
        prop_assert!(
            largest <= 2 * len + 8192,
            "{largest} bytes allocated for {len}"
        );
        match parsed {
            Parsed::Complete(req, used) => {
                prop_assert!(used > 0 && used <= buf.len());
                prop_assert!(req.body.len() <= MAX_BODY);
                if req.wants_upgrade() {
                    // tungstenite checks the head and builds the answer.
                    let _ = ws::upgrade_response(&req);
                }
                buf = &buf[used..];
                out.push(*req);
            }
            Parsed::Partial => {
                prop_assert!(buf.len() <= http::MAX_HEAD + MAX_BODY + 8192);
                return Ok(out);
            }
            Parsed::Invalid(status, message) => {
                prop_assert!([400, 411, 413, 431].contains(&status), "{status}");
                prop_assert!(!message.is_empty());
                return Ok(out);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn http_random_bytes(input in random_bytes(600)) {
        parse_all(&input)?;
    }

    /// Pipelined requests come out one by one, as sent, whatever the split.
    #[test]
    fn http_pipelined(reqs in proptest::collection::vec(http_req(), 1..6), cut in 0.0..1.0f64) {
        let wire: Vec<u8> = reqs.iter().flat_map(HttpReq::encode).collect();
        let got = parse_all(&wire)?;
        prop_assert_eq!(got.len(), reqs.len());
        for (got, sent) in got.iter().zip(&reqs) {
            prop_assert_eq!(got.method.as_str(), sent.method);
            prop_assert_eq!(&got.body, &sent.body);
            prop_assert_eq!(format!("{}{}{}", got.path, if got.query.is_empty() { "" } else { "?" }, got.query), sent.path.clone());
            let keep_alive = !sent.http10 || sent.headers.iter().any(|(n, v)| n == "Connection" && v == "keep-alive");
            prop_assert_eq!(got.keep_alive, keep_alive);
        }
        // A prefix yields the whole requests it holds, then waits for more.
        let at = (cut * wire.len() as f64) as usize;
        let prefix = parse_all(&wire[..at])?;
        prop_assert!(prefix.len() <= reqs.len());
        let whole: usize = reqs.iter().map(|r| r.encode().len()).scan(0, |s, l| { *s += l; Some(*s) })
            .take_while(|&end| end <= at).count();
        prop_assert_eq!(prefix.len(), whole);
    }

    #[test]
    fn http_mutated_pipelines(
        reqs in proptest::collection::vec(http_req(), 1..4),
        ms in proptest::collection::vec(mutation(), 1..6),
    ) {
        let wire: Vec<u8> = reqs.iter().flat_map(HttpReq::encode).collect();
        parse_all(&apply(wire, &ms))?;
    }
}

#[test]
fn http_huge_lengths_and_heads_are_refused() {
    let status = |raw: &[u8]| match http::parse(raw, MAX_BODY) {
        Parsed::Invalid(s, m) => {
            assert!(!m.is_empty());
            s
        }
        other => panic!("{other:?}"),
    };
    let with_length =
        |v: &str| format!("POST /api/publish HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
    for (v, want) in [
        ("4294967296", 413),
        ("18446744073709551615", 413),
        ("18446744073709551616", 400),
        ("-1", 400),
        ("1, 2", 400),
    ] {
        let (s, largest) = watch(|| status(with_length(v).as_bytes()));
        assert_eq!(s, want, "{v}");
        assert!(largest < 8192, "{largest}");
    }
    // With no practical body limit, a huge Content-Length only waits for
    // the bytes (the sum head + body once overflowed and panicked).
    for v in ["18446744073709551615", "18446744073709551600"] {
        let raw = with_length(v);
        let (parsed, largest) = watch(|| http::parse(raw.as_bytes(), usize::MAX));
        assert!(matches!(parsed, Parsed::Partial), "{v}: {parsed:?}");
        assert!(largest < 8192, "{largest}");
    }
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status(chunked), 411);
    let mut endless = b"GET /".to_vec();
    endless.resize(http::MAX_HEAD + 10, b'a');
    assert_eq!(status(&endless), 431);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status(&many), 400);
}

// ---------------------------------------------------------------------------
// Worker links: `u32 length | u32 meta length | meta JSON | payload`

const BUS_MAX: usize = 1 << 16;

fn bus_msg() -> impl Strategy<Value = BusMsg> {
    let name = "[a-z#$-]{0,20}";
    prop_oneof![
        (any::<u64>(), name, any::<u64>())
            .prop_map(|(_, channel, seq)| BusMsg::Deliver { channel, seq }),
        (
            any::<u64>(),
            name,
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z]{0,10}"),
            proptest::option::of(any::<u64>()),
            any::<bool>()
        )
            .prop_map(
                |(tag, channel, ttl, idempotency_key, ingest_window_ms, mirrored)| {
                    BusMsg::Publish {
                        tag,
                        channel,
                        ttl,
                        idempotency_key,
                        ingest_window_ms,
                        mirrored,
                    }
                }
            ),
        (any::<u64>(), name, any::<u64>()).prop_map(|(tag, channel, seq)| BusMsg::Ack {
            tag,
            channel,
            seq
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(tag, seq, recovered, oldest, cursor)| BusMsg::QueryAnswer {
                    tag,
                    seq,
                    epoch: "e".into(),
                    recovered,
                    error: None,
                    oldest,
                    cursor,
                }
            ),
        (0usize..8, any::<u64>()).prop_map(|(slot, instance)| BusMsg::Hello {
            slot,
            instance,
            secret: LinkSecret::generate().unwrap(),
        }),
        Just(BusMsg::Broadcast),
    ]
}

fn bus_wire(frames: &[(BusMsg, Vec<u8>)]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (msg, payload) in frames {
        wire.extend_from_slice(&frame::encode_header(msg, payload.len()));
        wire.extend_from_slice(payload);
    }
    wire
}

/// Decodes `input` as a link does, fed in `chunk`-sized reads; returns the
/// frames decoded before the input ran out or an error stopped the link.
fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<(BusMsg, Bytes)>, TestCaseError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let held = buf.len();
            let capacity = buf.capacity();
            let (result, largest) = watch(|| frame::decode(&mut buf, BUS_MAX));
            prop_assert!(
                largest <= 2 * held + 1024,
                "{largest} bytes allocated for {held}"
            );
            match result {
                Ok(Some(frame)) => {
                    prop_assert!(buf.len() < held);
                    out.push(frame);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), held);
                    prop_assert!(buf.capacity() <= capacity.max(held));
                    break;
                }
                Err(FrameError::TooLarge(n)) => {
                    prop_assert!(n > BUS_MAX);
                    return Ok(out);
                }
                Err(e @ FrameError::Bad(_)) => {
                    prop_assert!(e.to_string().len() > "bad bus frame: ".len());
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn bus_random_bytes(input in random_bytes(600), chunk in 1usize..64) {
        decode_all(&input, chunk)?;
    }

    /// Frames come out as encoded, however the stream is cut into reads.
    #[test]
    fn bus_frames_round_trip(
        frames in proptest::collection::vec((bus_msg(), random_bytes(100)), 1..6),
        chunk in 1usize..200,
    ) {
        let got = decode_all(&bus_wire(&frames), chunk)?;
        prop_assert_eq!(got.len(), frames.len());
        for ((msg, payload), (want, want_payload)) in got.iter().zip(&frames) {
            prop_assert_eq!(msg, want);
            prop_assert_eq!(&payload[..], &want_payload[..]);
        }
    }

    #[test]
    fn bus_mutated_frames(
        frames in proptest::collection::vec((bus_msg(), random_bytes(60)), 1..4),
        ms in proptest::collection::vec(mutation(), 1..6),
        chunk in 1usize..200,
    ) {
        decode_all(&apply(bus_wire(&frames), &ms), chunk)?;
    }
}

#[test]
fn bus_length_of_4_gib_is_refused_before_allocating() {
    for (len, meta) in [(u32::MAX, 0u32), (1 << 31, 4), (BUS_MAX as u32 + 1, 0)] {
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&meta.to_be_bytes());
        let capacity = buf.capacity();
        let (result, largest) = watch(|| frame::decode(&mut buf, BUS_MAX));
        assert!(
            matches!(result, Err(FrameError::TooLarge(n)) if n == len as usize),
            "{result:?}"
        );
        assert_eq!((buf.len(), buf.capacity()), (8, capacity));
        assert!(largest < 1024, "{largest} bytes allocated");
    }
    // Even with no limit, a claimed length only waits for the bytes.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
    let (result, largest) = watch(|| frame::decode(&mut buf, usize::MAX));
    assert!(matches!(result, Ok(None)));
    assert!(largest < 1024);
    // Short frames and meta longer than the frame are named.
    for wire in [&[0, 0, 0, 2, 0, 0][..], &[0, 0, 0, 4, 0, 0, 0, 9][..]] {
        let mut buf = BytesMut::from(wire);
        let e = frame::decode(&mut buf, BUS_MAX).unwrap_err().to_string();
        assert!(e.starts_with("bad bus frame: ") && e.len() > 15, "{e}");
    }
}

// ---------------------------------------------------------------------------
// JWT tokens

const SECRET: &str = "fuzz-secret";

/// `[auth]` with the test secret; `exp` checked to the second, as the
/// properties expect.
fn server_auth() -> syncd::config::Auth {
    syncd::config::Auth {
        jwt_secret: SECRET.into(),
        jwt_leeway: std::time::Duration::ZERO,
        ..Default::default()
    }
}

fn check_token(token: &str) -> Result<bool, TestCaseError> {
    let (result, largest) = watch(|| syncd::auth::verify(&server_auth(), token));
    prop_assert!(
        largest <= 2 * token.len() + 4096,
        "{largest} bytes for {}",
        token.len()
    );
    match result {
        Ok(user) => {
            prop_assert!(!user.uid.is_empty() && user.uid.len() <= 128);
            Ok(true)
        }
        Err(e) => {
            prop_assert_eq!(e.code, "unauthorized");
            prop_assert!(!e.message.is_empty());
            Ok(false)
        }
    }
}

/// Tokens minted once, so every case sees the same ones.
fn minted() -> Vec<Vec<u8>> {
    static MINTED: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    MINTED.get_or_init(mint_tokens).clone()
}

fn mint_tokens() -> Vec<Vec<u8>> {
    let ttl = Duration::from_secs(3600);
    vec![
        syncd::auth::mint(SECRET, "alice", ttl, vec![])
            .unwrap()
            .into_bytes(),
        syncd::auth::mint(SECRET, "b", ttl, vec!["private-*".into(), "$x".into()])
            .unwrap()
            .into_bytes(),
        syncd::auth::mint("other", "mallory", ttl, vec![])
            .unwrap()
            .into_bytes(),
    ]
}

fn b64ish(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_=+/-]{{0,{max}}}")).unwrap()
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn jwt_random_strings(token in ".{0,300}") {
        prop_assert!(!check_token(&token)?);
    }

    #[test]
    fn jwt_random_segments(a in b64ish(120), b in b64ish(200), c in b64ish(60), dots in 0usize..5) {
        let token = [a, b, c].join(&".".repeat(dots.max(1)));
        prop_assert!(!check_token(&token)?);
    }

    /// A changed token is refused, unless the change kept it the same token
    /// (base64 padding bits and the like are checked by the signature).
    #[test]
    fn jwt_mutated_tokens(token in mutated(minted(), 4)) {
        let text = String::from_utf8_lossy(&token);
        if check_token(&text)? {
            // Only an unchanged token signed with our secret may pass (the
            // mutations can cancel out: a zero-length run, a cut at the end).
            prop_assert!(minted()[..2].iter().any(|s| s[..] == token[..]), "{text} passed");
        }
    }

    #[test]
    fn jwt_swapped_segments(i in 0usize..3, j in 0usize..3, k in 0usize..3) {
        let seeds: Vec<String> = minted().into_iter().map(|t| String::from_utf8(t).unwrap()).collect();
        let parts: Vec<Vec<&str>> = seeds.iter().map(|t| t.split('.').collect()).collect();
        let token = format!("{}.{}.{}", parts[i][0], parts[j][1], parts[k][2]);
        let valid = check_token(&token)?;
        // Header and claims must travel with their own signature.
        prop_assert_eq!(valid, j == k && k < 2);
    }
}

#[test]
fn jwt_huge_and_odd_tokens_are_refused() {
    let good = String::from_utf8(minted().remove(0)).unwrap();
    assert!(syncd::auth::verify(&server_auth(), &good).is_ok());
    let parts: Vec<&str> = good.split('.').collect();
    let huge = "A".repeat(1 << 20);
    for token in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{huge}.{}.{}", parts[1], parts[2]),
        format!("{}.{huge}.{}", parts[0], parts[2]),
        format!("{}.{}.{huge}", parts[0], parts[1]),
        format!("{}.{}.{}", parts[0], "!!!!", parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        // alg none, unsigned, far future
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.".into(),
        // a header that is deeply nested JSON
        format!(
            "{}.{}.{}",
            base64url(&"[".repeat(100_000)),
            parts[1],
            parts[2]
        ),
    ] {
        let e = syncd::auth::verify(&server_auth(), &token).expect_err("refused");
        assert_eq!(e.code, "unauthorized");
        assert!(
            !e.message.is_empty() && e.message.len() < 1000,
            "{}",
            e.message
        );
    }
}

fn base64url(bytes: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = bytes.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The config file

fn check_config(text: &str) -> Result<(), TestCaseError> {
    let source = Path::new("/etc/syncd/syncd.toml");
    match Config::parse(text, Path::new("/etc/syncd"), source) {
        Ok(c) => {
            prop_assert!(c.workers >= 1 && c.limits.max_frame >= 128);
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let shown = e.to_string();
            let ConfigError::Invalid { message, .. } = e else {
                unreachable!()
            };
            prop_assert!(!message.trim().is_empty());
            prop_assert!(shown.contains("/etc/syncd/syncd.toml"), "{shown}");
        }
        Err(e) => prop_assert!(false, "parse cannot fail to read: {e}"),
    }
    Ok(())
}

/// Lines of the default config, with values swapped for odd ones and lines
/// dropped, repeated or added.
fn config_lines() -> impl Strategy<Value = String> {
    let lines: Vec<String> = EMBEDDED_DEFAULT.lines().map(str::to_string).collect();
    let value = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"18446744073709551615 EiB\"".to_string()),
        Just("\"99999999999999999999h\"".to_string()),
        Just("\"1e308s\"".to_string()),
        Just("\"-5s\"".to_string()),
        Just("\"\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        Just("nan".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "\"[ -~]{0,20}\"",
        "-?[0-9]{1,25}",
    ];
    let edit = (0usize..4, 0.0..1.0f64, value);
    (Just(lines), proptest::collection::vec(edit, 1..6)).prop_map(|(mut lines, edits)| {
        for (kind, at, value) in edits {
            let i = ((at * lines.len() as f64) as usize).min(lines.len() - 1);
            match kind {
                0 => {
                    // key = value → key = other value
                    if let Some((key, _)) = lines[i].split_once('=') {
                        lines[i] = format!("{key}= {value}");
                    }
                }
                1 => {
                    lines.remove(i);
                }
                2 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => lines.insert(i, format!("k{i} = {value}")),
            }
        }
        lines.join("\n")
    })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn config_random_text(text in "[\\[\\]a-z_=\"'{}.,0-9 \n#-]{0,200}") {
        check_config(&text)?;
    }

    #[test]
    fn config_edited_default(text in config_lines()) {
        check_config(&text)?;
    }

    #[test]
    fn config_mutated_default(bytes in mutated(vec![EMBEDDED_DEFAULT.as_bytes().to_vec()], 4)) {
        check_config(&String::from_utf8_lossy(&bytes))?;
    }
}

#[test]
fn config_deep_nesting_and_huge_values_are_refused() {
    let path = Path::new("/x/syncd.toml");
    for text in [
        format!("workers = {}", "[".repeat(100_000)),
        format!("workers = {}", "{a=".repeat(100_000)),
        format!("{}\n", "[a.".repeat(50_000)),
        format!("workers = {}", "9".repeat(10_000)),
        format!("[limits]\nmax_frame = \"{}KiB\"", "9".repeat(100)),
        format!("[limits]\nstop_timeout = \"{}s\"", "9".repeat(100)),
        // bytesize saturates this to u64::MAX: refused, not "no limit".
        "[limits]\nmax_frame = \"16EiB\"".into(),
        "[limits]\nmax_frame = \"2GiB\"".into(),
        "[storage]\ncache_bytes = \"2TiB\"".into(),
        "\u{feff}workers = 1\nworkers = 2".into(),
        "workers = \"\u{0}\"".into(),
    ] {
        let e = Config::parse(&text, Path::new("/x"), path).expect_err("refused");
        assert!(!e.to_string().is_empty());
    }
}
