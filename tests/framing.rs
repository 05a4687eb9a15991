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
