//! Requests waiting for a channel's owner: `sub` (with its buffer of
//! messages that arrive meanwhile), `history`, `get`/`state`, presence and
//! state writes, and how each answer reaches whoever asked.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::dispatch::Origin;
use super::owner::{Answer, Query, ReplyTo};
use super::resume::SubAnswer;
use super::Worker;
use crate::bus::BusMsg;
use crate::proto::frames::{self, ErrorReply};
use crate::sync::sub_buffer::SubBuffer;

/// Where a history answer goes.
pub enum HistoryFor {
    Client { id: Option<Box<RawValue>> },
    Http { keep_alive: bool },
}

/// A request waiting for an owner's answer.
pub struct Pending {
    pub(super) slot: usize,
    pub(super) what: Awaiting,
}

pub(super) enum Awaiting {
    Publish(Origin),
    Sub {
        key: usize,
        conn_id: u64,
        id: Option<Box<RawValue>>,
        channel: String,
        /// Messages of the channel that arrived while waiting.
        buffer: SubBuffer,
        /// The automatic inbox subscription of a user: no reply frame.
        quiet: bool,
    },
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
    /// `presence`, `get`, `state` or `GET /api/users/<uid>`: the answer is
    /// one JSON object.
    Json {
        key: usize,
        conn_id: u64,
        reply: HistoryFor,
    },
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

pub fn unavailable(slot: usize) -> ErrorReply {
    ErrorReply::new(
        "unavailable",
        format!("the worker that owns this channel ({slot}) is restarting; retry shortly"),
    )
}

impl Worker {
    pub(super) fn history(
        &mut self,
        key: usize,
        channel: &str,
        since: u64,
        limit: usize,
        reply: HistoryFor,
    ) {
        let conn_id = self.conns.get(key).map_or(0, |c| c.id);
        let what = Awaiting::History {
            key,
            conn_id,
            channel: channel.to_string(),
            reply,
        };
        self.ask_owner(channel, Query::History { since, limit }, what);
    }

    /// A message of `channel` for the `sub`s still waiting for its owner.
    pub(super) fn buffer_for_waiting_subs(&mut self, channel: &str, seq: u64, line: &Bytes) {
        let Some(tags) = self.pending_subs.get(channel) else {
            return;
        };
        for tag in tags {
            if let Some(Pending {
                what: Awaiting::Sub { buffer, .. },
                ..
            }) = self.pending.get_mut(tag)
            {
                buffer.push(seq, line, sub_buffer_cap());
            }
        }
    }

    /// An `unsub` that overtakes this connection's `sub` of the channel, still
    /// waiting for the owner: the `sub` is answered `cancelled` at once and
    /// the owner's answer will find nothing, so the connection ends up
    /// unsubscribed, as its last request said.
    pub(super) fn cancel_waiting_sub(&mut self, key: usize, conn_id: u64, channel: &str) {
        let Some(tags) = self.pending_subs.get_mut(channel) else {
            return;
        };
        let pending = &mut self.pending;
        let mut cancelled = Vec::new();
        tags.retain(|tag| {
            let ours = matches!(
                pending.get(tag),
                Some(Pending { what: Awaiting::Sub { key: k, conn_id: c, quiet: false, .. }, .. })
                    if *k == key && *c == conn_id
            );
            if ours {
                cancelled.extend(pending.remove(tag));
            }
            !ours
        });
        if tags.is_empty() {
            self.pending_subs.remove(channel);
        }
        for Pending { what, .. } in cancelled {
            if let Awaiting::Sub { id, .. } = what {
                let e = ErrorReply::new(
                    "cancelled",
                    "an unsub of this channel came before the subscription was confirmed",
                );
                self.reply(key, frames::error(id.as_deref(), &e));
            }
        }
    }

    /// Records what waits for the answer, then asks the owner: this worker
    /// directly, or another one over the bus.
    pub(super) fn ask_owner(&mut self, channel: &str, query: Query, what: Awaiting) {
        let owner = self.owner_of(channel);
        let tag = self.next_tag();
        if matches!(what, Awaiting::Sub { .. }) {
            self.pending_subs
                .entry(channel.into())
                .or_default()
                .push(tag);
        }
        self.pending.insert(tag, Pending { slot: owner, what });
        if owner == self.slot {
            self.owner_query(channel, query, ReplyTo::Local(tag));
            return;
        }
        let msg = match query {
            Query::Inbox => BusMsg::SubQuery {
                tag,
                channel: channel.to_string(),
                since: None,
                epoch: None,
                inbox: true,
            },
            Query::Presence => BusMsg::PresenceQuery {
                tag,
                channel: channel.to_string(),
            },
            Query::User { uid } => BusMsg::UserQuery { tag, uid },
            Query::Get { key } => BusMsg::StateQuery {
                tag,
                channel: channel.to_string(),
                key: Some(key),
            },
            Query::State => BusMsg::StateQuery {
                tag,
                channel: channel.to_string(),
                key: None,
            },
            Query::Resume { since, epoch } => BusMsg::SubQuery {
                tag,
                channel: channel.to_string(),
                since,
                epoch,
                inbox: false,
            },
            Query::History { since, limit } => BusMsg::HistoryQuery {
                tag,
                channel: channel.to_string(),
                since,
                limit,
            },
            Query::Ack { seq } => BusMsg::Ack {
                tag,
                channel: channel.to_string(),
                seq,
            },
        };
        if self.peers.send(owner, &msg, Bytes::new()).is_err() {
            self.finish_query(tag, Err(unavailable(owner)));
        }
    }

    /// An owner answered a `sub` or `history`.
    pub(super) fn finish_query(&mut self, tag: u64, answer: Result<Answer, ErrorReply>) {
        let Some(pending) = self.pending.remove(&tag) else {
            return;
        };
        match pending.what {
            Awaiting::Sub {
                key,
                conn_id,
                id,
                channel,
                buffer,
                quiet,
            } => {
                if let Some(tags) = self.pending_subs.get_mut(channel.as_str()) {
                    tags.retain(|&t| t != tag);
                    if tags.is_empty() {
                        self.pending_subs.remove(channel.as_str());
                    }
                }
                let sub = SubAnswer {
                    key,
                    conn_id,
                    id,
                    channel,
                    buffer,
                    quiet,
                };
                self.finish_sub(sub, answer);
            }
            Awaiting::History {
                key,
                conn_id,
                channel,
                reply,
            } => {
                if !self.is_live(key, conn_id) {
                    return;
                }
                match reply {
                    HistoryFor::Client { id } => {
                        let text = match answer {
                            Ok(a) => frames::history_reply(
                                id.as_deref(),
                                &channel,
                                a.seq,
                                &a.epoch,
                                &a.lines,
                            ),
                            Err(e) => frames::error(id.as_deref(), &e),
                        };
                        self.reply(key, text);
                    }
                    HistoryFor::Http { keep_alive } => {
                        let body = answer.map(|a| {
                            frames::history_reply(None, &channel, a.seq, &a.epoch, &a.lines)
                        });
                        self.answer_http(key, conn_id, keep_alive, body);
                    }
                }
            }
            Awaiting::Json {
                key,
                conn_id,
                reply,
            } => {
                if !self.is_live(key, conn_id) {
                    return;
                }
                let json = answer.map(|a| {
                    let line = a.lines.first().cloned().unwrap_or_default();
                    String::from_utf8_lossy(&line).trim().to_string()
                });
                match reply {
                    HistoryFor::Client { id } => {
                        let text = match json {
                            Ok(object) => frames::ok_with(id.as_deref(), &object),
                            Err(e) => frames::error(id.as_deref(), &e),
                        };
                        self.reply(key, text);
                    }
                    HistoryFor::Http { keep_alive } => {
                        self.answer_http(key, conn_id, keep_alive, json)
                    }
                }
            }
            Awaiting::Ack { key, conn_id, id } => {
                if self.is_live(key, conn_id) {
                    let text = match answer {
                        Ok(_) => frames::ok(id.as_deref()),
                        Err(e) => frames::error(id.as_deref(), &e),
                    };
                    self.reply(key, text);
                }
            }
            Awaiting::Publish(origin) => {
                let result = answer.and(Err(ErrorReply::new("internal", "unexpected answer")));
                self.answer_publish(origin, result);
            }
        }
    }

    /// `set`/`del` (and `PUT /api/state`): decided by the channel's owner.
    pub(super) fn set_state(
        &mut self,
        origin: Origin,
        channel: &str,
        key: &str,
        value: Option<String>,
        version: u64,
    ) {
        let owner = self.owner_of(channel);
        if owner == self.slot {
            return self.set_owned(origin, channel, key, value, version);
        }
        let tag = self.next_tag();
        let msg = BusMsg::StateSet {
            tag,
            channel: channel.to_string(),
            key: key.to_string(),
            version,
            delete: value.is_none(),
        };
        let payload = Bytes::from(value.unwrap_or_default());
        if self.peers.send(owner, &msg, payload).is_err() {
            return self.answer_publish(origin, Err(unavailable(owner)));
        }
        let what = Awaiting::Publish(origin);
        self.pending.insert(tag, Pending { slot: owner, what });
    }

    /// A question whose answer is one JSON object (`get`, `state`).
    pub(super) fn json_query(
        &mut self,
        key: usize,
        channel: &str,
        query: Query,
        reply: HistoryFor,
    ) {
        let conn_id = self.conns.get(key).map_or(0, |c| c.id);
        let what = Awaiting::Json {
            key,
            conn_id,
            reply,
        };
        self.ask_owner(channel, query, what);
    }
}
