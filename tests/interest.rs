//! Interest-based routing between workers: a channel's messages cross a
//! worker link only to the workers that want the channel (a subscriber, a
//! `sub` waiting or replaying). A worker whose last subscriber left gets
//! nothing more of it, while the subscribers elsewhere still get every
//! message exactly once, in order.

mod common;

use common::{Client, Server, WsClient};
use serde_json::{json, Value};
use syncd::sync::shard::owner_of;

const WORKERS: usize = 3;

/// `(link messages in, link messages out)` of worker `slot`.
fn link_counts(server: &Server, slot: usize) -> (u64, u64) {
    let status = server.status();
    let row = status.workers.iter().find(|w| w.slot == slot).expect("row");
    let stats = row.stats.as_ref().expect("stats");
    (stats.link_msgs_in, stats.link_msgs_out)
}

fn publish(c: &mut WsClient, channel: &str, i: u64) {
    let reply = c.request(
        json!({"op":"pub","id":i,"channel":channel,"data":{"i":i}}),
        &mut Vec::new(),
    );
    assert_eq!(reply["op"], "ok", "{reply}");
}

fn next_msg(c: &mut WsClient) -> Value {
    loop {
        let frame = c.recv();
        if frame["op"] == "msg" {
            return frame;
        }
    }
}

#[test]
fn a_worker_without_subscribers_gets_no_link_traffic_for_the_channel() {
    let server = Server::start(WORKERS, "");
    let mut clients = server.clients_on_every_worker(WORKERS, || server.ws());
    // Owned by worker 0; worker 1 keeps a subscriber, worker 2 leaves.
    let channel = (0..)
        .map(|i| format!("room{i}"))
        .find(|c| owner_of(c, 16, WORKERS) == 0)
        .expect("a channel");
    clients[1].sub(&channel);
    clients[2].sub(&channel);
    publish(&mut clients[0], &channel, 0);
    assert_eq!(next_msg(&mut clients[1])["seq"], 1);
    assert_eq!(next_msg(&mut clients[2])["seq"], 1);
    let reply = clients[2].request(
        json!({"op":"unsub","id":"u","channel":&channel}),
        &mut Vec::new(),
    );
    assert_eq!(reply["op"], "ok", "{reply}");

    let before = [1, 2].map(|slot| link_counts(&server, slot).0);
    let owner_before = link_counts(&server, 0).1;
    // Published from the worker that left: its publishes cross the same
    // FIFO link as its unwatch, after it.
    const N: u64 = 200;
    for i in 1..=N {
        publish(&mut clients[2], &channel, i);
    }
    for seq in 2..=N + 1 {
        let msg = next_msg(&mut clients[1]);
        assert_eq!(msg["seq"], seq, "in order, exactly once: {msg}");
    }
    assert!(
        clients[1]
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_none_or(|f| f["op"] != "msg"),
        "nothing twice"
    );
    assert!(
        clients[2]
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_none(),
        "nothing after the unsub"
    );
    let after = [1, 2].map(|slot| link_counts(&server, slot).0);
    assert_eq!(
        after[0] - before[0],
        N,
        "the subscriber's worker got each once"
    );
    assert_eq!(after[1], before[1], "the worker that left got nothing");
    assert_eq!(
        link_counts(&server, 0).1 - owner_before,
        N,
        "one link frame each"
    );

    // Subscribing again on worker 2 resumes with no gap and no resync.
    let reply = clients[2].sub(&channel);
    assert_eq!(reply["seq"], N + 1, "{reply}");
    publish(&mut clients[0], &channel, N + 1);
    assert_eq!(next_msg(&mut clients[2])["seq"], N + 2);
    assert_eq!(next_msg(&mut clients[1])["seq"], N + 2);
}
