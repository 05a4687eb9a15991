//! Redis ingest against a real `redis-server` (docs/queues.md): lists,
//! streams and pub/sub reach subscribers in order and once; a malformed
//! message goes to the dead list and the rest flow; kill -9 of syncd and a
//! Redis restart lose nothing and duplicate nothing.

mod common;
mod queues_support;

use common::brokers::Redis;
use common::{eventually, Server};
use queues_support::*;

const N: u64 = 1000;

fn push_list(redis: &Redis, key: &str, channel: &str, range: std::ops::Range<u64>) {
    // One LPUSH with many values: the consumer takes them from the right,
    // oldest first.
    let bodies: Vec<String> = range
        .map(|n| format!(r#"{{"channel":"{channel}","data":{{"n":{n}}}}}"#))
        .collect();
    let mut args = vec!["LPUSH", key];
    args.extend(bodies.iter().map(String::as_str));
    redis.cmd(&args);
}

#[test]
fn a_list_reaches_ws_and_tcp_subscribers_in_order_once_and_bad_ones_go_to_the_dead_list() {
    let redis = Redis::start();
    let config = format!(
        "[[ingest]]\nkind = \"redis-list\"\nurl = \"{}\"\nkey = \"jobs\"\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    let mut subs = server.subscribers("orders");
    push_list(&redis, "jobs", "orders", 0..N / 2);
    redis.cmd(&["LPUSH", "jobs", "{not json"]);
    redis.cmd(&["LPUSH", "jobs", r#"{"data":1}"#]);
    push_list(&redis, "jobs", "orders", N / 2..N);
    for sub in subs.iter_mut() {
        let msgs = take_msgs(sub.as_mut(), N as usize);
        assert_in_order(&msgs, 1, 0);
        no_more_msgs(sub.as_mut());
    }
    assert_eq!(redis.cmd(&["LLEN", "jobs:dead"]), ":2");
    eventually("the processing list is empty", || {
        redis.cmd(&["LLEN", "jobs:processing"]) == ":0"
    });
    let status = ingest(&server);
    assert_eq!(
        (status.received, status.published, status.dead_lettered),
        (N + 2, N, 2)
    );
    assert_eq!(status.state, "connected");
    let text = common::output_text(&server.cli(&["status"]));
    let line = "ingest redis-list jobs (worker 0): connected  received 1002  published 1000  \
                duplicates 0  dead_lettered 2";
    assert!(text.contains(line), "{text}");
}

#[test]
fn a_processing_list_left_by_an_earlier_run_goes_first_in_pages_of_prefetch() {
    let redis = Redis::start();
    // An earlier run took 0..600 and died before storing them (the oldest
    // at the right); 600..N still wait in the list itself.
    push_list(&redis, "jobs:processing", "orders", 0..600);
    push_list(&redis, "jobs", "orders", 600..N);
    let config = format!(
        "[[ingest]]\nkind = \"redis-list\"\nurl = \"{}\"\nkey = \"jobs\"\nprefetch = 100\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    every_message_stored_once(&server, "orders", N);
    eventually("both lists are empty", || {
        redis.cmd(&["LLEN", "jobs:processing"]) == ":0" && redis.cmd(&["LLEN", "jobs"]) == ":0"
    });
}

fn add_stream(redis: &Redis, stream: &str, channel: &str, range: std::ops::Range<u64>) {
    for n in range {
        let body = format!(r#"{{"channel":"{channel}","data":{{"n":{n}}}}}"#);
        redis.cmd(&["XADD", stream, "*", "body", &body]);
    }
}

#[test]
fn a_stream_survives_kill_9_of_syncd_halfway_with_every_message_once() {
    let redis = Redis::start();
    let config = format!(
        "[[ingest]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"events\"\ngroup = \"syncd\"\nprefetch = 16\n",
        redis.url()
    );
    let mut server = Server::start(2, &config);
    add_stream(&redis, "events", "ledger", 0..N / 2);
    eventually("half the stream is published", || {
        ingest(&server).published >= N / 2
    });
    // Killed while the second half is being added and ingested.
    add_stream(&redis, "events", "ledger", N / 2..N);
    server.stop_now();
    server.launch();
    every_message_stored_once(&server, "ledger", N);
    eventually("every entry is acknowledged", || {
        redis.cmd(&["XPENDING", "events", "syncd"]).lines().next() == Some(":0")
    });
}

/// A consumer of the group that read entries and died (or came back under
/// another hostname) leaves them pending under its name: after
/// `claim_after` they are taken over and published, each once.
#[test]
fn entries_another_consumer_left_pending_are_taken_over_and_published_once() {
    let redis = Redis::start();
    redis.cmd(&["XGROUP", "CREATE", "events", "syncd", "0", "MKSTREAM"]);
    add_stream(&redis, "events", "stranded", 0..50);
    // An earlier server on another host read the first 30 and was lost.
    redis.cmd(&[
        "XREADGROUP",
        "GROUP",
        "syncd",
        "gone-host",
        "COUNT",
        "30",
        "STREAMS",
        "events",
        ">",
    ]);
    let config = format!(
        "[[ingest]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"events\"\ngroup = \"syncd\"\nclaim_after = \"1s\"\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    eventually("all 50 are published", || {
        history(&server, "stranded").len() >= 50
    });
    let mut ns: Vec<u64> = history(&server, "stranded")
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..50).collect::<Vec<_>>(), "each once");
    eventually("nothing is left pending", || {
        redis.cmd(&["XPENDING", "events", "syncd"]).lines().next() == Some(":0")
    });
}

#[test]
fn a_redis_restart_during_ingest_loses_nothing_and_status_shows_the_outage() {
    let mut redis = Redis::start();
    let config = format!(
        "[[ingest]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"s\"\ngroup = \"g\"\nprefetch = 8\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    let mut subs = server.subscribers("feed");
    add_stream(&redis, "s", "feed", 0..N);
    eventually("some are published", || ingest(&server).published >= 100);
    // Saved to disk and stopped: what was read but not acknowledged stays
    // pending in the group.
    redis.try_cmd(&["SHUTDOWN", "SAVE"]);
    redis.wait_exit();
    eventually("status shows the outage", || {
        let s = ingest(&server);
        s.state == "retrying" && s.outages >= 1 && s.last_error.is_some()
    });
    redis.launch();
    for sub in subs.iter_mut() {
        let msgs = take_msgs(sub.as_mut(), N as usize);
        assert_in_order(&msgs, 1, 0);
        no_more_msgs(sub.as_mut());
    }
    eventually("connected again", || ingest(&server).state == "connected");
}

#[test]
fn pubsub_plain_and_laravel_payloads_reach_subscribers() {
    let redis = Redis::start();
    let config = format!(
        "[[ingest]]\nkind = \"redis-pubsub\"\nurl = \"{url}\"\nchannels = [\"news*\"]\n\
         [[ingest]]\nkind = \"redis-pubsub\"\nurl = \"{url}\"\nchannels = [\"laravel_database_*\"]\n\
         format = \"laravel\"\nprefix = \"laravel_database_\"\n",
        url = redis.url()
    );
    let server = Server::start(2, &config);
    let mut news = server.subscribers("news.sport");
    let mut orders = server.subscribers("orders.981");
    eventually("both ingests are subscribed", || {
        let c = connectors(&server);
        c.len() == 2 && c.iter().all(|c| c.state == "connected")
    });
    // A publish-shaped body, then a bare one on the pub/sub channel's name.
    redis.cmd(&[
        "PUBLISH",
        "news.any",
        r#"{"channel":"news.sport","data":{"n":0}}"#,
    ]);
    redis.cmd(&["PUBLISH", "news.sport", r#"{"n":1}"#]);
    // What Laravel's Redis broadcaster sends for `OrderPaid` on
    // `orders.981` (a public channel) with the default `laravel_database_` prefix.
    redis.cmd(&[
        "PUBLISH",
        "laravel_database_orders.981",
        r#"{"event":"App\\Events\\OrderPaid","data":{"id":981,"socket":null},"socket":null}"#,
    ]);
    for sub in news.iter_mut() {
        let msgs = take_msgs(sub.as_mut(), 2);
        assert_in_order(&msgs, 1, 0);
    }
    for sub in orders.iter_mut() {
        let msg = &take_msgs(sub.as_mut(), 1)[0];
        assert_eq!(msg["data"]["event"], "App\\Events\\OrderPaid", "{msg}");
        assert_eq!(msg["data"]["data"]["id"], 981, "{msg}");
    }
}

/// `XRANGE stream - +` as (message_id, body) pairs.
fn stream_entries(redis: &Redis, stream: &str) -> Vec<(String, serde_json::Value)> {
    let text = redis.cmd(&["XRANGE", stream, "-", "+"]);
    let lines: Vec<&str> = text.lines().collect();
    // Each entry flattens to: id, "message_id", id, "body", JSON.
    lines
        .chunks(5)
        .filter(|c| c.len() == 5)
        .map(|c| {
            assert_eq!((c[1], c[3]), ("message_id", "body"), "{text}");
            (c[2].to_string(), serde_json::from_str(c[4]).unwrap())
        })
        .collect()
}

fn publish_http(server: &Server, channel: &str, range: std::ops::Range<u64>) {
    for n in range {
        let body = serde_json::json!({"channel": channel, "data": {"n": n}}).to_string();
        let (status, answer) = server.http("POST", "/api/publish", &body);
        assert_eq!(status, 200, "{answer}");
    }
}

#[test]
fn stream_egress_has_the_set_order_and_ids_across_a_kill_9() {
    let redis = Redis::start();
    let config = format!(
        "[[egress]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"out:{{channel}}\"\nchannels = [\"orders*\"]\n",
        redis.url()
    );
    let mut server = Server::start(2, &config);
    publish_http(&server, "orders.7", 0..100);
    publish_http(&server, "other", 0..5);
    publish_http(&server, "orders.7", 100..150);
    server.stop_now();
    server.launch();
    publish_http(&server, "orders.7", 150..200);
    eventually("every message is in the stream", || {
        let ids: std::collections::HashSet<String> = stream_entries(&redis, "out:orders.7")
            .into_iter()
            .map(|e| e.0)
            .collect();
        ids.len() == 200
    });
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<_> = stream_entries(&redis, "out:orders.7")
        .into_iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect();
    let epoch = firsts[0].1["epoch"].as_str().unwrap().to_string();
    for (i, (id, body)) in firsts.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(body["seq"], seq, "{body}");
        assert_eq!(body["data"]["n"], i as u64, "{body}");
        assert_eq!(id, &format!("orders.7:{epoch}:{seq}"));
    }
    assert_eq!(redis.cmd(&["EXISTS", "out:other"]), ":0");
}

#[test]
fn a_reload_during_stream_ingest_loses_and_duplicates_nothing() {
    let redis = Redis::start();
    let config = format!(
        "[[ingest]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"r\"\ngroup = \"g\"\nprefetch = 8\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    add_stream(&redis, "r", "reloaded", 0..N);
    eventually("some are published", || ingest(&server).published >= 50);
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    every_message_stored_once(&server, "reloaded", N);
}

#[test]
fn the_channels_owner_killed_during_ingest_loses_and_duplicates_nothing() {
    let redis = Redis::start();
    // Ingest 0 runs on worker 0; the channel is owned by worker 1, whose
    // death makes its publishes `unavailable` until it is back.
    let channel = (0..)
        .map(|i| format!("owned-{i}"))
        .find(|c| syncd::sync::shard::owner_of(c, 16, 2) == 1)
        .unwrap();
    let config = format!(
        "[[ingest]]\nkind = \"redis-stream\"\nurl = \"{}\"\nstream = \"o\"\ngroup = \"g\"\nprefetch = 8\n",
        redis.url()
    );
    let server = Server::start(2, &config);
    add_stream(&redis, "o", &channel, 0..N / 2);
    eventually("some are published", || ingest(&server).published >= 100);
    let owner = server.status().workers[1].pid.unwrap();
    unsafe { libc::kill(owner as i32, libc::SIGKILL) };
    add_stream(&redis, "o", &channel, N / 2..N);
    every_message_stored_once(&server, &channel, N);
}
