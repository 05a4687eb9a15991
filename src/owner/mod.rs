//! The owner: what the worker whose slot owns a shard decides for that
//! shard's channels. "Owner" names this one thing in syncd: `OwnerCore`, and
//! the worker slot it runs in (`sync::shard::owner_of`).
//!
//! The core has no I/O, as in quinn-proto or rustls: it takes `Command`s
//! (with the time as an argument) and queues `Effect`s the caller drains with
//! `poll_effect`. It knows no sockets, threads or clocks. It numbers messages
//! (`seqs`), keeps the cache of recent ones, the writes in flight to storage,
//! the inboxes and their redelivery (`inbox`), presence (`presence`), keyed
//! state (`state`), idempotency keys (`idempotency`) and each shard's genesis
//! epoch. Storage is reached only through effects (`Effect::Store`) whose
//! completions come back as `Command::Completed`; the worker runs them on an
//! `Engine` (see `store::engine`).

pub mod idempotency;
pub mod inbox;
pub mod presence;
pub mod seqs;
pub mod state;

mod pages;
mod publish;
mod query;
mod shared;
mod users;

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_caps;
#[cfg(test)]
mod tests_engine;
#[cfg(test)]
mod tests_pages;
#[cfg(test)]
mod tests_users;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{Config, Storage};
use crate::proto::frames::{Acked, ErrorReply};
use crate::store::cache::HistoryCache;
use crate::store::open::Loaded;
use crate::store::{Completion, Request};
use idempotency::Idempotency;
use inbox::Inboxes;
use presence::Presence;
use seqs::SeqTable;
use state::{Entry, KeyedState};

/// The time, as the caller's clocks read it: monotonic for timers (inbox
/// backoff, idempotency windows), wall-clock milliseconds for expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub ms: i64,
}

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// A request of this worker, by its tag in the pending table.
    Local(u64),
    /// A request of another worker, answered over the link.
    Peer { slot: usize, tag: u64 },
    /// The server itself (dead letters on `$expired`): nobody to answer.
    Internal,
}

/// What a `sub`, `history` or other question asks of the owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// A user's connection joins its inbox: replay what is not acked.
    Inbox,
    /// Who is in a presence channel (answer: a JSON array of uids).
    Presence,
    /// Is a user online (answer: a JSON object).
    User {
        uid: String,
    },
    /// One key of the channel's state (answer: a JSON object).
    Get {
        key: String,
    },
    /// One page of the channel's state (keys after `after`, in key order)
    /// and the `seq` it is consistent with.
    State {
        after: Option<String>,
        limit: usize,
    },
    /// `sub`, from `since` when resuming: answered with the first page of
    /// the replay. With `upto`, the next page of a replay up to that `seq`.
    Resume {
        since: Option<u64>,
        epoch: Option<String>,
        upto: Option<u64>,
    },
    History {
        since: u64,
        limit: usize,
    },
    /// A cumulative ack of an inbox: answered once it is stored.
    Ack {
        seq: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub seq: u64,
    pub epoch: String,
    pub recovered: Option<bool>,
    /// With `recovered: false`: the oldest `seq` still retained.
    pub oldest: Option<u64>,
    /// `msg` lines, newline included, oldest first.
    pub lines: Vec<Bytes>,
    /// More follows (a page was full): the `seq` to go on after.
    pub cursor: Option<u64>,
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To a publish, `send` or `set`/`del`.
    Published(Result<Acked, ErrorReply>),
    /// To a `Command::Query`.
    Answer(Result<Answer, ErrorReply>),
}

/// How long to keep a message, and the backend's key that makes a retried
/// publish or send return the first result instead of publishing twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Set when the message records a keyed-state change.
    pub state: Option<StateWrite>,
    /// Set for a queue ingest's message, to its `dedupe_window`: its
    /// `idempotency_key` is kept that long (not `idempotency_window`).
    pub ingest: Option<std::time::Duration>,
    /// Ingested from another syncd's egress: stored marked, so egress
    /// never sends it on again (two data centres mirror without loops).
    pub mirrored: bool,
}

impl PublishOptions {
    pub fn ttl(ttl: Option<u64>) -> Self {
        PublishOptions {
            ttl,
            ..PublishOptions::default()
        }
    }
}

/// A granted compare-and-set: what to store with the message.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    pub key: String,
    pub value: Option<String>,
    pub version: u64,
}

/// What the owner is told.
#[derive(Debug)]
pub enum Command {
    /// `pub`, `send` (a publish on `#uid`), or the backend's publish.
    Publish {
        to: ReplyTo,
        channel: String,
        /// Shared as it is by the store's row and the line made at release.
        data: Arc<str>,
        options: PublishOptions,
    },
    /// `set` (`value: Some`) or `del`: compare-and-set against `expected`.
    Set {
        to: ReplyTo,
        channel: String,
        key: String,
        value: Option<String>,
        expected: u64,
    },
    /// `sub` (subscribe-from), `history`, `get`, `state`, `presence`, user
    /// status, inbox replay, and inbox `ack`.
    Query {
        to: ReplyTo,
        channel: String,
        query: Query,
    },
    /// Worker `slot` now has `count` connections of `uid` in `channel`
    /// (presence join/leave, per worker).
    Presence {
        slot: usize,
        channel: String,
        uid: String,
        count: usize,
    },
    /// Worker `slot` is gone, and so are its users.
    SlotDown { slot: usize },
    /// Storage finished something (stored, read, failed).
    Completed(Completion),
    /// Timers: redelivery, dead letters, sweeps.
    Tick,
}

/// What the owner asks the caller to do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Hand this to the storage engine.
    Store(Request),
    /// A stored message (or a redelivery): the same bytes to every other
    /// worker and every local subscriber.
    Deliver {
        channel: Arc<str>,
        seq: u64,
        line: Bytes,
    },
    /// A presence join/leave line for every subscriber, on every worker.
    Event {
        channel: String,
        line: Bytes,
    },
    Reply {
        to: ReplyTo,
        reply: Reply,
    },
    /// A message given up: publish `report` on `$expired` and post it to
    /// the webhook. Already recorded in storage.
    DeadLetter {
        report: String,
    },
}

/// What the owner needs of the configuration.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub slot: usize,
    pub workers: usize,
    pub storage: Storage,
    pub ack_timeout: Duration,
    pub max_attempts: u32,
    pub idempotency_window: Duration,
    /// Channels this owner holds at most: a publish or `set` that would
    /// create one more is refused (`too_many_channels`).
    pub max_channels: usize,
    /// The engine numbers messages itself (`Engine::numbers_messages`).
    pub numbered_by_engine: bool,
    /// Most bytes of one `history` or `state` page (well under `max_frame`).
    pub page_bytes: usize,
    /// Most bytes of one page of a resume's replay.
    pub replay_page_bytes: usize,
}

impl OwnerConfig {
    pub fn new(config: &Config, slot: usize) -> OwnerConfig {
        OwnerConfig {
            slot,
            workers: config.workers,
            storage: config.storage.clone(),
            ack_timeout: config.delivery.ack_timeout,
            max_attempts: config.delivery.max_attempts,
            idempotency_window: config.delivery.idempotency_window,
            max_channels: config.limits.max_channels,
            numbered_by_engine: false,
            page_bytes: pages::page_bytes(config.limits.max_frame),
            replay_page_bytes: pages::replay_page_bytes(config.limits.send_buffer_soft),
        }
    }
}

/// Counters for the worker's status report.
#[derive(Debug, Default, Clone)]
pub struct OwnerStats {
    pub stored: u64,
    pub expired: u64,
    pub trimmed: u64,
    pub disk_reads: u64,
    /// Publishes and `set`s refused by `max_channels`.
    pub channels_refused: u64,
}

/// How often the owner asks storage to sweep old rows.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The owner of this worker's shards. See the module documentation.
pub struct OwnerCore {
    config: OwnerConfig,
    seqs: SeqTable,
    cache: HistoryCache,
    /// Numbered and sent to storage, not yet released; in ticket order.
    inflight: VecDeque<publish::Inflight>,
    next_ticket: u64,
    /// Queries waiting for a disk read, by store tag.
    disk_reads: HashMap<u64, query::DiskRead>,
    /// Queries waiting for a shared engine's `Range`, by store tag.
    shared_reads: HashMap<u64, shared::SharedRead>,
    /// Who waits for each ack sent to storage, by store tag.
    ack_replies: HashMap<u64, ReplyTo>,
    next_tag: u64,
    inboxes: Inboxes,
    presence: Presence,
    idempotency: Idempotency<ReplyTo>,
    keyed: KeyedState,
    /// Each shard's epoch for channels it has not seen yet.
    genesis: HashMap<u32, String>,
    /// Storage failed: the worker must exit and reload from disk.
    fatal: bool,
    next_sweep: Option<Instant>,
    stats: OwnerStats,
    effects: VecDeque<Effect>,
}

impl OwnerCore {
    /// An owner with what its shards held at start-up.
    pub fn new(config: OwnerConfig, loaded: Loaded, now: Now) -> OwnerCore {
        let mut inboxes = Inboxes::new(config.ack_timeout, config.max_attempts);
        let mut idempotency = Idempotency::new();
        for (channel, key, seq, until_ms) in loaded.idempotency {
            let left = Duration::from_millis(until_ms.saturating_sub(now.ms).max(0) as u64);
            idempotency.load(&channel, &key, seq, now.at + left);
        }
        let mut keyed = KeyedState::default();
        for (channel, key, value, version) in loaded.state {
            keyed.load(&channel, &key, Entry { value, version });
        }
        for (channel, seq) in loaded.acks {
            inboxes.ack(&channel, seq);
        }
        for (channel, m) in loaded.unacked {
            let line = crate::proto::frames::msg_line(&channel, m.seq, &m.data);
            inboxes.delivered(&channel, m.seq, m.expires_ms, line, m.data, now.at);
        }
        let mut seqs = SeqTable::default();
        for (name, epoch, last_seq) in loaded.channels {
            seqs.load(&name, epoch, last_seq);
        }
        let cache = HistoryCache::new(
            config.storage.cache_bytes,
            config.storage.max_history_size(),
        );
        OwnerCore {
            seqs,
            cache,
            inflight: VecDeque::new(),
            next_ticket: 0,
            disk_reads: HashMap::new(),
            shared_reads: HashMap::new(),
            ack_replies: HashMap::new(),
            next_tag: 0,
            inboxes,
            presence: Presence::default(),
            idempotency,
            keyed,
            genesis: loaded.genesis,
            fatal: false,
            next_sweep: None,
            stats: OwnerStats::default(),
            effects: VecDeque::new(),
            config,
        }
    }

    /// Takes one command; its effects wait in `poll_effect`.
    pub fn handle(&mut self, command: Command, now: Now) {
        match command {
            Command::Publish {
                to,
                channel,
                data,
                options,
            } => self.publish(to, &channel, data, options, now),
            Command::Set {
                to,
                channel,
                key,
                value,
                expected,
            } => self.set(to, &channel, &key, value, expected, now),
            Command::Query { to, channel, query } => self.query(&channel, query, to, now),
            Command::Presence {
                slot,
                channel,
                uid,
                count,
            } => self.presence_report(slot, &channel, &uid, count, now),
            Command::SlotDown { slot } => self.slot_down(slot),
            Command::Completed(completion) => self.completed(completion, now),
            Command::Tick => self.tick(now),
        }
    }

    /// The next thing to do, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Storage failed: numbers given out may have no message behind them, so
    /// the worker must restart from what the disk holds.
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    pub fn stats(&self) -> &OwnerStats {
        &self.stats
    }

    /// Channels with a `seq` (what `status` calls channels owned).
    pub fn channels(&self) -> usize {
        self.seqs.channels()
    }

    /// When `Command::Tick` next has work: a redelivery, an inbox expiry
    /// or the store's sweep (now, if the first sweep is not scheduled yet).
    /// The worker sleeps until then when nothing else wants it.
    pub fn next_tick(&self, now: Now) -> Instant {
        let (due, expires_ms) = self.inboxes.next_due();
        let expiry =
            expires_ms.map(|ms| now.at + Duration::from_millis((ms - now.ms).max(0) as u64));
        let sweep = self.next_sweep.unwrap_or(now.at);
        [due, expiry]
            .into_iter()
            .flatten()
            .fold(sweep, Instant::min)
    }

    fn tick(&mut self, now: Now) {
        self.redeliver(now);
        // A sweep due within a tenth of its period goes with a tick that
        // came for something else, so the worker's wake-ups fall in step.
        let due = self
            .next_sweep
            .is_none_or(|at| now.at + SWEEP_EVERY / 10 >= at);
        if due {
            if self.next_sweep.is_some() {
                self.idempotency.purge(now.at);
                self.store(Request::Sweep { now_ms: now.ms });
            }
            self.next_sweep = Some(now.at + SWEEP_EVERY);
        }
    }

    fn completed(&mut self, completion: Completion, now: Now) {
        match completion {
            Completion::Committed {
                upto,
                count,
                numbered,
            } => {
                self.stats.stored += count;
                let mut numbered = numbered.into_iter().peekable();
                while self.inflight.front().is_some_and(|m| m.ticket <= upto) {
                    if let Some(m) = self.inflight.pop_front() {
                        while numbered.next_if(|n| n.ticket < m.ticket).is_some() {}
                        match numbered.next_if(|n| n.ticket == m.ticket) {
                            Some(n) => self.settle(m, n.outcome, now),
                            None => self.release(m, now),
                        }
                    }
                }
            }
            Completion::Failed { error } => {
                log::error!("storing messages failed, restarting: {error}");
                for m in std::mem::take(&mut self.inflight) {
                    self.reply_published(m.to, Err(storage_failed(&error)));
                }
                let acks: Vec<u64> = self.ack_replies.keys().copied().collect();
                self.acks_stored(acks, Some(error));
                self.fatal = true;
            }
            Completion::Read { tag, result } => self.on_disk_read(tag, result, now),
            Completion::Oldest { tag, result } => self.on_oldest(tag, result),
            Completion::Range { tag, result } => self.on_range(tag, result, now),
            Completion::Looked { tag, result } => self.on_looked(tag, result),
            Completion::Redelivered {
                channel,
                seq,
                outcome,
                give_up,
            } => self.on_redelivered(channel, seq, outcome, give_up, now),
            Completion::AcksStored { tags, error } => self.acks_stored(tags, error),
            Completion::Swept { expired, trimmed } => {
                self.stats.expired += expired;
                self.stats.trimmed += trimmed;
            }
        }
    }

    fn store(&mut self, request: Request) {
        self.effects.push_back(Effect::Store(request));
    }

    fn next_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn reply_published(&mut self, to: ReplyTo, result: Result<Acked, ErrorReply>) {
        let reply = Reply::Published(result);
        self.effects.push_back(Effect::Reply { to, reply });
    }

    fn reply_answer(&mut self, to: ReplyTo, answer: Result<Answer, ErrorReply>) {
        let reply = Reply::Answer(answer);
        self.effects.push_back(Effect::Reply { to, reply });
    }

    fn shard_of(&self, channel: &str) -> u32 {
        crate::sync::shard::shard_of(channel, self.config.storage.shards)
    }

    /// The epoch of channels this worker's shard has never seen.
    fn genesis_of(&self, channel: &str) -> &str {
        genesis_in(&self.genesis, self.shard_of(channel))
    }
}

/// `shard`'s epoch for channels it has never seen, from a core's `genesis`
/// (a function, so `publish` can read it while it numbers in `seqs`).
fn genesis_in(genesis: &HashMap<u32, String>, shard: u32) -> &str {
    genesis.get(&shard).map_or("0", String::as_str)
}

pub fn storage_failed(message: &str) -> ErrorReply {
    ErrorReply::new("storage_failed", format!("storage failed: {message}"))
}
