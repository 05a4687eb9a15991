//! Presence across two syncd nodes sharing one real `redis-server`:
//! counted per user, seen from every node, and gone within
//! `presence_ttl` (here 2 s) after a node is killed with kill -9, with a
//! `leave` event.

mod common;

use std::time::Duration;

use common::brokers::Redis;
use common::{token, Client, Server};
use serde_json::{json, Value};

fn node(redis: &Redis, name: &str) -> Server {
    Server::start(
        2,
        &format!(
            "[presence]\nchannels = [\"room-\"]\n[cluster]\nengine = \"redis\"\n\
             redis_url = \"{}\"\nnode = \"{name}\"\npresence_ttl = \"2s\"\n",
            redis.url()
        ),
    )
}

fn login(server: &Server, uid: &str) -> common::TcpClient {
    let mut c = server.tcp();
    let reply = c.request(
        json!({"op":"auth","id":"a","token":token(uid, &[])}),
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
    let (_, user) = b.http("GET", "/api/users/bob", "");
    assert!(user.contains("\"online\":true"), "{user}");

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
    assert!(
        watcher.recv_timeout(Duration::from_millis(500)).is_none(),
        "each leave once"
    );
}
