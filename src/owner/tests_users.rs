//! The owner's rules for keyed state, idempotency, inboxes (acks,
//! redelivery, dead letters) and presence, driven in process.

use std::time::Duration;

use bytes::Bytes;

use super::testing::{config, data_of, seqs_of, Harness};
use super::{Command, PublishOptions, Query};
use crate::config::Durability;
use crate::store::message::Stored;
use crate::store::open::Loaded;

fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        idempotency_key: Some(key.into()),
        ..PublishOptions::default()
    }
}

fn json(h: &Harness, to: super::ReplyTo) -> serde_json::Value {
    let answer = h.answer(to).unwrap();
    serde_json::from_slice(&answer.lines[0]).unwrap()
}

fn event(line: &Bytes) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
    (
        v["op"].as_str().unwrap().into(),
        v["uid"].as_str().unwrap().into(),
    )
}

// Keyed state

#[test]
fn a_first_write_needs_version_zero() {
    let mut h = Harness::commit();
    let wrong = h.set("s", "k", Some("1"), 3);
    let right = h.set("s", "k", Some("1"), 0);
    h.settle();
    assert_eq!(h.acked(wrong).unwrap_err().code, "conflict");
    let acked = h.acked(right).unwrap();
    assert_eq!((acked.seq, acked.version), (1, Some(1)));
}

#[test]
fn a_cas_conflict_reports_the_current_value_and_version() {
    let mut h = Harness::commit();
    h.set("s", "k", Some("\"a\""), 0);
    h.settle();
    let late = h.set("s", "k", Some("\"b\""), 0);
    let e = h.acked(late).unwrap_err();
    assert_eq!(e.code, "conflict");
    let current: serde_json::Value = serde_json::from_str(&e.current.unwrap()).unwrap();
    assert_eq!(
        current,
        serde_json::json!({"key":"k","value":"a","version":1})
    );
}

#[test]
fn racing_writers_of_one_version_have_one_winner() {
    let mut h = Harness::commit();
    let first = h.set("s", "k", Some("1"), 0);
    let second = h.set("s", "k", Some("2"), 0);
    assert_eq!(
        h.acked(second).unwrap_err().code,
        "conflict",
        "decided at once"
    );
    h.settle();
    assert_eq!(h.acked(first).unwrap().version, Some(1));
}

#[test]
fn deleting_an_absent_key_conflicts() {
    let mut h = Harness::commit();
    let to = h.set("s", "k", None, 0);
    assert_eq!(h.acked(to).unwrap_err().code, "conflict");
}

#[test]
fn versions_go_on_after_a_delete() {
    let mut h = Harness::commit();
    h.set("s", "k", Some("1"), 0);
    h.set("s", "k", None, 1);
    let again = h.set("s", "k", Some("3"), 2);
    h.settle();
    assert_eq!(h.acked(again).unwrap().version, Some(3));
}

#[test]
fn a_granted_write_is_published_as_a_message() {
    let mut h = Harness::commit();
    h.set("s", "k", Some("{\"x\":1}"), 0);
    h.settle();
    let (_, seq, line) = &h.delivered[0];
    assert_eq!(*seq, 1);
    let data: serde_json::Value = serde_json::from_str(&data_of(line)).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"key":"k","version":1,"value":{"x":1}})
    );
}

#[test]
fn get_reads_only_what_is_stored() {
    let mut h = Harness::commit();
    h.set("s", "k", Some("1"), 0);
    let before = h.query("s", Query::Get { key: "k".into() });
    assert_eq!(json(&h, before)["version"], 0, "decided but not stored");
    h.settle();
    let after = h.query("s", Query::Get { key: "k".into() });
    assert_eq!(json(&h, after)["value"], 1);
}

#[test]
fn a_state_snapshot_agrees_with_its_seq() {
    let mut h = Harness::commit();
    h.set("s", "a", Some("1"), 0);
    h.publish("s", "\"plain\"");
    h.set("s", "b", Some("2"), 0);
    h.settle();
    h.set("s", "a", Some("9"), 1);
    let to = h.query(
        "s",
        Query::State {
            after: None,
            limit: 100,
        },
    );
    let snapshot = json(&h, to);
    assert_eq!(snapshot["seq"], 3, "the pending write is not in it");
    assert_eq!(
        snapshot["keys"]["a"],
        serde_json::json!({"value":1,"version":1})
    );
    assert_eq!(snapshot["keys"]["b"]["version"], 1);
}

#[test]
fn state_loaded_from_disk_is_read_and_versioned_on() {
    let loaded = Loaded {
        state: vec![("s".into(), "k".into(), Some("7".into()), 4)],
        ..Loaded::default()
    };
    let mut h = Harness::loaded(config(Durability::Commit, 1000, 1 << 20), loaded);
    let to = h.query("s", Query::Get { key: "k".into() });
    assert_eq!(json(&h, to)["version"], 4);
    let next = h.set("s", "k", Some("8"), 4);
    h.settle();
    assert_eq!(h.acked(next).unwrap().version, Some(5));
}

// Idempotency

#[test]
fn an_idempotent_retry_gets_the_first_seq() {
    let mut h = Harness::commit();
    let first = h.publish_with("a", "1", keyed("k1"));
    h.settle();
    let retry = h.publish_with("a", "1", keyed("k1"));
    assert_eq!(h.acked(retry).unwrap().seq, h.acked(first).unwrap().seq);
    assert_eq!(h.delivered_seqs("a"), [1], "published once");
}

#[test]
fn a_retry_while_the_first_is_stored_waits_for_its_seq() {
    let mut h = Harness::commit();
    let first = h.publish_with("a", "1", keyed("k1"));
    let retry = h.publish_with("a", "1", keyed("k1"));
    assert!(h.replies.is_empty());
    h.settle();
    assert_eq!(h.acked(retry).unwrap().seq, 1);
    assert_eq!(h.acked(first).unwrap().seq, 1);
    assert_eq!(h.engine.rows["a"].len(), 1);
}

#[test]
fn idempotency_keys_are_per_channel() {
    let mut h = Harness::commit();
    h.publish("b", "0");
    let a = h.publish_with("a", "1", keyed("k1"));
    let b = h.publish_with("b", "1", keyed("k1"));
    h.settle();
    assert_eq!((h.acked(a).unwrap().seq, h.acked(b).unwrap().seq), (1, 2));
}

#[test]
fn an_idempotency_key_is_forgotten_after_its_window() {
    let mut h = Harness::commit();
    h.publish_with("a", "1", keyed("k1"));
    h.settle();
    h.tick();
    h.advance(Duration::from_secs(61));
    h.tick();
    let late = h.publish_with("a", "1", keyed("k1"));
    h.settle();
    assert_eq!(h.acked(late).unwrap().seq, 2, "published again");
}

#[test]
fn a_queue_ingest_keeps_its_keys_for_its_own_dedupe_window() {
    let mut h = Harness::commit();
    let ingested = |key: &str| PublishOptions {
        ingest: Some(Duration::from_secs(2 * 3600)),
        ..keyed(key)
    };
    let first = h.publish_with("a", "1", ingested("m-1"));
    h.settle();
    assert!(!h.acked(first).unwrap().duplicate);
    h.tick();
    // Past `idempotency_window` (60 s here), within the ingest's window.
    h.advance(Duration::from_secs(61));
    h.tick();
    let redelivered = h.publish_with("a", "1", ingested("m-1"));
    h.settle();
    let acked = h.acked(redelivered).unwrap();
    assert_eq!((acked.seq, acked.duplicate), (1, true));
    h.advance(Duration::from_secs(2 * 3600));
    h.tick();
    let late = h.publish_with("a", "1", ingested("m-1"));
    h.settle();
    assert_eq!(h.acked(late).unwrap().seq, 2, "published again");
}

#[test]
fn idempotency_keys_loaded_from_disk_still_answer() {
    let loaded = Loaded {
        channels: vec![("a".into(), "g0".into(), 4)],
        idempotency: vec![("a".into(), "k1".into(), 3, 1_000_000 + 30_000)],
        ..Loaded::default()
    };
    let mut h = Harness::loaded(config(Durability::Commit, 1000, 1 << 20), loaded);
    let retry = h.publish_with("a", "1", keyed("k1"));
    assert_eq!(h.acked(retry).unwrap().seq, 3);
}

// Inboxes

#[test]
fn an_inbox_replays_what_is_not_acked() {
    let mut h = Harness::commit();
    for n in 0..4 {
        h.publish("#bob", &n.to_string());
    }
    h.settle();
    let ack = h.query("#bob", Query::Ack { seq: 2 });
    h.settle();
    assert!(h.answer(ack).is_ok());
    let to = h.query("#bob", Query::Inbox);
    assert_eq!(seqs_of(&h.answer(to).unwrap()), [3, 4]);
}

#[test]
fn an_ack_is_answered_once_stored() {
    let mut h = Harness::commit();
    let ack = h.query("#bob", Query::Ack { seq: 1 });
    assert!(h.replies_to(ack).is_empty());
    h.settle();
    assert!(h.answer(ack).is_ok());
    assert_eq!(h.engine.acks["#bob"], 1);
}

#[test]
fn unacked_messages_are_resent_only_while_the_user_is_online() {
    let mut h = Harness::commit();
    h.publish("#bob", "1");
    h.settle();
    h.advance(Duration::from_secs(11));
    h.tick();
    assert_eq!(h.delivered_seqs("#bob"), [1], "offline: not resent");
    h.presence(0, "#bob", "bob", 1);
    h.advance(Duration::from_secs(11));
    h.tick();
    assert_eq!(h.delivered_seqs("#bob"), [1, 1], "resent with the same seq");
}

#[test]
fn redelivery_backs_off_exponentially() {
    let mut h = Harness::new(config(Durability::Commit, 1000, 1 << 20));
    h.presence(0, "#bob", "bob", 1);
    h.publish("#bob", "1");
    h.settle();
    let mut resent_at = Vec::new();
    for second in 1..=40 {
        h.advance(Duration::from_secs(1));
        let before = h.delivered.len();
        h.tick();
        if h.delivered.len() > before {
            resent_at.push(second);
        }
    }
    assert_eq!(resent_at, [10, 30], "after 10 s, then 20 s more");
}

#[test]
fn an_ack_stops_redelivery() {
    let mut h = Harness::commit();
    h.presence(0, "#bob", "bob", 1);
    h.publish("#bob", "1");
    h.settle();
    h.query("#bob", Query::Ack { seq: 1 });
    h.settle();
    h.advance(Duration::from_secs(60));
    h.tick();
    assert_eq!(h.delivered_seqs("#bob"), [1]);
}

#[test]
fn out_of_attempts_a_message_becomes_a_dead_letter() {
    let mut h = Harness::commit();
    h.presence(0, "#bob", "bob", 1);
    h.publish("#bob", "{\"n\":1}");
    h.settle();
    for _ in 0..100 {
        h.advance(Duration::from_secs(10));
        h.tick();
    }
    assert_eq!(h.delivered_seqs("#bob"), [1, 1, 1], "max_attempts sends");
    assert_eq!(h.dead.len(), 1);
    let report: serde_json::Value = serde_json::from_str(&h.dead[0]).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"uid":"bob","channel":"#bob","seq":1,"reason":"max_attempts","data":{"n":1}})
    );
    h.settle();
    assert_eq!(h.engine.dead_letters, [("#bob".into(), 1, "max_attempts")]);
}

#[test]
fn an_expired_direct_message_is_a_dead_letter_even_offline() {
    let mut h = Harness::commit();
    h.publish_with("#bob", "1", PublishOptions::ttl(Some(5)));
    h.settle();
    h.advance(Duration::from_secs(6));
    h.tick();
    let report: serde_json::Value = serde_json::from_str(&h.dead[0]).unwrap();
    assert_eq!(report["reason"], "expired");
}

#[test]
fn reconnecting_restarts_the_ack_timeout() {
    let mut h = Harness::commit();
    h.publish("#bob", "1");
    h.settle();
    h.advance(Duration::from_secs(9));
    h.presence(0, "#bob", "bob", 1);
    h.advance(Duration::from_secs(5));
    h.tick();
    assert_eq!(
        h.delivered_seqs("#bob"),
        [1],
        "the replay on joining counts"
    );
    h.advance(Duration::from_secs(6));
    h.tick();
    assert_eq!(h.delivered_seqs("#bob"), [1, 1]);
}

#[test]
fn unacked_messages_loaded_from_disk_wait_for_their_user() {
    let stored = Stored {
        seq: 2,
        expires_ms: i64::MAX,
        data: "\"hi\"".into(),
    };
    let loaded = Loaded {
        channels: vec![("#bob".into(), "g0".into(), 2)],
        acks: vec![("#bob".into(), 1)],
        unacked: vec![("#bob".into(), stored)],
        ..Loaded::default()
    };
    let mut h = Harness::loaded(config(Durability::Commit, 1000, 1 << 20), loaded);
    h.presence(0, "#bob", "bob", 1);
    h.advance(Duration::from_secs(11));
    h.tick();
    assert_eq!(h.delivered_seqs("#bob"), [2]);
    assert_eq!(data_of(&h.delivered[0].2), "\"hi\"");
}

// Presence

#[test]
fn a_user_joins_once_whatever_its_connections_and_workers() {
    let mut h = Harness::commit();
    h.presence(0, "room", "ann", 1);
    h.presence(0, "room", "ann", 2);
    h.presence(1, "room", "ann", 1);
    assert_eq!(h.events.len(), 1);
    assert_eq!(event(&h.events[0].1), ("join".into(), "ann".into()));
}

#[test]
fn a_user_leaves_when_its_last_connection_goes() {
    let mut h = Harness::commit();
    h.presence(0, "room", "ann", 2);
    h.presence(1, "room", "ann", 1);
    h.presence(0, "room", "ann", 0);
    assert_eq!(h.events.len(), 1, "still on worker 1");
    h.presence(1, "room", "ann", 0);
    assert_eq!(event(&h.events[1].1), ("leave".into(), "ann".into()));
}

#[test]
fn users_are_tracked_per_uid() {
    let mut h = Harness::commit();
    h.presence(0, "room", "ann", 1);
    h.presence(0, "room", "bob", 1);
    h.presence(0, "room", "ann", 0);
    let ops: Vec<_> = h.events.iter().map(|(_, l)| event(l)).collect();
    let expected = [("join", "ann"), ("join", "bob"), ("leave", "ann")];
    assert_eq!(ops.len(), 3);
    for ((op, uid), (o, u)) in ops.iter().zip(expected) {
        assert_eq!((op.as_str(), uid.as_str()), (o, u));
    }
}

#[test]
fn a_worker_going_down_takes_its_users_with_it() {
    let mut h = Harness::commit();
    h.presence(1, "room", "ann", 2);
    h.presence(0, "room", "bob", 1);
    h.presence(1, "room", "bob", 1);
    h.handle(Command::SlotDown { slot: 1 });
    let ops: Vec<_> = h.events.iter().map(|(_, l)| event(l)).collect();
    assert_eq!(ops.last().unwrap(), &("leave".into(), "ann".into()));
    assert_eq!(ops.len(), 3, "bob is still on worker 0");
}

#[test]
fn presence_and_user_status_are_answered_as_json() {
    let mut h = Harness::commit();
    h.presence(0, "room", "ann", 1);
    h.presence(0, "#ann", "ann", 2);
    h.presence(1, "#ann", "ann", 1);
    let who = h.query("room", Query::Presence);
    assert_eq!(json(&h, who)["uids"], serde_json::json!(["ann"]));
    let user = h.query("#ann", Query::User { uid: "ann".into() });
    assert_eq!(
        json(&h, user),
        serde_json::json!({"uid":"ann","online":true,"connections":3})
    );
}

#[test]
fn inbox_presence_sends_no_join_or_leave() {
    let mut h = Harness::commit();
    h.presence(0, "#ann", "ann", 1);
    h.presence(0, "#ann", "ann", 0);
    assert!(h.events.is_empty());
}
