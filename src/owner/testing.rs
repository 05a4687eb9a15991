//! In-process test rig for the owner core: an in-memory `Engine` that
//! behaves like the SQLite store thread (group commit in ticket order, reads,
//! oldest, acks, trimming), and a harness that drives the core and collects
//! its effects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    Answer, Command, Effect, Now, OwnerConfig, OwnerCore, PublishOptions, Query, Reply, ReplyTo,
};
use crate::config::{Durability, Storage};
use crate::proto::frames::{Acked, ErrorReply};
use crate::store::message::Stored;
use crate::store::open::Loaded;
use crate::store::{Completion, Engine, Gone, Numbered, Outcome, Range, Request};

/// Storage in memory, answering requests only when told to.
#[derive(Default)]
pub struct MemEngine {
    queue: VecDeque<Request>,
    done: Vec<Completion>,
    pub rows: HashMap<String, BTreeMap<u64, Stored>>,
    pub acks: HashMap<String, u64>,
    pub dead_letters: Vec<(String, u64, &'static str)>,
    /// The next append fails (as a full disk would).
    pub fail_appends: bool,
    /// Reads return only messages up to this `seq` (a truncated replay).
    pub lose_after: Option<u64>,
    pub history_size: Option<u64>,
    pub closed: bool,
    /// Numbers messages itself, as an engine shared by several servers does:
    /// each append gets the channel's last stored seq + 1.
    pub numbers: bool,
    /// When numbering: idempotency keys (channel, key) → first seq, and
    /// keyed-state versions, decided here as a shared engine does.
    pub keys: HashMap<(String, String), u64>,
    pub versions: HashMap<(String, String), u64>,
    /// When numbering: appends fail as when Redis cannot be reached.
    pub unreachable: bool,
    /// When numbering: (channel, uid) present on this server, as told.
    pub members: std::collections::BTreeSet<(String, String)>,
    /// When numbering: the redeliveries sent, as (inbox, seq).
    pub redelivered: Vec<(String, u64)>,
}

impl Engine for MemEngine {
    fn submit(&mut self, request: Request) -> Result<(), Gone> {
        if self.closed {
            return Err(Gone(Box::new(request)));
        }
        self.queue.push_back(request);
        Ok(())
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn numbers_messages(&self) -> bool {
        self.numbers
    }
}

impl MemEngine {
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Takes the next `n` requests as one batch: appends first (one commit),
    /// then the rest, as the store thread does.
    pub fn run(&mut self, n: usize) {
        let n = n.min(self.queue.len());
        let batch: Vec<Request> = self.queue.drain(..n).collect();
        let (mut upto, mut count, mut numbered) = (None, 0, Vec::new());
        let mut rest = Vec::new();
        for request in batch {
            match request {
                Request::Append { ticket, msg, .. } => {
                    if self.fail_appends {
                        self.done.push(Completion::Failed {
                            error: "disk full".into(),
                        });
                        self.closed = true;
                        self.queue.clear();
                        return;
                    }
                    if self.numbers {
                        if let Some(outcome) = self.decide(&msg) {
                            numbered.push(Numbered { ticket, outcome });
                            upto = Some(ticket);
                            continue;
                        }
                    }
                    let rows = self.rows.entry(msg.channel.to_string()).or_default();
                    let seq = match self.numbers {
                        true => rows.last_key_value().map_or(0, |(s, _)| *s) + 1,
                        false => msg.seq,
                    };
                    if self.numbers {
                        let version = msg.expected.map(|v| v + 1);
                        if let (Some(v), Some((key, _, _))) = (version, &msg.state) {
                            self.versions
                                .insert((msg.channel.to_string(), key.clone()), v);
                        }
                        if let Some((key, _)) = &msg.idempotency {
                            self.keys
                                .insert((msg.channel.to_string(), key.clone()), seq);
                        }
                        let outcome = Outcome::Stored { seq, version };
                        numbered.push(Numbered { ticket, outcome });
                    }
                    let stored = Stored {
                        seq,
                        expires_ms: msg.expires_ms,
                        data: msg.data.to_string(),
                    };
                    rows.insert(seq, stored);
                    if let Some(size) = self.history_size {
                        while rows.len() as u64 > size {
                            rows.pop_first();
                        }
                    }
                    upto = Some(ticket);
                    count += 1;
                }
                other => rest.push(other),
            }
        }
        if let Some(upto) = upto {
            self.done.push(Completion::Committed {
                upto,
                count,
                numbered,
            });
        }
        for request in rest {
            self.answer(request);
        }
    }

    /// A shared engine's refusal of an append: a used idempotency key, or a
    /// compare-and-set that lost.
    fn decide(&self, msg: &crate::store::message::Append) -> Option<Outcome> {
        if self.unreachable {
            let error = "connection refused".into();
            return Some(Outcome::Unavailable { error });
        }
        if let Some((key, _)) = &msg.idempotency {
            if let Some(&seq) = self.keys.get(&(msg.channel.to_string(), key.clone())) {
                return Some(Outcome::Duplicate { seq });
            }
        }
        let (expected, (key, _, _)) = (msg.expected?, msg.state.as_ref()?);
        let version = self.versions.get(&(msg.channel.to_string(), key.clone()));
        let version = version.copied().unwrap_or(0);
        (version != expected).then_some(Outcome::Conflict {
            value: None,
            version,
        })
    }

    fn answer(&mut self, request: Request) {
        let empty = BTreeMap::new();
        match request {
            Request::Read {
                tag,
                channel,
                after,
                upto,
                limit,
                ..
            } => {
                let upto = self.lose_after.map_or(upto, |l| upto.min(l));
                let rows = self.rows.get(&channel).unwrap_or(&empty);
                let found: Vec<Stored> = rows
                    .range(after + 1..)
                    .take_while(|(&s, _)| s <= upto)
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect();
                self.done.push(Completion::Read {
                    tag,
                    result: Ok(found),
                });
            }
            Request::Range {
                tag,
                channel,
                after,
                limit,
                from_ack,
            } => {
                let rows = self.rows.get(&channel).unwrap_or(&empty);
                let acked = self.acks.get(&channel).copied().filter(|_| from_ack);
                let after = after.max(acked.unwrap_or(0));
                let range = Range {
                    seq: rows.last_key_value().map_or(0, |(s, _)| *s),
                    epoch: "g0".into(),
                    rows: rows
                        .range(after + 1..)
                        .take(limit)
                        .map(|(_, m)| m.clone())
                        .collect(),
                    oldest: rows.first_key_value().map(|(s, _)| *s),
                };
                self.done.push(Completion::Range {
                    tag,
                    result: Ok(range),
                });
            }
            Request::Lookup { tag, channel } => {
                let rows = self.rows.get(&channel).unwrap_or(&empty);
                let state = self
                    .versions
                    .iter()
                    .filter(|((c, _), _)| *c == channel)
                    .map(|((_, k), v)| (k.clone(), Some("true".to_string()), *v))
                    .collect();
                let members = self
                    .members
                    .iter()
                    .filter(|(c, _)| *c == channel)
                    .map(|(_, uid)| uid.clone())
                    .collect();
                let looked = crate::store::Looked {
                    seq: rows.last_key_value().map_or(0, |(s, _)| *s),
                    epoch: "g0".into(),
                    state,
                    members,
                };
                self.done.push(Completion::Looked {
                    tag,
                    result: Ok(looked),
                });
            }
            Request::Redeliver {
                channel,
                seq,
                give_up,
                ..
            } => {
                let acked = self.acks.get(&channel).copied().unwrap_or(0);
                let online = self.members.iter().any(|(c, _)| *c == channel);
                let outcome = match () {
                    _ if acked >= seq => crate::store::Redelivery::Acked(acked),
                    _ if give_up.is_some() => crate::store::Redelivery::Unacked,
                    _ if !online => crate::store::Redelivery::Offline,
                    _ => {
                        self.redelivered.push((channel.clone(), seq));
                        crate::store::Redelivery::Sent
                    }
                };
                self.done.push(Completion::Redelivered {
                    channel,
                    seq,
                    outcome,
                    give_up,
                });
            }
            Request::Presence {
                channel,
                uid,
                joined,
            } => {
                match joined {
                    true => self.members.insert((channel, uid)),
                    false => self.members.remove(&(channel, uid)),
                };
            }
            Request::Oldest {
                tag,
                channel,
                after,
                now_ms,
                ..
            } => {
                let rows = self.rows.get(&channel).unwrap_or(&empty);
                let oldest = rows
                    .range(after + 1..)
                    .find(|(_, m)| m.expires_ms > now_ms)
                    .map(|(&s, _)| s);
                self.done.push(Completion::Oldest {
                    tag,
                    result: Ok(oldest),
                });
            }
            Request::Ack {
                tag, channel, seq, ..
            } => {
                self.acks.insert(channel, seq);
                self.done.push(Completion::AcksStored {
                    tags: vec![tag],
                    error: None,
                });
            }
            Request::DeadLetter {
                channel,
                seq,
                reason,
                ..
            } => self.dead_letters.push((channel, seq, reason)),
            Request::Sweep { .. } | Request::Close | Request::Append { .. } => {}
        }
    }
}

pub fn config(durability: Durability, history_size: u64, cache_bytes: usize) -> OwnerConfig {
    OwnerConfig {
        slot: 0,
        workers: 1,
        storage: Storage {
            durability,
            history_size,
            cache_bytes,
            ..Storage::default()
        },
        ack_timeout: Duration::from_secs(10),
        max_attempts: 3,
        idempotency_window: Duration::from_secs(60),
        max_channels: 1_000_000,
        numbered_by_engine: false,
        page_bytes: 256 << 10,
        replay_page_bytes: 1 << 20,
    }
}

/// Drives an `OwnerCore` with a `MemEngine` and records what comes out.
pub struct Harness {
    pub core: OwnerCore,
    pub engine: MemEngine,
    pub now: Now,
    pub replies: Vec<(ReplyTo, Reply)>,
    /// For each reply: how many deliveries had been made when it came.
    pub reply_marks: Vec<usize>,
    pub delivered: Vec<(String, u64, Bytes)>,
    pub events: Vec<(String, Bytes)>,
    pub dead: Vec<String>,
    next_tag: u64,
}

impl Harness {
    pub fn new(config: OwnerConfig) -> Harness {
        Harness::loaded(config, Loaded::default())
    }

    pub fn loaded(config: OwnerConfig, mut loaded: Loaded) -> Harness {
        let now = Now {
            at: Instant::now(),
            ms: 1_000_000,
        };
        loaded.genesis.entry(0).or_insert_with(|| "g0".into());
        for shard in 0..config.storage.shards {
            loaded.genesis.entry(shard).or_insert_with(|| "g0".into());
        }
        Harness {
            core: OwnerCore::new(config, loaded, now),
            engine: MemEngine::default(),
            now,
            replies: Vec::new(),
            reply_marks: Vec::new(),
            delivered: Vec::new(),
            events: Vec::new(),
            dead: Vec::new(),
            next_tag: 0,
        }
    }

    /// A commit-durability core with a cache large enough for everything.
    pub fn commit() -> Harness {
        Harness::new(config(Durability::Commit, 1000, 1 << 20))
    }

    pub fn handle(&mut self, command: Command) {
        self.core.handle(command, self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Store(request) => {
                    if let Err(Gone(request)) = self.engine.submit(request) {
                        if let Some(c) = (*request).gone() {
                            self.core.handle(Command::Completed(c), self.now);
                        }
                    }
                }
                Effect::Deliver { channel, seq, line } => {
                    self.delivered.push((channel.to_string(), seq, line))
                }
                Effect::Event { channel, line } => self.events.push((channel, line)),
                Effect::Reply { to, reply } => {
                    self.replies.push((to, reply));
                    self.reply_marks.push(self.delivered.len());
                }
                Effect::DeadLetter { report } => self.dead.push(report),
            }
        }
    }

    /// Feeds what the engine has finished back to the core.
    pub fn complete(&mut self) {
        let mut done = Vec::new();
        self.engine.completions(&mut done);
        for completion in done {
            self.handle(Command::Completed(completion));
        }
    }

    /// Runs storage until nothing is left to do.
    pub fn settle(&mut self) {
        while self.engine.queued() > 0 {
            self.engine.run(usize::MAX);
            self.complete();
        }
        self.complete();
    }

    pub fn tag(&mut self) -> ReplyTo {
        self.next_tag += 1;
        ReplyTo::Local(self.next_tag)
    }

    pub fn publish_with(&mut self, channel: &str, data: &str, options: PublishOptions) -> ReplyTo {
        let to = self.tag();
        self.handle(Command::Publish {
            to,
            channel: channel.into(),
            data: data.into(),
            options,
        });
        to
    }

    pub fn publish(&mut self, channel: &str, data: &str) -> ReplyTo {
        self.publish_with(channel, data, PublishOptions::default())
    }

    pub fn query(&mut self, channel: &str, query: Query) -> ReplyTo {
        let to = self.tag();
        let channel = channel.into();
        self.handle(Command::Query { to, channel, query });
        to
    }

    pub fn set(&mut self, channel: &str, key: &str, value: Option<&str>, expected: u64) -> ReplyTo {
        let to = self.tag();
        self.handle(Command::Set {
            to,
            channel: channel.into(),
            key: key.into(),
            value: value.map(str::to_string),
            expected,
        });
        to
    }

    pub fn presence(&mut self, slot: usize, channel: &str, uid: &str, count: usize) {
        self.handle(Command::Presence {
            slot,
            channel: channel.into(),
            uid: uid.into(),
            count,
        });
    }

    pub fn advance(&mut self, by: Duration) {
        self.now.at += by;
        self.now.ms += by.as_millis() as i64;
    }

    pub fn tick(&mut self) {
        self.handle(Command::Tick);
    }

    /// Every reply to `to`, oldest first.
    pub fn replies_to(&self, to: ReplyTo) -> Vec<&Reply> {
        let mine = self.replies.iter().filter(|(t, _)| *t == to);
        mine.map(|(_, r)| r).collect()
    }

    /// The one reply to `to`.
    pub fn reply(&self, to: ReplyTo) -> &Reply {
        let replies = self.replies_to(to);
        assert_eq!(replies.len(), 1, "one reply to {to:?}: {replies:?}");
        replies[0]
    }

    pub fn acked(&self, to: ReplyTo) -> Result<Acked, ErrorReply> {
        match self.reply(to) {
            Reply::Published(result) => result.clone(),
            other => panic!("not a publish reply: {other:?}"),
        }
    }

    pub fn answer(&self, to: ReplyTo) -> Result<Answer, ErrorReply> {
        match self.reply(to) {
            Reply::Answer(result) => result.clone(),
            other => panic!("not an answer: {other:?}"),
        }
    }

    /// The last seq of `channel` delivered before the reply to `to`.
    pub fn delivered_before(&self, to: ReplyTo, channel: &str) -> u64 {
        let at = self.replies.iter().position(|(t, _)| *t == to);
        let mark = at.map_or(0, |i| self.reply_marks[i]);
        let before = self.delivered[..mark]
            .iter()
            .filter(|(c, _, _)| c == channel);
        before.map(|(_, s, _)| *s).max().unwrap_or(0)
    }

    /// The seqs of delivered messages of `channel`.
    pub fn delivered_seqs(&self, channel: &str) -> Vec<u64> {
        let of = self.delivered.iter().filter(|(c, _, _)| c == channel);
        of.map(|(_, s, _)| *s).collect()
    }
}

/// The seqs in an answer's `msg` lines.
pub fn seqs_of(answer: &Answer) -> Vec<u64> {
    answer
        .lines
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a msg line");
            v["seq"].as_u64().expect("a seq")
        })
        .collect()
}

/// The `data` of a `msg` line, as JSON text.
pub fn data_of(line: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(line).expect("a msg line");
    v["data"].to_string()
}

pub fn resume(since: u64, epoch: &str) -> Query {
    Query::Resume {
        since: Some(since),
        epoch: Some(epoch.to_string()),
        upto: None,
    }
}
