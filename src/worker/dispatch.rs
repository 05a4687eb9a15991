//! The requesting side: client requests routed to channel owners, answers
//! routed back to whoever asked, and messages to local subscribers.
//!
//! A request for a channel owned by another worker crosses the bus; `Pending`
//! remembers who is waiting. A `sub` also collects the messages that arrive
//! while it waits (`buffer`), so a resume that needs a disk read still hands
//! the client every message exactly once: the replay, then what came since.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::owner::Query;
use super::pending::{unavailable, Awaiting, HistoryFor, Pending};
use super::Worker;
use crate::auth;
use crate::bus::BusMsg;
use crate::proto::frames::{self, Acked, ErrorReply, Op};
use crate::proto::ws::text_frame_header;
use crate::sync::shard;

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
}

/// How long to keep a message, and the backend's key that makes a retried
/// publish or send return the first result instead of publishing twice.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Set when the message records a keyed-state change.
    pub state: Option<StateWrite>,
}

/// A granted compare-and-set: what to store with the message.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub key: String,
    pub value: Option<String>,
    pub version: u64,
}

impl PublishOptions {
    pub fn ttl(ttl: Option<u64>) -> Self {
        PublishOptions {
            ttl,
            ..PublishOptions::default()
        }
    }
}

impl Worker {
    pub(super) fn on_frame(&mut self, key: usize, text: &str) {
        self.stats.msgs_in += 1;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.active = std::time::Instant::now();
        }
        let request = match frames::parse_request(text) {
            Ok(request) => request,
            Err((id, e)) => {
                log::debug!("worker {}: bad request: {}", self.slot, e.message);
                self.reply(key, frames::error(id.as_deref(), &e));
                return;
            }
        };
        let id = request.id;
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let conn_id = conn.id;
        let user = conn.user.clone();
        let op = &request.op;
        if user.is_none()
            && !self.config.auth.allow_anonymous
            && !matches!(op, Op::Auth { .. } | Op::Ping)
        {
            let e = auth::unauthorized("authenticate first: {\"op\":\"auth\",\"token\":…}");
            return self.refuse_auth(key, id, &e);
        }
        let checked = match op {
            Op::Sub { channel, .. }
            | Op::History { channel, .. }
            | Op::Ack { channel, .. }
            | Op::Presence { channel }
            | Op::Get { channel, .. }
            | Op::State { channel } => auth::may_read(user.as_ref(), channel),
            Op::Pub { channel, .. } | Op::Set { channel, .. } => {
                auth::may_publish(user.as_ref(), channel)
            }
            Op::Auth { .. } | Op::Ping | Op::Unsub { .. } | Op::Send { .. } => Ok(()),
        };
        if let Err(e) = checked {
            return self.reply(key, frames::error(id, &e));
        }
        match request.op {
            Op::Auth { token } => self.authenticate(key, id, &token),
            Op::Ping => self.reply(key, frames::pong(id)),
            Op::Sub {
                channel,
                since,
                epoch,
            } => {
                if self.subs.is_subscribed(key, &channel) {
                    let e = ErrorReply::new(
                        "already_subscribed",
                        format!("already subscribed to {channel}"),
                    );
                    self.reply(key, frames::error(id, &e));
                    return;
                }
                let query = Query::Resume {
                    since,
                    epoch: epoch.map(|e| e.into_owned()),
                };
                let what = Awaiting::Sub {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                    channel: channel.to_string(),
                    buffer: Default::default(),
                    quiet: false,
                };
                self.ask_owner(&channel, query, what);
            }
            Op::Unsub { channel } => {
                self.cancel_waiting_sub(key, conn_id, &channel);
                if self.subs.remove(key, &channel) {
                    self.track_presence(key, &channel, false);
                }
                self.reply(key, frames::ok(id));
            }
            Op::Send { uid, data, ttl } => {
                if user.is_none() {
                    let e = auth::unauthorized("`send` needs an authenticated connection");
                    return self.reply(key, frames::error(id, &e));
                }
                let origin = Origin::Client {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                };
                self.publish(origin, &auth::inbox(&uid), &data, PublishOptions::ttl(ttl));
            }
            Op::Ack { channel, seq } => {
                if !channel.starts_with('#') {
                    let e = ErrorReply::new("bad_request", "`ack` is for inbox channels (#uid)");
                    return self.reply(key, frames::error(id, &e));
                }
                self.ack(key, id.map(RawValue::to_owned), &channel, seq);
            }
            Op::Presence { channel } => {
                let reply = HistoryFor::Client {
                    id: id.map(RawValue::to_owned),
                };
                self.presence_query(key, &channel, reply);
            }
            Op::Set {
                channel,
                key: state_key,
                value,
                version,
            } => {
                let origin = Origin::Client {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                };
                let value = value.map(Cow::into_owned);
                self.set_state(origin, &channel, &state_key, value, version);
            }
            Op::Get {
                channel,
                key: state_key,
            } => {
                let query = Query::Get {
                    key: state_key.into_owned(),
                };
                self.json_query(
                    key,
                    &channel,
                    query,
                    HistoryFor::Client {
                        id: id.map(RawValue::to_owned),
                    },
                );
            }
            Op::State { channel } => {
                let reply = HistoryFor::Client {
                    id: id.map(RawValue::to_owned),
                };
                self.json_query(key, &channel, Query::State, reply);
            }
            Op::Pub { channel, data, ttl } => {
                let origin = Origin::Client {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                };
                self.publish(origin, &channel, &data, PublishOptions::ttl(ttl));
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                let reply = HistoryFor::Client {
                    id: id.map(RawValue::to_owned),
                };
                self.history(key, &channel, since, limit, reply);
            }
        }
    }

    /// Queues one reply frame (a JSON text) to a WebSocket or TCP client.
    pub(super) fn reply(&mut self, key: usize, text: String) {
        let mut line = text.into_bytes();
        line.push(b'\n');
        self.send_line(key, &Bytes::from(line));
    }

    /// Queues a newline-terminated frame to a WebSocket or TCP client.
    pub(super) fn send_line(&mut self, key: usize, line: &Bytes) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.send_line(line, None);
            self.mark_dirty(key);
        }
    }

    pub(super) fn owner_of(&self, channel: &str) -> usize {
        shard::owner_of(channel, self.config.storage.shards, self.config.workers)
    }

    pub(super) fn publish(
        &mut self,
        origin: Origin,
        channel: &str,
        data: &str,
        options: PublishOptions,
    ) {
        let owner = self.owner_of(channel);
        if owner == self.slot {
            self.publish_owned(origin, channel, data, options);
            return;
        }
        let tag = self.next_tag();
        let msg = BusMsg::Publish {
            tag,
            channel: channel.to_string(),
            ttl: options.ttl,
            idempotency_key: options.idempotency_key,
        };
        let payload = Bytes::copy_from_slice(data.as_bytes());
        if self.peers.send(owner, &msg, payload).is_err() {
            self.answer_publish(origin, Err(unavailable(owner)));
            return;
        }
        let what = Awaiting::Publish(origin);
        self.pending.insert(tag, Pending { slot: owner, what });
    }

    /// Hands a stored message to this worker's subscribers of `channel`, and
    /// to the `sub`s still waiting for their owner's answer.
    pub(super) fn deliver_local(&mut self, channel: &str, seq: u64, line: &Bytes) {
        self.buffer_for_waiting_subs(channel, seq, line);
        let subscribers = self.subs.subscribers(channel);
        if subscribers.is_empty() {
            return;
        }
        // One frame header for every WebSocket subscriber of this message.
        let ws_header = text_frame_header(line.len().saturating_sub(1));
        for &key in subscribers {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.send_line(line, Some(&ws_header));
            self.stats.msgs_out += 1;
            self.dirty.push(key);
        }
    }

    pub(super) fn answer_publish(&mut self, origin: Origin, result: Result<Acked, ErrorReply>) {
        match origin {
            Origin::Client { key, conn_id, id } => {
                if self.is_live(key, conn_id) {
                    let text = match result {
                        Ok(acked) => frames::ok_acked(id.as_deref(), acked),
                        Err(e) => frames::error(id.as_deref(), &e),
                    };
                    self.reply(key, text);
                }
            }
            Origin::Http {
                key,
                conn_id,
                keep_alive,
            } => {
                let body = result.map(|a| match a.version {
                    None => serde_json::json!({ "seq": a.seq }).to_string(),
                    Some(version) => {
                        serde_json::json!({ "seq": a.seq, "version": version }).to_string()
                    }
                });
                self.answer_http(key, conn_id, keep_alive, body);
            }
            Origin::Internal => {
                if let Err(e) = result {
                    log::error!(
                        "worker {}: internal publish failed: {}",
                        self.slot,
                        e.message
                    );
                }
            }
            Origin::Peer { slot, tag } => {
                let msg = match result {
                    Ok(a) => BusMsg::Published {
                        tag,
                        seq: Some(a.seq),
                        version: a.version,
                        error: None,
                    },
                    Err(e) => BusMsg::Published {
                        tag,
                        seq: None,
                        version: None,
                        error: Some((e.code.to_string(), e.message, e.current)),
                    },
                };
                let _ = self.peers.send(slot, &msg, Bytes::new());
            }
        }
    }
}
