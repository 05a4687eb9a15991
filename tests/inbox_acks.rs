//! An inbox `ack` is answered only once its owner has recorded it: whatever
//! happens after the `ok` (even `kill -9` of everything), the acknowledged
//! message is not delivered again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{token, Client, Server, TcpClient};
use serde_json::json;
use syncd::sync::shard::owner_of;

fn send(server: &Server, uid: &str, data: serde_json::Value) -> u64 {
    let body = json!({"uid":uid,"data":data}).to_string();
    let (status, reply) = server.http("POST", "/api/send", &body);
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str::<serde_json::Value>(&reply).map_or(0, |r| r["seq"].as_u64().unwrap_or(0))
}

/// Authenticates a new connection as `uid`; returns it with the first
/// `msg` of its inbox, which may come before or after the auth reply.
fn login(server: &Server, uid: &str) -> (TcpClient, serde_json::Value) {
    let mut c = server.tcp();
    let mut early = Vec::new();
    let reply = c.request(
        json!({"op":"auth","id":"a","token":token(uid, &[])}),
        &mut early,
    );
    assert_eq!(reply["uid"], uid, "{reply}");
    let first = match early.into_iter().next() {
        Some(m) => m,
        None => c.recv(),
    };
    (c, first)
}

/// Keeps the store thread of the worker that owns `channel` busy with
/// publishes, so an ack waits in its queue behind them.
fn flood(server: &Server, channel: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut c = server.tcp();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            for n in 0..50 {
                c.send(&json!({"op":"pub","channel":channel,"data":{"n":n,"pad":"x".repeat(200)}}));
            }
            for _ in 0..50 {
                if c.recv_timeout(common::TIMEOUT).is_none() {
                    return;
                }
            }
        }
    })
}

#[test]
fn an_acked_message_is_not_redelivered_after_kill_9_right_after_the_ok() {
    let mut server = Server::start(2, "");
    let deadline = Instant::now() + Duration::from_secs(40);
    for round in 0..8 {
        if Instant::now() > deadline && round > 0 {
            break;
        }
        let uid = format!("dana{round}");
        let inbox = format!("#{uid}");
        let owner = owner_of(&inbox, 16, 2);
        let busy = (0..)
            .map(|i| format!("flood-{i}"))
            .find(|c| owner_of(c, 16, 2) == owner)
            .unwrap_or_default();
        let seq = send(&server, &uid, json!({"round":round}));
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = flood(&server, busy, stop.clone());
        let (mut c, first) = login(&server, &uid);
        assert_eq!(first["seq"], seq, "delivered on connect");
        let reply = c.request(
            json!({"op":"ack","id":"k","channel":inbox,"seq":seq}),
            &mut Vec::new(),
        );
        assert_eq!(reply["op"], "ok", "{reply}");
        // Right after the ok: everything dies at once.
        server.stop_now();
        stop.store(true, Ordering::SeqCst);
        let _ = flooding.join();
        server.launch();
        let marker = send(&server, &uid, json!("after the restart"));
        let (_, first) = login(&server, &uid);
        assert_eq!(
            first["seq"], marker,
            "round {round}: seq {seq} was acked (ok) but came again"
        );
    }
}
