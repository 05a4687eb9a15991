//! Users: tokens, private channels, inboxes with acknowledgement, and the
//! backend HTTP API's keys.

mod common;

use std::time::Duration;

use common::{eventually, token, Client, Server, TcpClient, WsClient, TIMEOUT};
use serde_json::json;

const ALG_NONE: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";

/// Expired a minute ago: past the default 5 s `jwt_leeway`, so no waiting.
fn expired_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"alice","exp":now - 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap()
}

/// The `[auth]` table of `Server::start`'s config.
fn server_auth() -> syncd::config::Auth {
    syncd::config::Auth {
        jwt_secret: "test-secret".into(),
        ..Default::default()
    }
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
    let mut early = Vec::new();
    let reply = ws.request(
        json!({"op":"history","id":1,"channel":"#alice"}),
        &mut early,
    );
    assert_eq!(reply["op"], "ok", "a user reads its own inbox: {reply}");
    let reply = ws.request(json!({"op":"sub","id":2,"channel":"#alice"}), &mut early);
    assert_eq!(
        reply["code"], "already_subscribed",
        "joined its inbox on auth: {reply}"
    );
    // The CLI mints tokens with the configured secret.
    let out = server.cli(&["token", "--sub", "carol", "--ttl", "10m"]);
    assert!(out.status.success());
    let minted = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        syncd::auth::verify(&server_auth(), &minted).unwrap().uid,
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
    let reply = alice.request(
        json!({"op":"ack","id":4,"channel":"#bob","seq":1}),
        &mut early,
    );
    assert_eq!(
        reply["code"], "forbidden",
        "nobody acks another user's inbox: {reply}"
    );
    let reply = anon.request(
        json!({"op":"presence","id":5,"channel":"private-team"}),
        &mut early,
    );
    assert_eq!(reply["code"], "forbidden");
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

/// Authenticates a new TCP connection as `uid`, on any worker.
fn login(server: &Server, uid: &str) -> TcpClient {
    let mut c = server.tcp();
    let reply = c.request(
        json!({"op":"auth","id":"a","token":token(uid, &["$expired"])}),
        &mut Vec::new(),
    );
    assert_eq!(reply["uid"], uid, "{reply}");
    c
}

fn send(server: &Server, uid: &str, data: serde_json::Value, extra: &str) -> u64 {
    let body = format!(r#"{{"uid":"{uid}","data":{data}{extra}}}"#);
    let (status, reply) = server.http("POST", "/api/send", &body);
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str::<serde_json::Value>(&reply).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_user_with_connections_on_every_worker_gets_every_send() {
    let server = Server::start(3, "");
    let mut conns = server.clients_on_every_worker(3, || login(&server, "alice"));
    let mut sender = login(&server, "bob");
    let mut early = Vec::new();
    let reply = sender.request(
        json!({"op":"send","id":1,"uid":"alice","data":{"hi":1}}),
        &mut early,
    );
    assert_eq!(reply["seq"], 1, "{reply}");
    send(&server, "alice", json!({"hi":2}), "");
    for c in conns.iter_mut() {
        for seq in 1..=2 {
            let m = c.recv();
            assert_eq!(
                (m["channel"].as_str(), m["seq"].as_u64()),
                (Some("#alice"), Some(seq)),
                "{m}"
            );
            assert_eq!(m["data"]["hi"], seq);
        }
    }
    let (status, body) = server.http("GET", "/api/users/alice", "");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["online"].as_bool(), body["connections"].as_u64()),
        (Some(true), Some(3)),
        "{body}"
    );
    let anonymous = server.tcp().request(
        json!({"op":"send","id":1,"uid":"alice","data":1}),
        &mut early,
    );
    assert_eq!(anonymous["code"], "unauthorized");
}

#[test]
fn offline_messages_arrive_on_connect_and_acks_are_remembered() {
    let server = Server::start(
        2,
        "[delivery]\nack_timeout = \"300ms\"\nmax_attempts = 10\n",
    );
    for n in 1..=5 {
        send(&server, "carol", json!(n), "");
    }
    let mut c = login(&server, "carol");
    let seqs: Vec<u64> = (0..5).map(|_| c.recv()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "in order, on connect");
    assert_eq!(
        c.request(
            json!({"op":"ack","id":"k","channel":"#carol","seq":3}),
            &mut Vec::new()
        )["op"],
        "ok"
    );
    // Not acked: 4 and 5 come again after the timeout, on the live connection.
    let again: Vec<u64> = (0..2).map(|_| c.recv()["seq"].as_u64().unwrap()).collect();
    assert_eq!(again, vec![4, 5], "redelivered");
    assert_eq!(
        c.request(
            json!({"op":"ack","id":"k","channel":"#carol","seq":5}),
            &mut Vec::new()
        )["op"],
        "ok"
    );
    drop(c);
    send(&server, "carol", json!(6), "");
    let mut c = login(&server, "carol");
    assert_eq!(c.recv()["seq"], 6, "only what was not acknowledged");
    assert!(c.recv_timeout(Duration::from_millis(150)).is_none());
    // Acks survive a restart of everything: the ok means it is stored.
    assert_eq!(
        c.request(
            json!({"op":"ack","id":"k","channel":"#carol","seq":6}),
            &mut Vec::new()
        )["op"],
        "ok"
    );
    drop(c);
    let mut server = server;
    server.stop_now();
    server.launch();
    send(&server, "carol", json!(7), "");
    let mut c = login(&server, "carol");
    assert_eq!(c.recv()["seq"], 7);
}

/// A loopback HTTP listener that records the bodies POSTed to it.
fn webhook_listener() -> (u16, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20).flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = (&stream)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (port, rx)
}

#[test]
fn expired_and_exhausted_messages_reach_expired_and_the_webhook() {
    let (port, hooks) = webhook_listener();
    let server = Server::start(
        2,
        &format!("[delivery]\nack_timeout = \"200ms\"\nmax_attempts = 2\nwebhook_url = \"http://127.0.0.1:{port}/dead\"\n"),
    );
    let mut watcher = login(&server, "backend");
    watcher.sub("$expired");
    // Offline user, short TTL: expires without ever being delivered.
    send(&server, "dora", json!("too late"), r#","ttl":1"#);
    // Online user who never acks: runs out of attempts.
    let mut erin = login(&server, "erin");
    send(&server, "erin", json!("ignored"), "");
    assert_eq!(erin.recv()["seq"], 1);
    assert_eq!(erin.recv()["seq"], 1, "sent a second time");
    let mut reasons = std::collections::HashMap::new();
    for _ in 0..2 {
        let m = watcher.recv();
        assert_eq!(m["channel"], "$expired", "{m}");
        reasons.insert(
            m["data"]["uid"].as_str().unwrap().to_string(),
            m["data"]["reason"].clone(),
        );
    }
    assert_eq!(reasons["dora"], "expired");
    assert_eq!(reasons["erin"], "max_attempts");
    let mut posted: Vec<serde_json::Value> = (0..2)
        .map(|_| hooks.recv_timeout(TIMEOUT).expect("webhook POST"))
        .collect();
    posted.sort_by_key(|v| v["uid"].as_str().unwrap().to_string());
    assert_eq!(
        (posted[0]["uid"].as_str(), posted[0]["data"].as_str()),
        (Some("dora"), Some("too late"))
    );
    assert_eq!(posted[1]["reason"], "max_attempts");
}

#[test]
fn presence_across_workers_and_after_kill_9() {
    let server = Server::start(2, "[presence]\nchannels = [\"room-\"]\n");
    let owner = syncd::sync::shard::owner_of("room-1", 16, 2);
    let victim = 1 - owner;
    // The watcher sits on the owner's worker, which survives.
    let mut watcher = server
        .clients_on_every_worker(2, || server.ws())
        .swap_remove(owner);
    watcher.sub("room-1");
    // One user on each worker.
    let mut users: Vec<Option<(TcpClient, String)>> = vec![None, None];
    for i in 0..100 {
        let uid = format!("user{i}");
        let c = login(&server, &uid);
        let w = server.worker_of(c.local_addr());
        if users[w].is_none() {
            users[w] = Some((c, uid));
        }
        if users.iter().all(Option::is_some) {
            break;
        }
    }
    let mut users: Vec<(TcpClient, String)> = users
        .into_iter()
        .map(|u| u.expect("a user on each worker"))
        .collect();
    for (c, _) in users.iter_mut() {
        c.sub("room-1");
    }
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let e = watcher.recv();
        assert_eq!(e["op"], "join", "{e}");
        joined.push(e["uid"].as_str().unwrap().to_string());
    }
    joined.sort();
    let reply = watcher.request(
        json!({"op":"presence","id":"p","channel":"room-1"}),
        &mut Vec::new(),
    );
    let mut uids: Vec<String> = serde_json::from_value(reply["uids"].clone()).unwrap();
    uids.sort();
    assert_eq!(uids, joined);
    let (status, body) = server.http("GET", "/api/presence?channel=room-1", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&users[victim].1), "{body}");
    assert_eq!(
        server.http("GET", "/api/presence?channel=news", "").0,
        503,
        "presence is off for news"
    );

    let pid = server.status().workers[victim].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let e = watcher.recv();
    assert_eq!(
        (e["op"].as_str(), e["uid"].as_str()),
        (Some("leave"), Some(users[victim].1.as_str())),
        "{e}"
    );
    let (_, body) = server.http("GET", "/api/presence?channel=room-1", "");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["uids"], json!([users[owner].1]));
}

#[test]
fn a_retried_publish_or_send_with_an_idempotency_key_happens_once() {
    let mut server = Server::start(2, "");
    let body = r#"{"channel":"orders","data":{"id":1},"idempotency_key":"order-1"}"#;
    // Several retries at once, on both workers' connections.
    let retries: Vec<_> = (0..6)
        .map(|_| {
            let port = server.ws_port;
            std::thread::spawn(move || {
                let raw = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer test-key\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                common::http_raw(port, raw.as_bytes())
            })
        })
        .collect();
    for r in retries {
        let (status, reply) = r.join().unwrap();
        assert_eq!((status, reply.as_str()), (200, r#"{"seq":1}"#));
    }
    let other = r#"{"channel":"orders","data":{"id":2},"idempotency_key":"order-2"}"#;
    assert_eq!(server.http("POST", "/api/publish", other).1, r#"{"seq":2}"#);
    let send = r#"{"uid":"frank","data":"hi","idempotency_key":"dm-1"}"#;
    assert_eq!(server.http("POST", "/api/send", send).1, r#"{"seq":1}"#);
    assert_eq!(server.http("POST", "/api/send", send).1, r#"{"seq":1}"#);
    // Remembered across kill -9 of everything.
    server.stop_now();
    server.launch();
    assert_eq!(server.http("POST", "/api/publish", body).1, r#"{"seq":1}"#);
    let (_, history) = server.http("GET", "/api/history?channel=orders", "");
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "{history}"
    );
}

#[test]
fn broadcast_reaches_every_connection_and_disconnect_closes_every_connection_of_a_user() {
    let server = Server::start(2, "");
    let mut anon_ws = server.clients_on_every_worker(2, || server.ws());
    let mut gina = server.clients_on_every_worker(2, || login(&server, "gina"));
    let mut hank = login(&server, "hank");
    let (status, body) = server.http(
        "POST",
        "/api/broadcast",
        r#"{"data":{"notice":"maintenance"}}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for c in anon_ws.iter_mut() {
        assert_eq!(
            c.recv(),
            json!({"op":"broadcast","data":{"notice":"maintenance"}})
        );
    }
    for c in gina.iter_mut().chain(std::iter::once(&mut hank)) {
        assert_eq!(c.recv()["op"], "broadcast");
    }
    assert_eq!(
        server
            .http("POST", "/api/disconnect", r#"{"uid":"gina"}"#)
            .0,
        200
    );
    for c in gina.iter_mut() {
        assert_eq!(c.recv()["code"], "disconnected");
        assert!(c.closed_by_server(TIMEOUT));
    }
    let mut ws_gina =
        WsClient::connect(server.ws_port, &format!("/ws?token={}", token("gina", &[])));
    eventually("gina's new connection is known", || {
        let (_, body) = server.http("GET", "/api/users/gina", "");
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|u| u["connections"] == 1)
    });
    assert_eq!(
        server
            .http("POST", "/api/disconnect", r#"{"uid":"gina"}"#)
            .0,
        200
    );
    assert_eq!(ws_gina.close_code(TIMEOUT), Some(4003));
    assert_eq!(
        hank.request(json!({"op":"ping","id":1}), &mut Vec::new())["op"],
        "pong",
        "others stay"
    );
    assert_eq!(server.http("POST", "/api/broadcast", "{}").0, 400);
}

#[test]
fn a_connection_that_authenticates_after_subscribing_joins_and_leaves_once() {
    let server = Server::start(2, "[presence]\nchannels = [\"room-\"]\n");
    let mut watcher = server.tcp();
    watcher.sub("room-9");
    let mut late = server.tcp();
    late.sub("room-9");
    late.send(&json!({"op":"auth","id":"a","token":token("ivy", &[])}));
    // Its auth reply and its own join, in either order.
    let mut ops: Vec<String> = (0..2)
        .map(|_| late.recv()["op"].as_str().unwrap().to_string())
        .collect();
    ops.sort();
    assert_eq!(ops, ["join", "ok"]);
    assert_eq!(
        watcher.recv(),
        json!({"op":"join","channel":"room-9","uid":"ivy"})
    );
    late.send(&json!({"op":"unsub","id":"u","channel":"room-9"}));
    assert_eq!(
        watcher.recv(),
        json!({"op":"leave","channel":"room-9","uid":"ivy"})
    );
    let reply = watcher.request(
        json!({"op":"presence","id":"p","channel":"room-9"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["uids"], json!([]));
}
