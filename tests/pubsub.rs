//! Channels across workers: every subscriber on every worker gets every
//! message of its channels, exactly once, in `seq` order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, Server, TcpClient, WsClient};
use serde_json::{json, Value};

#[test]
fn ws_and_tcp_clients_on_different_workers_see_each_others_messages() {
    let server = Server::start(2, "");
    let mut ws = server.clients_on_every_worker(2, || server.ws());
    let mut tcp = server.clients_on_every_worker(2, || server.tcp());
    let mut all: Vec<&mut dyn Client> = Vec::new();
    for c in ws.iter_mut() {
        all.push(c);
    }
    for c in tcp.iter_mut() {
        all.push(c);
    }
    for c in all.iter_mut() {
        c.sub("room");
    }
    // Each client publishes once; everyone (publisher included) sees all four.
    let mut early: Vec<Vec<Value>> = vec![Vec::new(); all.len()];
    for (i, c) in all.iter_mut().enumerate() {
        let reply = c.request(
            json!({"op":"pub","id":i,"channel":"room","data":{"from":i}}),
            &mut early[i],
        );
        assert_eq!(reply["op"], "ok", "{reply}");
    }
    for (c, mut got) in all.iter_mut().zip(early) {
        while got.len() < 4 {
            let frame = c.recv();
            if frame["op"] == "msg" {
                got.push(frame);
            }
        }
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let froms: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["from"].as_u64().unwrap())
            .collect();
        assert_eq!(froms, vec![0, 1, 2, 3]);
    }
}

#[test]
fn flood_of_1000_messages_reaches_120_subscribers_in_order_exactly_once() {
    flood(&Server::start(2, ""));
}

/// Held for `write_delay` and written together, live messages still come
/// whole, once each and in order, beside replies that are not held.
#[test]
fn with_a_write_delay_the_flood_still_arrives_in_order_exactly_once() {
    flood(&Server::start(2, "[delivery]\nwrite_delay = \"20ms\"\n"));
}

fn flood(server: &Server) {
    let channels = ["c0", "c1", "c2", "c3", "c4"];
    let mut subscribers: Vec<(Box<dyn Client>, &str)> = Vec::new();
    for i in 0..120 {
        let channel = channels[i % channels.len()];
        let mut client: Box<dyn Client> = if i % 2 == 0 {
            Box::new(server.ws())
        } else {
            Box::new(server.tcp())
        };
        client.sub(channel);
        subscribers.push((client, channel));
    }
    let workers: Vec<usize> = subscribers
        .iter()
        .map(|(c, _)| server.worker_of(c.local_addr()))
        .collect();
    assert!(
        workers.contains(&0) && workers.contains(&1),
        "subscribers on both workers"
    );

    // Four publishers (two per protocol) spread over the workers, 1000 messages.
    let mut publishers: Vec<Box<dyn Client>> = vec![
        Box::new(server.ws()),
        Box::new(server.ws()),
        Box::new(server.tcp()),
        Box::new(server.tcp()),
    ];
    let mut sent: HashMap<&str, Vec<u64>> = HashMap::new();
    for n in 0..1000u64 {
        let channel = channels[n as usize % channels.len()];
        publishers[n as usize % 4]
            .send(&json!({"op":"pub","id":n,"channel":channel,"data":{"n":n}}));
        sent.entry(channel).or_default().push(n);
    }
    for p in publishers.iter_mut() {
        for _ in 0..250 {
            let reply = p.recv();
            assert_eq!(reply["op"], "ok", "{reply}");
        }
    }
    for (client, channel) in subscribers.iter_mut() {
        let expected = &sent[*channel];
        let mut seqs = Vec::new();
        let mut ns = Vec::new();
        while seqs.len() < expected.len() {
            let m = client.recv();
            assert_eq!(m["op"], "msg", "{m}");
            assert_eq!(m["channel"], *channel);
            seqs.push(m["seq"].as_u64().unwrap());
            ns.push(m["data"]["n"].as_u64().unwrap());
        }
        assert_eq!(
            seqs,
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "gap or duplicate"
        );
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(&sorted, expected, "every message exactly once");
        assert!(
            client.recv_timeout(Duration::from_millis(100)).is_none(),
            "nothing extra"
        );
    }
}

#[test]
fn http_publish_reaches_ws_and_tcp_subscribers() {
    let server = Server::start(2, "");
    let mut ws = server.ws();
    let mut tcp = server.tcp();
    ws.sub("orders");
    tcp.sub("orders");
    let (status, body) = server.http(
        "POST",
        "/api/publish",
        r#"{"channel":"orders","data":{"id":7}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["seq"], 1);
    for c in [&mut ws as &mut dyn Client, &mut tcp] {
        let m = c.recv();
        assert_eq!(
            m,
            json!({"op":"msg","channel":"orders","seq":1,"data":{"id":7}})
        );
    }
    let (status, body) = server.http("GET", "/healthz", "");
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""), "{body}");
}

#[test]
fn ping_unsub_and_sub_reply_carry_the_id_and_current_seq() {
    let server = Server::start(2, "");
    let mut c = WsClient::connect(server.ws_port, "/ws");
    let mut early = Vec::new();
    assert_eq!(
        c.request(json!({"op":"ping","id":5}), &mut early),
        json!({"op":"pong","id":5})
    );
    for _ in 0..3 {
        server.http("POST", "/api/publish", r#"{"channel":"news","data":1}"#);
    }
    let reply = c.request(json!({"op":"sub","id":1,"channel":"news"}), &mut early);
    assert_eq!(
        (reply["seq"].as_u64(), reply["channel"].as_str()),
        (Some(3), Some("news"))
    );
    assert!(reply["epoch"].is_string());
    let again = c.request(json!({"op":"sub","id":2,"channel":"news"}), &mut early);
    assert_eq!(again["code"], "already_subscribed");
    assert_eq!(
        c.request(json!({"op":"unsub","id":3,"channel":"news"}), &mut early),
        json!({"op":"ok","id":3})
    );
    server.http("POST", "/api/publish", r#"{"channel":"news","data":2}"#);
    let mut t = TcpClient::connect(server.tcp_port);
    assert_eq!(
        t.request(json!({"op":"ping","id":"x"}), &mut early)["op"],
        "pong"
    );
    assert!(
        c.recv_timeout(Duration::from_millis(200)).is_none(),
        "no msg after unsub"
    );
    assert!(early.is_empty());
}

#[test]
fn unsub_sent_right_after_sub_leaves_the_connection_unsubscribed() {
    let server = Server::start(2, "[storage]\nshards = 16\n");
    let [mut c, mut watcher] = [0, 1].map(|_| server.tcp());
    while server.worker_of(watcher.local_addr()) != server.worker_of(c.local_addr()) {
        watcher = server.tcp();
    }
    let here = server.worker_of(c.local_addr());
    for round in 0..20 {
        // Owned by the other worker, so the sub waits for an answer over
        // the bus while the unsub is read.
        let channel = (0..)
            .map(|i| format!("unsub-race-{round}-{i}"))
            .find(|ch| syncd::sync::shard::owner_of(ch, 16, 2) != here)
            .expect("a channel owned elsewhere");
        watcher.sub(&channel);
        c.send_raw(&format!(
            "{}\n{}",
            json!({"op":"sub","id":1,"channel":channel}),
            json!({"op":"unsub","id":2,"channel":channel})
        ));
        let first = c.recv();
        let second = c.recv();
        assert_eq!(second, json!({"op":"ok","id":2}), "round {round}");
        assert!(
            first["op"] == "ok" || first["code"] == "cancelled",
            "the sub is answered, ok or cancelled: {first}"
        );
        let (status, body) = server.http(
            "POST",
            "/api/publish",
            &json!({"channel":channel,"data":round}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        // The watcher shares c's worker, which queues a message to all its
        // local subscribers at once: once the watcher has it, a ping from c
        // is answered after anything c would have been sent.
        assert_eq!(watcher.recv()["data"], round);
        let mut early = Vec::new();
        c.request(json!({"op":"ping","id":3}), &mut early);
        assert!(
            early.is_empty(),
            "round {round}: still subscribed: {early:?}"
        );
    }
}
