//! Chaos: for about 20 s, backends publish over HTTP with idempotency keys and
//! retry every failure with the same key until it is acknowledged; WebSocket
//! and TCP subscribers reconnect and resume with `since`/`epoch` whenever they
//! lose their connection; meanwhile workers are killed with SIGKILL and the
//! server is reloaded, plainly and gracefully, at random moments.
//!
//! At the end every acknowledged publish has been received exactly once, in
//! order, by every subscriber, and nothing else was stored or received.
//!
//! The seed comes from `SYNCD_CHAOS_SEED` (decimal or `0x…`) or from the
//! clock, and is printed: `SYNCD_CHAOS_SEED=… cargo test --test chaos --
//! --nocapture` replays the same choices (the timing, of course, differs).

mod chaos_support;
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use syncd::sync::shard::owner_of;

use chaos_support::publisher::{publisher, PublisherReport};
use chaos_support::subscriber::{subscriber, Progress, SubscriberReport};
use chaos_support::{seed, Rng, Shared};

const WORKERS: usize = 3;
/// How long the chaos lasts, and at most how many things it does.
const CHAOS_FOR: Duration = Duration::from_secs(20);
const MAX_ACTIONS: usize = 80;
const PUBLISHERS: usize = 4;
const WS_SUBSCRIBERS: usize = 3;
const TCP_SUBSCRIBERS: usize = 3;
/// Bounds for the waits at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

// --------------------------------------------------------------------- chaos

#[derive(Default, Debug)]
struct ChaosReport {
    kills: u64,
    reloads: u64,
    graceful_reloads: u64,
    reload_failures: Vec<String>,
}

fn chaos(server: &Server, shared: &Shared, seed: u64) -> ChaosReport {
    let mut rng = Rng::new(seed);
    let mut report = ChaosReport::default();
    let until = Instant::now() + CHAOS_FOR;
    for _ in 0..MAX_ACTIONS {
        // The pause between actions is the workload, not a wait.
        let pause = Duration::from_millis(150 + rng.below(1000));
        if Instant::now() + pause >= until {
            break;
        }
        std::thread::sleep(pause);
        match rng.below(4) {
            0 | 1 => {
                let slot = rng.below(WORKERS as u64) as usize;
                let pid = server
                    .try_status()
                    .ok()
                    .and_then(|s| s.workers.get(slot).and_then(|w| w.pid));
                match pid {
                    Some(pid) => {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        report.kills += 1;
                        shared.event(format!("SIGKILL worker {slot} (pid {pid})"));
                    }
                    None => shared.event(format!("worker {slot} has no pid; no kill")),
                }
            }
            action => {
                let graceful = action == 3;
                let args: &[&str] = if graceful {
                    &["reload", "-g"]
                } else {
                    &["reload"]
                };
                shared.event(format!("{} begins", args.join(" ")));
                let started = Instant::now();
                let out = server.cli(args);
                let text = common::output_text(&out);
                shared.event(format!(
                    "{} done in {:?}: {}",
                    args.join(" "),
                    started.elapsed(),
                    text.trim()
                ));
                if out.status.success() {
                    if graceful {
                        report.graceful_reloads += 1;
                    } else {
                        report.reloads += 1;
                    }
                } else {
                    report
                        .reload_failures
                        .push(format!("{}: {}", args.join(" "), text.trim()));
                }
            }
        }
    }
    report
}

/// Channel names whose owners cover every worker, so publishes, resumes and
/// deliveries cross worker links both ways.
fn channels() -> Vec<String> {
    let mut picked: Vec<String> = Vec::new();
    let mut owners = HashSet::new();
    for i in 0.. {
        let name = format!("chaos-{i}");
        let owner = owner_of(&name, 16, WORKERS);
        if owners.insert(owner) || picked.len() < WORKERS + 1 && owners.len() == WORKERS {
            picked.push(name);
        }
        if owners.len() == WORKERS && picked.len() > WORKERS {
            return picked;
        }
    }
    unreachable!()
}

/// Every retained message of `channel`, through `GET /api/history`.
fn history(server: &Server, channel: &str) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = Vec::new();
    loop {
        let since = all.last().map_or(0, |m| m.0);
        let (status, body) = server.http(
            "GET",
            &format!("/api/history?channel={channel}&since={since}&limit=1000"),
            "",
        );
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let page = body["messages"].as_array().unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page.iter().map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["data"]["k"].as_str().unwrap_or("?").to_string(),
            )
        }));
    }
}

/// The last `n` lines of the server's log (it runs in the foreground,
/// logging to the test's `out.log`).
fn log_tail(server: &Server, n: usize) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The whole chaos run; `repair`: see `Shared::repair`.
fn run_chaos(repair: bool) {
    let seed = seed();
    println!("chaos seed: {seed} (replay with SYNCD_CHAOS_SEED={seed}), gap repair {repair}");
    let started = Instant::now();
    // A resume must never be cut short by retention here: the whole run
    // fits in the history. Graceful reloads are bounded by stop_timeout.
    let server = Server::start(
        WORKERS,
        "[storage]\nhistory_size = 1000000\n[limits]\nstop_timeout = \"5s\"\n",
    );
    let channels = channels();
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        addr: ([127, 0, 0, 1], server.ws_port).into(),
        tcp_port: server.tcp_port,
        channels: channels.clone(),
        stop_publishing: AtomicBool::new(false),
        stop_subscribers: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
        repair,
        events: Mutex::new(Vec::new()),
    });
    let subscribers = WS_SUBSCRIBERS + TCP_SUBSCRIBERS;
    let progress = Arc::new(Progress {
        last: (0..subscribers)
            .map(|_| (0..channels.len()).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        ready: AtomicUsize::new(0),
    });
    let sub_threads: Vec<_> = (0..subscribers)
        .map(|i| {
            let (shared, progress) = (shared.clone(), progress.clone());
            std::thread::spawn(move || subscriber(shared, progress, i, i < WS_SUBSCRIBERS))
        })
        .collect();
    common::eventually("every subscriber subscribed", || {
        progress.ready.load(Ordering::SeqCst) == subscribers
    });
    let pub_threads: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let shared = shared.clone();
            std::thread::spawn(move || publisher(shared, p, seed))
        })
        .collect();

    let chaos = chaos(&server, &shared, seed);

    // Calm again: every worker serves, then the publishers finish what they
    // started (each retries until acknowledged, bounded by PUBLISH_GIVE_UP).
    server.wait_serving();
    shared.event("chaos over, every worker serving".into());
    shared.stop_publishing.store(true, Ordering::SeqCst);
    let publishers: Vec<PublisherReport> =
        pub_threads.into_iter().map(|t| t.join().unwrap()).collect();
    shared.event("publishers done".into());

    let mut acked: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); channels.len()];
    let mut acked_keys = HashSet::new();
    let mut seq_clash = Vec::new();
    for (ch, seq, key) in publishers.iter().flat_map(|p| p.acked.iter()) {
        acked_keys.insert(key.clone());
        if let Some(other) = acked[*ch].insert(*seq, key.clone()) {
            seq_clash.push(format!("{}#{seq}: {other} and {key}", channels[*ch]));
        }
    }
    let target: Vec<u64> = acked
        .iter()
        .map(|m| m.keys().next_back().copied().unwrap_or(0))
        .collect();

    // Every subscriber catches up to the last acknowledged seq of each
    // channel (bounded); then they stop.
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    let caught_up = || {
        progress.last.iter().all(|per| {
            per.iter()
                .zip(&target)
                .all(|(l, t)| l.load(Ordering::SeqCst) >= *t)
        })
    };
    while !caught_up() && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    let drained = caught_up();
    shared.event(format!("subscribers caught up: {drained}"));
    shared.stop_subscribers.store(true, Ordering::SeqCst);
    let subs: Vec<SubscriberReport> = sub_threads.into_iter().map(|t| t.join().unwrap()).collect();

    // ------------------------------------------------------------ report
    let retries: BTreeMap<String, u64> = publishers.iter().flat_map(|p| p.retries.iter()).fold(
        BTreeMap::new(),
        |mut all, (k, v)| {
            *all.entry(k.clone()).or_default() += v;
            all
        },
    );
    let attempted: usize = publishers.iter().map(|p| p.attempted.len()).sum();
    println!(
        "chaos seed {seed}: {:.1} s, channels {channels:?}\n  published {attempted}, acked {}, \
         retries {} {retries:?}\n  kills {}, reloads {}, graceful reloads {}, reload failures {}\n  \
         acked per channel {:?}",
        started.elapsed().as_secs_f64(),
        acked_keys.len(),
        retries.values().sum::<u64>(),
        chaos.kills,
        chaos.reloads,
        chaos.graceful_reloads,
        chaos.reload_failures.len(),
        target,
    );
    for s in &subs {
        println!(
            "  {:>5}: received {:>6}, connects {:>3}, resumes {:>4} (replayed {}), unavailable {}, \
             live gaps {} ({} seqs), closes {:?}, failures {}",
            s.name,
            s.received.iter().map(Vec::len).sum::<usize>(),
            s.connects,
            s.resumes,
            s.replayed,
            s.unavailable,
            s.live_gaps.len(),
            s.live_missed,
            s.closes,
            s.failures.len()
        );
    }
    let dump_events = || {
        let events = shared.events.lock().unwrap();
        let tail = events.len().saturating_sub(200);
        format!(
            "seed {seed} (SYNCD_CHAOS_SEED={seed}); events:\n{}",
            events[tail..].join("\n")
        )
    };

    // ------------------------------------------------------------ checks
    let fatal: Vec<&String> = publishers.iter().flat_map(|p| p.fatal.iter()).collect();
    assert!(
        fatal.is_empty(),
        "publishes failed: {fatal:?}\n{}",
        dump_events()
    );
    assert!(
        chaos.reload_failures.is_empty(),
        "{:?}",
        chaos.reload_failures
    );
    assert!(seq_clash.is_empty(), "one seq acked twice: {seq_clash:?}");
    // Every publish was retried until acknowledged, so "nothing
    // unacknowledged appears" means: what was stored and received is
    // exactly the acknowledged set.
    let attempted_keys: HashSet<String> = publishers
        .iter()
        .flat_map(|p| p.attempted.iter().map(|(_, k)| k.clone()))
        .collect();
    assert_eq!(
        attempted_keys, acked_keys,
        "every publish ends acknowledged"
    );
    assert!(
        chaos.kills + chaos.reloads + chaos.graceful_reloads >= 3,
        "too little chaos: {chaos:?}"
    );
    assert!(acked_keys.len() >= 200, "too few publishes got through");
    for (ch, name) in channels.iter().enumerate() {
        let stored = history(&server, name);
        let expected: Vec<(u64, String)> = acked[ch].iter().map(|(s, k)| (*s, k.clone())).collect();
        assert_eq!(
            stored.len(),
            expected.len(),
            "{name}: the store holds other messages than the acknowledged ones"
        );
        assert!(
            stored == expected,
            "{name}: stored history differs from the acknowledged publishes"
        );
    }
    let failures: Vec<String> = subs
        .iter()
        .flat_map(|s| s.failures.iter().map(move |f| format!("{}: {f}", s.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} subscriber failures, first ones: {:#?}\n{}\nthe server's log, last lines:\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        dump_events(),
        log_tail(&server, 60)
    );
    assert!(drained, "subscribers did not catch up\n{}", dump_events());
    for s in &subs {
        for (ch, name) in channels.iter().enumerate() {
            let expected: Vec<(u64, String)> =
                acked[ch].iter().map(|(s, k)| (*s, k.clone())).collect();
            assert!(
                s.received[ch] == expected,
                "{} on {name}: received {} messages, {} acknowledged, not the same sequence",
                s.name,
                s.received[ch].len(),
                expected.len()
            );
        }
    }
}

/// The chaos run of issue 11, as specified: a live subscription never skips
/// a seq, even when the owner worker of its channel dies or retires with
/// messages stored but not released (the worker holding the subscription
/// fetches them from the owner's next process: `sync::stream`). This
/// supersedes the variant whose subscribers repaired live gaps themselves
/// (`Shared::repair`, kept for debugging: `run_chaos(true)`).
#[test]
fn chaos_every_acked_publish_reaches_every_live_subscriber_once_in_order() {
    run_chaos(false);
}

/// The smallest form of what the chaos test finds. A subscriber and a
/// publisher sit on worker 0, which stays up; the channel is owned by
/// worker 1, which is made to leave (SIGQUIT: graceful; SIGTERM: "exit and
/// be restarted"; SIGKILL) while 50 publishes are in flight, several times.
/// Whatever the owner had stored but not yet released when it left is in
/// the history afterwards, but the subscriber, still connected, never gets
/// it: its next `msg` skips those seqs, with no `recovered: false` and no
/// close to tell it to resume.
///
/// Returns, per round, the signal and the seqs the live subscriber missed.
fn owner_leaves_under_load(signals: &[Signal]) -> Vec<(Signal, Vec<u64>)> {
    use common::Client;
    // The publisher writes as fast as it can: no publish_rate here.
    let server = Server::start(
        2,
        "[storage]\nhistory_size = 1000000\n[limits]\npublish_rate = 0\n",
    );
    let channel = (0..)
        .map(|i| format!("gap-{i}"))
        .find(|c| owner_of(c, 16, 2) == 1)
        .unwrap();
    // Both on worker 0: the publishes cross the link to the owner, worker 1,
    // and the messages come back over it.
    let mut sub = server.clients_on_every_worker(2, || server.tcp()).remove(0);
    let mut publisher = server.clients_on_every_worker(2, || server.tcp()).remove(0);
    sub.sub(&channel);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, channel) = (stop.clone(), channel.clone());
        std::thread::spawn(move || {
            // Bounded: until told to stop, at most 500 000 publishes, 50 in
            // flight at a time.
            for n in 0..10_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                for i in 0..50 {
                    publisher.send(&json!({"op":"pub","channel":channel,"data":{"k":n * 50 + i}}));
                }
                for _ in 0..50 {
                    let reply = publisher.recv();
                    // While the owner is away: `unavailable`.
                    assert!(
                        reply["op"] == "ok" || reply["code"] == "unavailable",
                        "{reply}"
                    );
                }
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut read_until = |seen: &mut Vec<u64>, upto: u64| {
        while seen.last().copied().unwrap_or(0) < upto {
            let m = sub.recv();
            assert_eq!(m["op"], "msg", "{m}");
            seen.push(m["seq"].as_u64().unwrap());
        }
    };
    let mut rounds = Vec::new();
    for &signal in signals {
        let from = seen.last().copied().unwrap_or(0);
        read_until(&mut seen, from + 500);
        let before = server.worker_pids()[1];
        kill(Pid::from_raw(before as i32), signal).unwrap();
        common::eventually("the owner is back", || {
            server.try_status().is_ok_and(|s| {
                s.workers[1].pid.is_some_and(|p| p != before) && s.workers[1].stats.is_some()
            })
        });
        let upto = seen.last().copied().unwrap() + 500;
        read_until(&mut seen, upto);
        rounds.push((signal, from, upto));
    }
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    let stored: Vec<u64> = history(&server, &channel)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let seen: HashSet<u64> = seen.into_iter().collect();
    rounds
        .into_iter()
        .map(|(signal, from, upto)| {
            let missed = stored
                .iter()
                .filter(|&&s| s > from && s <= upto && !seen.contains(&s))
                .copied()
                .collect();
            (signal, missed)
        })
        .collect()
}

/// The former server bug (it showed in most rounds, so six rounds showed it
/// nearly always): see `owner_leaves_under_load`. An owner that leaves
/// between committing messages and releasing them (a SIGKILL, or a stop
/// that closes the store after its loop) never sends them; the subscriber's
/// worker now notices (a skipped seq, or the owner's link going down and
/// coming up again) and fetches them from the owner's next process
/// (`sync::stream`, `Worker::fetch_missing`).
#[test]
fn a_live_subscriber_misses_nothing_when_the_owner_worker_leaves() {
    use Signal::{SIGKILL, SIGQUIT, SIGTERM};
    let rounds = owner_leaves_under_load(&[SIGQUIT, SIGTERM, SIGKILL, SIGQUIT, SIGTERM, SIGKILL]);
    for (signal, missed) in &rounds {
        println!("{signal:?}: stored but not delivered to the live subscriber: {missed:?}");
    }
    assert!(
        rounds.iter().all(|(_, missed)| missed.is_empty()),
        "stored messages never delivered to a subscriber that stayed connected: {rounds:?}"
    );
}
