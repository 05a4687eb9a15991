//! Two syncd nodes (2 workers each) on a real Redis Cluster of three
//! primaries, given only one node's URL: channels spread over every
//! primary by their hash tags, and messages, resume and compare-and-set
//! hold across nodes as on one Redis. Counted: every message once, in
//! order, on every subscriber.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::redis_cluster::RedisCluster;
use common::{Client, Server};
use serde_json::{json, Value};

fn node(redis: &RedisCluster, name: &str) -> Server {
    let toml = format!(
        "[cluster]\nengine = \"redis\"\nredis_url = \"{}\"\nnode = \"{name}\"\n",
        redis.url()
    );
    Server::start(2, &toml)
}

/// Reads until every channel's marker (`"end"`) has come, and hands back
/// the seqs of each channel's other messages, in arrival order.
fn read_until_markers(c: &mut dyn Client, channels: &[String]) -> Vec<Vec<u64>> {
    let mut seqs = vec![Vec::new(); channels.len()];
    let mut ended = HashSet::new();
    while ended.len() < channels.len() {
        let frame = c
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("markers of {ended:?} only, got {seqs:?}"));
        if frame["op"] != "msg" {
            continue;
        }
        let Some(at) = channels
            .iter()
            .position(|ch| frame["channel"] == ch.as_str())
        else {
            continue;
        };
        if frame["data"] == "end" {
            ended.insert(at);
        } else {
            seqs[at].push(frame["seq"].as_u64().unwrap());
        }
    }
    seqs
}

#[test]
fn two_nodes_share_channels_spread_over_every_primary_of_a_redis_cluster() {
    let redis = RedisCluster::start(3);
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    // Channels until every primary serves at least one.
    let mut channels = Vec::new();
    let mut primaries = HashSet::new();
    for i in 0..200 {
        let channel = format!("room{i}");
        let primary = redis.primary_of(&format!("syncd:{{{channel}}}:seq"));
        if primaries.insert(primary) || channels.len() < 6 {
            channels.push(channel);
        }
        if primaries.len() == 3 && channels.len() >= 6 {
            break;
        }
    }
    assert_eq!(primaries.len(), 3, "channels on every primary");

    let mut subscribers = b.ws_and_tcp_on_every_worker(2);
    let mut epochs = Vec::new();
    for (i, s) in subscribers.iter_mut().enumerate() {
        for channel in &channels {
            let reply = s.sub(channel);
            if i == 0 {
                epochs.push(reply["epoch"].as_str().unwrap().to_string());
            }
        }
    }
    const N: u64 = 50;
    for n in 1..=N {
        for channel in &channels {
            assert_eq!(a.publish(channel, json!(n)), n, "{channel}");
        }
    }
    for channel in &channels {
        a.publish(channel, json!("end"));
    }
    let all: Vec<u64> = (1..=N).collect();
    for s in subscribers.iter_mut() {
        for (channel, got) in channels
            .iter()
            .zip(read_until_markers(s.as_mut(), &channels))
        {
            assert_eq!(got, all, "{channel}: every message once, in order");
        }
    }
    // Each channel's seq lives on its own slot's primary.
    for channel in &channels {
        let key = format!("syncd:{{{channel}}}:seq");
        let got = redis.cmd(redis.primary_of(&key), &["GET", &key]);
        assert_eq!(got.as_deref(), Some(&*(N + 1).to_string()), "{key}");
    }

    // A resume on node B of what node A published, on every primary.
    let mut again = b.tcp();
    for (channel, epoch) in channels.iter().zip(&epochs) {
        let sub = json!({"op":"sub","id":1,"channel":channel,"since":N - 5,"epoch":epoch});
        let reply = again.request(sub, &mut Vec::new());
        assert_eq!(reply["recovered"], true, "{reply}");
        let mut got = Vec::new();
        while got.len() < 6 {
            let frame = again.recv();
            if frame["op"] == "msg" && frame["channel"] == channel.as_str() {
                got.push(frame["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(got, (N - 4..=N + 1).collect::<Vec<_>>(), "{channel}");
    }

    // Compare-and-set across both nodes: one winner per channel.
    for channel in channels.iter().take(3) {
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let server = if i % 2 == 0 { &a } else { &b };
                let mut c = server.tcp();
                let channel = channel.clone();
                std::thread::spawn(move || {
                    let set = json!({"op":"set","id":i,"channel":channel,"key":"seat","value":i,"version":0});
                    c.request(set, &mut Vec::new())
                })
            })
            .collect();
        let replies: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won = replies.iter().filter(|r| r["op"] == "ok").count();
        assert_eq!(won, 1, "{channel}: {replies:?}");
        assert!(replies
            .iter()
            .all(|r| r["op"] == "ok" || r["code"] == "conflict"));
    }
}
