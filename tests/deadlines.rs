//! Deadlines on routed requests: a request to a worker that does not answer
//! (stopped with SIGSTOP here, as a hung or stalled one would be) is
//! answered `unavailable` after `request_timeout`, and the owner's late
//! answers are dropped and counted.

mod common;

use std::time::Instant;

use common::{Client, Server};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

#[test]
fn a_request_to_a_stopped_owner_is_answered_unavailable_in_time() {
    let server = Server::start(
        2,
        "[limits]\nrequest_timeout = \"500ms\"\n[storage]\nshards = 16\n",
    );
    let mut c = server.tcp();
    let here = server.worker_of(c.local_addr());
    let owner = 1 - here;
    let channel = (0..)
        .map(|i| format!("stalled-{i}"))
        .find(|ch| syncd::sync::shard::owner_of(ch, 16, 2) == owner)
        .expect("a channel owned by the other worker");
    let pid = Pid::from_raw(server.worker_pids()[owner] as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let asked = Instant::now();
    let publish = c.request(
        json!({"op":"pub","id":1,"channel":channel,"data":"x"}),
        &mut Vec::new(),
    );
    let sub = c.request(
        json!({"op":"sub","id":2,"channel":channel}),
        &mut Vec::new(),
    );
    let waited = asked.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    println!("answered after {waited:?}");
    assert_eq!(publish["code"], "unavailable", "{publish}");
    assert!(
        publish["message"]
            .as_str()
            .unwrap_or("")
            .contains("request_timeout"),
        "{publish}"
    );
    assert_eq!(sub["code"], "unavailable", "{sub}");
    // Once it runs again, the owner answers what it was sent: too late.
    common::eventually("the late answers are dropped and counted", || {
        server.sum_stats(|s| s.late_replies) >= 2
    });
    let again = c.request(
        json!({"op":"pub","id":3,"channel":channel,"data":"y"}),
        &mut Vec::new(),
    );
    assert_eq!(again["op"], "ok", "{again}");
    assert_eq!(server.restarts(), 0);
}
