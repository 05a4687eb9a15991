//! End to end fuzzing (issue 12, item 6): 10 000 random byte strings to each
//! port of a real server, then the workers must never have restarted and a
//! normal client must still be served.
//!
//! Replay a failure with the seed it printed: `SYNCD_FUZZ_SEED=<seed> cargo
//! test --test fuzz_ports`. `SYNCD_FUZZ_PORT_STRINGS` changes the count
//! (scripts/fuzz.sh raises it).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{http_raw, Client, Server};
use serde_json::json;

/// xorshift64*: small, seedable, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const THREADS_PER_PORT: usize = 3;
/// Longest a connection waits for the server's answers after sending.
const READ_TIMEOUT: Duration = Duration::from_millis(1500);

const JSON_LINES: &[&str] = &[
    r#"{"op":"sub","id":1,"channel":"fuzz"}"#,
    r#"{"op":"pub","id":2,"channel":"fuzz","data":{"a":[1,2]}}"#,
    r#"{"op":"history","id":3,"channel":"fuzz","since":0,"limit":5}"#,
    r#"{"op":"ping","id":4}"#,
    r#"{"op":"auth","id":5,"token":"a.b.c"}"#,
    r#"{"op":"set","id":6,"channel":"fuzz-s","key":"k","value":1,"version":0}"#,
    r#"{"op":"send","id":7,"uid":"bob","data":"hi"}"#,
    r##"{"op":"ack","id":8,"channel":"#bob","seq":1}"##,
];

const HTTP_REQUESTS: &[&str] = &[
    "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "POST /api/publish HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer test-key\r\n\
     Content-Length: 37\r\n\r\n{\"channel\":\"fuzz-h\",\"data\":{\"x\":1}}\n",
    "GET /api/history?channel=fuzz&since=0 HTTP/1.1\r\nX-API-Key: test-key\r\n\r\n",
    "POST /api/broadcast HTTP/1.0\r\nContent-Length: 4294967296\r\n\r\n",
    "GET /syncd.js HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
];

const HOSTILE: &[&[u8]] = &[
    b"\xff\xfe",
    b"\r\n\r\n",
    b"\n",
    b"\0",
    b"4294967296",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 18446744073709551615\r\n",
];

/// `seed` with a few byte-level changes.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.below(5) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 => out.truncate(at),
            1 if at < out.len() => out[at] ^= 1 << rng.below(8),
            2 => out.insert(at, rng.next() as u8),
            3 => {
                let end = (at + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            _ => {
                let chunk = *rng.pick(HOSTILE);
                out.splice(at..at, chunk.iter().copied());
            }
        }
    }
    out
}

/// A client WebSocket frame; the length field may lie.
fn ws_frame(rng: &mut Rng) -> Vec<u8> {
    let payload = if rng.chance(2) {
        let line = rng_json(rng);
        mutate(rng, line.as_bytes())
    } else {
        rng.bytes(120)
    };
    let first = match rng.below(6) {
        0 => rng.next() as u8,
        1 => 0x89, // ping
        2 => 0x88, // close
        3 => 0x01, // text, not final
        _ => 0x81, // text
    };
    let len = match rng.below(12) {
        0 => 1u64 << 63,
        1 => u64::MAX,
        2 => 1 << 32,
        3 => rng.next() % 70_000,
        _ => payload.len() as u64,
    };
    let masked = !rng.chance(12);
    let key = (rng.next() as u32).to_be_bytes();
    let out = common::ws_client_frame(first, masked.then_some(key), len, &payload);
    if rng.chance(8) {
        mutate(rng, &out)
    } else {
        out
    }
}

fn rng_json(rng: &mut Rng) -> &'static str {
    rng.pick::<&str>(JSON_LINES)
}

/// One string for the TCP port.
fn tcp_string(rng: &mut Rng) -> Vec<u8> {
    let mut s = match rng.below(3) {
        0 => rng.bytes(200),
        _ => {
            let line = rng_json(rng);
            mutate(rng, line.as_bytes())
        }
    };
    if !rng.chance(6) {
        s.push(b'\n');
    }
    s
}

/// One string for the ws port before any upgrade: HTTP-ish.
fn http_string(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => rng.bytes(200),
        _ => {
            let request = *rng.pick(HTTP_REQUESTS);
            mutate(rng, request.as_bytes())
        }
    }
}

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(READ_TIMEOUT)).ok()?;
    Some(s)
}

/// Reads what the server sends until it closes or goes quiet.
fn drain(s: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + 2 * READ_TIMEOUT;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Ends a connection: mostly a clean half-close and reading the answers,
/// sometimes a reset in the middle of everything.
fn finish(rng: &mut Rng, mut s: TcpStream) {
    if rng.chance(8) {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    drain(&mut s);
}

/// A WebSocket session opened properly, for frames to fuzz.
fn upgraded(port: u16) -> Option<TcpStream> {
    let mut s = connect(port)?;
    s.write_all(HTTP_REQUESTS[1].as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(s)
}

/// Sends `count` strings to `port`, a few per connection; returns how many
/// went out.
fn fuzz_port(port: u16, ws_port: bool, seed: u64, count: usize, deadline: Instant) -> usize {
    let mut rng = Rng(seed | 1);
    let mut sent = 0;
    while sent < count {
        assert!(
            Instant::now() < deadline,
            "fuzzing took too long (seed {seed})"
        );
        let per_conn = 1 + rng.below(12);
        let frames = ws_port && rng.chance(3);
        let stream = if frames {
            upgraded(port)
        } else {
            connect(port)
        };
        let Some(mut s) = stream else {
            panic!("port {port} refused a connection after {sent} strings (seed {seed})");
        };
        for _ in 0..per_conn.min(count - sent) {
            let string = match (ws_port, frames) {
                (false, _) => tcp_string(&mut rng),
                (true, false) => http_string(&mut rng),
                (true, true) => ws_frame(&mut rng),
            };
            sent += 1;
            if s.write_all(&string).is_err() {
                // The server closed on an earlier string: that one counts,
                // the rest of this connection's go to the next one.
                break;
            }
        }
        finish(&mut rng, s);
    }
    sent
}

#[test]
fn ten_thousand_random_strings_per_port_leave_the_workers_serving() {
    let seed: u64 = std::env::var("SYNCD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let count: usize = std::env::var("SYNCD_FUZZ_PORT_STRINGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!("fuzz_ports: SYNCD_FUZZ_SEED={seed} SYNCD_FUZZ_PORT_STRINGS={count}");

    // A small max_frame, so over-long lines and frames are cheap to send.
    let server = Server::start(2, "[limits]\nmax_frame = \"4KiB\"\n");
    let pids = server.worker_pids();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + count as u64 / 100);

    let mut threads = Vec::new();
    for (port, ws_port) in [(server.ws_port, true), (server.tcp_port, false)] {
        for t in 0..THREADS_PER_PORT {
            let share = count / THREADS_PER_PORT + usize::from(t < count % THREADS_PER_PORT);
            let seed =
                seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(1 + t as u64 + 8 * port as u64));
            threads.push(thread::spawn(move || {
                (port, fuzz_port(port, ws_port, seed, share, deadline))
            }));
        }
    }
    let mut per_port = std::collections::HashMap::new();
    for t in threads {
        let (port, sent) = t.join().expect("fuzzing thread");
        *per_port.entry(port).or_insert(0) += sent;
    }
    println!(
        "fuzz_ports: sent {per_port:?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(per_port[&server.ws_port], count);
    assert_eq!(per_port[&server.tcp_port], count);
    // The strings did reach the workers (a few in ten make a frame), and
    // none of them made a worker's memory balloon.
    let frames_in = server.sum_stats(|s| s.msgs_in);
    let rss = server.sum_stats(|s| s.rss_bytes);
    println!(
        "fuzz_ports: {frames_in} frames in, workers' rss {} MiB",
        rss >> 20
    );
    assert!(
        frames_in as usize >= count / 10,
        "only {frames_in} frames arrived"
    );
    assert!(rss < 1 << 30, "workers use {} MiB", rss >> 20);

    // No worker died, nobody was replaced.
    assert_eq!(server.restarts(), 0, "seed {seed}:\n{}", server.log());
    assert_eq!(server.worker_pids(), pids, "seed {seed}");

    // A normal client is still served, on both protocols and over HTTP.
    assert_eq!(
        http_raw(
            server.ws_port,
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .0,
        200
    );
    let mut ws = server.ws();
    let mut tcp = server.tcp();
    ws.sub("after-fuzz");
    tcp.sub("after-fuzz");
    // Each publishes once; both receive both messages, in order.
    let mut tcp_got = Vec::new();
    let reply = tcp.request(
        json!({"op":"pub","id":1,"channel":"after-fuzz","data":{"n":1}}),
        &mut tcp_got,
    );
    assert_eq!(reply["op"], "ok", "{reply}");
    let mut ws_got = vec![ws.recv()];
    let reply = ws.request(
        json!({"op":"pub","id":2,"channel":"after-fuzz","data":{"n":2}}),
        &mut ws_got,
    );
    assert_eq!(reply["op"], "ok", "{reply}");
    while ws_got.len() < 2 {
        ws_got.push(ws.recv());
    }
    while tcp_got.len() < 2 {
        tcp_got.push(tcp.recv());
    }
    for got in [ws_got, tcp_got] {
        let ns: Vec<_> = got
            .iter()
            .map(|m| (m["op"].clone(), m["data"]["n"].clone()))
            .collect();
        assert_eq!(
            ns,
            [(json!("msg"), json!(1)), (json!("msg"), json!(2))],
            "{got:?}"
        );
    }
    assert_eq!(server.restarts(), 0);
}
