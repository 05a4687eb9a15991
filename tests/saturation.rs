//! Saturation with backpressure (issue 13 part 4): publishers flooding
//! pipelined publishes past what the subscribers take are slowed down
//! (their connections are not read while the channel is congested), so no
//! subscriber that reads is cut off, no publish is answered `unavailable`,
//! and every acknowledged message reaches every subscriber once, in order;
//! a stalled worker link holds the publishers of the worker queueing to it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{eventually, Client, Server, TcpClient, WsClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WORKERS: usize = 4;
/// Publishes per publisher (one publisher on each worker).
const PER_PUBLISHER: u64 = 2000;
const TOTAL: u64 = PER_PUBLISHER * WORKERS as u64;
/// Subscribers that read all along, half over WebSocket, half over TCP.
const READERS: usize = 16;
/// Long enough for any run: a reader here is never cut off for being slow
/// to start, only for a queue past the hard limit.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The `seq` of a `msg` line, without parsing the whole (1 KiB) line.
fn seq_of(line: &str) -> Option<u64> {
    if !line.contains(r#""op":"msg""#) {
        return None;
    }
    let rest = &line[line.find(r#""seq":"#)? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// A subscriber with a 4 KiB receive buffer, so what it does not read piles
/// up in the server's queue rather than the kernel's.
fn small_socket(port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// Reads `channel` until it has `TOTAL` messages, checking each `seq` is
/// the one after the last; returns how many it got. A reader made with
/// `start` waits for it before reading anything.
fn reader(mut client: Box<dyn Client + Send>, start: Option<Arc<AtomicBool>>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        if let Some(start) = start {
            while !start.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
        let mut last = 0;
        while last < TOTAL {
            let Some(frame) = client.recv_timeout(READ_TIMEOUT) else {
                break;
            };
            if frame["op"] != "msg" {
                continue;
            }
            let seq = frame["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "in order, none missing or twice");
            last = seq;
        }
        last
    })
}

/// The same over a raw TCP socket, cheaper per line than JSON parsing.
fn tcp_reader(stream: TcpStream, start: Option<Arc<AtomicBool>>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        if let Some(start) = start {
            while !start.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut lines = BufReader::new(stream);
        let (mut last, mut line) = (0, String::new());
        while last < TOTAL {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(seq) = seq_of(&line) {
                assert_eq!(seq, last + 1, "in order, none missing or twice: {line}");
                last = seq;
            }
        }
        last
    })
}

/// Sends `PER_PUBLISHER` publishes down `stream` as fast as it takes them
/// (on its own thread), and reads every answer here: the `seq`s acked.
fn flood(stream: TcpStream, channel: &str, who: usize) -> JoinHandle<Vec<u64>> {
    let mut writer = stream.try_clone().unwrap();
    let pad = "x".repeat(1000);
    let channel = channel.to_string();
    std::thread::spawn(move || {
        let sending = std::thread::spawn(move || {
            let mut batch = String::new();
            for i in 0..PER_PUBLISHER {
                batch += &format!(
                    "{{\"op\":\"pub\",\"id\":{i},\"channel\":\"{channel}\",\"data\":{{\"w\":{who},\"pad\":\"{pad}\"}}}}\n"
                );
                if i % 50 == 49 || i == PER_PUBLISHER - 1 {
                    writer
                        .write_all(batch.as_bytes())
                        .expect("the server reads on");
                    batch.clear();
                }
            }
        });
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut answers = BufReader::new(stream);
        let mut acked = Vec::new();
        let mut line = String::new();
        for _ in 0..PER_PUBLISHER {
            line.clear();
            let n = answers.read_line(&mut line).expect("an answer");
            assert!(n > 0, "the server closed a publisher");
            let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(answer["op"], "ok", "every publish is acked: {answer}");
            acked.push(answer["seq"].as_u64().unwrap());
        }
        sending.join().unwrap();
        acked
    })
}

#[test]
fn publishers_past_capacity_are_slowed_down_and_no_reader_is_cut_off() {
    let server = Server::start(
        WORKERS,
        // A small hard limit: a queue the flood is not held back from
        // passes it, and its reader is cut off. A reader over its mark holds
        // the publishers while it reads, or has read within a tenth of
        // send_buffer_soft_for (here 12 s: the lagging readers start well
        // within it).
        "[limits]\nsend_buffer_hard = \"2MiB\"\nsend_buffer_soft = \"1MiB\"\n\
         send_buffer_soft_for = \"120s\"\nmax_inflight_per_conn = 100\n",
    );
    let channel = "flood";
    let mut readers = Vec::new();
    for i in 0..READERS {
        if i % 2 == 0 {
            let mut c = server.ws();
            c.sub(channel);
            readers.push(reader(Box::new(c), None));
        } else {
            let mut c = server.tcp();
            c.sub(channel);
            readers.push(tcp_reader(c.into_stream(), None));
        }
    }
    // Two readers read nothing until the publishers have been held: over
    // their mark, they are the subscribers the flood must wait for.
    let start = Arc::new(AtomicBool::new(false));
    let (ws_port, tcp_port) = (server.ws_port, server.tcp_port);
    let (ws_stream, tcp_stream) = (small_socket(ws_port), small_socket(tcp_port));
    let url = format!("ws://127.0.0.1:{ws_port}/ws");
    let (ws, _) = tungstenite::client(url, ws_stream).expect("handshake");
    let mut lagging_ws = WsClient { ws };
    lagging_ws.sub(channel);
    let mut lagging_tcp = TcpClient::from_stream(tcp_stream);
    lagging_tcp.sub(channel);
    readers.push(reader(Box::new(lagging_ws), Some(start.clone())));
    readers.push(tcp_reader(lagging_tcp.into_stream(), Some(start.clone())));

    // One publisher on each worker: most publish across a worker link to
    // the channel's owner, and are held for subscribers on other workers.
    let publishers = server.clients_on_every_worker(WORKERS, || server.tcp());
    let floods: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(who, p)| flood(p.into_stream(), channel, who))
        .collect();

    eventually("the publishers are held back", || {
        server.sum_stats(|s| s.pressure_holds) > 0
    });
    start.store(true, Ordering::SeqCst);
    for r in &readers {
        r.thread().unpark();
    }

    let mut acked: Vec<u64> = floods
        .into_iter()
        .flat_map(|f| f.join().expect("a publisher"))
        .collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=TOTAL).collect::<Vec<_>>(),
        "each publish acked once"
    );
    for (i, r) in readers.into_iter().enumerate() {
        assert_eq!(r.join().expect("a reader"), TOTAL, "reader {i} got all");
    }
    let stat = |f: fn(&syncd::control::WorkerStats) -> u64| server.sum_stats(f);
    assert_eq!(stat(|s| s.send_failures), 0, "nobody was cut off");
    assert_eq!(
        stat(|s| s.late_replies),
        0,
        "no answer came after a timeout"
    );
    assert_eq!(stat(|s| s.pong_timeouts) + stat(|s| s.idle_timeouts), 0);
    assert_eq!(stat(|s| s.rate_limited), 0);
    assert!(!server.log().contains("slow consumer"), "{}", server.log());
    assert_eq!(server.restarts(), 0);
}

/// The worker-link side: while the owner's queue towards another worker is
/// over its bound (that worker is stopped here, as a stalled one would be),
/// the owner's publishers are held too; once it runs again, everything
/// flows, every publish is acked and its subscriber gets every message.
#[test]
fn a_stalled_worker_link_holds_publishers_until_it_drains() {
    const COUNT: u64 = 12_000;
    let server = Server::start(2, "[storage]\nshards = 16\n[limits]\npublish_rate = 0\n");
    let channel = (0..)
        .map(|i| format!("link-{i}"))
        .find(|c| syncd::sync::shard::owner_of(c, 16, 2) == 0)
        .unwrap();
    // The subscriber on worker 1, the publisher on the owner, worker 0.
    let mut sub = server.clients_on_every_worker(2, || server.tcp()).remove(1);
    sub.sub(&channel);
    let publisher = server.clients_on_every_worker(2, || server.tcp()).remove(0);
    let got = tcp_reader_of(sub.into_stream(), COUNT);
    let stopped = Pid::from_raw(server.worker_pids()[1] as i32);
    kill(stopped, Signal::SIGSTOP).unwrap();
    let stream = publisher.into_stream();
    let mut writer = stream.try_clone().unwrap();
    let pad = "y".repeat(1000);
    let sending = std::thread::spawn(move || {
        for i in 0..COUNT {
            let line = format!(
                "{{\"op\":\"pub\",\"id\":{i},\"channel\":\"{channel}\",\"data\":\"{pad}\"}}\n"
            );
            writer
                .write_all(line.as_bytes())
                .expect("the server reads on");
        }
    });
    let answers = std::thread::spawn(move || {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        for _ in 0..COUNT {
            line.clear();
            assert!(lines.read_line(&mut line).expect("an answer") > 0);
            assert!(
                line.contains(r#""op":"ok""#),
                "every publish is acked: {line}"
            );
        }
    });
    eventually("the owner holds its publisher for its stalled link", || {
        server.sum_stats(|s| s.pressure_holds) > 0
    });
    kill(stopped, Signal::SIGCONT).unwrap();
    sending.join().unwrap();
    answers.join().expect("every publish answered ok");
    assert_eq!(got.join().expect("the subscriber"), COUNT);
    assert_eq!(server.sum_stats(|s| s.send_failures), 0);
    assert_eq!(server.restarts(), 0);
}

/// Reads `count` messages in order on a raw TCP socket.
fn tcp_reader_of(stream: TcpStream, count: u64) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut lines = BufReader::new(stream);
        let (mut last, mut line) = (0, String::new());
        while last < count {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(seq) = seq_of(&line) {
                assert_eq!(seq, last + 1, "in order, none missing or twice");
                last = seq;
            }
        }
        last
    })
}
