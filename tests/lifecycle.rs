//! The operator's side: start, stop, reload, status, connections, signals and
//! respawning, driven through the real CLI and real signals.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Client, Server, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use common::output_text as text;

#[test]
fn killed_worker_is_respawned_and_new_connections_work() {
    let server = Server::start(2, "");
    let before = server.worker_pids();
    kill(Pid::from_raw(before[0] as i32), Signal::SIGKILL).unwrap();
    eventually("worker 0 respawned", || {
        let s = server.status();
        s.workers[0].pid.is_some_and(|p| p != before[0]) && s.workers[0].stats.is_some()
    });
    let status = server.status();
    assert_eq!(status.workers[0].restarts, 1);
    assert_eq!(
        status.workers[1].pid,
        Some(before[1]),
        "the other worker is untouched"
    );
    assert!(
        server.log().contains("died: signal SIGKILL"),
        "{}",
        server.log()
    );
    // Clients on both workers talk across the restarted one.
    let mut clients = server.clients_on_every_worker(2, || server.tcp());
    for c in clients.iter_mut() {
        c.sub("after");
    }
    let mut early = Vec::new();
    let reply = clients[0].request(
        json!({"op":"pub","id":1,"channel":"after","data":1}),
        &mut early,
    );
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(clients[1].recv()["seq"], 1);
}

#[test]
fn reload_replaces_every_worker_while_connects_never_fail() {
    let server = Server::start(2, "");
    let before = server.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let port = server.tcp_port;
    let connector = {
        let (stop, attempts, answered) = (stop.clone(), attempts.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            // Bounded: at most 20 000 connects or until the reloads are done.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                attempts.fetch_add(1, Ordering::SeqCst);
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => {
                        // Served by a worker, or closed by one being retired
                        // (a `bye` line or a bare close); never left hanging.
                        let mut c = common::TcpClient::from_stream(s);
                        c.send(&json!({"op":"ping","id":1}));
                        match c.recv_timeout(TIMEOUT) {
                            Some(v) if v["op"] == "pong" => {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(v) if v["op"] == "bye" => {}
                            None if c.closed_by_server(Duration::from_millis(100)) => {}
                            other => failures.push(format!("unexpected: {other:?}")),
                        }
                    }
                    Err(e) => failures.push(format!("connect failed: {e}")),
                }
            }
            failures
        })
    };
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reloaded"), "{}", text(&out));
    let middle = server.worker_pids();
    let out = server.cli(&["reload", "-g"]);
    assert!(out.status.success(), "{}", text(&out));
    stop.store(true, Ordering::SeqCst);
    let failures = connector.join().unwrap();
    let after = server.worker_pids();
    let attempts = attempts.load(Ordering::SeqCst);
    assert!(attempts > 10);
    assert!(
        answered.load(Ordering::SeqCst) * 2 > attempts,
        "most connects were served"
    );
    assert!(
        failures.is_empty(),
        "refused or hanging connects: {failures:?}"
    );
    for (old, new) in before.iter().zip(&middle).chain(middle.iter().zip(&after)) {
        assert_ne!(old, new, "every worker replaced");
    }
    assert_eq!(server.status().reloads, 2);
}

#[test]
fn status_and_connections_show_the_table() {
    let server = Server::start(2, "");
    let mut ws = server.ws();
    ws.sub("a");
    let mut tcp = server.tcp();
    tcp.sub("b");
    let out = server.cli(&["status"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for word in [
        "master pid",
        "uptime",
        "slot",
        "pid",
        "rss",
        "ws",
        "tcp",
        "subs",
        "msgs_in",
        "msgs_out",
        "send_fail",
        "restarts",
    ] {
        assert!(shown.contains(word), "status lacks {word}:\n{shown}");
    }
    let rows: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("0 ") || l.starts_with("1 "))
        .collect();
    assert_eq!(rows.len(), 2, "{shown}");
    let out = server.cli(&["connections"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(&ws.local_addr().to_string()), "{shown}");
    assert!(shown.contains(&tcp.local_addr().to_string()), "{shown}");
    assert!(shown.contains(" ws ") && shown.contains(" tcp "), "{shown}");
    assert!(shown.contains("2 connections"), "{shown}");
}

#[test]
fn stop_waits_until_everything_is_gone() {
    let mut server = Server::start(2, "");
    let pids = server.worker_pids();
    let out = server.cli(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("syncd stopped"), "{}", text(&out));
    assert_eq!(server.wait_exit(), Some(0));
    for pid in pids {
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "worker {pid} still alive"
        );
    }
    assert!(!server.path("syncd.pid").exists(), "pid file removed");
    let out = server.cli(&["stop"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not running"), "{}", text(&out));
}

#[test]
fn graceful_stop_says_goodbye_to_clients() {
    let mut server = Server::start(2, "");
    let mut ws = server.ws();
    ws.sub("x");
    let mut tcp = server.tcp();
    tcp.sub("x");
    let out = server.cli(&["stop", "-g"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stopping gracefully"), "{}", text(&out));
    assert_eq!(ws.close_code(TIMEOUT), Some(1001));
    let bye = tcp.recv();
    assert_eq!(
        (bye["op"].as_str(), bye["code"].as_str()),
        (Some("bye"), Some("shutdown"))
    );
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn second_start_refuses_and_bad_config_names_the_key() {
    let server = Server::start(2, "");
    let out = server.cli(&["start"]);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("already running") && shown.contains(&server.master_pid().to_string()),
        "{shown}"
    );

    let bad = server.path("bad.toml");
    std::fs::write(&bad, "workers = 2\n[limits]\nmax_frame = \"lots\"\n").unwrap();
    let out = Command::new(common::syncd_bin())
        .args(["-c", bad.to_str().unwrap(), "start"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("max_frame"), "{}", text(&out));
    std::fs::write(&bad, "wrkers = 2\n").unwrap();
    let out = Command::new(common::syncd_bin())
        .args(["-c", bad.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(text(&out).contains("wrkers"), "{}", text(&out));
}

#[test]
fn daemon_mode_detaches_logs_to_file_and_stops() {
    let server = Server::start(1, "");
    let [ws, tcp] = common::free_ports();
    std::fs::write(
        server.path("daemon.toml"),
        format!(
            "workers = 2\n[listen]\nws = \"127.0.0.1:{ws}\"\ntcp = \"127.0.0.1:{tcp}\"\n[paths]\n\
             pid_file = \"d/syncd.pid\"\nlog_file = \"x/../d/syncd.log\"\n"
        ),
    )
    .unwrap();
    // A bare file name, run from the config's folder, as a newcomer types it.
    let syncd = |args: &[&str]| {
        Command::new(common::syncd_bin())
            .args(["-c", "daemon.toml"])
            .args(args)
            .current_dir(server.dir.path())
            .output()
            .unwrap()
    };
    let out = syncd(&["start", "-d"]);
    assert!(out.status.success(), "{}", text(&out));
    let log_path = server
        .dir
        .path()
        .canonicalize()
        .unwrap()
        .join("d/syncd.log");
    let shown = text(&out);
    assert!(
        shown.contains("started in the background")
            && shown.contains(&format!("log {})", log_path.display())),
        "the log path is shown absolute and normalised: {shown}"
    );
    let out = syncd(&["status"]);
    assert!(text(&out).contains("running"), "{}", text(&out));
    let out = syncd(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = std::fs::read_to_string(server.path("d/syncd.log")).unwrap();
    assert!(
        log.contains("all 2 workers serving") && log.contains("master stopped"),
        "{log}"
    );
}

#[test]
fn sighup_with_a_broken_config_keeps_serving() {
    let server = Server::start(2, "");
    let good = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(&server.config, "workers = [").unwrap();
    kill(Pid::from_raw(server.master_pid()), Signal::SIGHUP).unwrap();
    eventually("the error is logged", || {
        server.log().contains("config not reloaded")
    });
    assert_eq!(server.status().state, "running");
    std::fs::write(
        &server.config,
        good.replace("[paths]", "[limits]\nmax_frame = \"2MiB\"\n[paths]"),
    )
    .unwrap();
    let before = server.worker_pids();
    kill(Pid::from_raw(server.master_pid()), Signal::SIGHUP).unwrap();
    eventually("workers replaced", || {
        let s = server.status();
        s.reloads == 1
            && s.workers
                .iter()
                .zip(&before)
                .all(|(w, old)| w.pid.is_some_and(|p| p != *old))
    });
    let mut c = server.tcp();
    c.sub("still-works");
}

#[test]
fn sigterm_to_a_worker_restarts_it_and_sigint_to_the_master_stops_all() {
    let mut server = Server::start(2, "");
    let pids = server.worker_pids();
    kill(Pid::from_raw(pids[1] as i32), Signal::SIGTERM).unwrap();
    eventually("worker 1 respawned", || {
        server.status().workers[1].pid.is_some_and(|p| p != pids[1])
    });
    kill(Pid::from_raw(server.master_pid()), Signal::SIGINT).unwrap();
    assert_eq!(server.wait_exit(), Some(0));
}

/// Times a thread went to sleep (its voluntary context switches): each is
/// one wake-up later.
fn sleeps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status"))
        .expect("the process is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc status")
}

/// An idle server does not wake on a clock that has nothing to do: the
/// master sleeps until something happens, and a worker holding idle
/// connections wakes about once a second (one tick for its owner's sweep
/// and the connections' deadlines; the store does not wake it for a sweep
/// that found nothing), not every 100 ms. This is the one test that
/// watches for a while without waiting on an event: what it checks is that
/// nothing happens. A 100 ms tick would make 30 wake-ups in the 3 s; the
/// bounds leave room for stray ones.
#[test]
fn an_idle_server_sleeps() {
    let server = Server::start(2, "");
    let held: Vec<_> = (0..100).map(|_| server.tcp()).collect();
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2);
    let master = server.master_pid() as u32;
    let before: Vec<u64> = std::iter::once(master)
        .chain(workers.iter().copied())
        .map(sleeps)
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<u64> = std::iter::once(master)
        .chain(workers.iter().copied())
        .map(sleeps)
        .collect();
    let woke: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!(
        "wake-ups in 3 s: master {}, workers {:?}",
        woke[0],
        &woke[1..]
    );
    assert!(woke[0] <= 3, "the master woke {} times", woke[0]);
    for (slot, &n) in woke[1..].iter().enumerate() {
        assert!(n <= 8, "worker {slot} woke {n} times");
    }
    drop(held);
}
