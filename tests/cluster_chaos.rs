//! Chaos across two syncd nodes (2 workers each) on one real
//! `redis-server`: backends publish over HTTP to either node with
//! idempotency keys and retry every failure with the same key until it is
//! acknowledged; WebSocket and TCP subscribers of two channels reconnect
//! (to either node) and resume with `since`/`epoch` whenever they lose
//! their connection;
//! meanwhile workers of both nodes are killed with SIGKILL and the nodes
//! reloaded, plainly and gracefully.
//!
//! Counted at the end: every acknowledged publish has one seq, the seqs
//! are 1..=acked with nothing else stored, and every subscriber received
//! each of them exactly once, in order, never `recovered: false`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::brokers::Redis;
use common::Server;
use serde_json::{json, Value};

const CHAOS_FOR: Duration = Duration::from_secs(8);
const PUBLISHERS: usize = 3;
/// Half WebSocket, half TCP, spread over the channels.
const SUBSCRIBERS: usize = 8;
const CHANNELS: [&str; 2] = ["chaos-a", "chaos-b"];

fn node(redis: &Redis, name: &str) -> Server {
    Server::start(
        2,
        &format!(
            "[storage]\nhistory_size = 100000\n[cluster]\nengine = \"redis\"\n\
             redis_url = \"{}\"\nnode = \"{name}\"\n",
            redis.url()
        ),
    )
}

/// One HTTP request on a fresh connection; any failure is an error.
fn post(port: u16, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let raw = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(raw.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    match (status, body) {
        (Some(status), Some(body)) => Ok((status, body)),
        _ => Err(std::io::Error::other(format!("no answer: {out:?}"))),
    }
}

/// Publishes `data` with `key` until it is acknowledged; returns its seq.
fn publish_until_acked(ports: [u16; 2], channel: &str, key: &str, n: usize) -> u64 {
    let body = json!({"channel": channel, "data": {"k": key}, "idempotency_key": key}).to_string();
    let started = Instant::now();
    for attempt in n.. {
        // Each attempt on either node: a retry may reach the other one.
        if let Ok((200, answer)) = post(ports[attempt % 2], &body) {
            let v: Value = serde_json::from_str(&answer).unwrap();
            return v["seq"].as_u64().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{key} never acked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// A subscriber that has not caught up a minute after the publishers
/// stopped reports what it is missing instead of hanging the run.
fn given_up(done: &AtomicBool, since: &mut Option<Instant>) -> bool {
    if !done.load(Ordering::SeqCst) {
        return false;
    }
    since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(60)
}

#[derive(Default)]
struct Received {
    msgs: Vec<(u64, String)>,
    reconnects: usize,
    problems: Vec<String>,
}

/// One subscriber connection, TCP or WebSocket.
enum Link {
    Tcp(BufReader<TcpStream>, TcpStream),
    Ws(Box<tungstenite::WebSocket<TcpStream>>),
}

enum Next {
    Frame(String),
    Idle,
    Closed,
}

impl Link {
    fn open(port: u16, ws: bool) -> Option<Link> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        if ws {
            let url = format!("ws://127.0.0.1:{port}/ws");
            let (ws, _) = tungstenite::client(url, stream).ok()?;
            return Some(Link::Ws(Box::new(ws)));
        }
        let writer = stream.try_clone().ok()?;
        Some(Link::Tcp(BufReader::new(stream), writer))
    }

    fn send(&mut self, text: &str) -> bool {
        match self {
            Link::Tcp(_, w) => w.write_all(format!("{text}\n").as_bytes()).is_ok(),
            Link::Ws(ws) => ws.send(tungstenite::Message::text(text)).is_ok(),
        }
    }

    fn next(&mut self) -> Next {
        let idle = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        match self {
            Link::Tcp(r, _) => {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) => Next::Closed,
                    Ok(_) => Next::Frame(line),
                    Err(e) if idle(&e) => Next::Idle,
                    Err(_) => Next::Closed,
                }
            }
            Link::Ws(ws) => match ws.read() {
                Ok(tungstenite::Message::Text(t)) => Next::Frame(t.to_string()),
                Ok(tungstenite::Message::Close(_)) => Next::Closed,
                Ok(_) => Next::Idle,
                Err(tungstenite::Error::Io(e)) if idle(&e) => Next::Idle,
                Err(_) => Next::Closed,
            },
        }
    }
}

/// A subscriber of `channel` (WebSocket or TCP) that resumes on either
/// node whenever its connection breaks, until it has `target` messages
/// (once publishing has ended).
fn subscriber(
    ports: [u16; 2],
    ws: bool,
    channel: String,
    first: usize,
    done: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
) -> Received {
    let mut got = Received::default();
    let (mut last, mut epoch): (u64, Option<String>) = (0, None);
    let finished = |last: u64| done.load(Ordering::SeqCst) && last >= target.load(Ordering::SeqCst);
    let mut done_since = None;
    for attempt in first.. {
        if finished(last) {
            return got;
        }
        if given_up(&done, &mut done_since) {
            got.problems
                .push(format!("still at seq {last} a minute after the end"));
            return got;
        }
        let Some(mut link) = Link::open(ports[attempt % 2], ws) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        got.reconnects += 1;
        let mut sub = json!({"op":"sub","id":"s","channel":channel});
        if let Some(e) = &epoch {
            sub["since"] = last.into();
            sub["epoch"] = e.as_str().into();
        }
        if !link.send(&sub.to_string()) {
            continue;
        }
        loop {
            let frame = match link.next() {
                Next::Frame(text) => text,
                Next::Idle if finished(last) => return got,
                Next::Idle if given_up(&done, &mut done_since) => {
                    got.problems
                        .push(format!("still at seq {last} a minute after the end"));
                    return got;
                }
                Next::Idle => continue,
                Next::Closed => break,
            };
            let Ok(frame) = serde_json::from_str::<Value>(&frame) else {
                continue;
            };
            match frame["op"].as_str() {
                Some("ok") => {
                    if frame["recovered"] == false {
                        got.problems.push(format!("not recovered: {frame}"));
                    }
                    if epoch.is_some() && frame["epoch"] != epoch.as_deref().unwrap_or_default() {
                        got.problems.push(format!("epoch changed: {frame}"));
                    }
                    epoch = frame["epoch"].as_str().map(str::to_string);
                }
                Some("msg") => {
                    let seq = frame["seq"].as_u64().unwrap_or(0);
                    if seq != last + 1 {
                        got.problems.push(format!("seq {seq} after {last}"));
                    }
                    last = seq;
                    let key = frame["data"]["k"].as_str().unwrap_or("").to_string();
                    got.msgs.push((seq, key));
                }
                // A failed sub (the worker died), or a graceful reload's
                // goodbye: reconnect and resume.
                Some("error") | Some("bye") => break,
                _ => got.problems.push(format!("unexpected {frame}")),
            }
        }
    }
    unreachable!()
}

#[test]
fn chaos_across_two_nodes_every_acked_publish_reaches_every_subscriber_once_in_order() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let ports = [a.ws_port, b.ws_port];
    let tcp = [a.tcp_port, b.tcp_port];
    let done = Arc::new(AtomicBool::new(false));
    let targets: Vec<Arc<AtomicU64>> = CHANNELS
        .iter()
        .map(|_| Arc::new(AtomicU64::new(u64::MAX)))
        .collect();
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let (ws, c) = (i % 2 == 0, (i / 2) % CHANNELS.len());
            let (done, target) = (done.clone(), targets[c].clone());
            let at = if ws { ports } else { tcp };
            let channel = CHANNELS[c].to_string();
            let thread = std::thread::spawn(move || subscriber(at, ws, channel, i, done, target));
            (c, thread)
        })
        .collect();
    // Every subscriber has subscribed before the first publish.
    common::eventually("subscribers in", || {
        a.sum_stats(|w| w.subscriptions as u64) + b.sum_stats(|w| w.subscriptions as u64)
            >= SUBSCRIBERS as u64
    });
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (c, key) = ((p + n) % CHANNELS.len(), format!("p{p}-{n}"));
                    let seq = publish_until_acked(ports, CHANNELS[c], &key, p + n);
                    acked.push((c, seq, key));
                }
                acked
            })
        })
        .collect();
    // Kill -9 a worker of either node, and reload the nodes (plainly and
    // gracefully), again and again.
    let started = Instant::now();
    let (mut kills, mut reloads) = (0, 0);
    for action in 0.. {
        if started.elapsed() >= CHAOS_FOR {
            break;
        }
        // The pause between actions is the workload, not a wait.
        std::thread::sleep(Duration::from_millis(500));
        let server = if action % 2 == 0 { &a } else { &b };
        match action % 6 {
            4 => {
                assert!(server.cli(&["reload"]).status.success());
                reloads += 1;
            }
            5 => {
                assert!(server.cli(&["reload", "-g"]).status.success());
                reloads += 1;
            }
            _ => {
                let pids = server.worker_pids();
                if let Some(&pid) = pids.get(action % pids.len().max(1)) {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    kills += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let all: Vec<(usize, u64, String)> = publishers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let mut acked: Vec<Vec<(u64, String)>> = vec![Vec::new(); CHANNELS.len()];
    for (c, seq, key) in all {
        acked[c].push((seq, key));
    }
    let mut total = 0;
    for (c, acked) in acked.iter_mut().enumerate() {
        acked.sort();
        let n = acked.len() as u64;
        total += n;
        assert!(n > 20, "only {n} publishes acked on {}", CHANNELS[c]);
        assert_eq!(
            acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "one seq per acked publish, nothing else stored"
        );
        let stored = redis.cmd(&["GET", &format!("syncd:{{{}}}:seq", CHANNELS[c])]);
        assert_eq!(stored, n.to_string(), "redis stored no more than was acked");
        targets[c].store(n, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let mut reconnects = 0;
    for (c, s) in subs {
        let got = s.join().unwrap();
        reconnects += got.reconnects - 1;
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert_eq!(got.msgs, acked[c], "every acked publish once, in order");
        let keys: HashSet<&String> = got.msgs.iter().map(|(_, k)| k).collect();
        assert_eq!(keys.len(), acked[c].len());
    }
    println!(
        "chaos across two nodes: {total} publishes acked, {kills} workers killed, \
         {reloads} reloads, {reconnects} subscriber reconnects"
    );
}
