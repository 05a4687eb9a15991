//! Property test: random commands, with storage answering in random batches
//! and its completions fed back in random order, against a reference model
//! that is a plain `Vec` of messages per channel and a map of keyed state.
//! Checked: each channel's seqs are contiguous and in publish order, a write
//! is acked only after its message went out, an answer never names a `seq`
//! not yet delivered, every recovered replay and every history equals the
//! model's slice, and every compare-and-set is decided as one writer at a
//! time would decide it.

use std::collections::HashMap;

use proptest::prelude::*;

use super::testing::{config, data_of, seqs_of, Harness};
use super::{Command, Query, Reply, ReplyTo};
use crate::config::Durability;
use crate::store::Engine;

const CHANNELS: [&str; 3] = ["a", "b", "#u"];
const KEYS: [&str; 2] = ["k", "j"];

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Set {
        channel: usize,
        key: usize,
        delete: bool,
        expected: u64,
    },
    Resume {
        channel: usize,
        since: u64,
    },
    History {
        channel: usize,
        since: u64,
        limit: usize,
    },
    /// Storage takes this many queued requests as one batch.
    Store(usize),
    /// Completions so far reach the core, in an order given by this seed.
    Complete(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CHANNELS.len()).prop_map(Op::Publish),
        2 => (0..CHANNELS.len(), 0..KEYS.len(), any::<bool>(), 0..4u64).prop_map(
            |(channel, key, delete, expected)| Op::Set { channel, key, delete, expected }
        ),
        2 => (0..CHANNELS.len(), 0..12u64).prop_map(|(channel, since)| Op::Resume { channel, since }),
        1 => (0..CHANNELS.len(), 0..12u64, 1..6usize)
            .prop_map(|(channel, since, limit)| Op::History { channel, since, limit }),
        3 => (1..6usize).prop_map(Op::Store),
        3 => any::<u64>().prop_map(Op::Complete),
    ]
}

/// What a question asked, to check its answer against the model.
enum Asked {
    Publish {
        channel: usize,
        seq: u64,
    },
    Set {
        channel: usize,
        version: Option<u64>,
    },
    Replay {
        channel: usize,
        since: u64,
    },
    History {
        channel: usize,
        since: u64,
        limit: usize,
    },
}

#[derive(Default)]
struct Model {
    /// Each channel's messages in seq order (the `data` texts).
    messages: Vec<Vec<String>>,
    /// Decided (channel, key) → (present, version).
    keys: HashMap<(usize, usize), (bool, u64)>,
}

impl Model {
    /// Compare-and-set as `sync::state` promises: the expected version must be
    /// the current one (or 0 for an absent key), and deleting needs a value.
    fn cas(&mut self, channel: usize, key: usize, delete: bool, expected: u64) -> Option<u64> {
        let (present, version) = self.keys.get(&(channel, key)).copied().unwrap_or_default();
        let matches = expected == version || (!present && expected == 0);
        if !matches || (!present && delete) {
            return None;
        }
        self.keys.insert((channel, key), (!delete, version + 1));
        Some(version + 1)
    }
}

fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn run(ops: Vec<Op>, memory: bool, cached: bool) -> Result<(), TestCaseError> {
    let durability = if memory {
        Durability::Memory
    } else {
        Durability::Commit
    };
    let cache = if cached { 1 << 20 } else { 0 };
    let mut h = Harness::new(config(durability, 1000, cache));
    let mut model = Model {
        messages: vec![Vec::new(); CHANNELS.len()],
        ..Model::default()
    };
    let mut asked: Vec<(ReplyTo, Asked)> = Vec::new();
    let mut completions = Vec::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Publish(channel) => {
                let data = format!("{n}");
                let to = h.publish(CHANNELS[channel], &data);
                model.messages[channel].push(format!("{n}"));
                let seq = model.messages[channel].len() as u64;
                asked.push((to, Asked::Publish { channel, seq }));
            }
            Op::Set {
                channel,
                key,
                delete,
                expected,
            } => {
                let value = (!delete).then_some("1");
                let to = h.set(CHANNELS[channel], KEYS[key], value, expected);
                let version = model.cas(channel, key, delete, expected);
                if let Some(version) = version {
                    let change = serde_json::json!({
                        "key": KEYS[key],
                        "version": version,
                        "value": if delete { serde_json::Value::Null } else { 1.into() },
                    });
                    model.messages[channel].push(change.to_string());
                }
                asked.push((to, Asked::Set { channel, version }));
            }
            Op::Resume { channel, since } => {
                let query = Query::Resume {
                    since: Some(since),
                    epoch: Some("g0".into()),
                    upto: None,
                };
                let to = h.query(CHANNELS[channel], query);
                asked.push((to, Asked::Replay { channel, since }));
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                let to = h.query(CHANNELS[channel], Query::History { since, limit });
                asked.push((
                    to,
                    Asked::History {
                        channel,
                        since,
                        limit,
                    },
                ));
            }
            Op::Store(count) => {
                h.engine.run(count);
                h.engine.completions(&mut completions);
            }
            Op::Complete(seed) => {
                shuffle(&mut completions, seed);
                for completion in completions.drain(..) {
                    h.handle(Command::Completed(completion));
                }
            }
        }
    }
    for completion in completions {
        h.handle(Command::Completed(completion));
    }
    h.settle();
    for (channel, name) in CHANNELS.iter().enumerate() {
        let expected: Vec<u64> = (1..=model.messages[channel].len() as u64).collect();
        prop_assert_eq!(
            h.delivered_seqs(name),
            expected,
            "{} delivered in order",
            name
        );
        let data: Vec<String> = h
            .delivered
            .iter()
            .filter(|(c, _, _)| c == name)
            .map(|(_, _, line)| data_of(line))
            .collect();
        prop_assert_eq!(&data, &model.messages[channel]);
    }
    for (to, question) in asked {
        let replies = h.replies_to(to);
        prop_assert_eq!(replies.len(), 1, "one answer each");
        let channel = match &question {
            Asked::Publish { channel, .. }
            | Asked::Set { channel, .. }
            | Asked::Replay { channel, .. }
            | Asked::History { channel, .. } => *channel,
        };
        let out = h.delivered_before(to, CHANNELS[channel]);
        match (question, replies[0]) {
            (Asked::Publish { seq, .. }, Reply::Published(Ok(acked))) => {
                prop_assert_eq!(acked.seq, seq);
                prop_assert!(out >= seq, "acked only once delivered");
            }
            (
                Asked::Set {
                    version: Some(v), ..
                },
                Reply::Published(Ok(acked)),
            ) => {
                prop_assert_eq!(acked.version, Some(v));
                prop_assert!(out >= acked.seq, "acked only once delivered");
            }
            (Asked::Set { version: None, .. }, Reply::Published(Err(e))) => {
                prop_assert_eq!(e.code, "conflict")
            }
            (Asked::Replay { channel, since }, Reply::Answer(Ok(answer))) => {
                let all = &model.messages[channel];
                prop_assert!(answer.seq <= out, "names only what went out");
                if answer.recovered == Some(true) {
                    let lines: Vec<String> = answer.lines.iter().map(data_of).collect();
                    prop_assert_eq!(&lines[..], &all[since as usize..answer.seq as usize]);
                } else {
                    prop_assert!(since > answer.seq, "only a resume from the future fails");
                    prop_assert_eq!(answer.oldest, Some(1));
                }
            }
            (
                Asked::History {
                    channel,
                    since,
                    limit,
                },
                Reply::Answer(Ok(answer)),
            ) => {
                let all = &model.messages[channel];
                prop_assert!(answer.seq <= out, "names only what went out");
                let from = (since as usize).min(answer.seq as usize);
                let upto = (from + limit).min(answer.seq as usize);
                let seqs: Vec<u64> = (from as u64 + 1..=upto as u64).collect();
                prop_assert_eq!(seqs_of(answer), seqs);
                let lines: Vec<String> = answer.lines.iter().map(data_of).collect();
                prop_assert_eq!(&lines[..], &all[from..upto]);
            }
            (_, reply) => prop_assert!(false, "unexpected reply {:?}", reply),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_core_agrees_with_a_vec_per_channel(
        ops in proptest::collection::vec(op(), 1..80),
        memory in any::<bool>(),
        cached in any::<bool>(),
    ) {
        run(ops, memory, cached)?;
    }
}
