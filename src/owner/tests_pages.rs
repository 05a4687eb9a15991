//! Pages: `history` and `state` stop at `limit` and at the byte budget with
//! a cursor, and a resume's replay comes page by page up to the `seq` its
//! first answer named, from the cache or the disk alike.

use super::testing::{config, resume, seqs_of, Harness};
use super::{pages, Answer, Query};
use crate::config::Durability;

/// 2 KiB of JSON data.
fn big() -> String {
    format!("\"{}\"", "x".repeat(2046))
}

fn harness(cache_bytes: usize) -> Harness {
    Harness::new(config(Durability::Commit, 200_000, cache_bytes))
}

fn publish(h: &mut Harness, channel: &str, n: u64, data: &str) {
    for _ in 0..n {
        h.publish(channel, data);
    }
    h.settle();
}

fn ask(h: &mut Harness, query: Query) -> Answer {
    let to = h.query("a", query);
    h.settle();
    h.answer(to).unwrap_or_else(|e| panic!("{}", e.message))
}

#[test]
fn history_pages_stop_at_the_budget_and_walk_every_message_once() {
    for cache in [64 << 20, 0] {
        let mut h = harness(cache);
        publish(&mut h, "a", 1500, &big());
        let (mut since, mut seen) = (0, Vec::new());
        loop {
            let page = ask(&mut h, Query::History { since, limit: 5000 });
            let bytes: usize = page.lines.iter().map(|l| l.len()).sum();
            assert!(bytes <= 256 << 10, "{bytes} bytes in a page");
            assert!(page.lines.len() > 100, "{} in a page", page.lines.len());
            seen.extend(seqs_of(&page));
            match page.cursor {
                Some(cursor) => {
                    assert_eq!(Some(&cursor), seen.last());
                    since = cursor;
                }
                None => break,
            }
        }
        assert_eq!(seen, (1..=1500).collect::<Vec<u64>>(), "cache {cache}");
    }
}

#[test]
fn history_limit_is_clamped_to_1000() {
    let mut h = harness(64 << 20);
    publish(&mut h, "a", 1200, "1");
    let page = ask(
        &mut h,
        Query::History {
            since: 0,
            limit: 5000,
        },
    );
    assert_eq!((page.lines.len(), page.cursor), (1000, Some(1000)));
    let rest = ask(
        &mut h,
        Query::History {
            since: 1000,
            limit: 5000,
        },
    );
    assert_eq!((rest.lines.len(), rest.cursor), (200, None));
}

#[test]
fn a_long_resume_comes_in_pages_up_to_its_first_seq() {
    for cache in [64 << 20, 0] {
        let mut h = harness(cache);
        publish(&mut h, "a", 5000, "1");
        let first = ask(&mut h, resume(0, "g0"));
        assert_eq!((first.seq, first.recovered), (5000, Some(true)));
        let pages_of = pages::REPLAY_PAGE_MSGS;
        assert_eq!(first.cursor, Some(pages_of));
        // Live messages after the first answer are not part of the replay.
        publish(&mut h, "a", 10, "2");
        let mut seen = seqs_of(&first);
        let mut cursor = first.cursor;
        while let Some(after) = cursor {
            let query = super::Query::Resume {
                since: Some(after),
                epoch: Some("g0".into()),
                upto: Some(first.seq),
            };
            let page = ask(&mut h, query);
            assert_eq!(page.recovered, Some(true));
            seen.extend(seqs_of(&page));
            cursor = page.cursor;
        }
        assert_eq!(seen, (1..=5000).collect::<Vec<u64>>(), "cache {cache}");
    }
}

#[test]
fn a_page_of_big_messages_stops_at_the_replay_budget() {
    let mut h = harness(0);
    publish(&mut h, "a", 1000, &big());
    let first = ask(&mut h, resume(0, "g0"));
    let bytes: usize = first.lines.iter().map(|l| l.len()).sum();
    assert!(bytes <= 1 << 20 && first.lines.len() > 400, "{bytes}");
    assert_eq!(first.cursor, Some(first.lines.len() as u64));
}

#[test]
fn a_page_no_longer_retained_is_not_recovered() {
    let mut h = Harness::new(config(Durability::Commit, 3000, 0));
    h.engine.history_size = Some(3000);
    publish(&mut h, "a", 5000, "1");
    let query = Query::Resume {
        since: Some(1000),
        epoch: Some("g0".into()),
        upto: Some(5000),
    };
    let page = ask(&mut h, query);
    assert_eq!(page.recovered, Some(false));
    assert!(page.lines.is_empty() && page.oldest.is_some());
}

#[test]
fn state_pages_walk_every_key_once() {
    let mut h = harness(1 << 20);
    for i in 0..250 {
        h.set("a", &format!("k{i:03}"), Some("1"), 0);
    }
    h.settle();
    let (mut after, mut keys) = (None, Vec::new());
    loop {
        let to = h.query("a", Query::State { after, limit: 100 });
        let Ok(a) = h.answer(to) else {
            panic!("state failed")
        };
        let line = a.lines.first().cloned().unwrap_or_default();
        let page: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        let object = page["keys"].as_object().cloned().unwrap_or_default();
        assert!(object.len() <= 100);
        keys.extend(object.keys().cloned());
        assert_eq!(page["seq"], 250);
        if page["more"] != true {
            break;
        }
        after = page["cursor"].as_str().map(str::to_string);
    }
    let expected: Vec<String> = (0..250).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, expected);
}
