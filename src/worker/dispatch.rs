//! The requesting side: client requests routed to channel owners, answers
//! routed back to whoever asked, and messages to local subscribers.
//!
//! A request for a channel owned by another worker crosses the bus; `Pending`
//! remembers who is waiting. A `sub` also collects the messages that arrive
//! while it waits (`buffer`), so a resume that needs a disk read still hands
//! the client every message exactly once: the replay, then what came since.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::owner::{Answer, Query, ReplyTo};
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
        /// Messages of the channel that arrived while waiting: `(seq, line)`.
        buffer: Vec<(u64, Bytes)>,
        /// The automatic inbox subscription of a user: no reply frame.
        quiet: bool,
    },
    History {
        key: usize,
        conn_id: u64,
        channel: String,
        reply: HistoryFor,
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

pub fn unavailable(slot: usize) -> ErrorReply {
    ErrorReply::new(
        "unavailable",
        format!("the worker that owns this channel ({slot}) is restarting; retry shortly"),
    )
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
                    buffer: Vec::new(),
                    quiet: false,
                };
                self.ask_owner(&channel, query, what);
            }
            Op::Unsub { channel } => {
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
                self.publish(
                    origin,
                    &auth::inbox(&uid),
                    data.get(),
                    PublishOptions::ttl(ttl),
                );
            }
            Op::Ack { channel, seq } => {
                if !channel.starts_with('#') {
                    let e = ErrorReply::new("bad_request", "`ack` is for inbox channels (#uid)");
                    return self.reply(key, frames::error(id, &e));
                }
                self.route_ack(&channel, seq);
                self.reply(key, frames::ok(id));
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
                let value = value.map(|v| v.get().to_string());
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
                self.publish(origin, &channel, data.get(), PublishOptions::ttl(ttl));
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

    fn authenticate(&mut self, key: usize, id: Option<&RawValue>, token: &str) {
        if self.conns.get(key).is_some_and(|c| c.user.is_some()) {
            let e = ErrorReply::new(
                "already_authenticated",
                "this connection is already authenticated",
            );
            return self.reply(key, frames::error(id, &e));
        }
        match auth::verify(&self.config.auth.jwt_secret, token) {
            Ok(user) => {
                let reply = frames::ok_auth(id, &user.uid);
                self.bind_user(key, user);
                self.reply(key, reply);
            }
            Err(e) => self.refuse_auth(key, id, &e),
        }
    }

    /// Binds an authenticated user to the connection.
    pub(super) fn bind_user(&mut self, key: usize, user: auth::User) {
        log::debug!(
            "worker {}: connection key {key} is user {}",
            self.slot,
            user.uid
        );
        let inbox = auth::inbox(&user.uid);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.user = Some(user);
        // Every connection of a user hears its inbox: what was sent while it
        // was away (after its last ack), then live direct messages.
        let what = Awaiting::Sub {
            key,
            conn_id: conn.id,
            id: None,
            channel: inbox.clone(),
            buffer: Vec::new(),
            quiet: true,
        };
        self.ask_owner(&inbox, Query::Inbox, what);
    }

    /// An error frame, then the connection closes (WebSocket 4001).
    fn refuse_auth(&mut self, key: usize, id: Option<&RawValue>, e: &ErrorReply) {
        log::info!("worker {}: refusing a connection: {}", self.slot, e.message);
        self.reply(key, frames::error(id, e));
        let deadline = std::time::Instant::now() + super::CLOSE_GRACE;
        self.close_with(key, super::CLOSE_UNAUTHORIZED, &e.message, deadline);
    }

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
                if !self.is_live(key, conn_id) {
                    return;
                }
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) if quiet => {
                        return log::warn!(
                            "worker {}: inbox {channel} unavailable: {}",
                            self.slot,
                            e.message
                        )
                    }
                    Err(e) => return self.reply(key, frames::error(id.as_deref(), &e)),
                };
                let reply = frames::ok_sub(
                    id.as_deref(),
                    &channel,
                    answer.seq,
                    &answer.epoch,
                    answer.recovered,
                );
                if !quiet {
                    self.reply(key, reply);
                }
                let live = buffer
                    .into_iter()
                    .filter(|(seq, _)| *seq > answer.seq)
                    .map(|(_, line)| line);
                let limit = self.config.limits.max_send_buffer;
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.replay(answer.lines.into_iter().chain(live), limit);
                }
                if self.subs.add(key, &channel) {
                    self.track_presence(key, &channel, true);
                }
                self.mark_dirty(key);
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
            Awaiting::Publish(origin) => {
                let result = answer.and(Err(ErrorReply::new("internal", "unexpected answer")));
                self.answer_publish(origin, result);
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
        if let Some(tags) = self.pending_subs.get(channel) {
            for tag in tags {
                if let Some(Pending {
                    what: Awaiting::Sub { buffer, .. },
                    ..
                }) = self.pending.get_mut(tag)
                {
                    if buffer.len() < MAX_SUB_BUFFER {
                        buffer.push((seq, line.clone()));
                    }
                }
            }
        }
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
