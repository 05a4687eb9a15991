//! The seam between the owner core and storage. The core never calls
//! storage: it returns `Request`s as effects, the worker hands them to an
//! `Engine`, and each engine reports `Completion`s, which the worker feeds
//! back to the core. The SQLite store thread is one engine; a remote one
//! (Redis) fits the same seam: submitting never blocks, completions arrive
//! later in any order except that `Committed` covers appends in ticket order.
//!
//! Numbering: the core numbers each message (`Append::seq`) so that, with
//! the local engine, a message can be released before its commit
//! (`durability = "memory"`). An engine shared by several servers (Redis)
//! numbers messages itself instead: it says so with `numbers_messages`, the
//! core then treats its own numbers as provisional, waits for every commit,
//! and takes the seqs the engine reports in `Committed::numbered`.

use super::message::{Append, Stored};

#[derive(Debug)]
pub enum Request {
    /// Store one message; `ticket` numbers appends in the order sent.
    Append {
        shard: u32,
        ticket: u64,
        msg: Append,
    },
    /// Read retained messages `after < seq <= upto` of a channel.
    Read {
        tag: u64,
        shard: u32,
        channel: String,
        after: u64,
        upto: u64,
        limit: usize,
    },
    /// Find the oldest unexpired `seq > after` of a channel.
    Oldest {
        tag: u64,
        shard: u32,
        channel: String,
        after: u64,
        now_ms: i64,
    },
    /// Only to an engine that `numbers_messages`: the channel's seq and
    /// epoch (the epoch made now if it has none), and up to `limit`
    /// retained messages after `after`, read together. Answered with `Range`.
    Range {
        tag: u64,
        channel: String,
        after: u64,
        limit: usize,
        /// From the inbox's stored ack instead, when that is further on.
        from_ack: bool,
    },
    /// Only to an engine that `numbers_messages`: the channel's seq, epoch,
    /// keyed state and live presence members, read together. Answered
    /// with `Looked`.
    Lookup { tag: u64, channel: String },
    /// Only to an engine that `numbers_messages`: `uid` is now in `channel`
    /// on this server (`joined`), or no longer. The engine keeps it there
    /// (refreshed, expiring) and tells every server's subscribers.
    Presence {
        channel: String,
        uid: String,
        joined: bool,
    },
    /// Only to an engine that `numbers_messages`: send message `seq` of
    /// inbox `channel` again wherever its user is connected, unless it is
    /// acked by now (acks may reach other servers) or the user is offline.
    /// With `give_up` (reason, data) it is about to be a dead letter: only
    /// the ack is checked. Answered with `Redelivered`.
    Redeliver {
        channel: String,
        seq: u64,
        line: bytes::Bytes,
        give_up: Option<(&'static str, String)>,
    },
    /// Record an inbox's cumulative ack; answered with `AcksStored`.
    Ack {
        tag: u64,
        shard: u32,
        channel: String,
        seq: u64,
    },
    /// Record a message given up (expired, or out of attempts).
    DeadLetter {
        shard: u32,
        channel: String,
        seq: u64,
        reason: &'static str,
        data: String,
        time_ms: i64,
    },
    /// Delete expired rows and trim channels over `history_size`.
    Sweep { now_ms: i64 },
    /// Record a clean shutdown and end the thread.
    Close,
}

/// What the engine reports back, each fed to the owner core as a command.
#[derive(Debug)]
pub enum Completion {
    /// Every append with a ticket up to this one is stored.
    Committed {
        upto: u64,
        count: u64,
        /// The seq each append got, from an engine that `numbers_messages`;
        /// empty when the core's numbers stand.
        numbered: Vec<Numbered>,
    },
    /// Storing failed: nothing from `from` on is stored.
    Failed {
        error: String,
    },
    Read {
        tag: u64,
        result: Result<Vec<Stored>, String>,
    },
    Range {
        tag: u64,
        result: Result<Range, String>,
    },
    Looked {
        tag: u64,
        result: Result<Looked, String>,
    },
    Redelivered {
        channel: String,
        seq: u64,
        outcome: Redelivery,
        give_up: Option<(&'static str, String)>,
    },
    Swept {
        expired: u64,
        trimmed: u64,
    },
    Oldest {
        tag: u64,
        result: Result<Option<u64>, String>,
    },
    /// The acks with these tags are stored, or failed to be.
    AcksStored {
        tags: Vec<u64>,
        error: Option<String>,
    },
}

/// What an engine that numbers messages made of the append with this
/// ticket: it decides idempotency and compare-and-set itself, since other
/// servers write the same channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub ticket: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as `seq`; a compare-and-set's key is now at `version`.
    Stored { seq: u64, version: Option<u64> },
    /// Its idempotency key was used already, by the publish stored as `seq`:
    /// nothing was stored now.
    Duplicate { seq: u64 },
    /// The compare-and-set lost: the key is at `version` with `value`.
    Conflict { value: Option<String>, version: u64 },
    /// Not stored: the engine cannot reach its storage now.
    Unavailable { error: String },
}

/// What became of a `Redeliver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivery {
    /// The inbox is acked up to this seq (covering the message).
    Acked(u64),
    /// Sent to the user's connections, on whichever servers.
    Sent,
    /// The user has no connection anywhere: kept for their next one.
    Offline,
    /// Checked only (`give_up`): still not acked.
    Unacked,
    /// Storage unreachable: nothing known.
    Failed,
}

/// A channel's state and presence as a shared engine holds them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Looked {
    pub seq: u64,
    pub epoch: String,
    /// (key, value JSON or `None` when deleted, version).
    pub state: Vec<(String, Option<String>, u64)>,
    /// The uid of each live member, once per server it is connected to.
    pub members: Vec<String>,
}

/// A channel as a shared engine holds it: its last seq, epoch, the
/// retained messages asked for, and the oldest retained seq.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Range {
    pub seq: u64,
    pub epoch: String,
    pub rows: Vec<Stored>,
    pub oldest: Option<u64>,
}

/// The engine cannot take requests any more (its thread ended); the
/// request is handed back.
pub struct Gone(pub Box<Request>);

/// Storage as the worker drives it: submit without waiting, collect what
/// finished. Wake-ups are the engine's business (the store thread wakes the
/// mio loop with a `Waker`).
pub trait Engine {
    /// Queues a request. `Err(Gone)` means it will never be answered. An
    /// engine may hold what is submitted until `flush`.
    fn submit(&mut self, request: Request) -> Result<(), Gone>;
    /// The end of the worker's loop turn: what `submit` held goes to
    /// storage now, as one batch. A request the engine can no longer take
    /// comes back from the next `completions` as its failure.
    fn flush(&mut self) {}
    /// The engine holds more than it wants to (its queue is full): the
    /// worker stops reading clients until this clears. Never refuses.
    fn is_busy(&self) -> bool {
        false
    }
    /// Moves every finished request's completion into `out`.
    fn completions(&mut self, out: &mut Vec<Completion>);
    /// Finishes what was queued and stops.
    fn close(&mut self);
    /// Whether the engine assigns seqs itself (shared by several servers),
    /// so the core's are provisional. See the module documentation.
    fn numbers_messages(&self) -> bool {
        false
    }
}

impl Request {
    /// What a request submitted to a gone engine amounts to: a failure the
    /// owner core answers like any other. `None` where nobody waits.
    pub fn gone(self) -> Option<Completion> {
        let error = "the store thread is gone".to_string();
        match self {
            Request::Append { .. } => Some(Completion::Failed { error }),
            Request::Read { tag, .. } => Some(Completion::Read {
                tag,
                result: Err(error),
            }),
            Request::Oldest { tag, .. } => Some(Completion::Oldest {
                tag,
                result: Err(error),
            }),
            Request::Range { tag, .. } => Some(Completion::Range {
                tag,
                result: Err(error),
            }),
            Request::Lookup { tag, .. } => Some(Completion::Looked {
                tag,
                result: Err(error),
            }),
            Request::Ack { tag, .. } => Some(Completion::AcksStored {
                tags: vec![tag],
                error: Some(error),
            }),
            Request::Redeliver {
                channel,
                seq,
                give_up,
                ..
            } => Some(Completion::Redelivered {
                channel,
                seq,
                outcome: Redelivery::Failed,
                give_up,
            }),
            Request::DeadLetter { .. }
            | Request::Presence { .. }
            | Request::Sweep { .. }
            | Request::Close => None,
        }
    }
}
