//! Requests waiting for a channel's owner (this worker's `OwnerCore`, or
//! another worker's over a link): `PendingTable` remembers who waits for each
//! tag, and a waiting `sub` buffers the messages that arrive meanwhile.
//! `answers.rs` turns each answer into frames for whoever asked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::proto::frames::ErrorReply;
use crate::sync::caps::{InflightCounts, Waiting};
use crate::sync::replay::Replays;
use crate::sync::sub_buffer::SubBuffer;

/// Who asked for a publish, so the answer can find them.
pub enum Origin {
    Client {
        key: usize,
        conn_id: u64,
        id: Option<Box<RawValue>>,
    },
    Http {
        key: usize,
        conn_id: u64,
        keep_alive: bool,
    },
    /// Another worker, for one of its clients.
    Peer { slot: usize, tag: u64 },
    /// The server itself (dead letters on `$expired`): nobody to answer.
    Internal,
    /// A queue ingest's message (`crate::connectors`), request `id` of
    /// the thread's broker `session`.
    Ingest {
        ingest: usize,
        id: u64,
        session: u64,
    },
}

/// Where a history or JSON answer goes.
pub enum HistoryFor {
    Client { id: Option<Box<RawValue>> },
    Http { keep_alive: bool },
}

/// A request waiting for an owner's answer.
pub struct Pending {
    /// The worker that owns the channel: its link breaking fails the request.
    pub slot: usize,
    pub what: Awaiting,
    /// When it was asked: a request to another worker waits at most
    /// `request_timeout`.
    pub since: Instant,
}

pub enum Awaiting {
    Publish(Origin),
    Sub(WaitingSub),
    History {
        key: usize,
        conn_id: u64,
        channel: String,
        reply: HistoryFor,
    },
    /// An inbox `ack`: answered `ok` once the owner has stored it.
    Ack {
        key: usize,
        conn_id: u64,
        id: Option<Box<RawValue>>,
    },
    /// A fetch (round `round`) of the messages a channel's stream is missing:
    /// a resume from the last seq its subscribers here have had.
    Repair {
        channel: String,
        round: u64,
    },
    /// The next page of a resume's replay (`sync::replay`).
    Page {
        key: usize,
        conn_id: u64,
        channel: String,
    },
    /// `presence`, `get`, `state` or `GET /api/users/<uid>`: the answer is
    /// one JSON object.
    Json {
        key: usize,
        conn_id: u64,
        reply: HistoryFor,
    },
}

impl Awaiting {
    /// The client connection waiting and whether this is its `sub`, for
    /// `max_inflight_per_conn` and `max_subs_per_conn`. HTTP waits one
    /// request at a time, and the server's own requests are not counted.
    /// A user's automatic inbox subscription (no client waits for it).
    pub fn is_quiet(&self) -> bool {
        matches!(self, Awaiting::Sub(s) if s.quiet)
    }

    fn client(&self) -> Option<(u64, bool)> {
        match self {
            Awaiting::Publish(Origin::Client { conn_id, .. }) => Some((*conn_id, false)),
            Awaiting::Sub(s) if !s.quiet => Some((s.conn_id, true)),
            Awaiting::History {
                conn_id,
                reply: HistoryFor::Client { .. },
                ..
            }
            | Awaiting::Json {
                conn_id,
                reply: HistoryFor::Client { .. },
                ..
            }
            | Awaiting::Ack { conn_id, .. } => Some((*conn_id, false)),
            _ => None,
        }
    }
}

/// A `sub` waiting for the owner's answer.
pub struct WaitingSub {
    pub key: usize,
    pub conn_id: u64,
    pub id: Option<Box<RawValue>>,
    pub channel: String,
    /// Messages of the channel that arrived while waiting.
    pub buffer: SubBuffer,
    /// The automatic inbox subscription of a user: no reply frame.
    pub quiet: bool,
    /// An `unsub` of the channel overtook this `sub`.
    pub unsub: Option<Overtaken>,
}

/// A `sub` an `unsub` overtook: it is answered but does not subscribe; the
/// last such `sub` then answers the `unsub` too.
pub struct Overtaken {
    pub answer: bool,
    /// The `unsub`'s id.
    pub id: Option<Box<RawValue>>,
}

/// Every request of this worker waiting for an owner, by tag.
#[derive(Default)]
pub struct PendingTable {
    entries: HashMap<u64, Pending>,
    /// Tags of the `sub`s waiting, by channel.
    subs: HashMap<Box<str>, Vec<u64>>,
    next_tag: u64,
    /// What each client connection has waiting here.
    inflight: InflightCounts,
    /// `sub`s answered whose replay goes on in pages: they hold live
    /// messages too.
    pub replays: Replays,
    /// Channels whose last waiting `sub` was answered since `take_emptied`.
    emptied: Vec<Box<str>>,
}

impl PendingTable {
    /// Records a request to the owner at `slot`; returns its tag.
    /// No question waits for an answer (none can time out).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, slot: usize, what: Awaiting) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        if let Awaiting::Sub(sub) = &what {
            let channel = sub.channel.as_str();
            self.subs.entry(channel.into()).or_default().push(tag);
        }
        if let Some((conn_id, sub)) = what.client() {
            self.inflight.add(conn_id, sub);
        }
        let since = Instant::now();
        self.entries.insert(tag, Pending { slot, what, since });
        tag
    }

    /// The request answered now, if it still waits.
    pub fn remove(&mut self, tag: u64) -> Option<Pending> {
        let pending = self.entries.remove(&tag)?;
        if let Some((conn_id, sub)) = pending.what.client() {
            self.inflight.remove(conn_id, sub);
        }
        if let Awaiting::Sub(sub) = &pending.what {
            self.forget_sub(&sub.channel, tag);
        }
        Some(pending)
    }

    fn forget_sub(&mut self, channel: &str, tag: u64) {
        if let Some(tags) = self.subs.get_mut(channel) {
            tags.retain(|&t| t != tag);
            if tags.is_empty() {
                self.subs.remove(channel);
                self.emptied.push(channel.into());
            }
        }
    }

    /// Whether `channel` is wanted here by a `sub` waiting for its owner or
    /// a replay going on.
    pub fn wants(&self, channel: &str) -> bool {
        self.subs.contains_key(channel) || self.replays.has_channel(channel)
    }

    /// Channels whose last waiting `sub` or replay ended since the last call.
    pub fn take_emptied(&mut self) -> Vec<Box<str>> {
        let mut emptied = std::mem::take(&mut self.emptied);
        emptied.extend(self.replays.take_emptied());
        emptied
    }

    /// The requests (and `sub`s among them) connection `conn_id` has waiting.
    pub fn waiting(&self, conn_id: u64) -> Waiting {
        self.inflight.of(conn_id)
    }

    /// A message of `channel` for the `sub`s still waiting for its owner.
    pub fn buffer(&mut self, channel: &str, seq: u64, line: &Bytes) {
        self.replays.buffer(channel, seq, line, sub_buffer_cap());
        let Some(tags) = self.subs.get(channel) else {
            return;
        };
        for tag in tags {
            if let Some(Pending {
                what: Awaiting::Sub(sub),
                ..
            }) = self.entries.get_mut(tag)
            {
                sub.buffer.push(seq, line, sub_buffer_cap());
            }
        }
    }

    /// An `unsub` of `channel` by this connection, while its `sub`s wait:
    /// they will not subscribe, and the last one answers the `unsub` (`id`)
    /// after its own answer. Returns false when no `sub` waits.
    pub fn overtake(
        &mut self,
        key: usize,
        conn_id: u64,
        channel: &str,
        id: Option<Box<RawValue>>,
    ) -> bool {
        let tags = self.subs.get(channel).cloned().unwrap_or_default();
        let ours: Vec<u64> = tags
            .into_iter()
            .filter(|tag| {
                matches!(self.entries.get(tag), Some(Pending { what: Awaiting::Sub(s), .. })
                    if s.key == key && s.conn_id == conn_id && !s.quiet)
            })
            .collect();
        let Some(&last) = ours.iter().max() else {
            return false;
        };
        for tag in ours {
            if let Some(Pending {
                what: Awaiting::Sub(sub),
                ..
            }) = self.entries.get_mut(&tag)
            {
                sub.unsub = Some(Overtaken {
                    answer: tag == last,
                    id: id.clone().filter(|_| tag == last),
                });
            }
        }
        true
    }

    /// Tags of the requests waiting on the link to `slot`.
    /// Requests to other workers than `local` asked `timeout` or more ago.
    pub fn overdue(&self, local: usize, now: Instant, timeout: Duration) -> Vec<u64> {
        // A user's inbox waiting for Redis starts whenever Redis is back.
        let patient = |p: &Pending| p.slot == WAITS_FOR_REDIS && p.what.is_quiet();
        let late = |p: &Pending| {
            p.slot != local && !patient(p) && now.saturating_duration_since(p.since) >= timeout
        };
        self.entries
            .iter()
            .filter(|(_, p)| late(p))
            .map(|(&t, _)| t)
            .collect()
    }

    /// The question with `tag` now waits for worker `slot`; false when it
    /// is no longer waiting (answered, timed out).
    pub fn retarget(&mut self, tag: u64, slot: usize) -> bool {
        match self.entries.get_mut(&tag) {
            Some(pending) => {
                pending.slot = slot;
                true
            }
            None => false,
        }
    }

    pub fn tags_on(&self, slot: usize) -> Vec<u64> {
        let on = self.entries.iter().filter(|(_, p)| p.slot == slot);
        on.map(|(&t, _)| t).collect()
    }
}

/// Most messages a waiting `sub` buffers before it gives up.
const MAX_SUB_BUFFER: usize = 100_000;

/// `MAX_SUB_BUFFER`, or the test-only override `SYNCD_TEST_MAX_SUB_BUFFER`
/// (see docs/operations.md) so tests need not publish 100 000 messages.
pub(super) fn sub_buffer_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("SYNCD_TEST_MAX_SUB_BUFFER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_SUB_BUFFER)
    })
}

/// A request whose owner did not answer within `request_timeout` (it may
/// be hung, or stopped): like a broken link, the request may or may not
/// have been carried out.
/// The pending table's slot of a question held until its Redis topic is
/// subscribed (no worker answers it yet; `[cluster] engine = "redis"`).
pub const WAITS_FOR_REDIS: usize = usize::MAX;

pub fn timed_out(timeout: Duration) -> ErrorReply {
    ErrorReply::new(
        "unavailable",
        format!("the worker that owns this channel did not answer within {timeout:?} (limits.request_timeout); retry shortly"),
    )
}

pub fn unavailable(slot: usize) -> ErrorReply {
    ErrorReply::new(
        "unavailable",
        format!("the worker that owns this channel ({slot}) is restarting; retry shortly"),
    )
}
