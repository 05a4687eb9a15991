//! Durable channels: what was acknowledged survives `kill -9`, `seq` never
//! repeats or skips, and a resume replays exactly what was missed.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Client, Server, TcpClient, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use syncd::sync::shard::owner_of;

/// Every retained message of `channel`, read with `history` pages.
fn full_history(c: &mut dyn Client, channel: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let since = all.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        let reply = c.request(
            json!({"op":"history","id":"h","channel":channel,"since":since,"limit":1000}),
            &mut Vec::new(),
        );
        assert_eq!(reply["op"], "ok", "{reply}");
        let page = reply["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Publishes `{"p":p,"n":n}` one at a time until told to stop or the
/// connection dies; returns what was acknowledged, as `(p, n) -> seq`.
fn publisher(
    mut c: TcpClient,
    p: usize,
    channel: &'static str,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> HashMap<(usize, u64), u64> {
    let mut acked = HashMap::new();
    // Bounded by time, not attempts: while the owner is down every attempt
    // fails fast, and the publisher must still be there when it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        c.send(&json!({"op":"pub","id":n,"channel":channel,"data":{"p":p,"n":n}}));
        match c.recv_timeout(TIMEOUT) {
            Some(r) if r["op"] == "ok" => {
                acked.insert((p, n), r["seq"].as_u64().unwrap());
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Some(r) => {
                assert_eq!(r["code"], "unavailable", "{r}");
                std::thread::sleep(Duration::from_millis(5));
            }
            None => break,
        }
    }
    acked
}

/// The history holds every acknowledged message at its acknowledged `seq`,
/// `seq` runs 1..=N with no hole, and no message appears twice.
fn check_history(server: &Server, channel: &str, acked: &HashMap<(usize, u64), u64>) {
    let mut c = server.tcp();
    let history = full_history(&mut c, channel);
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq has a hole"
    );
    let mut seen = HashSet::new();
    let mut at = HashMap::new();
    for m in &history {
        let key = (
            m["data"]["p"].as_u64().unwrap() as usize,
            m["data"]["n"].as_u64().unwrap(),
        );
        assert!(seen.insert(key), "message {key:?} stored twice");
        at.insert(key, m["seq"].as_u64().unwrap());
    }
    for (key, seq) in acked {
        assert_eq!(
            at.get(key),
            Some(seq),
            "acknowledged message {key:?} lost or moved"
        );
    }
    assert!(
        acked.len() > 100,
        "the flood acknowledged only {} messages",
        acked.len()
    );
}

fn flood_and_kill(server: &mut Server, kill_everything: bool) -> HashMap<(usize, u64), u64> {
    const CHANNEL: &str = "flood";
    let publishers = server.clients_on_every_worker(2, || server.tcp());
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, c)| {
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || publisher(c, p, CHANNEL, stop, acks))
        })
        .collect();
    eventually("the flood is under way", || {
        acks.load(Ordering::SeqCst) > 300
    });
    if kill_everything {
        server.stop_now();
    } else {
        let owner = owner_of(CHANNEL, 16, 2);
        let pid = server.status().workers[owner].pid.unwrap();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let before = acks.load(Ordering::SeqCst);
        eventually("publishing goes on after the respawn", || {
            acks.load(Ordering::SeqCst) > before + 200
        });
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked = HashMap::new();
    for t in threads {
        acked.extend(t.join().unwrap());
    }
    acked
}

#[test]
fn acknowledged_publishes_survive_kill_9_of_the_owner_worker() {
    let mut server = Server::start(2, "");
    let acked = flood_and_kill(&mut server, false);
    check_history(&server, "flood", &acked);
}

#[test]
fn acknowledged_publishes_survive_kill_9_of_everything_and_seq_goes_on() {
    let mut server = Server::start(2, "");
    let acked = flood_and_kill(&mut server, true);
    server.launch();
    check_history(&server, "flood", &acked);
    let mut c = server.tcp();
    let last = full_history(&mut c, "flood").len() as u64;
    let reply = c.request(
        json!({"op":"pub","id":1,"channel":"flood","data":"after"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["seq"], last + 1, "seq continues after the restart");
}

#[test]
fn resume_works_across_kill_9_and_syncd_restart() {
    let mut server = Server::start(2, "");
    let mut c = server.tcp();
    let epoch = c.sub("news")["epoch"].as_str().unwrap().to_string();
    let mut early = Vec::new();
    for n in 0..30 {
        c.request(
            json!({"op":"pub","id":n,"channel":"news","data":n}),
            &mut early,
        );
    }
    let resume = |server: &Server, since: u64, upto: u64| {
        let mut back = server.tcp();
        let reply = back.request(
            json!({"op":"sub","id":"r","channel":"news","since":since,"epoch":epoch}),
            &mut Vec::new(),
        );
        assert_eq!(reply["recovered"], true, "{reply}");
        let seqs: Vec<u64> = (since + 1..=upto)
            .map(|_| back.recv()["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (since + 1..=upto).collect::<Vec<_>>());
        back
    };
    server.stop_now();
    server.launch();
    let mut back = resume(&server, 10, 30);
    let mut early = Vec::new();
    back.request(
        json!({"op":"pub","id":1,"channel":"news","data":"x"}),
        &mut early,
    );
    // `syncd restart -d` stops this server and starts a daemon in its place.
    let out = server.cli(&["restart", "-d"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    server.wait_exit();
    server.wait_serving();
    resume(&server, 25, 31);
    assert!(server.cli(&["stop"]).status.success());
}

/// A subscriber drops, publishing goes on from another worker, and it comes
/// back with `since`: it gets exactly the missed messages, then live ones.
fn resume_is_exact(server: &Server) {
    const CHANNEL: &str = "resume";
    let mut clients = server.clients_on_every_worker(2, || server.tcp());
    let mut publisher = clients.pop().unwrap();
    let mut sub = clients.pop().unwrap();
    let reply = sub.sub(CHANNEL);
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    for n in 0..20 {
        publisher.send(&json!({"op":"pub","channel":CHANNEL,"data":n}));
    }
    for _ in 0..20 {
        assert_eq!(publisher.recv()["op"], "ok");
    }
    let mut last = 0;
    for _ in 0..10 {
        last = sub.recv()["seq"].as_u64().unwrap();
    }
    drop(sub);
    // Publishing continues before, during and after the resume.
    let total = 1_500u64;
    let pub_thread = std::thread::spawn(move || {
        for n in 20..total {
            publisher.send(&json!({"op":"pub","channel":CHANNEL,"data":n}));
            if n % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for _ in 20..total {
            assert_eq!(publisher.recv()["op"], "ok");
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let mut back = server.tcp();
    back.send(&json!({"op":"sub","id":"r","channel":CHANNEL,"since":last,"epoch":epoch}));
    let reply = back.recv();
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut seqs = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while seqs.last().copied().unwrap_or(last) < total {
        assert!(Instant::now() < deadline, "stuck at {:?}", seqs.last());
        let m = back.recv();
        assert_eq!(m["op"], "msg", "{m}");
        seqs.push(m["seq"].as_u64().unwrap());
    }
    pub_thread.join().unwrap();
    assert_eq!(
        seqs,
        (last + 1..=total).collect::<Vec<_>>(),
        "gap or duplicate in the resume"
    );
    assert!(back.recv_timeout(Duration::from_millis(200)).is_none());
}

#[test]
fn resume_from_the_cache_under_concurrent_publishing_is_exact() {
    let server = Server::start(2, "");
    resume_is_exact(&server);
    assert_eq!(
        server.sum_stats(|s| s.disk_reads),
        0,
        "served from the cache"
    );
}

#[test]
fn resume_beyond_the_cache_is_served_from_sqlite() {
    let server = Server::start(2, "[storage]\ncache_bytes = \"1KiB\"\n");
    resume_is_exact(&server);
    assert!(server.sum_stats(|s| s.disk_reads) > 0, "read from disk");
}

#[test]
fn resume_past_history_size_or_with_another_epoch_is_not_recovered() {
    let server = Server::start(2, "[storage]\nhistory_size = 10\n");
    let mut c = server.tcp();
    let epoch = c.sub("short")["epoch"].as_str().unwrap().to_string();
    for n in 0..50 {
        c.request(
            json!({"op":"pub","id":n,"channel":"short","data":n}),
            &mut Vec::new(),
        );
    }
    let mut back = server.tcp();
    let reply = back.request(
        json!({"op":"sub","id":1,"channel":"short","since":5,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(
        (reply["recovered"].as_bool(), reply["seq"].as_u64()),
        (Some(false), Some(50)),
        "{reply}"
    );
    assert!(
        back.recv_timeout(Duration::from_millis(200)).is_none(),
        "no partial replay"
    );
    let reply = back.request(
        json!({"op":"sub","id":2,"channel":"other","since":0,"epoch":"nope"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], false);
    let reply = c.request(
        json!({"op":"sub","id":3,"channel":"x","since":0}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], true, "nothing was missed");
    // Only the last 10 are kept; trimming deletes the rest from disk.
    assert_eq!(full_history(&mut back, "short").len(), 10);
    eventually("old rows trimmed", || server.sum_stats(|s| s.trimmed) >= 40);
}

#[test]
fn expired_messages_are_never_delivered_or_replayed() {
    let server = Server::start(2, "[storage]\ncache_bytes = \"1KiB\"\n");
    let mut c = server.tcp();
    let epoch = c.sub("ttl")["epoch"].as_str().unwrap().to_string();
    let mut early = Vec::new();
    c.request(
        json!({"op":"pub","id":1,"channel":"ttl","data":"short","ttl":1}),
        &mut early,
    );
    let (status, body) = server.http(
        "POST",
        "/api/publish",
        r#"{"channel":"ttl","data":"long","ttl":60}"#,
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(1300));
    let history = full_history(&mut c, "ttl");
    assert_eq!(
        history
            .iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>(),
        vec![json!("long")]
    );
    let (status, body) = server.http("GET", "/api/history?channel=ttl&since=0", "");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
    let mut back = server.tcp();
    let reply = back.request(
        json!({"op":"sub","id":1,"channel":"ttl","since":0,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(
        reply["recovered"], false,
        "the expired message is a hole: {reply}"
    );
    eventually("the sweeper deleted it", || {
        server.sum_stats(|s| s.expired) >= 1
    });
}

#[test]
fn changing_the_worker_count_loses_nothing() {
    let mut server = Server::start(2, "");
    let channels: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    let mut c = server.tcp();
    for (i, ch) in channels.iter().enumerate() {
        for n in 0..=i {
            c.request(
                json!({"op":"pub","id":n,"channel":ch,"data":n}),
                &mut Vec::new(),
            );
        }
    }
    drop(c);
    assert!(server.cli(&["stop"]).status.success());
    server.wait_exit();
    let config = std::fs::read_to_string(&server.config)
        .unwrap()
        .replace("workers = 2", "workers = 3");
    std::fs::write(&server.config, config).unwrap();
    server.launch();
    assert_eq!(server.status().workers.len(), 3);
    let mut c = server.tcp();
    for (i, ch) in channels.iter().enumerate() {
        let history = full_history(&mut c, ch);
        assert_eq!(history.len(), i + 1, "{ch}");
        let reply = c.request(
            json!({"op":"pub","id":"x","channel":ch,"data":"new"}),
            &mut Vec::new(),
        );
        assert_eq!(reply["seq"], i as u64 + 2, "{ch} continues its seq");
    }
}

#[test]
fn a_bad_data_dir_is_a_clear_start_up_error() {
    let mut server = Server::start(1, "");
    server.stop_now();
    std::fs::write(
        server.path("data/shard-03.db"),
        b"this is not a database, just junk bytes....",
    )
    .unwrap();
    let out = server.cli(&["start"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("shard-03.db") && !text.contains("panicked"),
        "{text}"
    );

    let config = std::fs::read_to_string(&server.config)
        .unwrap()
        .replace("data_dir = \"data\"", "data_dir = \"afile\"");
    std::fs::write(&server.config, config).unwrap();
    std::fs::write(server.path("afile"), b"x").unwrap();
    let out = server.cli(&["start"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("data directory") && !text.contains("panicked"),
        "{text}"
    );
}

#[test]
fn backup_copies_a_consistent_snapshot_while_running() {
    let server = Server::start(2, "");
    let mut c = server.tcp();
    for n in 0..200 {
        c.send(&json!({"op":"pub","channel":format!("b{}", n % 7),"data":n}));
    }
    for _ in 0..200 {
        assert_eq!(c.recv()["op"], "ok");
    }
    let target = server.path("backup");
    let out = server.cli(&["backup", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let mut total = 0i64;
    for shard in 0..16 {
        let db = rusqlite::Connection::open(target.join(format!("shard-{shard:02}.db"))).unwrap();
        total += db
            .query_row("SELECT coalesce(sum(count), 0) FROM segments", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
    }
    assert_eq!(total, 200);
    let again = server.cli(&["backup", target.to_str().unwrap()]);
    assert!(!again.status.success(), "refuses to overwrite a backup");
}

#[test]
fn memory_durability_starts_new_epochs_after_a_crash_and_fsync_mode_stores() {
    let mut server = Server::start(2, "[storage]\ndurability = \"memory\"\n");
    let mut c = server.tcp();
    let before = c.sub("m")["epoch"].clone();
    c.request(
        json!({"op":"pub","id":1,"channel":"m","data":1}),
        &mut Vec::new(),
    );
    eventually("the message is written", || {
        server.sum_stats(|s| s.stored) >= 1
    });
    server.stop_now();
    server.launch();
    let after = server.tcp().sub("m")["epoch"].clone();
    assert_ne!(
        before, after,
        "a crash in memory mode may have lost messages: new epoch"
    );
    // A clean stop keeps the epoch.
    assert!(server.cli(&["stop"]).status.success());
    server.wait_exit();
    server.launch();
    assert_eq!(server.tcp().sub("m")["epoch"], after);

    let fsync = Server::start(2, "[storage]\ndurability = \"fsync\"\n");
    let mut c = fsync.tcp();
    for n in 0..20 {
        c.request(
            json!({"op":"pub","id":n,"channel":"f","data":n}),
            &mut Vec::new(),
        );
    }
    assert_eq!(full_history(&mut c, "f").len(), 20);
}

#[test]
fn a_resume_larger_than_the_send_buffer_streams_through() {
    let server = Server::start(
        2,
        "[limits]\nmax_send_buffer = \"16KiB\"\n[storage]\ncache_bytes = \"1KiB\"\n",
    );
    resume_is_exact(&server);
    assert_eq!(server.sum_stats(|s| s.send_failures), 0);
}

#[test]
fn retention_overrides_by_channel_prefix() {
    let server = Server::start(
        2,
        "[storage]\nhistory_size = 50\n[[storage.retention]]\nprefix = \"short-\"\nhistory_size = 5\n",
    );
    let mut c = server.tcp();
    let epoch = c.sub("short-a")["epoch"].as_str().unwrap().to_string();
    for n in 0..20 {
        c.send(&json!({"op":"pub","channel":"short-a","data":n}));
        c.send(&json!({"op":"pub","channel":"long-a","data":n}));
    }
    let mut acks = 0;
    while acks < 40 {
        if c.recv()["op"] == "ok" {
            acks += 1;
        }
    }
    let mut other = server.tcp();
    assert_eq!(full_history(&mut other, "short-a").len(), 5);
    assert_eq!(full_history(&mut other, "long-a").len(), 20);
    let reply = other.request(
        json!({"op":"sub","id":1,"channel":"short-a","since":10,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], false, "{reply}");
    let reply = server.tcp().request(
        json!({"op":"sub","id":2,"channel":"short-a","since":16,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], true, "{reply}");
    eventually("the short channel is trimmed on disk", || {
        server.sum_stats(|s| s.trimmed) >= 15
    });
}
