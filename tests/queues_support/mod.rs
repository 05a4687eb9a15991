//! Shared by the queue tests: subscribers on every worker, counting what
//! they get, and the connectors' status.
#![allow(dead_code)]

pub mod amqp;

use std::time::Duration;

use serde_json::Value;
use syncd::connectors::ConnectorStatus;

use crate::common::{Client, Server};

/// The connectors of every worker, as `syncd status --json` reports them.
pub fn connectors(server: &Server) -> Vec<ConnectorStatus> {
    server
        .status()
        .workers
        .into_iter()
        .filter_map(|w| w.stats)
        .flat_map(|s| s.connectors)
        .collect()
}

pub fn ingest(server: &Server) -> ConnectorStatus {
    connectors(server)
        .into_iter()
        .find(|c| c.role == "ingest")
        .expect("an ingest in status")
}

/// The next `n` `msg` frames (20 s without one fails the test).
pub fn take_msgs(client: &mut dyn Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = client
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("only {} of {n} messages arrived", got.len()));
        if frame["op"] == "msg" {
            got.push(frame);
        }
    }
    got
}

/// Nothing more arrives for a while (no duplicate after the last one).
pub fn no_more_msgs(client: &mut dyn Client) {
    while let Some(frame) = client.recv_timeout(Duration::from_millis(300)) {
        assert_ne!(frame["op"], "msg", "an extra message: {frame}");
    }
}

/// `msgs` are seqs `first..` in order and carry `{"n": from..}` in order.
pub fn assert_in_order(msgs: &[Value], first_seq: u64, first_n: u64) {
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"].as_u64(), Some(first_seq + i as u64), "{m}");
        assert_eq!(m["data"]["n"].as_u64(), Some(first_n + i as u64), "{m}");
    }
}

/// Waits until every worker answers again (one may have been killed) and
/// `channel` holds `n` messages, then checks they are the queue's `n`
/// messages once each, in order (seqs 1..=n carrying `n` 0..).
pub fn every_message_stored_once(server: &Server, channel: &str, n: u64) {
    crate::common::eventually("every message is published", || {
        server
            .try_status()
            .is_ok_and(|s| s.workers.iter().all(|w| w.stats.is_some()))
            && history(server, channel).len() as u64 >= n
    });
    let all = history(server, channel);
    assert_in_order(&all, 1, 0);
    assert_eq!(all.len() as u64, n, "no duplicate");
}

/// Every message of `channel` kept by the server, by `GET /api/history`.
pub fn history(server: &Server, channel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let path = format!("/api/history?channel={channel}&since={since}&limit=1000");
        let (status, body) = server.http("GET", &path, "");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let page = v["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        since = page.last().unwrap()["seq"].as_u64().unwrap();
        out.extend(page);
    }
}
