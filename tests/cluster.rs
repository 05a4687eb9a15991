//! Two syncd nodes (2 workers each) sharing one real `redis-server`
//! (`[cluster] engine = "redis"`): messages, resume, compare-and-set and
//! idempotency hold across nodes as on one. Counted: sent = acked =
//! received, in seq order, nothing lost, nothing twice.

mod common;

use std::time::Duration;

use common::brokers::Redis;
use common::{Client, Server};
use serde_json::{json, Value};

fn cluster_toml(redis: &Redis, node: &str) -> String {
    format!("[cluster]\nengine = \"redis\"\nredis_url = \"{}\"\nnode = \"{node}\"\npresence_ttl = \"2s\"\n", redis.url())
}

fn two_nodes(redis: &Redis) -> (Server, Server) {
    let a = Server::start(2, &cluster_toml(redis, "a"));
    let b = Server::start(2, &cluster_toml(redis, "b"));
    (a, b)
}

/// Reads `msg` frames of `channel` until `n` have come; panics on a
/// timeout. Other frames are skipped.
fn collect(c: &mut dyn Client, channel: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = c
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("only {} of {n} messages of {channel}", got.len()));
        if frame["op"] == "msg" && frame["channel"] == channel {
            got.push(frame);
        }
    }
    got
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

#[test]
fn publishes_on_node_a_reach_ws_and_tcp_subscribers_on_node_b_in_order() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut ws = b.clients_on_every_worker(2, || b.ws());
    let mut tcp = b.clients_on_every_worker(2, || b.tcp());
    for c in ws.iter_mut() {
        c.sub("news");
    }
    for c in tcp.iter_mut() {
        c.sub("news");
    }
    let mut publisher = a.ws();
    let mut acked = Vec::new();
    for i in 0..50 {
        acked.push(a.publish("news", json!({"http": i})));
        let reply = publisher.request(
            json!({"op":"pub","id":i,"channel":"news","data":{"ws":i}}),
            &mut Vec::new(),
        );
        assert_eq!(reply["op"], "ok", "{reply}");
        acked.push(reply["seq"].as_u64().unwrap());
    }
    assert_eq!(acked, (1..=100).collect::<Vec<_>>(), "one seq per publish");
    for c in ws.iter_mut() {
        assert_eq!(seqs(&collect(c, "news", 100)), acked);
    }
    for c in tcp.iter_mut() {
        let got = collect(c, "news", 100);
        assert_eq!(seqs(&got), acked);
        assert_eq!(got[0]["data"], json!({"http": 0}));
        assert_eq!(got[1]["data"], json!({"ws": 0}));
    }
    // Nothing twice: the next message each one gets is a marker published
    // after all of them (one channel's order holds).
    let marker = a.publish("news", json!("end"));
    let clients = ws.iter_mut().map(|c| c as &mut dyn Client);
    for c in clients.chain(tcp.iter_mut().map(|c| c as &mut dyn Client)) {
        assert_eq!(seqs(&collect(c, "news", 1)), [marker], "nothing twice");
    }
}

/// Redis pub/sub is at most once: messages published while node B's
/// subscriber connections are down never reach B by pub/sub. B sees the
/// jump in seqs and fetches the missing range from the channel's stream
/// before anything newer, so its subscribers still get every message once,
/// in order. The publishes counted as gaps were made while Redis had no
/// subscriber for the topic at all.
#[test]
fn messages_missed_while_pubsub_is_down_are_fetched_from_the_stream_in_order() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut subs = b.subscribers("gaps");
    let listeners = || {
        let reply = redis.cmd(&["PUBSUB", "NUMSUB", "syncd:{gaps}:msgs"]);
        reply
            .lines()
            .last()
            .and_then(|n| n.trim_start_matches(':').parse::<u64>().ok())
    };
    let mut published = 0;
    let mut gaps = 0;
    for _round in 0..20 {
        redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        // Publish until B listens again; count the publishes nobody heard.
        while listeners() == Some(0) {
            published = a.publish("gaps", json!(published + 1));
            if listeners() == Some(0) {
                gaps += 1;
            }
        }
        for _ in 0..5 {
            published = a.publish("gaps", json!(published + 1));
        }
        if gaps >= 5 {
            break;
        }
    }
    eprintln!("{gaps} of {published} publishes made while B was not listening");
    assert!(gaps >= 5, "only {gaps} publishes while B was not listening");
    let all: Vec<u64> = (1..=published).collect();
    let marker = a.publish("gaps", json!("end"));
    for c in subs.iter_mut() {
        let got = collect(c.as_mut(), "gaps", all.len() + 1);
        let (messages, last) = got.split_at(all.len());
        assert_eq!(seqs(messages), all, "every message once, in order");
        assert_eq!(seqs(last), [marker], "nothing twice");
    }
}

#[test]
fn a_client_resumes_on_node_b_from_a_seq_published_through_node_a() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut first = a.ws();
    let reply = first.sub("feed");
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    for i in 1..=10 {
        assert_eq!(a.publish("feed", json!(i)), i);
    }
    assert_eq!(seqs(&collect(&mut first, "feed", 4)), [1, 2, 3, 4]);
    drop(first);
    // The client comes back on node B after seq 4.
    let mut again = b.tcp();
    let reply = again.request(
        json!({"op":"sub","id":1,"channel":"feed","since":4,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    let got = collect(&mut again, "feed", 6);
    assert_eq!(seqs(&got), [5, 6, 7, 8, 9, 10]);
    a.publish("feed", json!(11));
    assert_eq!(seqs(&collect(&mut again, "feed", 1)), [11]);
}

#[test]
fn a_cas_race_of_20_clients_across_both_nodes_has_exactly_one_winner() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut watcher = b.tcp();
    watcher.sub("seats");
    let mut clients: Vec<Box<dyn Client + Send>> = Vec::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        match i % 4 {
            0 | 1 => clients.push(Box::new(node.ws())),
            _ => clients.push(Box::new(node.tcp())),
        }
    }
    let start = std::sync::Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let set = json!({"op":"set","id":i,"channel":"seats","key":"F7","value":{"by":i},"version":0});
                c.request(set, &mut Vec::new())
            })
        })
        .collect();
    let replies: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<&Value> = replies.iter().filter(|r| r["op"] == "ok").collect();
    assert_eq!(won.len(), 1, "exactly one winner: {replies:?}");
    assert_eq!(won[0]["version"], 1);
    for lost in replies.iter().filter(|r| r["op"] != "ok") {
        assert_eq!(lost["code"], "conflict", "{lost}");
        assert_eq!(lost["current"]["version"], 1, "{lost}");
    }
    let change = collect(&mut watcher, "seats", 1);
    assert_eq!(change[0]["data"]["version"], 1);
    assert_eq!(change[0]["data"]["value"], won_value(&replies));
    // One change only: the next message is a marker published after it.
    let marker = a.publish("seats", json!("end"));
    let next = collect(&mut watcher, "seats", 1);
    assert_eq!(next[0]["data"], "end", "one change only: {next:?}");
    assert_eq!(seqs(&next), [marker]);
    // Both nodes read the winner's value.
    for node in [&a, &b] {
        let (status, body) = node.http("GET", "/api/state?channel=seats", "");
        assert_eq!(status, 200, "{body}");
        let state: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(state["keys"]["F7"]["value"], won_value(&replies), "{state}");
        assert_eq!(state["keys"]["F7"]["version"], 1, "{state}");
        let mut c = node.tcp();
        let got = c.request(
            json!({"op":"get","id":1,"channel":"seats","key":"F7"}),
            &mut Vec::new(),
        );
        assert_eq!(got["version"], 1, "{got}");
        assert_eq!(got["value"], won_value(&replies), "{got}");
    }
}

/// The same compare-and-set steps on one node and on two nodes sharing
/// Redis get the same answers: a deleted key is made again from version 0
/// (or its last version), deleting a key that is not there is a conflict.
#[test]
fn compare_and_set_of_absent_and_deleted_keys_answers_as_on_one_node() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let local = Server::start(2, "");
    let steps = [
        json!({"op":"set","key":"k","value":"v1","version":0}),
        json!({"op":"del","key":"k","version":1}),
        json!({"op":"del","key":"k","version":2}),
        json!({"op":"set","key":"k","value":"v2","version":0}),
        json!({"op":"set","key":"k","value":"v3","version":0}),
        json!({"op":"del","key":"never","version":0}),
        json!({"op":"del","key":"k","version":3}),
        json!({"op":"set","key":"k","value":"v4","version":4}),
    ];
    let answers = |clients: &mut [common::TcpClient]| -> Vec<Value> {
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let mut request = step.clone();
                request["id"] = json!(i);
                request["channel"] = json!("cas-rules");
                let reply = clients[i % clients.len()].request(request, &mut Vec::new());
                json!({"op": reply["op"], "version": reply["version"], "code": reply["code"]})
            })
            .collect()
    };
    let on_one = answers(&mut [local.tcp()]);
    let on_redis = answers(&mut [a.tcp(), b.tcp()]);
    assert_eq!(on_redis, on_one);
    let ok = |v: u64| json!({"op":"ok","version":v,"code":null});
    assert_eq!(on_one[0], ok(1));
    assert_eq!(on_one[1], ok(2));
    assert_eq!(on_one[2]["code"], "conflict", "deleting a deleted key");
    assert_eq!(on_one[3], ok(3), "made again from version 0");
    assert_eq!(on_one[4]["code"], "conflict", "it exists again");
    assert_eq!(on_one[5]["code"], "conflict", "deleting what never was");
    assert_eq!(on_one[7], ok(5), "made again from its last version");
}

/// The value the winner of the race wrote.
fn won_value(replies: &[Value]) -> Value {
    let i = replies.iter().position(|r| r["op"] == "ok").unwrap();
    json!({"by": i})
}

#[test]
fn an_idempotent_publish_retried_on_the_other_node_is_stored_once() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut watcher = a.ws();
    watcher.sub("orders");
    let body =
        json!({"channel":"orders","data":{"order":1},"idempotency_key":"order-1"}).to_string();
    let first = a.http("POST", "/api/publish", &body);
    assert_eq!(first.0, 200, "{}", first.1);
    // Retries through both nodes, some at once.
    let retries: Vec<_> = (0..10)
        .map(|i| {
            let (port, body) = (if i % 2 == 0 { b.ws_port } else { a.ws_port }, body.clone());
            std::thread::spawn(move || {
                let raw = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                common::http_raw(port, raw.as_bytes())
            })
        })
        .collect();
    for retry in retries {
        let (status, reply) = retry.join().unwrap();
        assert_eq!((status, reply.as_str()), (200, first.1.as_str()));
    }
    let reply: Value = serde_json::from_str(&first.1).unwrap();
    assert_eq!(reply["seq"], 1, "{reply}");
    let got = collect(&mut watcher, "orders", 1);
    assert_eq!(seqs(&got), [1]);
    // Published once: the next message is a marker published after it.
    let marker = a.publish("orders", json!("end"));
    let next = collect(&mut watcher, "orders", 1);
    assert_eq!(
        (seqs(&next), next[0]["data"].clone()),
        (vec![2], json!("end"))
    );
    assert_eq!(marker, 2, "published once");
}

#[test]
fn redis_restarted_without_data_fails_requests_fast_then_clients_carry_on_in_a_new_epoch() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis);
    let mut live = b.ws();
    let reply = live.sub("ticker");
    let old_epoch = reply["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        a.publish("ticker", json!(i));
    }
    assert_eq!(seqs(&collect(&mut live, "ticker", 5)), [1, 2, 3, 4, 5]);

    let _ = redis.try_cmd(&["SHUTDOWN", "NOSAVE"]);
    redis.wait_exit();
    // Down: requests fail fast with `unavailable`; clients stay connected.
    let (status, body) = a.http(
        "POST",
        "/api/publish",
        &json!({"channel":"ticker","data":0}).to_string(),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    let mut publisher = a.tcp();
    let reply = publisher.request(
        json!({"op":"pub","id":1,"channel":"ticker","data":0}),
        &mut Vec::new(),
    );
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let pong = live.request(json!({"op":"ping","id":"p"}), &mut Vec::new());
    assert_eq!(pong["op"], "pong", "still connected: {pong}");
    // A new `sub` is refused, not left hanging.
    let mut late = b.ws();
    let reply = late.request(
        json!({"op":"sub","id":"s","channel":"elsewhere"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["code"], "unavailable", "{reply}");
    // A user who logs in meanwhile hears their inbox once Redis is back.
    let mut carol = b.tcp();
    let auth = json!({"op":"auth","id":"a","token":common::token("carol", &[])});
    assert_eq!(carol.request(auth, &mut Vec::new())["uid"], "carol");

    redis.launch();
    // Back: publishes go through again, in a new epoch.
    let mut first = None;
    common::eventually("publishes work again", || {
        let (status, body) = a.http(
            "POST",
            "/api/publish",
            &json!({"channel":"ticker","data":"after"}).to_string(),
        );
        first = (status == 200).then_some(body);
        first.is_some()
    });
    // The connected subscriber is told what it missed, then goes on.
    let resync = loop {
        let frame = live.recv();
        if frame["op"] == "resync" {
            break frame;
        }
        assert_ne!(frame["op"], "msg", "no message before the resync: {frame}");
    };
    assert_eq!(resync["after"], 5, "{resync}");
    let new_epoch = resync["epoch"].as_str().unwrap().to_string();
    assert_ne!(new_epoch, old_epoch);
    // Then every message of the new epoch after the resync's seq, in order
    // (the first publish after the restart may come before or after it).
    let next = a.publish("ticker", json!("next"));
    let from = resync["seq"].as_u64().unwrap();
    let got = collect(&mut live, "ticker", (next - from) as usize);
    assert_eq!(seqs(&got), (from + 1..=next).collect::<Vec<_>>());
    let body = json!({"uid":"carol","data":"welcome back"}).to_string();
    let (status, reply) = a.http("POST", "/api/send", &body);
    assert_eq!(status, 200, "{reply}");
    let dm = collect(&mut carol, "#carol", 1);
    assert_eq!(dm[0]["data"], "welcome back");
    // A client resuming from the old epoch is told it was not recovered.
    // It lands on either worker of node B, whose pub/sub session may still
    // be waiting out its reconnect backoff (at most a second): a client
    // told `unavailable` retries, as the error says.
    let mut resumer = b.tcp();
    let mut reply = Value::Null;
    common::eventually("a resume on node B is answered", || {
        reply = resumer.request(
            json!({"op":"sub","id":1,"channel":"ticker","since":5,"epoch":old_epoch}),
            &mut Vec::new(),
        );
        reply["code"] != "unavailable"
    });
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["epoch"], new_epoch.as_str(), "{reply}");
    let mut last = 0;
    common::eventually("node B publishes again", || {
        let body = json!({"channel":"ticker","data":"last"}).to_string();
        let (status, reply) = b.http("POST", "/api/publish", &body);
        if status == 503 {
            return false;
        }
        assert_eq!(status, 200, "{reply}");
        last = serde_json::from_str::<Value>(&reply).unwrap()["seq"]
            .as_u64()
            .unwrap();
        true
    });
    assert_eq!(seqs(&collect(&mut resumer, "ticker", 1)), [last]);
    assert_eq!(seqs(&collect(&mut live, "ticker", 1)), [last]);
}

#[test]
fn retention_on_redis_is_history_size_and_ttl() {
    let redis = Redis::start();
    let a = Server::start(
        2,
        &format!("[storage]\nhistory_size = 5\n{}", cluster_toml(&redis, "a")),
    );
    let mut watcher = a.tcp();
    watcher.sub("short");
    for i in 1..=8 {
        a.publish("short", json!(i));
    }
    assert_eq!(redis.cmd(&["XLEN", "syncd:{short}:log"]), ":5", "MAXLEN");
    let (_, body) = a.http("GET", "/api/history?channel=short&since=0", "");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seqs(body["messages"].as_array().unwrap()), [4, 5, 6, 7, 8]);
    // Messages with a ttl leave the log once expired (swept for channels
    // some node hears), and reads skip them meanwhile.
    let mut brief = a.tcp();
    brief.sub("brief");
    for i in 0..3 {
        let body = json!({"channel":"brief","data":i,"ttl":3}).to_string();
        assert_eq!(a.http("POST", "/api/publish", &body).0, 200);
    }
    assert_eq!(redis.cmd(&["XLEN", "syncd:{brief}:log"]), ":3");
    common::eventually("expired messages deleted", || {
        redis.cmd(&["XLEN", "syncd:{brief}:log"]) == ":0"
    });
    let reply = brief.request(
        json!({"op":"history","id":2,"channel":"brief","since":0}),
        &mut Vec::new(),
    );
    assert_eq!(reply["messages"], json!([]), "{reply}");
    assert_eq!(reply["seq"], 3, "{reply}");
    let ttl = redis.cmd(&["PTTL", "syncd:{short}:log"]);
    assert!(
        ttl.starts_with(':') && ttl != ":-1",
        "a log left alone goes: {ttl}"
    );
}

#[test]
fn a_long_resume_on_node_b_comes_in_pages_of_what_node_a_published() {
    let redis = Redis::start();
    let extra = format!(
        "[storage]\nhistory_size = 10000\n{}",
        cluster_toml(&redis, "n")
    );
    let a = Server::start(2, &extra);
    let b = Server::start(2, &extra);
    let mut first = b.tcp();
    let epoch = first.sub("long")["epoch"].as_str().unwrap().to_string();
    let mut publisher = a.tcp();
    let total = 4500;
    for i in 0..total {
        publisher.send(&json!({"op":"pub","id":i,"channel":"long","data":i}));
    }
    let mut acked = 0;
    while acked < total {
        let reply = publisher.recv();
        assert_eq!(reply["op"], "ok", "{reply}");
        acked += 1;
    }
    let mut resumer = b.ws();
    let reply = resumer.request(
        json!({"op":"sub","id":1,"channel":"long","since":0,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], true, "{reply}");
    a.publish("long", json!("live"));
    let got = collect(&mut resumer, "long", total + 1);
    assert_eq!(seqs(&got), (1..=total as u64 + 1).collect::<Vec<_>>());
    assert_eq!(got[total]["data"], "live");
    assert_eq!(
        seqs(&collect(&mut first, "long", total + 1)).len(),
        total + 1
    );
}
