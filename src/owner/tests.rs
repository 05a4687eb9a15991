//! The owner's rules for numbering, storing, resume and history, driven in
//! process through commands, with storage in memory.

use std::time::Duration;

use super::testing::{config, resume, seqs_of, Harness};
use super::{Command, PublishOptions, Query, ReplyTo};
use crate::config::Durability;
use crate::store::open::Loaded;
use crate::store::{Completion, Request};

fn none() -> Query {
    Query::Resume {
        since: None,
        epoch: None,
        upto: None,
    }
}

/// A core whose cache holds nothing, so every replay reads the disk.
fn no_cache() -> Harness {
    Harness::new(config(Durability::Commit, 1000, 0))
}

fn publish_n(h: &mut Harness, channel: &str, n: u64) {
    for i in 0..n {
        h.publish(channel, &i.to_string());
    }
    h.settle();
}

#[test]
fn seqs_start_at_one_and_are_contiguous_per_channel() {
    let mut h = Harness::commit();
    let a: Vec<ReplyTo> = (0..3).map(|_| h.publish("a", "1")).collect();
    let b = h.publish("b", "1");
    h.settle();
    let seqs: Vec<u64> = a.iter().map(|&t| h.acked(t).unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(h.acked(b).unwrap().seq, 1);
}

#[test]
fn a_publish_is_answered_and_delivered_only_once_stored() {
    let mut h = Harness::commit();
    let to = h.publish("a", "1");
    assert!(h.replies.is_empty(), "no answer before the commit");
    assert!(h.delivered.is_empty(), "nobody sees it before the commit");
    h.settle();
    assert_eq!(h.acked(to).unwrap().seq, 1);
    assert_eq!(h.delivered_seqs("a"), [1]);
}

#[test]
fn memory_durability_releases_at_once() {
    let mut h = Harness::new(config(Durability::Memory, 1000, 1 << 20));
    let to = h.publish("a", "1");
    assert_eq!(h.acked(to).unwrap().seq, 1);
    assert_eq!(h.delivered_seqs("a"), [1]);
    assert_eq!(h.engine.queued(), 1, "still written, in the background");
}

#[test]
fn the_delivered_line_is_the_msg_frame() {
    let mut h = Harness::commit();
    h.publish("room", "{\"x\":1}");
    h.settle();
    let (_, _, line) = &h.delivered[0];
    assert_eq!(
        &line[..],
        b"{\"op\":\"msg\",\"channel\":\"room\",\"seq\":1,\"data\":{\"x\":1}}\n"
    );
}

#[test]
fn commits_reported_out_of_order_release_in_seq_order() {
    let mut h = Harness::commit();
    for _ in 0..3 {
        h.publish("a", "1");
    }
    h.handle(Command::Completed(Completion::Committed {
        upto: 2,
        count: 2,
        numbered: Vec::new(),
    }));
    h.handle(Command::Completed(Completion::Committed {
        upto: 1,
        count: 1,
        numbered: Vec::new(),
    }));
    assert_eq!(h.delivered_seqs("a"), [1, 2]);
    h.handle(Command::Completed(Completion::Committed {
        upto: 3,
        count: 1,
        numbered: Vec::new(),
    }));
    assert_eq!(h.delivered_seqs("a"), [1, 2, 3]);
    assert_eq!(h.core.stats().stored, 4, "counted as reported");
}

#[test]
fn a_sub_answers_the_delivered_seq_not_the_assigned_one() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 2);
    h.publish("a", "3");
    let to = h.query("a", none());
    let answer = h.answer(to).unwrap();
    assert_eq!((answer.seq, answer.recovered), (2, None));
    assert!(answer.lines.is_empty());
}

#[test]
fn a_sub_before_the_first_message_names_the_genesis_epoch_and_stores_nothing() {
    let mut h = Harness::commit();
    let to = h.query("nobody-yet", none());
    let answer = h.answer(to).unwrap();
    assert_eq!((answer.seq, answer.epoch.as_str()), (0, "g0"));
    assert_eq!(h.core.channels(), 0, "asking stores nothing");
    let first = h.publish("nobody-yet", "1");
    h.settle();
    assert_eq!(h.acked(first).unwrap().seq, 1);
    let again = h.query("nobody-yet", none());
    assert_eq!(
        h.answer(again).unwrap().epoch,
        "g0",
        "the epoch it was given"
    );
}

#[test]
fn exact_resume_from_the_cache() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 10);
    let to = h.query("a", resume(4, "g0"));
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(true));
    assert_eq!(seqs_of(&answer), (5..=10).collect::<Vec<_>>());
    assert_eq!(h.core.stats().disk_reads, 0);
}

#[test]
fn exact_resume_from_disk() {
    let mut h = no_cache();
    publish_n(&mut h, "a", 10);
    let to = h.query("a", resume(4, "g0"));
    assert!(h.replies_to(to).is_empty(), "waits for the disk");
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(true));
    assert_eq!(seqs_of(&answer), (5..=10).collect::<Vec<_>>());
    assert_eq!(h.core.stats().disk_reads, 1);
}

#[test]
fn a_resume_at_the_current_seq_replays_nothing_and_is_recovered() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 3);
    let answer = {
        let to = h.query("a", resume(3, "g0"));
        h.answer(to).unwrap()
    };
    assert_eq!((answer.seq, answer.recovered), (3, Some(true)));
    assert!(answer.lines.is_empty());
}

#[test]
fn a_resume_without_an_epoch_is_taken_as_the_current_one() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 3);
    let query = Query::Resume {
        since: Some(1),
        epoch: None,
        upto: None,
    };
    let to = h.query("a", query);
    assert_eq!(seqs_of(&h.answer(to).unwrap()), [2, 3]);
}

#[test]
fn a_resume_across_an_epoch_change_is_not_recovered() {
    let loaded = Loaded {
        channels: vec![("a".into(), "e2".into(), 5)],
        ..Loaded::default()
    };
    let mut h = Harness::loaded(config(Durability::Commit, 1000, 1 << 20), loaded);
    publish_n(&mut h, "a", 2);
    let to = h.query("a", resume(3, "e1"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(false));
    assert_eq!((answer.seq, answer.epoch.as_str()), (7, "e2"));
    assert_eq!(answer.oldest, Some(6), "the oldest the disk holds");
    assert!(answer.lines.is_empty(), "nothing replayed across epochs");
}

#[test]
fn a_resume_in_the_loaded_epoch_continues_after_a_restart() {
    let loaded = Loaded {
        channels: vec![("a".into(), "e1".into(), 5)],
        ..Loaded::default()
    };
    let mut h = Harness::loaded(config(Durability::Commit, 1000, 1 << 20), loaded);
    let to = h.publish("a", "1");
    h.settle();
    assert_eq!(h.acked(to).unwrap().seq, 6, "numbering goes on from disk");
    let to = h.query("a", resume(5, "e1"));
    let answer = h.answer(to).unwrap();
    assert_eq!((answer.recovered, seqs_of(&answer)), (Some(true), vec![6]));
}

#[test]
fn a_resume_from_the_future_is_not_recovered() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 3);
    let to = h.query("a", resume(9, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!((answer.recovered, answer.oldest), (Some(false), Some(1)));
}

#[test]
fn a_gap_beyond_retention_is_not_recovered_and_names_the_oldest() {
    let mut h = Harness::new(config(Durability::Commit, 5, 1 << 20));
    h.engine.history_size = Some(5);
    publish_n(&mut h, "a", 12);
    let to = h.query("a", resume(2, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(false));
    assert_eq!((answer.seq, answer.oldest), (12, Some(8)));
    assert!(answer.lines.is_empty());
}

#[test]
fn a_gap_beyond_history_size_is_not_recovered_even_before_trimming() {
    let mut h = Harness::new(config(Durability::Commit, 5, 1 << 20));
    publish_n(&mut h, "a", 12);
    let to = h.query("a", resume(2, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(false));
    assert_eq!(answer.oldest, Some(8), "the oldest within history_size");
}

#[test]
fn a_gap_after_ttl_expiry_is_not_recovered() {
    let mut h = Harness::commit();
    let short = PublishOptions::ttl(Some(1));
    h.publish_with("a", "1", short.clone());
    h.publish_with("a", "2", short);
    h.publish("a", "3");
    h.settle();
    h.advance(Duration::from_secs(2));
    let to = h.query("a", resume(0, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(false));
    assert_eq!(answer.oldest, Some(3), "the oldest unexpired message");
}

#[test]
fn a_truncated_replay_from_disk_is_not_recovered() {
    let mut h = no_cache();
    publish_n(&mut h, "a", 10);
    h.engine.lose_after = Some(7);
    let to = h.query("a", resume(2, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, Some(false), "all of the gap or nothing");
    assert!(answer.lines.is_empty());
    assert_eq!(answer.oldest, Some(1));
}

#[test]
fn with_nothing_retained_the_oldest_is_the_next_seq() {
    let mut h = Harness::commit();
    h.publish_with("a", "1", PublishOptions::ttl(Some(1)));
    h.settle();
    h.advance(Duration::from_secs(2));
    let to = h.query("a", resume(0, "g0"));
    h.settle();
    let answer = h.answer(to).unwrap();
    assert_eq!((answer.recovered, answer.oldest), (Some(false), Some(2)));
}

#[test]
fn history_returns_the_range_up_to_the_limit() {
    let mut h = Harness::commit();
    publish_n(&mut h, "a", 10);
    let to = h.query("a", Query::History { since: 3, limit: 4 });
    let answer = h.answer(to).unwrap();
    assert_eq!(answer.recovered, None);
    assert_eq!((answer.seq, seqs_of(&answer)), (10, vec![4, 5, 6, 7]));
}

#[test]
fn history_from_disk_matches_history_from_the_cache() {
    let query = Query::History {
        since: 0,
        limit: 100,
    };
    let mut cached = Harness::commit();
    let mut disk = no_cache();
    for h in [&mut cached, &mut disk] {
        publish_n(h, "a", 6);
    }
    let (a, b) = (cached.query("a", query.clone()), disk.query("a", query));
    disk.settle();
    assert_eq!(cached.answer(a), disk.answer(b));
}

#[test]
fn history_starts_at_the_oldest_retained() {
    let mut h = Harness::new(config(Durability::Commit, 3, 0));
    h.engine.history_size = Some(3);
    publish_n(&mut h, "a", 8);
    let to = h.query(
        "a",
        Query::History {
            since: 0,
            limit: 100,
        },
    );
    h.settle();
    assert_eq!(seqs_of(&h.answer(to).unwrap()), [6, 7, 8]);
}

#[test]
fn a_failed_store_answers_every_waiting_write_and_is_fatal() {
    let mut h = Harness::commit();
    let first = h.publish("a", "1");
    let second = h.publish("b", "1");
    h.engine.fail_appends = true;
    h.settle();
    for to in [first, second] {
        assert_eq!(h.acked(to).unwrap_err().code, "storage_failed");
    }
    assert!(h.core.is_fatal());
    assert!(h.delivered.is_empty(), "nothing unstored is seen");
}

#[test]
fn a_failed_store_fails_the_acks_waiting_for_it() {
    let mut h = Harness::commit();
    let ack = h.query("#bob", Query::Ack { seq: 1 });
    h.handle(Command::Completed(Completion::Failed {
        error: "disk full".into(),
    }));
    assert_eq!(h.answer(ack).unwrap_err().code, "storage_failed");
}

#[test]
fn nothing_is_numbered_after_the_store_failed() {
    let mut h = Harness::commit();
    h.publish("a", "1");
    h.engine.fail_appends = true;
    h.settle();
    let late = h.publish("a", "2");
    assert_eq!(h.acked(late).unwrap_err().code, "storage_failed");
}

#[test]
fn a_gone_engine_answers_reads_with_storage_failed() {
    let mut h = no_cache();
    publish_n(&mut h, "a", 3);
    h.engine.closed = true;
    let to = h.query("a", resume(1, "g0"));
    let error = h.answer(to).unwrap_err();
    assert_eq!(error.code, "storage_failed");
    assert!(error.message.contains("gone"), "{}", error.message);
}

#[test]
fn a_question_about_a_channel_owned_elsewhere_is_an_internal_error() {
    let mut cfg = config(Durability::Commit, 1000, 1 << 20);
    cfg.workers = 2;
    let shards = cfg.storage.shards;
    let mut h = Harness::new(cfg);
    let elsewhere = (0..)
        .map(|i| format!("c{i}"))
        .find(|c| crate::sync::shard::owner_of(c, shards, 2) == 1)
        .unwrap();
    let to = h.query(&elsewhere, none());
    assert_eq!(h.answer(to).unwrap_err().code, "internal");
}

#[test]
fn a_ttl_shortens_the_stored_expiry_but_never_lengthens_it() {
    let mut h = Harness::commit();
    h.publish_with("a", "1", PublishOptions::ttl(Some(30)));
    h.publish_with("a", "2", PublishOptions::ttl(Some(u64::MAX / 2000)));
    h.settle();
    let rows = &h.engine.rows["a"];
    assert_eq!(rows[&1].expires_ms, h.now.ms + 30_000);
    let day = 24 * 3600 * 1000;
    assert_eq!(rows[&2].expires_ms, h.now.ms + day, "history_ttl caps it");
}

#[test]
fn sweeps_are_counted() {
    let mut h = Harness::commit();
    h.handle(Command::Completed(Completion::Swept {
        expired: 2,
        trimmed: 3,
    }));
    assert_eq!((h.core.stats().expired, h.core.stats().trimmed), (2, 3));
}

#[test]
fn a_sweep_request_carries_the_wall_clock() {
    let h = Harness::commit();
    let (mut core, now) = (h.core, h.now);
    core.handle(Command::Tick, now);
    let mut later = now;
    later.at += Duration::from_secs(1);
    later.ms += 1000;
    core.handle(Command::Tick, later);
    let mut sweeps = Vec::new();
    while let Some(effect) = core.poll_effect() {
        if let super::Effect::Store(Request::Sweep { now_ms }) = effect {
            sweeps.push(now_ms);
        }
    }
    assert_eq!(sweeps, [later.ms]);
}

#[test]
fn appends_carry_the_epoch_and_increasing_tickets() {
    let h = Harness::commit();
    let (mut core, now) = (h.core, h.now);
    for channel in ["a", "b", "a"] {
        let command = Command::Publish {
            to: ReplyTo::Internal,
            channel: channel.into(),
            data: "1".into(),
            options: PublishOptions::default(),
        };
        core.handle(command, now);
    }
    let mut seen = Vec::new();
    while let Some(effect) = core.poll_effect() {
        if let super::Effect::Store(Request::Append { ticket, msg, .. }) = effect {
            seen.push((ticket, msg.channel, msg.seq, msg.epoch));
        }
    }
    let expected = [(1, "a", 1), (2, "b", 1), (3, "a", 2)];
    for ((ticket, channel, seq, epoch), (t, c, s)) in seen.into_iter().zip(expected) {
        assert_eq!((ticket, &*channel, seq, &*epoch), (t, c, s, "g0"));
    }
}

#[test]
fn an_unknown_completion_tag_is_ignored() {
    let mut h = Harness::commit();
    h.handle(Command::Completed(Completion::Read {
        tag: 99,
        result: Ok(Vec::new()),
    }));
    h.handle(Command::Completed(Completion::Oldest {
        tag: 98,
        result: Ok(None),
    }));
    h.handle(Command::Completed(Completion::AcksStored {
        tags: vec![97],
        error: None,
    }));
    assert!(h.replies.is_empty());
}

#[test]
fn a_failed_disk_read_is_answered_storage_failed() {
    let mut h = no_cache();
    publish_n(&mut h, "a", 3);
    let to = h.query("a", resume(1, "g0"));
    assert!(h.replies_to(to).is_empty(), "waits for the disk");
    // The first store tag of this core: the read's.
    h.handle(Command::Completed(Completion::Read {
        tag: 1,
        result: Err("I/O error".into()),
    }));
    assert_eq!(h.answer(to).unwrap_err().code, "storage_failed");
}
