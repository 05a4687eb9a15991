//! Abuse limits: a connection over `publish_rate` is told `rate_limited`
//! and keeps its connection; the backend API is not limited; with
//! `users.client_send = "none"` only the backend may send direct messages.

mod common;

use common::{Client, Server};
use serde_json::json;

#[test]
fn publishes_over_the_rate_are_refused_and_the_connection_stays() {
    let server = Server::start(2, "[limits]\npublish_rate = 1\npublish_burst = 5\n");
    let mut c = server.tcp();
    let burst: String = (0..20)
        .map(|n| {
            format!(
                "{}\n",
                json!({"op":"pub","id":n,"channel":"rated","data":n})
            )
        })
        .collect();
    c.send_raw(burst.trim_end());
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..20 {
        let reply = c.recv();
        match (reply["op"].as_str(), reply["code"].as_str()) {
            (Some("ok"), _) => ok += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    // The burst, and at most one more token refilled while they were read.
    assert!((5..=6).contains(&ok), "{ok} accepted, {limited} refused");
    assert_eq!(ok + limited, 20);
    let pong = c.request(json!({"op":"ping","id":"p"}), &mut Vec::new());
    assert_eq!(pong["op"], "pong", "the connection stays open");
    assert_eq!(server.sum_stats(|s| s.rate_limited), limited);
    // The backend API has no such limit.
    for n in 0..20 {
        let (status, body) = server.http(
            "POST",
            "/api/publish",
            &json!({"channel":"rated","data":n}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        server.log().contains("over publish_rate"),
        "refusals are logged"
    );
}

#[test]
fn with_client_send_none_only_the_backend_sends_direct_messages() {
    let server = Server::start(2, "[users]\nclient_send = \"none\"\n");
    let mut alice = server.tcp();
    let auth = alice.request(
        json!({"op":"auth","id":1,"token":common::token("alice", &[])}),
        &mut Vec::new(),
    );
    assert_eq!(auth["op"], "ok", "{auth}");
    let reply = alice.request(
        json!({"op":"send","id":2,"uid":"bob","data":"hi"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (status, body) = server.http("POST", "/api/send", r#"{"uid":"bob","data":"hi"}"#);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn connections_over_the_per_address_rate_are_refused_with_a_reason() {
    // One worker, so every connection meets the same bucket.
    let server = Server::start(1, "[limits]\nconnect_rate_per_ip = 3\n");
    let mut refused = 0;
    let mut served = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let mut c = common::TcpClient::connect(server.tcp_port);
        c.send_raw(&json!({"op":"ping","id":1}).to_string());
        let reply = c.recv();
        match reply["op"].as_str() {
            Some("pong") => served.push(c),
            _ => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                refused += 1;
            }
        }
    }
    // At most the burst (3) plus what refilled while the loop ran (3 a
    // second), however slow the machine; and some were refused.
    let refill = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    assert!(
        served.len() <= 3 + refill,
        "{} served, {refused} refused",
        served.len()
    );
    assert!(refused > 0);
    let status = common::ws_handshake_status(server.ws_port, "/ws", "");
    assert!(status == 429 || status == 101, "{status}");
    assert!(server.sum_stats(|s| s.rate_limited) >= refused);
    // Those let in are served as usual.
    for c in &mut served {
        assert_eq!(
            c.request(json!({"op":"ping","id":2}), &mut Vec::new())["op"],
            "pong"
        );
    }
}
