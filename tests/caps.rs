//! The caps of issue 11 (item 5), end to end on the real binary with
//! several workers: `max_subs_per_conn`, `max_inflight_per_conn`,
//! `max_channels`, `max_conns_per_ip`, and the bounded store queue
//! (`store_queue`). Each refusal names its limit; the two backpressure caps
//! refuse nothing and answer every request.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};

use common::{eventually, Client, Server, TcpClient, TIMEOUT};
use serde_json::{json, Value};

fn ping_ok(c: &mut impl Client, id: u64) {
    let reply = c.request(json!({"op":"ping","id":id}), &mut Vec::new());
    assert_eq!(reply["op"], "pong", "{reply}");
}

/// Every reply to `n` pipelined requests, by id (msg frames skipped).
fn replies(c: &mut impl Client, n: usize) -> HashMap<u64, Value> {
    let mut got = HashMap::new();
    while got.len() < n {
        let frame = c
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|| panic!("only {} of {n} replies", got.len()));
        if frame["op"] == "msg" {
            continue;
        }
        let id = frame["id"].as_u64().unwrap_or_else(|| panic!("{frame}"));
        assert!(got.insert(id, frame).is_none(), "one reply per request");
    }
    got
}

#[test]
fn a_sub_past_max_subs_per_conn_gets_too_many_subs_and_the_connection_goes_on() {
    let server = Server::start(2, "[limits]\nmax_subs_per_conn = 3\n");
    let mut ws = server.ws();
    let mut tcp = server.tcp();
    // Pipelined, so most are still waiting for their owner when the next
    // comes: waiting subs count too.
    for c in [&mut ws as &mut dyn Client, &mut tcp] {
        for i in 0..10u64 {
            c.send(&json!({"op":"sub","id":i,"channel":format!("room{i}")}));
        }
    }
    for (name, got) in [("ws", replies(&mut ws, 10)), ("tcp", replies(&mut tcp, 10))] {
        let ok = got.values().filter(|r| r["op"] == "ok").count();
        assert_eq!(
            ok, 3,
            "{name}: exactly max_subs_per_conn subscribed: {got:?}"
        );
        for r in got.values().filter(|r| r["op"] != "ok") {
            assert_eq!(r["code"], "too_many_subs", "{name}: {r}");
            let message = r["message"].as_str().unwrap_or_default();
            assert!(message.contains("limits.max_subs_per_conn"), "{message}");
        }
    }
    // Still usable: ping, publish, and after an unsub, one more sub.
    ping_ok(&mut tcp, 100);
    let subscribed: Vec<String> = (0..10)
        .map(|i| format!("room{i}"))
        .filter(|ch| {
            let r = tcp.request(json!({"op":"sub","id":101,"channel":ch}), &mut Vec::new());
            r["code"] == "already_subscribed"
        })
        .collect();
    assert_eq!(subscribed.len(), 3, "{subscribed:?}");
    let unsub = json!({"op":"unsub","id":102,"channel":subscribed[0]});
    assert_eq!(tcp.request(unsub, &mut Vec::new())["op"], "ok");
    let again = json!({"op":"sub","id":103,"channel":"another"});
    assert_eq!(tcp.request(again, &mut Vec::new())["op"], "ok");
    let over = json!({"op":"sub","id":104,"channel":"one-more"});
    assert_eq!(tcp.request(over, &mut Vec::new())["code"], "too_many_subs");
    // Others are not affected.
    let mut other = server.tcp();
    for i in 0..3 {
        other.sub(&format!("room{i}"));
    }
    assert!(server.sum_stats(|s| s.subs_refused) >= 15);
    // `syncd status` names the limit that was hit.
    let status = common::output_text(&server.cli(&["status"]));
    assert!(
        status.contains("limits hit") && status.contains("subs_refused"),
        "{status}"
    );
}

#[test]
fn a_channel_past_max_channels_is_refused_with_too_many_channels() {
    let server = Server::start(2, "[limits]\nmax_channels = 3\n");
    let mut tcp = server.tcp();
    let mut ok = Vec::new();
    let mut refused = 0;
    // Published from one worker to channels owned by both: refusals also
    // cross the worker links with their code.
    for i in 0..40u64 {
        let pubreq = json!({"op":"pub","id":i,"channel":format!("ch{i}"),"data":i});
        let reply = tcp.request(pubreq, &mut Vec::new());
        match reply["op"].as_str() {
            Some("ok") => ok.push(format!("ch{i}")),
            _ => {
                assert_eq!(reply["code"], "too_many_channels", "{reply}");
                let message = reply["message"].as_str().unwrap_or_default();
                assert!(message.contains("limits.max_channels"), "{message}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok.len(), 6, "3 per worker: {ok:?}");
    assert_eq!(refused, 34);
    let status = server.status();
    for w in &status.workers {
        assert_eq!(w.stats.as_ref().map(|s| s.channels_owned), Some(3));
    }
    assert_eq!(server.sum_stats(|s| s.channels_refused), 34);
    // Existing channels go on, over WebSocket too; `set` on a new one and
    // the HTTP API are refused the same way.
    let mut ws = server.ws();
    let again = json!({"op":"pub","id":1,"channel":ok[0],"data":"again"});
    assert_eq!(ws.request(again, &mut Vec::new())["seq"], 2);
    let set = json!({"op":"set","id":2,"channel":"ch-new","key":"k","value":1,"version":0});
    assert_eq!(
        ws.request(set, &mut Vec::new())["code"],
        "too_many_channels"
    );
    let (code, body) = server.http("POST", "/api/publish", r#"{"channel":"ch-http","data":1}"#);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too_many_channels"), "{body}");
    let set_old = json!({"op":"set","id":3,"channel":ok[1],"key":"k","value":1,"version":0});
    assert_eq!(ws.request(set_old, &mut Vec::new())["version"], 1);
}

#[test]
fn past_max_inflight_per_conn_reading_pauses_and_every_request_is_answered() {
    let server = Server::start(
        2,
        "[limits]\nmax_inflight_per_conn = 10\npublish_rate = 0\n",
    );
    const N: u64 = 5000;
    let mut tcp = server.tcp();
    let mut ws = server.ws();
    // Pipelined far past the cap, on channels of both workers.
    let mut batch = String::new();
    for i in 0..N {
        batch += &format!(
            "{{\"op\":\"pub\",\"id\":{i},\"channel\":\"in{}\",\"data\":{i}}}\n",
            i % 8
        );
    }
    tcp.send_bytes(batch.as_bytes());
    for i in 0..1000u64 {
        ws.send(&json!({"op":"pub","id":i,"channel":format!("in{}", i % 8),"data":i}));
    }
    // A bystander on the same workers keeps its round trips meanwhile.
    let mut bystander = server.tcp();
    ping_ok(&mut bystander, 1);
    for (got, n) in [
        (replies(&mut tcp, N as usize), N),
        (replies(&mut ws, 1000), 1000),
    ] {
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for i in 0..n {
            let r = &got[&i];
            assert_eq!(r["op"], "ok", "none refused: {r}");
            // A channel's publishes are answered in order.
            let channel = format!("in{}", i % 8);
            let seq = r["seq"].as_u64().unwrap();
            let last = last_seq.entry(channel).or_default();
            assert!(seq > *last, "{r}");
            *last = seq;
        }
    }
    ping_ok(&mut tcp, N + 1);
    assert!(
        server.sum_stats(|s| s.inflight_pauses) > 0,
        "reading paused at the cap"
    );
}

/// A TCP connection to the tcp port from the local address `from`.
fn tcp_from(from: [u8; 4], port: u16) -> TcpClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = (from, 0).into();
    socket.bind(&local.into()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    TcpClient::from_stream(stream)
}

/// Served (answers a ping) or refused (a too_many_conns_per_ip line, then
/// closed).
fn served(mut c: TcpClient) -> Option<TcpClient> {
    c.send_raw(&json!({"op":"ping","id":1}).to_string());
    let reply = c.recv();
    if reply["op"] == "pong" {
        return Some(c);
    }
    assert_eq!(reply["code"], "too_many_conns_per_ip", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_conns_per_ip"), "{message}");
    assert!(c.closed_by_server(TIMEOUT), "closed after its line");
    None
}

#[test]
fn past_max_conns_per_ip_a_connection_is_refused_and_others_are_not() {
    const WORKERS: usize = 2;
    const CAP: usize = 2;
    let server = Server::start(WORKERS, &format!("[limits]\nmax_conns_per_ip = {CAP}\n"));
    // Connections land on either worker: open until every worker holds its
    // cap, then any further one is refused, whichever worker takes it.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        match served(tcp_from([127, 0, 0, 1], server.tcp_port)) {
            Some(c) => open.push(c),
            None => refused += 1,
        }
        if open.len() == CAP * WORKERS {
            break;
        }
    }
    assert_eq!(open.len(), CAP * WORKERS);
    for _ in 0..3 {
        assert!(served(tcp_from([127, 0, 0, 1], server.tcp_port)).is_none());
        refused += 1;
    }
    // WebSocket: HTTP 429 before any upgrade.
    assert_eq!(common::ws_handshake_status(server.ws_port, "/ws", ""), 429);
    refused += 1;
    let per_worker = server.connections().connections.iter().fold(
        HashMap::new(),
        |mut m: HashMap<usize, usize>, c| {
            *m.entry(c.worker).or_default() += 1;
            m
        },
    );
    assert!(per_worker.values().all(|&n| n <= CAP), "{per_worker:?}");
    // Another address is not affected, and those let in are served.
    let other = served(tcp_from([127, 0, 0, 2], server.tcp_port));
    assert!(other.is_some(), "another address connects");
    for c in &mut open {
        ping_ok(c, 2);
    }
    assert!(server.sum_stats(|s| s.conns_per_ip_refused) >= refused);
    // Closing one makes room again (on the worker that held it).
    drop(open.pop());
    eventually("a freed slot takes a new connection", || {
        served(tcp_from([127, 0, 0, 1], server.tcp_port)).is_some_and(|c| {
            open.push(c);
            true
        })
    });
}

#[test]
fn a_full_store_queue_pauses_publishers_and_every_publish_is_acked() {
    let server = Server::start(2, "[limits]\nstore_queue = 4\npublish_rate = 0\n");
    const PUBLISHERS: u64 = 4;
    const N: u64 = 5000;
    let rss_before = server.sum_stats(|s| s.rss_bytes);
    let pad = "x".repeat(200);
    let mut threads = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = server.tcp();
        let pad = pad.clone();
        threads.push(std::thread::spawn(move || {
            let mut batch = String::new();
            for i in 0..N {
                batch += &format!(
                    "{{\"op\":\"pub\",\"id\":{i},\"channel\":\"flood{}\",\"data\":\"{pad}\"}}\n",
                    (p * N + i) % 16
                );
            }
            c.send_bytes(batch.as_bytes());
            let got = replies(&mut c, N as usize);
            got.values().filter(|r| r["op"] == "ok").count() as u64
        }));
    }
    let mut bystander = server.ws();
    ping_ok(&mut bystander, 1);
    for t in threads {
        assert_eq!(t.join().expect("publisher"), N, "every publish is acked");
    }
    assert_eq!(server.sum_stats(|s| s.stored), PUBLISHERS * N);
    assert!(
        server.sum_stats(|s| s.store_full_pauses) > 0,
        "reading paused while the store queue was full"
    );
    // Bounded: the flood (4 MiB of data) went through a 4-request queue
    // without the workers holding it all.
    let rss_after = server.sum_stats(|s| s.rss_bytes);
    assert!(
        rss_after < rss_before + (64 << 20),
        "rss {rss_before} -> {rss_after}"
    );
    ping_ok(&mut bystander, 2);
}
