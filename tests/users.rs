//! Users: tokens, private channels, inboxes with acknowledgement, and the
//! backend HTTP API's keys.

mod common;

use std::time::Duration;

use common::{token, Client, Server, TcpClient, WsClient, TIMEOUT};
use serde_json::json;

const ALG_NONE: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";

fn expired_token() -> String {
    syncd::auth::mint("test-secret", "alice", Duration::ZERO, vec![]).unwrap()
}

fn tampered_token() -> String {
    let t = token("alice", &[]);
    let (head, sig) = t.rsplit_once('.').unwrap();
    format!("{head}.{}", sig.chars().rev().collect::<String>())
}

#[test]
fn every_bad_token_is_refused_with_a_clear_code() {
    let server = Server::start(2, "");
    let wrong_secret =
        syncd::auth::mint("other-secret", "alice", Duration::from_secs(60), vec![]).unwrap();
    let bad_tokens = [
        expired_token(),
        tampered_token(),
        ALG_NONE.to_string(),
        wrong_secret,
        "garbage".into(),
    ];
    std::thread::sleep(Duration::from_millis(1100)); // let the expired token expire
    for bad in bad_tokens {
        // On the URL: no upgrade, 401.
        let (status, body) = server.http_with("GET", &format!("/ws?token={bad}"), "", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(status, 401, "{bad}: {body}");
        assert!(body.contains("unauthorized"), "{body}");
        // As an auth frame on WebSocket: error, then close 4001.
        let mut ws = server.ws();
        ws.send(&json!({"op":"auth","id":1,"token":bad}));
        let reply = ws.recv();
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "{reply}"
        );
        assert_eq!(ws.close_code(TIMEOUT), Some(4001));
        // On TCP: error line, then the connection closes.
        let mut tcp = server.tcp();
        tcp.send(&json!({"op":"auth","id":1,"token":bad}));
        assert_eq!(tcp.recv()["code"], "unauthorized");
        assert!(tcp.closed_by_server(TIMEOUT));
    }
}

#[test]
fn a_good_token_binds_the_user_on_the_url_or_in_a_frame() {
    let server = Server::start(2, "");
    let mut tcp = server.tcp();
    let reply = tcp.request(
        json!({"op":"auth","id":1,"token":token("alice", &[])}),
        &mut Vec::new(),
    );
    assert_eq!(reply, json!({"op":"ok","id":1,"uid":"alice"}));
    let again = tcp.request(
        json!({"op":"auth","id":2,"token":token("bob", &[])}),
        &mut Vec::new(),
    );
    assert_eq!(again["code"], "already_authenticated");
    let mut ws = WsClient::connect(
        server.ws_port,
        &format!("/ws?token={}", token("alice", &[])),
    );
    assert_eq!(ws.sub("#alice")["op"], "ok", "a user reads its own inbox");
    // The CLI mints tokens with the configured secret.
    let out = server.cli(&["token", "--sub", "carol", "--ttl", "10m"]);
    assert!(out.status.success());
    let minted = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        syncd::auth::verify("test-secret", &minted).unwrap().uid,
        "carol"
    );
}

#[test]
fn private_channels_and_inboxes_need_permission() {
    let server = Server::start(2, "");
    let mut anon = server.tcp();
    let mut early = Vec::new();
    for (op, channel) in [
        ("sub", "private-team"),
        ("sub", "#alice"),
        ("sub", "$expired"),
        ("pub", "private-team"),
        ("pub", "#alice"),
        ("history", "#alice"),
    ] {
        let reply = anon.request(
            json!({"op":op,"id":1,"channel":channel,"data":1}),
            &mut early,
        );
        assert_eq!(reply["code"], "forbidden", "{op} {channel}: {reply}");
    }
    let mut alice = server.tcp();
    alice.request(
        json!({"op":"auth","id":0,"token":token("alice", &["private-team", "private-a*"])}),
        &mut early,
    );
    assert_eq!(alice.sub("private-team")["op"], "ok");
    assert_eq!(alice.sub("private-abc")["op"], "ok");
    assert_eq!(
        alice.request(
            json!({"op":"sub","id":1,"channel":"private-other"}),
            &mut early
        )["code"],
        "forbidden"
    );
    assert_eq!(
        alice.request(json!({"op":"sub","id":2,"channel":"#bob"}), &mut early)["code"],
        "forbidden"
    );
    assert_eq!(
        alice.request(
            json!({"op":"pub","id":3,"channel":"$expired","data":1}),
            &mut early
        )["code"],
        "forbidden"
    );
}

#[test]
fn without_anonymous_access_the_first_frame_must_authenticate() {
    let server = Server::start(2, "[auth]\njwt_secret = \"test-secret\"\napi_keys = [\"test-key\"]\nallow_anonymous = false\n");
    let mut c = server.tcp();
    assert_eq!(
        c.request(json!({"op":"ping","id":1}), &mut Vec::new())["op"],
        "pong"
    );
    c.send(&json!({"op":"sub","id":2,"channel":"news"}));
    assert_eq!(c.recv()["code"], "unauthorized");
    assert!(c.closed_by_server(TIMEOUT));
    let mut ws = server.ws();
    ws.send(&json!({"op":"pub","id":2,"channel":"news","data":1}));
    assert_eq!(ws.recv()["code"], "unauthorized");
    assert_eq!(ws.close_code(TIMEOUT), Some(4001));
    let mut ok = TcpClient::connect(server.tcp_port);
    ok.request(
        json!({"op":"auth","id":0,"token":token("dave", &[])}),
        &mut Vec::new(),
    );
    assert_eq!(ok.sub("news")["op"], "ok");
}

#[test]
fn the_http_api_needs_a_valid_key() {
    let server = Server::start(2, "");
    let body = r#"{"channel":"a","data":1}"#;
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "X-API-Key: nope\r\n",
        "Authorization: Basic dGVzdC1rZXk=\r\n",
    ] {
        let (status, reply) = server.http_with("POST", "/api/publish", body, headers);
        assert_eq!(status, 401, "{headers:?}: {reply}");
        assert!(reply.contains("\"unauthorized\""), "{reply}");
    }
    assert_eq!(
        server.http_with("GET", "/api/history?channel=a", "", "").0,
        401
    );
    assert_eq!(
        server
            .http_with("POST", "/api/publish", body, "X-API-Key: test-key\r\n")
            .0,
        200
    );
    assert_eq!(server.http("POST", "/api/publish", body).0, 200);
    assert_eq!(
        server.http_with("GET", "/healthz", "", "").0,
        200,
        "health needs no key"
    );
}
