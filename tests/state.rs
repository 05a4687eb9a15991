//! Keyed state: compare-and-set is linearizable per key (of racing writers
//! with the same version exactly one wins), changes are messages with a seq,
//! and the state survives restarts.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Client, Server};
use serde_json::{json, Value};

#[test]
fn set_get_del_and_state_follow_versions_across_workers() {
    let server = Server::start(2, "");
    let mut clients = server.clients_on_every_worker(2, || server.tcp());
    let mut early = Vec::new();
    clients[1].sub("seats");
    let a = clients[0].request(
        json!({"op":"set","id":1,"channel":"seats","key":"F7","value":{"by":"alice"},"version":0}),
        &mut early,
    );
    assert_eq!(
        (a["op"].as_str(), a["version"].as_u64()),
        (Some("ok"), Some(1)),
        "{a}"
    );
    let seq = a["seq"].as_u64().unwrap();
    let change = clients[1].recv();
    assert_eq!(
        change,
        json!({"op":"msg","channel":"seats","seq":seq,"data":{"key":"F7","version":1,"value":{"by":"alice"}}})
    );
    let lost = clients[1].request(
        json!({"op":"set","id":2,"channel":"seats","key":"F7","value":{"by":"bob"},"version":0}),
        &mut early,
    );
    assert_eq!(lost["code"], "conflict", "{lost}");
    assert_eq!(
        lost["current"],
        json!({"key":"F7","value":{"by":"alice"},"version":1})
    );
    let got = clients[1].request(
        json!({"op":"get","id":3,"channel":"seats","key":"F7"}),
        &mut early,
    );
    assert_eq!(
        (got["value"].clone(), got["version"].as_u64()),
        (json!({"by":"alice"}), Some(1)),
        "{got}"
    );
    let missing = clients[0].request(
        json!({"op":"get","id":4,"channel":"seats","key":"A1"}),
        &mut early,
    );
    assert_eq!(
        (missing["value"].clone(), missing["version"].as_u64()),
        (Value::Null, Some(0))
    );
    let bad_del = clients[0].request(
        json!({"op":"del","id":5,"channel":"seats","key":"F7","version":7}),
        &mut early,
    );
    assert_eq!(bad_del["code"], "conflict");
    clients[0].request(
        json!({"op":"set","id":6,"channel":"seats","key":"A1","value":1,"version":0}),
        &mut early,
    );
    let del = clients[0].request(
        json!({"op":"del","id":7,"channel":"seats","key":"F7","version":1}),
        &mut early,
    );
    assert_eq!(del["version"], 2, "{del}");
    let state = clients[1].request(json!({"op":"state","id":8,"channel":"seats"}), &mut early);
    assert_eq!(
        state["keys"],
        json!({"A1":{"value":1,"version":1}}),
        "{state}"
    );
    // The snapshot's seq is where a subscription picks up without a gap.
    let at = state["seq"].as_u64().unwrap();
    let mut later = server.tcp();
    let reply = later.request(
        json!({"op":"sub","id":9,"channel":"seats","since":at,"epoch":state["epoch"]}),
        &mut early,
    );
    assert_eq!(reply["recovered"], true);
    clients[0].request(
        json!({"op":"set","id":10,"channel":"seats","key":"A1","value":2,"version":1}),
        &mut early,
    );
    assert_eq!(
        later.recv()["data"],
        json!({"key":"A1","version":2,"value":2})
    );
    let anon = clients[0].request(
        json!({"op":"set","id":11,"channel":"private-x","key":"k","value":1,"version":0}),
        &mut early,
    );
    assert_eq!(anon["code"], "forbidden");
}

#[test]
fn the_http_api_reads_and_writes_state_with_if_match() {
    let server = Server::start(2, "");
    let put = |body: &str, headers: &str| {
        server.http_with(
            "PUT",
            "/api/state?channel=cinema&key=B2",
            body,
            &format!("Authorization: Bearer test-key\r\n{headers}"),
        )
    };
    let (status, body) = put(r#"{"value":"sold","version":0}"#, "");
    assert_eq!((status, body.as_str()), (200, r#"{"seq":1,"version":1}"#));
    let (status, body) = put(r#""again""#, "If-Match: 0\r\n");
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["current"],
        json!({"key":"B2","value":"sold","version":1})
    );
    assert_eq!(put(r#""free""#, "If-Match: \"1\"\r\n").0, 200);
    let (status, body) = server.http("GET", "/api/state?channel=cinema", "");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["keys"]["B2"].clone(), body["seq"].as_u64()),
        (json!({"value":"free","version":2}), Some(2))
    );
    assert_eq!(put("not json", "").0, 400);
    assert_eq!(
        server
            .http_with("GET", "/api/state?channel=cinema", "", "")
            .0,
        401
    );
}

#[test]
fn five_hundred_clients_racing_for_a_hundred_seats_make_exactly_a_hundred_winners() {
    let mut server = Server::start(2, "[limits]\nmax_connections = 2000\n");
    const SEATS: usize = 100;
    const CLIENTS: usize = 500;
    let mut clients: Vec<common::TcpClient> = (0..CLIENTS).map(|_| server.tcp()).collect();
    let workers: std::collections::HashSet<usize> = clients
        .iter()
        .take(20)
        .map(|c| server.worker_of(c.local_addr()))
        .collect();
    assert_eq!(workers.len(), 2, "clients on both workers");
    // Everyone sends first, then everyone reads: the requests race.
    for (i, c) in clients.iter_mut().enumerate() {
        let seat = format!("S{:03}", i % SEATS);
        c.send(&json!({"op":"set","id":i,"channel":"hall","key":seat,"value":format!("client-{i}"),"version":0}));
    }
    let mut winners: HashMap<String, String> = HashMap::new();
    let mut told: Vec<(String, String)> = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let seat = format!("S{:03}", i % SEATS);
        let reply = c.recv();
        match reply["op"].as_str() {
            Some("ok") => {
                assert_eq!(reply["version"], 1);
                assert!(
                    winners.insert(seat, format!("client-{i}")).is_none(),
                    "two winners for one seat"
                );
            }
            _ => {
                assert_eq!(reply["code"], "conflict", "{reply}");
                assert_eq!(reply["current"]["version"], 1);
                told.push((
                    seat,
                    reply["current"]["value"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    assert_eq!(winners.len(), SEATS, "exactly one winner per seat");
    assert_eq!(told.len(), CLIENTS - SEATS);
    for (seat, holder) in &told {
        assert_eq!(
            &winners[seat], holder,
            "every loser is told the current holder"
        );
    }
    let snapshot = |c: &mut common::TcpClient| -> BTreeMap<String, Value> {
        let state = c.request(
            json!({"op":"state","id":"s","channel":"hall"}),
            &mut Vec::new(),
        );
        serde_json::from_value(state["keys"].clone()).unwrap()
    };
    let first = snapshot(&mut clients[0]);
    assert_eq!(first.len(), SEATS);
    for (seat, holder) in &winners {
        assert_eq!(first[seat], json!({"value":holder,"version":1}));
    }
    for c in clients.iter_mut().step_by(50) {
        assert_eq!(snapshot(c), first, "every client sees the same state");
    }
    drop(clients);
    assert!(server.cli(&["stop"]).status.success());
    server.wait_exit();
    server.launch();
    assert_eq!(
        snapshot(&mut server.tcp()),
        first,
        "and so does a restarted server"
    );
}
