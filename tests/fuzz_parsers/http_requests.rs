//! HTTP on the ws port, pipelined

use super::*;

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
