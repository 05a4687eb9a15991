//! A resume is served in full or answered `recovered: false` with `oldest`,
//! the oldest `seq` still retained: never a silent gap.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Server, TcpClient};
use serde_json::{json, Value};

#[test]
fn a_resume_past_what_is_retained_names_the_oldest_seq() {
    let server = Server::start(2, "[storage]\nhistory_size = 10\n");
    let mut c = server.tcp();
    let epoch = c.sub("short")["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for n in 0..50 {
        c.request(
            json!({"op":"pub","id":n,"channel":"short","data":n}),
            &mut Vec::new(),
        );
    }
    let mut back = server.tcp();
    for (since, their_epoch) in [(5, epoch.as_str()), (45, "another")] {
        let reply = back.request(
            json!({"op":"sub","id":since,"channel":"short","since":since,"epoch":their_epoch}),
            &mut Vec::new(),
        );
        assert_eq!(
            (
                reply["recovered"].as_bool(),
                reply["seq"].as_u64(),
                reply["oldest"].as_u64()
            ),
            (Some(false), Some(50), Some(41)),
            "only the last 10 are retained: {reply}"
        );
        back.send(&json!({"op":"unsub","id":"u","channel":"short"}));
        assert_eq!(back.recv()["op"], "ok");
    }
}

/// Publishes on `channel` with a few requests in flight until told to stop.
fn publisher(mut c: TcpClient, channel: &'static str, stop: Arc<AtomicBool>) {
    for n in 0..10 {
        c.send(&json!({"op":"pub","channel":channel,"data":n}));
    }
    while !stop.load(Ordering::SeqCst) {
        if c.recv_timeout(common::TIMEOUT).is_none() {
            return;
        }
        c.send(&json!({"op":"pub","channel":channel,"data":"more"}));
    }
}

/// The next `count` messages on `c` must follow `after` with no gap.
fn expect_contiguous(c: &mut TcpClient, after: u64, count: u64, what: &str) {
    for expected in after + 1..=after + count {
        let m = c.recv();
        assert_eq!(m["seq"].as_u64(), Some(expected), "{what}: gap before {m}");
    }
}

/// Messages keep arriving while a resume waits for a disk read; the worker
/// buffers at most `SYNCD_TEST_MAX_SUB_BUFFER` (here 1) of them. When it had
/// to drop some it must not claim `recovered: true`.
#[test]
fn a_resume_whose_buffer_overflows_is_not_recovered_and_names_the_oldest_seq() {
    let mut server = Server::start(2, "[storage]\ncache_bytes = \"1KiB\"\n");
    server.relaunch_with_env(&[("SYNCD_TEST_MAX_SUB_BUFFER", "1")]);
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let (c, stop) = (server.tcp(), stop.clone());
        std::thread::spawn(move || publisher(c, "busy", stop))
    };
    let (mut full, mut not_recovered) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while not_recovered < 2 && Instant::now() < deadline {
        let mut probe = server.tcp();
        let now: Value = probe.sub("busy");
        let (seq, epoch) = (now["seq"].as_u64().unwrap_or(0), now["epoch"].clone());
        drop(probe);
        let since = seq.saturating_sub(50);
        let mut back = server.tcp();
        let reply = back.request(
            json!({"op":"sub","id":"r","channel":"busy","since":since,"epoch":epoch}),
            &mut Vec::new(),
        );
        match reply["recovered"].as_bool() {
            Some(true) => {
                full += 1;
                expect_contiguous(&mut back, since, 60, "recovered: true");
            }
            Some(false) => {
                not_recovered += 1;
                let oldest = reply["oldest"].as_u64();
                assert!(
                    oldest.is_some_and(|o| o >= 1 && o <= since + 1),
                    "`oldest` names what is still retained: {reply}"
                );
                let from = reply["seq"].as_u64().unwrap_or(0);
                assert!(from >= since, "{reply}");
                expect_contiguous(&mut back, from, 10, "live after recovered: false");
            }
            None => panic!("not a resume answer: {reply}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = flooding.join();
    assert!(
        not_recovered >= 1,
        "no resume overflowed its buffer in time ({full} were served in full)"
    );
}
