//! The seam to storage with an engine that numbers messages itself, as one
//! shared by several servers does: the core's numbers are provisional, and
//! what it releases, answers and replays carries the engine's seqs.

use super::testing::{config, resume, seqs_of, Harness};
use super::PublishOptions;
use crate::config::Durability;
use crate::store::message::Stored;

/// A core on an engine that numbers, where another server has already
/// stored messages 1..=`before` of `channel`.
fn shared(durability: Durability, channel: &str, before: u64) -> Harness {
    let mut c = config(durability, 1000, 1 << 20);
    c.numbered_by_engine = true;
    let mut h = Harness::new(c);
    h.engine.numbers = true;
    let rows = h.engine.rows.entry(channel.into()).or_default();
    for seq in 1..=before {
        let data = format!("\"elsewhere {seq}\"");
        let expires_ms = i64::MAX;
        rows.insert(
            seq,
            Stored {
                seq,
                expires_ms,
                data,
            },
        );
    }
    h
}

#[test]
fn publishes_take_the_seqs_the_engine_gives() {
    let mut h = shared(Durability::Commit, "a", 5);
    let first = h.publish("a", "1");
    let second = h.publish("a", "2");
    h.settle();
    assert_eq!(h.acked(first).unwrap().seq, 6);
    assert_eq!(h.acked(second).unwrap().seq, 7);
    assert_eq!(h.delivered_seqs("a"), [6, 7]);
    let (_, _, line) = &h.delivered[0];
    assert_eq!(
        &line[..],
        b"{\"op\":\"msg\",\"channel\":\"a\",\"seq\":6,\"data\":1}\n",
        "the line is made with the final seq"
    );
    let sub = h.query("a", resume(5, "g0"));
    h.settle();
    let answer = h.answer(sub).unwrap();
    assert_eq!(answer.seq, 7);
    assert_eq!(seqs_of(&answer), [6, 7]);
}

#[test]
fn memory_durability_waits_for_the_engines_number() {
    let mut h = shared(Durability::Memory, "a", 2);
    let to = h.publish("a", "1");
    assert!(
        h.replies.is_empty(),
        "no seq to answer with before the commit"
    );
    assert!(h.delivered.is_empty());
    h.settle();
    assert_eq!(h.acked(to).unwrap().seq, 3);
}

#[test]
fn a_retry_gets_the_engines_seq_of_the_first_publish() {
    let mut h = shared(Durability::Commit, "a", 9);
    let key = PublishOptions {
        idempotency_key: Some("k".into()),
        ..PublishOptions::default()
    };
    let first = h.publish_with("a", "1", key.clone());
    let retry = h.publish_with("a", "1", key.clone());
    h.settle();
    let late = h.publish_with("a", "1", key);
    h.settle();
    assert_eq!(h.acked(first).unwrap().seq, 10);
    assert_eq!(h.acked(retry).unwrap().seq, 10);
    assert_eq!(h.acked(late).unwrap().seq, 10);
    assert_eq!(h.delivered_seqs("a"), [10], "published once");
}

#[test]
fn an_inbox_replays_from_the_ack_the_engine_holds() {
    let mut h = shared(Durability::Commit, "#u", 4);
    h.publish("#u", "\"hi\"");
    h.settle();
    let inbox = h.query("#u", super::Query::Inbox);
    h.settle();
    let replay = seqs_of(&h.answer(inbox).unwrap());
    assert_eq!(
        replay,
        [1, 2, 3, 4, 5],
        "what other servers stored is unacked too"
    );
    // Acked through another server: this core never saw the ack.
    h.engine.acks.insert("#u".into(), 3);
    let inbox = h.query("#u", super::Query::Inbox);
    h.settle();
    assert_eq!(seqs_of(&h.answer(inbox).unwrap()), [4, 5]);
}

#[test]
fn redelivery_asks_the_engine_which_knows_acks_and_presence_everywhere() {
    use std::time::Duration;
    let mut h = shared(Durability::Commit, "#u", 0);
    h.publish("#u", "1");
    h.publish("#u", "2");
    h.settle();
    // Offline everywhere: parked, no attempt spent.
    h.advance(Duration::from_secs(11));
    h.tick();
    h.settle();
    assert!(h.engine.redelivered.is_empty());
    assert_eq!(h.delivered_seqs("#u"), [1, 2], "never from the core itself");
    // Online on some server: sent through the engine, with the same seq.
    h.presence(0, "#u", "u", 1);
    h.settle();
    h.advance(Duration::from_secs(11));
    h.tick();
    h.settle();
    assert_eq!(
        h.engine.redelivered,
        [("#u".to_string(), 1), ("#u".to_string(), 2)]
    );
    // Acked through another server: no more sends, and no dead letter.
    h.engine.acks.insert("#u".into(), 2);
    for _ in 0..6 {
        h.advance(Duration::from_secs(100));
        h.tick();
        h.settle();
    }
    assert_eq!(h.engine.redelivered.len(), 2);
    assert!(h.dead.is_empty(), "{:?}", h.dead);
}

#[test]
fn a_dead_letter_on_a_shared_engine_is_checked_against_the_ack_first() {
    use std::time::Duration;
    let mut h = shared(Durability::Commit, "#u", 0);
    h.presence(0, "#u", "u", 1);
    h.publish("#u", "1");
    h.settle();
    for _ in 0..8 {
        h.advance(Duration::from_secs(100));
        h.tick();
        h.settle();
    }
    assert_eq!(h.engine.redelivered.len(), 2, "max_attempts 3: two resends");
    assert_eq!(h.dead.len(), 1, "then a dead letter: {:?}", h.dead);
    assert!(h.dead[0].contains("max_attempts"));
    assert!(h.engine.dead_letters.is_empty(), "reported, not stored");
}

#[test]
fn the_engine_decides_compare_and_set_across_servers() {
    let mut h = shared(Durability::Commit, "s", 0);
    let first = h.set("s", "k", Some("1"), 0);
    let loser = h.set("s", "k", Some("2"), 0);
    h.settle();
    let won = h.acked(first).unwrap();
    assert_eq!((won.seq, won.version), (1, Some(1)));
    let lost = h.acked(loser).unwrap_err();
    assert_eq!(lost.code, "conflict");
    let (_, _, line) = &h.delivered[0];
    assert_eq!(
        &line[..],
        b"{\"op\":\"msg\",\"channel\":\"s\",\"seq\":1,\"data\":{\"key\":\"k\",\"value\":1,\"version\":1}}\n"
    );
}

#[test]
fn a_write_the_engine_cannot_store_fails_alone() {
    let mut h = shared(Durability::Commit, "a", 0);
    h.engine.unreachable = true;
    let to = h.publish("a", "1");
    h.settle();
    assert_eq!(h.acked(to).unwrap_err().code, "unavailable");
    assert!(!h.core.is_fatal(), "the server goes on");
    h.engine.unreachable = false;
    let again = h.publish("a", "2");
    h.settle();
    assert_eq!(h.acked(again).unwrap().seq, 1);
}

#[test]
fn presence_and_state_are_the_engines_across_servers() {
    let mut h = shared(Durability::Commit, "room-1", 0);
    h.presence(0, "room-1", "alice", 1);
    h.presence(1, "room-1", "alice", 2);
    h.settle();
    assert!(
        h.events.is_empty(),
        "the engine tells every server's subscribers"
    );
    let asked = h.query("room-1", super::Query::Presence);
    h.settle();
    let line = h.answer(asked).unwrap().lines[0].clone();
    assert_eq!(
        &line[..],
        b"{\"channel\":\"room-1\",\"uids\":[\"alice\"]}\n"
    );
    h.presence(0, "room-1", "alice", 0);
    h.presence(1, "room-1", "alice", 0);
    h.settle();
    assert!(h.engine.members.is_empty(), "gone from this server");
    h.set("room-1", "k", Some("true"), 0);
    h.settle();
    let asked = h.query("room-1", super::Query::Get { key: "k".into() });
    h.settle();
    let line = h.answer(asked).unwrap().lines[0].clone();
    assert_eq!(
        &line[..],
        b"{\"channel\":\"room-1\",\"key\":\"k\",\"value\":true,\"version\":1}\n"
    );
}
