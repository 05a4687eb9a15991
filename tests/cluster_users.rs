//! Users across two syncd nodes sharing one real `redis-server`: inboxes
//! (acks hold when the user comes back on the other node), and presence,
//! counted per user, seen from every node, and gone within
//! `presence_ttl` (here 2 s) after a node is killed with kill -9, with a
//! `leave` event.

mod common;

use std::time::Duration;

use common::brokers::Redis;
use common::{eventually, token, Client, Server};
use serde_json::{json, Value};

fn node(redis: &Redis, name: &str) -> Server {
    node_with(redis, name, "")
}

fn node_with(redis: &Redis, name: &str, extra: &str) -> Server {
    Server::start(
        2,
        &format!(
            "[presence]\nchannels = [\"room-\"]\n[cluster]\nengine = \"redis\"\n\
             redis_url = \"{}\"\nnode = \"{name}\"\npresence_ttl = \"2s\"\n{extra}",
            redis.url()
        ),
    )
}

fn login(server: &Server, uid: &str) -> common::TcpClient {
    let mut c = server.tcp();
    let reply = c.request(
        json!({"op":"auth","id":"a","token":token(uid, &["$expired"])}),
        &mut Vec::new(),
    );
    assert_eq!(reply["uid"], uid, "{reply}");
    c
}

fn presence(server: &Server, channel: &str) -> Value {
    let (status, body) = server.http("GET", &format!("/api/presence?channel={channel}"), "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["uids"].clone()
}

/// The next presence event (join/leave) on `c`.
fn event(c: &mut dyn Client) -> Value {
    loop {
        let e = c.recv_timeout(Duration::from_secs(10)).expect("an event");
        if e["op"] == "join" || e["op"] == "leave" {
            return e;
        }
    }
}

#[test]
fn a_user_on_node_a_is_seen_on_node_b_and_gone_after_node_a_is_killed() {
    let redis = Redis::start();
    let mut a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut watcher = b.ws();
    watcher.sub("room-1");
    // Alice on both nodes (two connections on A, one on B), Bob only on A.
    let mut alice_a = [login(&a, "alice"), login(&a, "alice")];
    let mut alice_b = login(&b, "alice");
    let mut bob = login(&a, "bob");
    for c in alice_a.iter_mut() {
        c.sub("room-1");
    }
    assert_eq!(
        event(&mut watcher),
        json!({"op":"join","channel":"room-1","uid":"alice"})
    );
    alice_b.sub("room-1");
    bob.sub("room-1");
    assert_eq!(
        event(&mut watcher),
        json!({"op":"join","channel":"room-1","uid":"bob"})
    );
    assert_eq!(
        presence(&b, "room-1"),
        json!(["alice", "bob"]),
        "one entry per user"
    );
    assert_eq!(presence(&a, "room-1"), json!(["alice", "bob"]));
    // Online is his inbox's presence, a write of A's engine apart from the
    // room's join: B may see the join first.
    eventually("B sees bob online", || {
        b.http("GET", "/api/users/bob", "")
            .1
            .contains("\"online\":true")
    });

    a.stop_now();
    // Bob was only on A: he leaves within presence_ttl; alice stays (B).
    assert_eq!(
        event(&mut watcher),
        json!({"op":"leave","channel":"room-1","uid":"bob"})
    );
    assert_eq!(presence(&b, "room-1"), json!(["alice"]));
    drop(alice_b);
    assert_eq!(
        event(&mut watcher),
        json!({"op":"leave","channel":"room-1","uid":"alice"})
    );
    assert_eq!(presence(&b, "room-1"), json!([]));
    // Each leave once: the next frame is a message published after them.
    let body = json!({"channel":"room-1","data":"end"}).to_string();
    assert_eq!(b.http("POST", "/api/publish", &body).0, 200);
    let next = watcher
        .recv_timeout(Duration::from_secs(10))
        .expect("the marker");
    assert_eq!(
        (&next["op"], &next["data"]),
        (&json!("msg"), &json!("end")),
        "each leave once: {next}"
    );
}

fn send(server: &Server, uid: &str, data: Value) -> u64 {
    let body = json!({"uid": uid, "data": data}).to_string();
    let (status, reply) = server.http("POST", "/api/send", &body);
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str::<Value>(&reply).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// The direct messages `c` receives until none comes for a while.
/// The seqs of the next `n` direct messages to `uid` (each awaited up to
/// 10 s; fewer if they do not come).
fn direct(c: &mut dyn Client, uid: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let Some(m) = c.recv_timeout(Duration::from_secs(10)) else {
            break;
        };
        if m["op"] == "msg" && m["channel"] == format!("#{uid}") {
            seqs.push(m["seq"].as_u64().unwrap());
        }
    }
    seqs
}

#[test]
fn direct_messages_and_acks_hold_when_the_user_comes_back_on_the_other_node() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    // Sent through B while bob is on A: delivered live, across nodes.
    let mut bob = login(&a, "bob");
    let first = send(&b, "bob", json!("one"));
    let second = send(&b, "bob", json!("two"));
    assert_eq!(direct(&mut bob, "bob", 2), [first, second]);
    let ack = json!({"op":"ack","id":"k","channel":"#bob","seq":first});
    assert_eq!(bob.request(ack, &mut Vec::new())["op"], "ok");
    drop(bob);
    let third = send(&a, "bob", json!("three"));
    // Back on B: what is not acked comes again, nothing acked does.
    let mut bob = login(&b, "bob");
    assert_eq!(direct(&mut bob, "bob", 2), [second, third]);
    let ack = json!({"op":"ack","id":"k","channel":"#bob","seq":third});
    assert_eq!(bob.request(ack, &mut Vec::new())["op"], "ok");
    drop(bob);
    let mut bob = login(&a, "bob");
    // All acked: the first direct message after this login is a new one
    // (a replay of an acked one would come before it).
    let fourth = send(&b, "bob", json!("four"));
    assert_eq!(direct(&mut bob, "bob", 1), [fourth], "all acked");
}

#[test]
fn unacked_direct_messages_come_again_on_any_node_until_acked_on_any_node() {
    let redis = Redis::start();
    let delivery = "[delivery]\nack_timeout = \"1s\"\nmax_attempts = 3\n";
    let a = node_with(&redis, "a", delivery);
    let b = node_with(&redis, "b", delivery);
    let mut bob = login(&a, "bob");
    let mut bob_too = login(&b, "bob");
    // Sent through B; bob's connections on both nodes get it.
    let first = send(&b, "bob", json!("one"));
    let got = |c: &mut common::TcpClient, n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| loop {
                let m = c
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a direct message");
                if m["op"] == "msg" && m["channel"] == "#bob" {
                    break m["seq"].as_u64().unwrap();
                }
            })
            .collect()
    };
    assert_eq!(got(&mut bob, 1), [first]);
    assert_eq!(got(&mut bob_too, 1), [first]);
    // Not acked: it comes again, with its seq, to both.
    assert_eq!(got(&mut bob, 1), [first]);
    assert_eq!(got(&mut bob_too, 1), [first]);
    // Acked through A (not the node that sent it): no more resends.
    let ack = json!({"op":"ack","id":"k","channel":"#bob","seq":first});
    assert_eq!(bob.request(ack, &mut Vec::new())["op"], "ok");
    // A resend already on its way when the ack was stored may still come;
    // none after it (the backoff would bring the next within 2 s).
    let after_ack: Vec<u64> = std::iter::from_fn(|| bob_too.recv_timeout(Duration::from_secs(3)))
        .filter(|m| m["channel"] == "#bob")
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        after_ack.len() <= 1,
        "acked elsewhere: quiet, got {after_ack:?}"
    );
    // Never acked: resent, then a dead letter on $expired, once.
    bob.sub("$expired");
    let second = send(&a, "bob", json!("two"));
    let report = loop {
        let m = bob
            .recv_timeout(Duration::from_secs(15))
            .expect("a dead letter");
        if m["channel"] == "$expired" {
            break m;
        }
    };
    assert_eq!(report["data"]["seq"], second, "{report}");
    assert_eq!(report["data"]["reason"], "max_attempts", "{report}");
    let more: Vec<Value> = std::iter::from_fn(|| bob.recv_timeout(Duration::from_millis(1500)))
        .filter(|m| m["channel"] == "$expired")
        .collect();
    assert!(more.is_empty(), "one dead letter: {more:?}");
}
