//! Heartbeats and timeouts: WebSocket pings, `{"op":"ping"}` lines on TCP
//! with `tcp_ping`, and `idle_timeout`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Client, Server, TcpClient, TIMEOUT};
use serde_json::{json, Value};

const FAST: &str = "[limits]\nping_interval = \"200ms\"\npong_timeout = \"200ms\"\n";

/// Reads until `n` WebSocket pings came (tungstenite answers each).
fn read_pings(c: &mut common::WsClient, n: usize) {
    c.ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut pings = 0;
    while pings < n {
        assert!(Instant::now() < deadline, "only {pings} pings came");
        match c.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("connection lost after {pings} pings: {e}"),
        }
    }
}

/// A WebSocket client that keeps reading (so tungstenite answers its pings)
/// on its own thread; counts the pings until `stop`.
fn answering_ws(server: &Server) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let mut c = server.ws();
    let pings = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count, done) = (pings.clone(), stop.clone());
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            read_pings(&mut c, 1);
            count.fetch_add(1, Ordering::SeqCst);
        }
        let _ = c.request(json!({"op":"ping","id":1}), &mut Vec::new());
    });
    (pings, stop)
}

#[test]
fn a_dead_websocket_peer_is_closed_within_ping_interval_and_pong_timeout() {
    let server = Server::start(2, FAST);
    let (live_pings, stop) = answering_ws(&server);
    // Connected, then never reads again: its pings go unanswered.
    let mut dead = server.ws();
    let opened = Instant::now();
    eventually("the dead peer's pong timed out", || {
        server.sum_stats(|s| s.pong_timeouts) == 1
    });
    let took = opened.elapsed();
    // 200 ms + 200 ms, plus the 100 ms sweep and the test's own polling.
    assert!(took < Duration::from_millis(1500), "closed after {took:?}");
    // It was told why.
    assert_eq!(dead.close_code(TIMEOUT), Some(1011));
    // A peer that answers stays.
    let seen = live_pings.load(Ordering::SeqCst);
    eventually("the live peer answered three more pings", || {
        live_pings.load(Ordering::SeqCst) >= seen + 3
    });
    stop.store(true, Ordering::SeqCst);
    assert_eq!(server.sum_stats(|s| s.pong_timeouts), 1);
}

#[test]
fn tcp_clients_get_ping_lines_only_with_tcp_ping() {
    let server = Server::start(2, &format!("{FAST}tcp_ping = true\n"));
    let mut answering = server.tcp();
    let mut silent = server.tcp();
    let mut pings = 0;
    while pings < 3 {
        let line = answering.recv();
        assert_eq!(line, json!({"op":"ping"}));
        answering.send_raw(r#"{"op":"pong"}"#);
        pings += 1;
    }
    // The silent one got a ping, then its last line.
    assert_eq!(silent.recv(), json!({"op":"ping"}));
    let last = silent.recv();
    assert_eq!(last["code"], "pong_timeout", "{last}");
    assert!(silent.closed_by_server(TIMEOUT));
    assert_eq!(server.sum_stats(|s| s.pong_timeouts), 1);
    // A pong is never answered or counted as a request.
    let reply = answering.request(json!({"op":"ping","id":"x"}), &mut Vec::new());
    assert_eq!(reply["op"], "pong");
}

#[test]
fn tcp_clients_get_no_pings_by_default() {
    let server = Server::start(2, FAST);
    let mut tcp = server.tcp();
    let (ws_pings, stop) = answering_ws(&server);
    // By the time a WebSocket client has had three pings, a TCP client
    // would have had its first one.
    eventually("the WebSocket client had pings", || {
        ws_pings.load(Ordering::SeqCst) >= 3
    });
    assert_eq!(tcp.recv_timeout(Duration::from_millis(100)), None);
    assert_eq!(
        tcp.request(json!({"op":"ping","id":2}), &mut Vec::new())["op"],
        "pong"
    );
    stop.store(true, Ordering::SeqCst);
    assert_eq!(server.sum_stats(|s| s.pong_timeouts), 0);
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let server = Server::start(
        2,
        "[limits]\nping_interval = \"off\"\nidle_timeout = \"300ms\"\n",
    );
    let mut tcp = server.tcp();
    let mut ws = server.ws();
    let last: Value = tcp.recv();
    assert_eq!(last["code"], "idle_timeout", "{last}");
    assert!(tcp.closed_by_server(TIMEOUT));
    assert_eq!(ws.close_code(TIMEOUT), Some(1000));
    assert_eq!(server.sum_stats(|s| s.idle_timeouts), 2);
    // A client that keeps talking stays.
    let mut busy = TcpClient::connect(server.tcp_port);
    for n in 0..8 {
        let reply = busy.request(json!({"op":"ping","id":n}), &mut Vec::new());
        assert_eq!(reply["op"], "pong");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.sum_stats(|s| s.idle_timeouts), 2);
}

/// The kernel's view of the server side of `client`'s connection: its
/// `tr:tm->when` field in /proc/net/tcp (timer kind, clock ticks left).
fn server_side_timer(server_port: u16, client: std::net::SocketAddr) -> Option<(u32, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{:04X}", client.port());
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (kind, when) = f.get(5)?.split_once(':')?;
        Some((
            u32::from_str_radix(kind, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

#[test]
fn accepted_sockets_have_keepalive_on() {
    let server = Server::start(2, "");
    let ws = server.ws();
    let tcp = server.tcp();
    for (port, client) in [
        (server.ws_port, ws.local_addr()),
        (server.tcp_port, tcp.local_addr()),
    ] {
        // Timer kind 2 with a long way to go (the kernel's keepalive time,
        // 2 hours by default; clock ticks are 1/100 s) is the keepalive
        // timer; without SO_KEEPALIVE an idle socket has no timer.
        eventually("the server side shows its keepalive timer", || {
            server_side_timer(port, client).is_some_and(|(kind, when)| kind == 2 && when > 6000)
        });
    }
}
