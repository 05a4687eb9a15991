//! Pretty-printed JSON from a backend or a client never breaks the TCP line
//! framing: `data` is stored and delivered compactly, one line per message,
//! live, across workers, and on resume.

mod common;

use common::{token, Client, Server, TcpClient};
use serde_json::{json, Value};

/// `data` as `json.dumps(x, indent=2)` or PHP's `JSON_PRETTY_PRINT` send it.
const PRETTY_DATA: &str = r#"{
    "seat": "F7",
    "tags": [
      "a b",
      "line\nbreak"
    ],
    "n": 1.50
  }"#;
/// The same `data`, compactly encoded: strings and numbers untouched.
const COMPACT_DATA: &str = r#"{"seat":"F7","tags":["a b","line\nbreak"],"n":1.50}"#;

/// Reads one raw line and checks it is a whole JSON frame on its own.
fn one_line(c: &mut TcpClient) -> (String, Value) {
    let line = c.read_line(common::TIMEOUT).expect("a line");
    let value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not one JSON frame per line: {line:?}: {e}"));
    (line, value)
}

/// Nothing but the frames already read came from those messages: the next
/// line answers a ping.
fn nothing_left(c: &mut TcpClient) {
    c.send(&json!({"op":"ping","id":"end"}));
    let (line, v) = one_line(c);
    assert_eq!(v["op"], "pong", "a stray line: {line:?}");
}

#[test]
fn pretty_printed_data_is_one_line_per_message_live_and_on_resume() {
    let server = Server::start(2, "");
    let mut subs = server.clients_on_every_worker(2, || server.tcp());
    for c in subs.iter_mut() {
        c.sub("pretty");
    }
    // Bob's inbox, on whichever worker.
    let mut bob = server.tcp();
    let authed = bob.request(
        json!({"op":"auth","id":1,"token":token("bob", &[])}),
        &mut Vec::new(),
    );
    assert_eq!(authed["op"], "ok", "{authed}");

    // 1: an HTTP publish.
    let body = format!("{{\n  \"channel\": \"pretty\",\n  \"data\": {PRETTY_DATA}\n}}\n");
    let (status, body) = server.http("POST", "/api/publish", &body);
    assert_eq!(status, 200, "{body}");
    // 2: a WebSocket client sends its frame pretty-printed.
    let mut ws = server.ws();
    ws.send_raw(&format!(
        "{{\n  \"op\": \"pub\",\n  \"id\": 2,\n  \"channel\": \"pretty\",\n  \"data\": {PRETTY_DATA}\n}}"
    ));
    assert_eq!(ws.recv()["op"], "ok");
    // 3: keyed state over HTTP, the bare value pretty-printed.
    let (status, body) = server.http_with(
        "PUT",
        "/api/state?channel=pretty&key=F7",
        "{\n  \"by\": \"box office\"\n}\n",
        "Authorization: Bearer test-key\r\nIf-Match: 0\r\n",
    );
    assert_eq!(status, 200, "{body}");
    // 4: keyed state over WebSocket.
    ws.send_raw("{\"op\":\"set\",\"id\":4,\"channel\":\"pretty\",\"key\":\"G1\",\n \"value\": [\n  1,\n  2\n ],\n \"version\": 0}");
    assert_eq!(ws.recv()["op"], "ok");

    let expected = [
        format!(r#"{{"op":"msg","channel":"pretty","seq":1,"data":{COMPACT_DATA}}}"#),
        format!(r#"{{"op":"msg","channel":"pretty","seq":2,"data":{COMPACT_DATA}}}"#),
        r#"{"op":"msg","channel":"pretty","seq":3,"data":{"key":"F7","value":{"by":"box office"},"version":1}}"#.to_string(),
        r#"{"op":"msg","channel":"pretty","seq":4,"data":{"key":"G1","value":[1,2],"version":1}}"#.to_string(),
    ];
    let check = |c: &mut TcpClient| {
        for want in &expected {
            let (line, got) = one_line(c);
            let want_value: Value = serde_json::from_str(want).unwrap();
            assert_eq!(got, want_value, "{line:?}");
            assert_eq!(line.trim_end(), want, "compact, same numbers and strings");
        }
    };
    for c in subs.iter_mut() {
        check(c);
    }

    // A direct message and a broadcast, pretty-printed too.
    let (status, body) = server.http(
        "POST",
        "/api/send",
        "{\n  \"uid\": \"bob\",\n  \"data\": {\n    \"order\": 981\n  }\n}",
    );
    assert_eq!(status, 200, "{body}");
    let (line, got) = one_line(&mut bob);
    assert_eq!(got["data"], json!({"order": 981}), "{line:?}");
    let (status, body) = server.http(
        "POST",
        "/api/broadcast",
        "{\n  \"data\": [\n    \"down at 22:00\"\n  ]\n}",
    );
    assert_eq!(status, 200, "{body}");
    for c in subs.iter_mut().chain([&mut bob]) {
        let (line, got) = one_line(c);
        assert_eq!(
            line.trim_end(),
            r#"{"op":"broadcast","data":["down at 22:00"]}"#
        );
        assert_eq!(got["op"], "broadcast");
        nothing_left(c);
    }

    // A resume on each worker (one of them replays across workers).
    let mut resumers = server.clients_on_every_worker(2, || server.tcp());
    for c in resumers.iter_mut() {
        c.send(&json!({"op":"sub","id":"r","channel":"pretty","since":0}));
        let (line, ok) = one_line(c);
        assert_eq!(ok["op"], "ok", "{line:?}");
        check(c);
        nothing_left(c);
    }

    // What is stored is compact too.
    let (status, body) = server.http("GET", "/api/history?channel=pretty", "");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains('\n'), "history holds pretty bytes: {body:?}");
    assert!(body.contains(COMPACT_DATA), "{body}");
}

/// The upgrade request, as a browser or client library sends it.
fn upgrade_request() -> String {
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_string()
}

/// Reads the socket until `done` holds for what came, or it ends; returns
/// what came and whether the server ended it (a read of 0, not a timeout).
fn read_until(s: &mut std::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    use std::io::Read;
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !done(&got) {
        match s.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (got, false)
}

/// A frame in the same write as the upgrade request is served (the server
/// reads the socket once for both), and a client that shuts its side right
/// after the upgrade is closed, not left open until a timeout.
#[test]
fn a_frame_sent_with_the_upgrade_is_answered_and_a_shut_client_is_closed() {
    use std::io::Write;
    let server = Server::start(2, "");
    let ping = br#"{"op":"ping","id":"early"}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.ws_port)).unwrap();
    let mut raw = upgrade_request().into_bytes();
    raw.extend(common::ws_client_frame(
        0x81,
        Some([1, 2, 3, 4]),
        ping.len() as u64,
        ping,
    ));
    s.write_all(&raw).unwrap();
    let (got, _) = read_until(&mut s, |g| g.windows(7).any(|w| w == b"\"early\""));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("\"pong\"") && text.contains("\"early\""),
        "{text}"
    );

    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.ws_port)).unwrap();
    s.write_all(upgrade_request().as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // Answered with 101 or not (when its end came in the same read as the
    // request it is dropped unanswered), it must not stay open.
    let (got, ended) = read_until(&mut s, |_| false);
    let text = String::from_utf8_lossy(&got);
    assert!(ended, "the server left a shut client open: {text}");
}
