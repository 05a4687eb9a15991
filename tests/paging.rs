//! Replies that never exceed a frame: `history` and `state` come in pages
//! (`limit` clamped to 1000, a byte budget under `max_frame`, `more` and
//! `cursor`), and a resume of 100 000 messages streams in order over
//! WebSocket and TCP at the client's pace, followed by the live messages
//! published meanwhile, each once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::{json, Value};

/// Long enough for 100 000 messages on a busy 2-core machine.
const SLOW: Duration = Duration::from_secs(60);

/// The tests that publish 100 000 messages take the machine; one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `lines` on `conns` TCP connections at once (each under the
/// default `publish_burst`), pipelined with at most `WINDOW` unanswered on
/// each, so no request waits for its owner longer than `request_timeout`.
fn pipeline(server: &Server, lines: Vec<String>, conns: usize) {
    const WINDOW: usize = 1000;
    let per = lines.len().div_ceil(conns);
    let chunks: Vec<Vec<String>> = lines.chunks(per).map(<[String]>::to_vec).collect();
    let port = server.tcp_port;
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_read_timeout(Some(SLOW)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut read_one = || {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    assert!(line.contains("\"op\":\"ok\""), "{line}");
                };
                let mut unanswered = 0;
                for batch in chunk.chunks(100) {
                    writer
                        .write_all((batch.join("\n") + "\n").as_bytes())
                        .unwrap();
                    unanswered += batch.len();
                    while unanswered > WINDOW {
                        read_one();
                        unanswered -= 1;
                    }
                }
                for _ in 0..unanswered {
                    read_one();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn publish_many(server: &Server, channel: &str, n: usize, data: &str) {
    let line = json!({"op":"pub","channel":channel,"data":data}).to_string();
    pipeline(server, vec![line; n], 10);
}

/// `history` pages from `since` 0 with `limit`, following cursors; returns
/// every seq and the size of the largest reply.
fn walk_history(c: &mut dyn Client, channel: &str, limit: u64) -> (Vec<u64>, usize, usize) {
    let (mut since, mut seqs, mut largest, mut pages) = (0, Vec::new(), 0, 0);
    loop {
        let reply = c.request(
            json!({"op":"history","id":"h","channel":channel,"since":since,"limit":limit}),
            &mut Vec::new(),
        );
        assert_eq!(reply["op"], "ok", "{reply}");
        largest = largest.max(reply.to_string().len());
        pages += 1;
        let page = reply["messages"].as_array().unwrap();
        assert!(page.len() <= 1000);
        seqs.extend(page.iter().map(|m| m["seq"].as_u64().unwrap()));
        if reply["more"] != true {
            assert!(reply.get("cursor").is_none(), "{reply}");
            return (seqs, largest, pages);
        }
        since = reply["cursor"].as_u64().unwrap();
        assert_eq!(Some(&since), seqs.last());
    }
}

#[test]
fn history_pages_stop_at_the_byte_budget_and_walk_every_message_once() {
    let _one = heavy();
    let server = Server::start(2, "[storage]\nhistory_size = 2000\n");
    // 2 MiB of history, twice `max_frame`.
    publish_many(&server, "big", 1000, &"x".repeat(2048));
    publish_many(&server, "small", 1200, "1");
    let all: Vec<u64> = (1..=1000).collect();
    for mut c in server.clients_on_every_worker(2, || server.ws()) {
        let (seqs, largest, pages) = walk_history(&mut c, "big", 5000);
        assert_eq!(seqs, all, "every message once, in order");
        assert!(largest < 512 << 10, "a page of {largest} bytes");
        assert!(pages >= 4, "{pages} pages of 2 KiB messages");
        // Above 1000 is clamped, never refused.
        let reply = c.request(
            json!({"op":"history","id":1,"channel":"small","limit":5000}),
            &mut Vec::new(),
        );
        let got = reply["messages"].as_array().map_or(0, Vec::len);
        assert_eq!(
            (got, &reply["more"], &reply["cursor"]),
            (1000, &json!(true), &json!(1000))
        );
        let (seqs, _, pages) = walk_history(&mut c, "small", 1000);
        assert_eq!((seqs.len(), pages), (1200, 2));
    }
    let (status, body) = server.http("GET", "/api/history?channel=big&limit=5000", "");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &body["more"]), (200, &json!(true)));
    assert!(body["messages"].as_array().unwrap().len() < 200);
}

#[test]
fn state_pages_walk_every_key_once() {
    let _one = heavy();
    let server = Server::start(2, "");
    let value = "v".repeat(1024);
    let sets = (0..1500)
        .map(|i| {
            json!({"op":"set","channel":"seats","key":format!("k{i:04}"),"value":value,"version":0})
                .to_string()
        })
        .collect();
    pipeline(&server, sets, 3);
    for mut c in server.clients_on_every_worker(2, || server.tcp()) {
        let first = c.request(
            json!({"op":"state","id":0,"channel":"seats"}),
            &mut Vec::new(),
        );
        assert_eq!(
            first["keys"].as_object().unwrap().len(),
            100,
            "100 by default"
        );
        assert_eq!(
            (&first["more"], &first["cursor"]),
            (&json!(true), &json!("k0099"))
        );
        let (mut keys, mut after, mut largest) = (Vec::new(), Value::Null, 0);
        loop {
            let mut ask = json!({"op":"state","id":1,"channel":"seats","limit":5000});
            if !after.is_null() {
                ask["after"] = after.clone();
            }
            let reply = c.request(ask, &mut Vec::new());
            assert_eq!((&reply["op"], &reply["seq"]), (&json!("ok"), &json!(1500)));
            largest = largest.max(reply.to_string().len());
            keys.extend(reply["keys"].as_object().unwrap().keys().cloned());
            if reply["more"] != true {
                break;
            }
            after = reply["cursor"].clone();
        }
        let expected: Vec<String> = (0..1500).map(|i| format!("k{i:04}")).collect();
        assert_eq!(keys, expected, "every key once, in key order");
        assert!(largest < 512 << 10, "a page of {largest} bytes");
    }
    let (status, body) = server.http("GET", "/api/state?channel=seats&after=k1400&limit=2000", "");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["keys"].as_object().unwrap().len()), (200, 99));
    assert_eq!(body["more"], false);
}

/// What one resuming client saw.
struct Seen {
    reply: Value,
    /// Messages received when the live publishing started.
    at_live: u64,
    took: Duration,
}

/// Resumes `channel` from 0 on `c` and checks that seqs 1..=`total` come
/// exactly once and in order; `got` counts them as they come.
fn resume_and_count<C: Client + Send + 'static>(
    mut c: C,
    channel: &'static str,
    total: u64,
    replied: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    live_started: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let start = Instant::now();
        c.send(&json!({"op":"sub","id":"r","channel":channel,"since":0}));
        let reply = c.recv_timeout(SLOW).expect("the sub reply");
        replied.fetch_add(1, Ordering::SeqCst);
        let mut at_live = None;
        let mut last = 0;
        while last < total {
            let m = c
                .recv_timeout(SLOW)
                .unwrap_or_else(|| panic!("stalled after seq {last}"));
            assert_eq!(m["op"], "msg", "{m}");
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "in order, none missing, none twice");
            last = seq;
            got.store(seq, Ordering::SeqCst);
            if at_live.is_none() && live_started.load(Ordering::SeqCst) == 1 {
                at_live = Some(seq);
            }
        }
        // Nothing more: no duplicate of a live message after the last.
        if let Some(extra) = c.recv_timeout(Duration::from_millis(300)) {
            panic!("after the last message: {extra}");
        }
        Seen {
            reply,
            at_live: at_live.unwrap_or(total),
            took: start.elapsed(),
        }
    })
}

/// 100 000 retained messages, a resume from 0 on a client on each of 2
/// workers (one owns the channel, one does not), and 500 live messages
/// published while the replays run.
fn resume_100k<C: Client + Send + 'static>(open: impl Fn(&Server) -> C, channel: &'static str) {
    let _one = heavy();
    const STORED: u64 = 100_000;
    const LIVE: u64 = 500;
    let server = Server::start(2, "[storage]\nhistory_size = 200000\n");
    let started = Instant::now();
    publish_many(&server, channel, STORED as usize, "m");
    println!("published {STORED} in {:?}", started.elapsed());
    let clients = server.clients_on_every_worker(2, || open(&server));
    let replied = Arc::new(AtomicU64::new(0));
    let live_started = Arc::new(AtomicU64::new(0));
    let counters: Vec<Arc<AtomicU64>> = clients.iter().map(|_| Arc::default()).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .zip(&counters)
        .map(|(c, got)| {
            let (replied, got, live) = (replied.clone(), got.clone(), live_started.clone());
            resume_and_count(c, channel, STORED + LIVE, replied, got, live)
        })
        .collect();
    common::eventually("every resume answered", || {
        replied.load(Ordering::SeqCst) == 2
    });
    live_started.store(1, Ordering::SeqCst);
    let live = json!({"op":"pub","channel":channel,"data":"live"}).to_string();
    pipeline(&server, vec![live; LIVE as usize], 1);
    for (i, reader) in readers.into_iter().enumerate() {
        let seen = reader
            .join()
            .unwrap_or_else(|_| panic!("reader {i} failed"));
        assert_eq!(seen.reply["op"], "ok", "{}", seen.reply);
        assert_eq!(
            (&seen.reply["seq"], &seen.reply["recovered"]),
            (&json!(STORED), &json!(true))
        );
        println!(
            "client on worker {i}: {} messages in {:?}; {} had come when publishing live ones began",
            STORED + LIVE,
            seen.took,
            seen.at_live
        );
    }
    let cut = server.sum_stats(|s| s.send_failures);
    assert_eq!(cut, 0, "nobody cut off");
}

#[test]
fn a_resume_of_100k_messages_streams_over_websocket() {
    resume_100k(|s| s.ws(), "resume-ws");
}

#[test]
fn a_resume_of_100k_messages_streams_over_tcp() {
    resume_100k(|s| s.tcp(), "resume-tcp");
}
