//! Bad input gets a clear error or close code, never takes a worker down, and
//! never costs another client its messages.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{http_raw, Client, Server, TcpClient, WsClient, TIMEOUT};
use serde_json::{json, Value};

fn expect_error(c: &mut dyn Client, raw: &str, code: &str) -> Value {
    c.send_raw(raw);
    let reply = c.recv();
    assert_eq!(reply["op"], "error", "{raw} -> {reply}");
    assert_eq!(reply["code"], code, "{raw} -> {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    reply
}

#[test]
fn malformed_frames_get_error_codes_and_the_connection_stays_open() {
    let server = Server::start(2, "");
    let mut ws = server.ws();
    let mut tcp = server.tcp();
    for c in [&mut ws as &mut dyn Client, &mut tcp] {
        expect_error(c, "{not json", "bad_json");
        expect_error(c, "[1,2,3]", "bad_request");
        let r = expect_error(c, r#"{"op":"explode","id":9}"#, "unknown_op");
        assert_eq!(r["id"], 9, "the id is echoed");
        expect_error(c, r#"{"id":1}"#, "bad_request");
        expect_error(c, r#"{"op":"sub","id":2}"#, "bad_request");
        let r = expect_error(c, r#"{"op":"sub","id":3,"channel":42}"#, "bad_request");
        assert_eq!(r["id"], 3);
        expect_error(c, r#"{"op":"pub","id":4,"channel":"a"}"#, "bad_request");
        expect_error(
            c,
            r#"{"op":"sub","id":5,"channel":"has space"}"#,
            "bad_channel",
        );
        expect_error(
            c,
            r#"{"op":"sub","id":6,"channel":"a","since":-1}"#,
            "bad_request",
        );
        // Still serving this connection.
        let pong = c.request(json!({"op":"ping","id":7}), &mut Vec::new());
        assert_eq!(pong["op"], "pong");
    }
    ws.ws
        .send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    assert_eq!(ws.recv()["code"], "binary_unsupported");
    assert_eq!(server.restarts(), 0);
}

#[test]
fn frames_over_max_frame_close_the_connection() {
    let server = Server::start(2, "[limits]\nmax_frame = \"4KiB\"\n");
    let big = format!(
        r#"{{"op":"pub","channel":"a","data":"{}"}}"#,
        "x".repeat(8192)
    );
    let mut ws = server.ws();
    ws.send_raw(&big);
    assert_eq!(ws.close_code(TIMEOUT), Some(1009));

    let mut tcp = server.tcp();
    tcp.send_raw(&big);
    let reply = tcp.recv();
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("too_large"))
    );
    assert!(tcp.closed_by_server(TIMEOUT));
    // An endless line with no newline is cut off too.
    let mut tcp = server.tcp();
    tcp.send_bytes(&vec![b'x'; 16 * 1024]);
    assert_eq!(tcp.recv()["code"], "too_large");
    assert!(tcp.closed_by_server(TIMEOUT));
    // Others are unaffected.
    server.tcp().sub("fine");
}

#[test]
fn non_utf8_on_tcp_gets_an_error() {
    let server = Server::start(2, "");
    let mut tcp = server.tcp();
    tcp.send_bytes(b"{\"op\":\"ping\",\"id\":\"\xff\xfe\"}\n");
    assert_eq!(tcp.recv()["code"], "not_utf8");
    assert_eq!(
        tcp.request(json!({"op":"ping","id":1}), &mut Vec::new())["op"],
        "pong"
    );
}

#[test]
fn bad_http_gets_400_unknown_path_404() {
    let server = Server::start(2, "[limits]\nmax_frame = \"4KiB\"\n");
    let (status, body) = http_raw(server.ws_port, b"BLAH\x01 / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"), "{body}");
    assert_eq!(server.http("GET", "/nope", "").0, 404);
    assert_eq!(server.http("DELETE", "/api/publish", "").0, 405);
    let (status, body) = server.http("POST", "/api/publish", "{\"channel\":\"a\"}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.http("POST", "/api/publish", "not json").0, 400);
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(8192));
    assert_eq!(server.http("POST", "/api/publish", &big).0, 413);
    // An idempotency key is 1 to 256 bytes, as for queue ingest.
    for key in [String::new(), "k".repeat(257)] {
        let body = json!({"channel":"a","data":1,"idempotency_key":key}).to_string();
        let (status, reply) = server.http("POST", "/api/publish", &body);
        assert_eq!(status, 400, "{reply}");
        assert!(reply.contains("idempotency_key"), "{reply}");
        let body = json!({"uid":"u","data":1,"idempotency_key":key}).to_string();
        assert_eq!(server.http("POST", "/api/send", &body).0, 400);
    }
    let body = json!({"channel":"a","data":1,"idempotency_key":"k".repeat(256)}).to_string();
    assert_eq!(server.http("POST", "/api/publish", &body).0, 200);
    // /ws without the upgrade headers.
    assert_eq!(server.http("GET", "/ws", "").0, 400);
    // /echo is off unless [debug] echo = true.
    assert_eq!(server.http("GET", "/echo", "").0, 404);
    let (status, _) = http_raw(
        server.ws_port,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    );
    assert_eq!(status, 400);
}

#[test]
fn connections_over_max_connections_are_refused_cleanly() {
    let server = Server::start(2, "[limits]\nmax_connections = 3\n");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let mut c = server.tcp();
        c.send(&json!({"op":"ping","id":1}));
        let first = c.recv();
        if first["op"] == "pong" {
            accepted.push(c);
        } else {
            assert_eq!(first["code"], "too_many_connections", "{first}");
            assert!(c.closed_by_server(TIMEOUT));
            refused += 1;
        }
    }
    assert!(
        accepted.len() <= 6,
        "at most 3 per worker, got {}",
        accepted.len()
    );
    assert!(refused >= 14);
    // The ws port answers over-limit connections with 503.
    let mut saw_503 = false;
    for _ in 0..20 {
        let (status, _) = server.http("GET", "/healthz", "");
        saw_503 |= status == 503;
        assert!(status == 503 || status == 200, "{status}");
    }
    assert!(saw_503);
    let refused_total: u64 = server.sum_stats(|s| s.refused);
    assert!(refused_total >= 14);
    drop(accepted);
}

#[test]
fn a_slow_reader_is_cut_off_while_a_fast_one_gets_everything() {
    let server = Server::start(2, "[limits]\nmax_send_buffer = \"256KiB\"\n");
    let mut slow = server.ws();
    slow.sub("firehose");
    // Both slow clients stop reading from here on.
    let mut slow_tcp = server.tcp();
    slow_tcp.sub("firehose");
    let mut fast = server.tcp();
    fast.sub("firehose");
    const N: u64 = 2000;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < N {
            let m = fast.recv();
            assert_eq!(m["op"], "msg", "{m}");
            seqs.push(m["seq"].as_u64().unwrap());
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        seqs
    });
    let failures = |server: &Server| server.sum_stats(|s| s.send_failures);
    let mut drains = None;
    let mut slow_clients = Some((slow, slow_tcp));
    let payload = "y".repeat(16 * 1024);
    let mut publisher = TcpStream::connect(("127.0.0.1", server.tcp_port)).unwrap();
    let mut batch = String::new();
    for n in 0..N {
        batch += &format!("{{\"op\":\"pub\",\"channel\":\"firehose\",\"data\":{{\"n\":{n},\"pad\":\"{payload}\"}}}}\n");
        if n % 8 == 7 {
            publisher.write_all(batch.as_bytes()).unwrap();
            batch.clear();
            // The fast reader keeps up: it is at most one batch (128KiB) behind.
            common::eventually("the fast reader caught up", || {
                received.load(std::sync::atomic::Ordering::SeqCst) > n
            });
            // Once cut off, the slow TCP client reads again and must find the
            // reason as its last line (within the server's close grace).
            if drains.is_none() && failures(&server) == 2 {
                let (mut slow, mut slow_tcp) = slow_clients.take().unwrap();
                let ws = std::thread::spawn(move || slow.close_code(Duration::from_secs(30)));
                let tcp = std::thread::spawn(move || {
                    let mut lines = Vec::new();
                    while let Some(line) = slow_tcp.read_line(Duration::from_secs(5)) {
                        lines.push(line);
                    }
                    lines
                });
                drains = Some((ws, tcp));
            }
        }
    }
    let seqs = reader.join().unwrap();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let (ws, tcp) = drains.expect("both slow clients were cut off during the flood");
    assert_eq!(ws.join().unwrap(), Some(1008));
    let lines = tcp.join().unwrap();
    let last: Value = serde_json::from_str(lines.last().expect("a last line")).unwrap();
    assert_eq!(last["code"], "slow_consumer", "{last}");
    assert!(lines.len() > 1, "it got what it had room for first");
    assert_eq!(failures(&server), 2);
}

#[test]
fn silent_connections_on_the_ws_port_are_closed_after_the_handshake_timeout() {
    let server = Server::start(2, "[limits]\nhandshake_timeout = \"300ms\"\n");
    let mut silent = TcpClient::connect(server.ws_port);
    assert!(silent.closed_by_server(TIMEOUT));
    // A WebSocket client idling after its upgrade is not affected.
    let mut ws = WsClient::connect(server.ws_port, "/ws");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        ws.request(json!({"op":"ping","id":1}), &mut Vec::new())["op"],
        "pong"
    );
}

#[test]
fn subscribing_to_made_up_channels_costs_the_owners_nothing() {
    let server = Server::start(2, "");
    let mut c = server.tcp();
    for n in 0..500 {
        c.send(&json!({"op":"sub","id":n,"channel":format!("junk-{n}")}));
        c.send(&json!({"op":"unsub","id":n,"channel":format!("junk-{n}")}));
    }
    // Each sub is answered before its own unsub; subs of channels owned by
    // the other worker may be overtaken by later requests (docs/protocol.md).
    let mut answered = std::collections::HashMap::new();
    for _ in 0..1000 {
        let reply = c.recv();
        assert_eq!(reply["op"], "ok", "{reply}");
        let n = reply["id"].as_u64().expect("an id");
        let is_sub = reply.get("channel").is_some();
        let before = answered.insert((n, is_sub), ());
        assert!(before.is_none(), "one reply each: {reply}");
        assert!(
            is_sub || answered.contains_key(&(n, true)),
            "unsub {n} answered before its sub"
        );
    }
    assert_eq!(server.sum_stats(|s| s.channels_owned as u64), 0);
    assert_eq!(server.sum_stats(|s| s.subscriptions as u64), 0);
    // A channel subscribed before its first message keeps the epoch it was given.
    let epoch = c.sub("later")["epoch"].clone();
    c.request(
        json!({"op":"pub","id":"p","channel":"later","data":1}),
        &mut Vec::new(),
    );
    let mut back = server.tcp();
    let reply = back.request(
        json!({"op":"sub","id":1,"channel":"later","since":0,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);
}

#[test]
fn a_bad_token_over_tcp_gets_one_error_then_the_close() {
    let server = Server::start(2, "");
    let mut tcp = server.tcp();
    tcp.send(&json!({"op":"auth","id":1,"token":"not-a-token"}));
    let error = tcp.recv();
    assert_eq!(
        (error["op"].as_str(), error["code"].as_str(), &error["id"]),
        (Some("error"), Some("unauthorized"), &json!(1)),
        "{error}"
    );
    // Nothing after it but the close.
    assert_eq!(tcp.read_line(TIMEOUT), None, "a second frame");
    // WebSocket: the same one error frame, then close 4001.
    let mut ws = server.ws();
    ws.send(&json!({"op":"auth","id":2,"token":"not-a-token"}));
    assert_eq!(ws.recv()["id"], 2);
    assert_eq!(ws.close_code(TIMEOUT), Some(4001));
}

#[test]
fn a_wrong_api_key_is_told_apart_from_a_missing_one_and_never_echoed() {
    let server = Server::start(2, "");
    let body = r#"{"channel":"a","data":1}"#;
    let (status, missing) = server.http_with("POST", "/api/publish", body, "");
    assert_eq!(status, 401, "{missing}");
    assert!(missing.contains("send an API key"), "{missing}");
    for header in [
        "Authorization: Bearer wrong-key-123\r\n",
        "X-API-Key: wrong-key-123\r\n",
    ] {
        let (status, wrong) = server.http_with("POST", "/api/publish", body, header);
        assert_eq!(status, 401, "{wrong}");
        let wrong: Value = serde_json::from_str(&wrong).unwrap();
        assert_eq!(wrong["error"], "unauthorized");
        let message = wrong["message"].as_str().unwrap_or_default();
        assert!(message.contains("API key not accepted"), "{message}");
        assert!(!message.contains("wrong-key-123"), "the key is echoed");
    }
}

#[test]
fn json_that_is_not_an_object_is_a_bad_request_that_says_so() {
    let server = Server::start(2, "");
    let mut ws = server.ws();
    let mut tcp = server.tcp();
    for c in [&mut ws as &mut dyn Client, &mut tcp] {
        for raw in ["[1,2]", "\"x\"", "5", "null", "true"] {
            let r = expect_error(c, raw, "bad_request");
            let message = r["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("expected a JSON object with an op"),
                "{raw} -> {message}"
            );
        }
        let pong = c.request(json!({"op":"ping","id":1}), &mut Vec::new());
        assert_eq!(pong["op"], "pong");
    }
}
