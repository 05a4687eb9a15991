//! Chaos across two syncd nodes (2 workers each) on one real
//! `redis-server`: backends publish over HTTP to either node with
//! idempotency keys and retry every failure with the same key until it is
//! acknowledged; TCP subscribers on both nodes reconnect (to either node)
//! and resume with `since`/`epoch` whenever they lose their connection;
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
const SUBSCRIBERS: usize = 4;
const CHANNEL: &str = "chaos";

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
fn publish_until_acked(ports: [u16; 2], key: &str, n: usize) -> u64 {
    let body = json!({"channel": CHANNEL, "data": {"k": key}, "idempotency_key": key}).to_string();
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

#[derive(Default)]
struct Received {
    msgs: Vec<(u64, String)>,
    reconnects: usize,
    problems: Vec<String>,
}

/// A TCP subscriber that resumes on either node whenever its connection
/// breaks, until it has `target` messages (once publishing has ended).
fn subscriber(
    ports: [u16; 2],
    first: usize,
    done: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
) -> Received {
    let mut got = Received::default();
    let (mut last, mut epoch): (u64, Option<String>) = (0, None);
    for attempt in first.. {
        if done.load(Ordering::SeqCst) && last >= target.load(Ordering::SeqCst) {
            return got;
        }
        let Ok(stream) = TcpStream::connect(("127.0.0.1", ports[attempt % 2])) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        got.reconnects += 1;
        let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
        let mut writer = stream.try_clone().unwrap();
        let mut sub = json!({"op":"sub","id":"s","channel":CHANNEL});
        if let Some(e) = &epoch {
            sub["since"] = last.into();
            sub["epoch"] = e.as_str().into();
        }
        if writer.write_all(format!("{sub}\n").as_bytes()).is_err() {
            continue;
        }
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if done.load(Ordering::SeqCst) && last >= target.load(Ordering::SeqCst) {
                        return got;
                    }
                    continue;
                }
                Err(_) => break,
            }
            let frame: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
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
                    let seq = frame["seq"].as_u64().unwrap();
                    if seq != last + 1 {
                        got.problems.push(format!("seq {seq} after {last}"));
                    }
                    last = seq;
                    got.msgs
                        .push((seq, frame["data"]["k"].as_str().unwrap_or("").to_string()));
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
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let (done, target) = (done.clone(), target.clone());
            std::thread::spawn(move || subscriber(tcp, i, done, target))
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
                    let key = format!("p{p}-{n}");
                    acked.push((publish_until_acked(ports, &key, p + n), key));
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
    let mut acked: Vec<(u64, String)> = publishers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    acked.sort();
    let n = acked.len() as u64;
    assert!(n > 50, "only {n} publishes acked");
    assert_eq!(
        acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "one seq per acked publish, nothing else stored"
    );
    let stored = redis.cmd(&["GET", "syncd:{chaos}:seq"]);
    assert_eq!(stored, n.to_string(), "redis stored no more than was acked");
    target.store(n, Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    let mut reconnects = 0;
    for s in subs {
        let got = s.join().unwrap();
        reconnects += got.reconnects - 1;
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert_eq!(got.msgs, acked, "every acked publish once, in order");
        let keys: HashSet<&String> = got.msgs.iter().map(|(_, k)| k).collect();
        assert_eq!(keys.len() as u64, n);
    }
    println!(
        "chaos across two nodes: {n} publishes acked, {kills} workers killed, \
         {reloads} reloads, {reconnects} subscriber reconnects"
    );
}
