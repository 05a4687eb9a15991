//! AMQP ingest and egress against a real `rabbitmq-server` (docs/queues.md).
//! RabbitMQ takes seconds to start, so each test shares one broker between
//! its scenarios, each on its own queues.

mod common;
mod queues_support;

use std::collections::HashSet;

use common::brokers::Rabbit;
use common::{eventually, Client, Server};
use queues_support::amqp::Amqp;
use queues_support::*;
use serde_json::json;

const N: u64 = 1000;

fn ingest_config(url: &str, queue: &str, extra: &str) -> String {
    format!("[[ingest]]\nkind = \"amqp\"\nurl = \"{url}\"\nqueue = \"{queue}\"\n{extra}")
}

fn bodies(channel: &str, range: std::ops::Range<u64>) -> Vec<(Option<String>, String)> {
    range
        .map(|n| {
            let body = json!({"channel": channel, "data": {"n": n}}).to_string();
            (Some(format!("{channel}-{n}")), body)
        })
        .collect()
}

#[test]
fn amqp_ingest_in_order_once_dead_letters_kill_9_and_broker_restart() {
    let mut rabbit = Rabbit::start();
    let amqp = Amqp::connect(&rabbit.url());
    // Declared long before the broker is killed below: RabbitMQ 3.10 keeps
    // a queue's definition in memory for a moment before writing it, and a
    // kill -9 right after the declare loses the queue with its messages.
    amqp.queue("feed-in", None);

    // 1000 messages reach WS and TCP subscribers on both workers, in
    // order, once; a malformed one goes to the queue's dead-letter target.
    amqp.queue("orders-in", Some("orders-dead"));
    amqp.queue("orders-dead", None);
    let server = Server::start(2, &ingest_config(&rabbit.url(), "orders-in", ""));
    let mut subs = server.subscribers("orders");
    amqp.publish("orders-in", &bodies("orders", 0..N / 2));
    amqp.publish("orders-in", &[(None, "{not json".into())]);
    amqp.publish("orders-in", &bodies("orders", N / 2..N));
    for sub in subs.iter_mut() {
        let msgs = take_msgs(sub.as_mut(), N as usize);
        assert_in_order(&msgs, 1, 0);
        no_more_msgs(sub.as_mut());
    }
    eventually("the malformed message is dead-lettered", || {
        amqp.count("orders-dead") == 1
    });
    // `published` counts after the broker ack, beside the deliveries.
    eventually("the counters settle", || {
        let status = ingest(&server);
        (status.received, status.published, status.dead_lettered) == (N + 1, N, 1)
    });
    drop(server);

    // kill -9 of syncd halfway: every message once; a subscriber resumes
    // by seq. The queue is missing: syncd declares it durable.
    let mut server = Server::start(2, &ingest_config(&rabbit.url(), "ledger-in", ""));
    eventually("the ingest is connected", || {
        ingest(&server).state == "connected"
    });
    let mut ws = server.ws();
    ws.sub("ledger");
    amqp.publish("ledger-in", &bodies("ledger", 0..N / 2));
    let first = take_msgs(&mut ws, (N / 2) as usize);
    // The second half is in the broker (confirmed) as syncd is killed.
    amqp.publish("ledger-in", &bodies("ledger", N / 2..N));
    server.stop_now();
    server.launch();
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    let mut ws = server.ws();
    let reply = ws.request(
        json!({"op":"sub","id":"r","channel":"ledger","since":last}),
        &mut Vec::new(),
    );
    assert_eq!(reply["op"], "ok", "{reply}");
    let rest = take_msgs(&mut ws, (N - N / 2) as usize);
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_in_order(&all, 1, 0);
    no_more_msgs(&mut ws);
    assert_eq!(history(&server, "ledger").len() as u64, N, "none twice");
    // A redelivery of messages stored before the kill (same message_id) is
    // acknowledged, counted as a duplicate and not published again: the
    // keys survived kill -9.
    let before = ingest(&server).duplicates;
    amqp.publish("ledger-in", &bodies("ledger", 0..3));
    eventually("the redeliveries are counted as duplicates", || {
        ingest(&server).duplicates == before + 3
    });
    no_more_msgs(&mut ws);
    assert_eq!(history(&server, "ledger").len() as u64, N, "none twice");
    assert_eq!(amqp.count("ledger-in"), 0);
    drop(server);

    // The broker is killed (kill -9) and restarted during ingest: nothing
    // lost, none twice, and status shows the outage. Right after a restart
    // the broker may still be recovering the queue (a passive declare finds
    // nothing): syncd must wait for it, not declare an empty one over it.
    let server = Server::start(
        2,
        &ingest_config(&rabbit.url(), "feed-in", "prefetch = 16\n"),
    );
    let mut subs = server.subscribers("feed");
    amqp.publish("feed-in", &bodies("feed", 0..N));
    eventually("some are published", || ingest(&server).published >= 100);
    rabbit.kill();
    eventually("status shows the outage", || {
        let s = ingest(&server);
        s.state != "connected" && s.outages >= 1 && s.last_error.is_some()
    });
    rabbit.launch();
    for sub in subs.iter_mut() {
        let msgs = take_msgs(sub.as_mut(), N as usize);
        assert_in_order(&msgs, 1, 0);
        no_more_msgs(sub.as_mut());
    }
    eventually("connected again", || ingest(&server).state == "connected");
    drop(server);

    // The channel's owner (worker 1; the ingest runs on worker 0) is
    // killed during ingest: its refusals are redelivered, none lost or twice.
    let amqp = Amqp::connect(&rabbit.url());
    let channel = (0..)
        .map(|i| format!("owned-{i}"))
        .find(|c| syncd::sync::shard::owner_of(c, 16, 2) == 1)
        .unwrap();
    let server = Server::start(2, &ingest_config(&rabbit.url(), "owned-in", ""));
    eventually("the ingest is connected", || {
        ingest(&server).state == "connected"
    });
    amqp.publish("owned-in", &bodies(&channel, 0..N / 2));
    eventually("some are published", || ingest(&server).published >= 100);
    let owner = server.status().workers[1].pid.unwrap();
    unsafe { libc::kill(owner as i32, libc::SIGKILL) };
    amqp.publish("owned-in", &bodies(&channel, N / 2..N));
    every_message_stored_once(&server, &channel, N);
}

fn egress_config(url: &str, exchange: &str) -> String {
    format!(
        "[[egress]]\nkind = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\nchannels = [\"orders*\", \"mirror\"]\n"
    )
}

fn publish_http(server: &Server, channel: &str, range: std::ops::Range<u64>, from: &str) {
    for n in range {
        let body = json!({"channel": channel, "data": {"n": n, "from": from}}).to_string();
        let (status, answer) = server.http("POST", "/api/publish", &body);
        assert_eq!(status, 200, "{answer}");
    }
}

fn egress_connected(server: &Server) -> bool {
    let c = connectors(server);
    !c.is_empty() && c.iter().all(|c| c.state == "connected")
}

#[test]
fn amqp_egress_set_order_and_ids_across_a_restart_and_two_data_centres_without_loops() {
    let rabbit = Rabbit::start();
    let amqp = Amqp::connect(&rabbit.url());

    // Egress: the exchange is missing (declared a durable topic exchange);
    // an independent consumer gets the set, the order and the ids.
    let mut server = Server::start(2, &egress_config(&rabbit.url(), "syncd-out"));
    eventually("egress connected", || egress_connected(&server));
    amqp.queue("out", None);
    amqp.bind("out", "syncd-out", "syncd.orders.#");
    publish_http(&server, "orders.1", 0..200, "a");
    publish_http(&server, "other", 0..10, "a");
    let got = amqp.take("out", 200);
    let epoch = got[0].body["epoch"].as_str().unwrap().to_string();
    for (i, g) in got.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(g.body["channel"], "orders.1");
        assert_eq!(g.body["seq"], seq);
        assert_eq!(g.body["data"]["n"], i as u64);
        assert_eq!(g.message_id, Some(format!("orders.1:{epoch}:{seq}")));
    }

    // Again with kill -9 of syncd in the middle: nothing lost, and a
    // duplicate only as the same message_id.
    publish_http(&server, "orders.1", 200..250, "a");
    server.stop_now();
    server.launch();
    publish_http(&server, "orders.1", 250..300, "a");
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    while firsts.len() < 100 {
        for g in amqp.take("out", 1) {
            let id = g.message_id.clone().unwrap();
            if seen.insert(id.clone()) {
                let seq = g.body["seq"].as_u64().unwrap();
                assert_eq!(id, format!("orders.1:{epoch}:{seq}"));
                firsts.push(g);
            }
        }
    }
    for (i, g) in firsts.iter().enumerate() {
        assert_eq!(g.body["seq"], 201 + i as u64);
        assert_eq!(g.body["data"]["n"], 200 + i as u64);
    }
    drop(server);

    // Two data centres: each egresses to an exchange bound to the other's
    // ingest queue. Each message reaches the other side once, and never
    // comes back. A backend's message that A ingests is A's own: it goes
    // out to B too, once.
    let extra = |ex: &str, queue: &str| {
        format!(
            "{}{}",
            egress_config(&rabbit.url(), ex),
            ingest_config(&rabbit.url(), queue, "")
        )
    };
    let a = Server::start(2, &extra("dc-a", "to-a"));
    let b = Server::start(2, &extra("dc-b", "to-b"));
    eventually("both connected", || {
        egress_connected(&a) && egress_connected(&b)
    });
    amqp.bind("to-b", "dc-a", "syncd.mirror");
    amqp.bind("to-a", "dc-b", "syncd.mirror");
    publish_http(&a, "mirror", 0..50, "a");
    publish_http(&b, "mirror", 0..50, "b");
    let backend = json!({"channel": "mirror", "data": {"from": "backend", "n": 0}});
    amqp.publish("to-a", &[(Some("backend-0".into()), backend.to_string())]);
    for server in [&a, &b] {
        eventually("both sides have all 101", || {
            history(server, "mirror").len() >= 101
        });
    }
    let skipped = |s: &Server| {
        connectors(s)
            .iter()
            .filter(|c| c.role == "egress")
            .map(|c| c.skipped)
            .sum::<u64>()
    };
    eventually("each egress skipped what the other sent it", || {
        skipped(&a) == 50 && skipped(&b) == 51
    });
    for server in [&a, &b] {
        let all = history(server, "mirror");
        assert_eq!(all.len(), 101, "no loop, no duplicate");
        let keys: HashSet<(String, u64)> = all
            .iter()
            .map(|m| {
                let d = &m["data"];
                (
                    d["from"].as_str().unwrap().to_string(),
                    d["n"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(keys.len(), 101);
    }
    assert_eq!(amqp.count("to-a") + amqp.count("to-b"), 0);
}
