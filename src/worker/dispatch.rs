//! Routing: client requests go to the channel's owner (this worker's
//! `OwnerCore`, or another worker's over a link), the owner's effects are
//! carried out, answers go back to whoever asked, and messages go to local
//! subscribers.
//!
//! The pending table remembers who is waiting. A `sub` also collects the
//! messages that arrive while it waits (`buffer`), so a resume that needs a
//! disk read still hands the client every message exactly once: the replay,
//! then what came since.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::value::RawValue;

pub use super::pending::Origin;
use super::pending::WAITS_FOR_REDIS;
use super::pending::{sub_buffer_cap, unavailable, Awaiting, HistoryFor, WaitingSub};
use super::request_limits;
use super::users::EXPIRED_CHANNEL;
use super::Worker;
use crate::auth;
use crate::bus::BusMsg;
pub use crate::owner::PublishOptions;
use crate::owner::{Answer, Command, Effect, Query, Reply, ReplyTo};
use crate::packing::{self, Packer};
use crate::proto::frames::{self, ErrorReply, Op};
use crate::proto::ws::text_frame;
use crate::sync::channel;
use crate::sync::shard;
use crate::sync::stream::Arrival;

impl Worker {
    pub(super) fn on_frame(&mut self, key: usize, text: &str) {
        self.conns.stats.msgs_in += 1;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.active = std::time::Instant::now();
        }
        let request = match frames::parse_request(text) {
            Ok(request) => request,
            Err((id, e)) => {
                log::debug!("worker {}: bad request: {}", self.slot, e.message);
                self.conns.reply(key, frames::error(id.as_deref(), &e));
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
            return self.conns.refuse_auth(key, id, &e);
        }
        if let Err(e) = channel::permit(user.as_ref(), op) {
            return self.conns.reply(key, frames::error(id, &e));
        }
        if let Some(conn) = self.conns.get_mut(key) {
            let now = std::time::Instant::now();
            if let Err(e) = request_limits::check(&self.config, conn, op, now) {
                self.conns.stats.rate_limited += u64::from(e.code == "rate_limited");
                return self.conns.reply(key, frames::error(id, &e));
            }
        }
        match request.op {
            Op::Auth { token } => self.authenticate(key, id, &token),
            Op::Refresh { token } => self.conns.refresh(key, id, &self.config.auth, &token),
            Op::Ping => self.conns.reply(key, frames::pong(id)),
            Op::Sub {
                channel,
                since,
                epoch,
            } => {
                let replaying = self.pending.replays.is_replaying(key, &channel);
                if replaying || self.subs.is_subscribed(key, &channel) {
                    let e = ErrorReply::new(
                        "already_subscribed",
                        format!("already subscribed to {channel}"),
                    );
                    self.conns.reply(key, frames::error(id, &e));
                    return;
                }
                if let Err(e) = self.sub_cap(key, conn_id) {
                    return self.conns.reply(key, frames::error(id, &e));
                }
                let query = Query::Resume {
                    since,
                    epoch: epoch.map(|e| e.into_owned()),
                    upto: None,
                };
                let what = Awaiting::Sub(WaitingSub {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                    channel: channel.to_string(),
                    buffer: Default::default(),
                    quiet: false,
                    unsub: None,
                });
                self.ask_owner(&channel, query, what);
            }
            Op::Unsub { channel } => {
                if self.overtake_waiting_sub(key, conn_id, &channel, id) {
                    return;
                }
                if self.subs.remove(key, &channel) {
                    self.track_presence(key, &channel, false);
                }
                self.conns.reply(key, frames::ok(id));
            }
            Op::Send { uid, data, ttl } => {
                let origin = Origin::Client {
                    key,
                    conn_id,
                    id: id.map(RawValue::to_owned),
                };
                self.publish(
                    origin,
                    &channel::inbox(&uid),
                    &data,
                    PublishOptions::ttl(ttl),
                );
            }
            Op::Ack { channel, seq } => {
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
            Op::State {
                channel,
                after,
                limit,
            } => {
                let reply = HistoryFor::Client {
                    id: id.map(RawValue::to_owned),
                };
                let after = after.map(Cow::into_owned);
                self.json_query(key, &channel, Query::State { after, limit }, reply);
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
        if let Origin::Client { key, .. } = origin {
            // Taken now, read no more while the channel is congested.
            self.pressure.hold(key, channel);
        }
        let owner = self.owner_of(channel);
        if owner == self.slot {
            let to = self.reply_to(origin);
            return self.tell_owner(Command::Publish {
                to,
                channel: channel.to_string(),
                data: data.into(),
                options,
            });
        }
        let channel = channel.to_string();
        let payload = Bytes::copy_from_slice(data.as_bytes());
        self.send_to_owner(owner, Awaiting::Publish(origin), payload, |tag| {
            BusMsg::Publish {
                tag,
                channel,
                ttl: options.ttl,
                idempotency_key: options.idempotency_key,
                ingest_window_ms: options.ingest.map(|d| d.as_millis() as u64),
                mirrored: options.mirrored,
            }
        });
    }

    /// Records what waits, then sends `msg` (its tag set here) to the owner
    /// at `slot`; a broken link fails the request at once.
    fn send_to_owner(
        &mut self,
        slot: usize,
        what: Awaiting,
        payload: Bytes,
        msg: impl FnOnce(u64) -> BusMsg,
    ) {
        let tag = self.pending.insert(slot, what);
        if self.links.send(slot, &msg(tag), [payload]).is_err() {
            self.finish(tag, Reply::Answer(Err(unavailable(slot))));
        }
    }

    /// How the owner core names whoever asked.
    fn reply_to(&mut self, origin: Origin) -> ReplyTo {
        match origin {
            Origin::Peer { slot, tag } => ReplyTo::Peer { slot, tag },
            Origin::Internal => ReplyTo::Internal,
            local => ReplyTo::Local(self.pending.insert(self.slot, Awaiting::Publish(local))),
        }
    }

    /// `set`/`del` (and `PUT /api/state`): decided by the channel's owner.
    pub(super) fn set_state(
        &mut self,
        origin: Origin,
        channel: &str,
        key: &str,
        value: Option<String>,
        expected: u64,
    ) {
        let owner = self.owner_of(channel);
        if owner == self.slot {
            let to = self.reply_to(origin);
            let (channel, key) = (channel.to_string(), key.to_string());
            return self.tell_owner(Command::Set {
                to,
                channel,
                key,
                value,
                expected,
            });
        }
        let (channel, key, delete) = (channel.to_string(), key.to_string(), value.is_none());
        let payload = Bytes::from(value.unwrap_or_default());
        self.send_to_owner(owner, Awaiting::Publish(origin), payload, |tag| {
            BusMsg::StateSet {
                tag,
                channel,
                key,
                version: expected,
                delete,
            }
        });
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

    /// Records what waits for the answer, then asks the owner: this worker's
    /// core directly, or another worker over its link.
    pub(super) fn ask_owner(&mut self, channel: &str, query: Query, what: Awaiting) {
        if let (Some(cluster), Query::Resume { .. } | Query::Inbox) = (&mut self.cluster, &query) {
            // Messages and events come from Redis pub/sub, whoever
            // published them; the question waits until the topic is
            // subscribed, so nothing after its answer can be missed. It
            // times out as a question to another worker does.
            cluster.want(channel);
            if !cluster.is_confirmed(channel) {
                // A user's own inbox waits for Redis however long it is
                // down; a client's question fails at once then.
                let fail = !cluster.is_up() && !what.is_quiet();
                let tag = self.pending.insert(WAITS_FOR_REDIS, what);
                cluster.defer(channel, tag, query);
                if fail {
                    let e = ErrorReply::new("unavailable", "redis is unreachable; retry shortly");
                    self.finish(tag, Reply::Answer(Err(e)));
                }
                return;
            }
        }
        let owner = self.owner_of(channel);
        if owner != self.slot && matches!(query, Query::Resume { .. } | Query::Inbox) {
            // From the owner's answer on, its messages come here.
            self.interest.watching.note(channel);
        }
        let tag = self.pending.insert(owner, what);
        self.route_query(owner, channel, tag, query);
    }

    /// Sends the question with `tag` to the owner at `owner`; a broken
    /// link fails it at once.
    pub(super) fn route_query(&mut self, owner: usize, channel: &str, tag: u64, query: Query) {
        if owner == self.slot {
            let to = ReplyTo::Local(tag);
            let channel = channel.to_string();
            return self.tell_owner(Command::Query { to, channel, query });
        }
        let channel = channel.to_string();
        let msg = match query {
            Query::Inbox => BusMsg::SubQuery {
                tag,
                channel,
                since: None,
                epoch: None,
                inbox: true,
                upto: None,
            },
            Query::Presence => BusMsg::PresenceQuery { tag, channel },
            Query::User { uid } => BusMsg::UserQuery { tag, uid },
            Query::Get { key } => BusMsg::StateQuery {
                tag,
                channel,
                key: Some(key),
                after: None,
                limit: None,
            },
            Query::State { after, limit } => BusMsg::StateQuery {
                tag,
                channel,
                key: None,
                after,
                limit: Some(limit),
            },
            Query::Resume { since, epoch, upto } => BusMsg::SubQuery {
                tag,
                channel,
                since,
                epoch,
                inbox: false,
                upto,
            },
            Query::History { since, limit } => BusMsg::HistoryQuery {
                tag,
                channel,
                since,
                limit,
            },
            Query::Ack { seq } => BusMsg::Ack { tag, channel, seq },
        };
        if self.links.send(owner, &msg, []).is_err() {
            self.finish(tag, Reply::Answer(Err(unavailable(owner))));
        }
    }

    /// Hands a command to this worker's owner core and carries out what it
    /// asks for, in order.
    pub(super) fn tell_owner(&mut self, command: Command) {
        self.owner.handle(command, super::owner_side::now());
        while let Some(effect) = self.owner.poll_effect() {
            self.run_effect(effect);
        }
    }

    fn run_effect(&mut self, effect: Effect) {
        match effect {
            // Submitted by `OwnerSide::poll_effect`.
            Effect::Store(_) => {}
            // Messages and presence events go to the workers that want the
            // channel (`sync::interest`), then to our own subscribers.
            // On Redis, every worker hears messages from pub/sub instead.
            Effect::Deliver { .. } if self.cluster.is_some() => {}
            Effect::Deliver { channel, seq, line } => {
                self.connectors.delivered(&channel, seq);
                self.send_to_watchers(&channel, &line, |channel| BusMsg::Deliver { channel, seq });
                self.deliver_local(&channel, seq, &line);
            }
            Effect::Event { channel, line } => {
                self.send_to_watchers(&channel, &line, |channel| BusMsg::Event { channel });
                self.conns.send_to_subscribers(&self.subs, &channel, &line);
            }
            Effect::Reply { to, reply } => match to {
                ReplyTo::Local(tag) => self.finish(tag, reply),
                ReplyTo::Peer { slot, tag } => self.reply_to_peer(slot, tag, reply),
                ReplyTo::Internal => {
                    if let Reply::Published(Err(e)) = reply {
                        log::error!(
                            "worker {}: internal publish failed: {}",
                            self.slot,
                            e.message
                        );
                    }
                }
            },
            Effect::DeadLetter { report } => {
                let options = PublishOptions::default();
                self.publish(Origin::Internal, EXPIRED_CHANNEL, &report, options);
                if let Some(webhook) = &self.webhook {
                    if webhook.try_send(report).is_err() {
                        log::error!(
                            "worker {}: webhook queue full, a dead letter was not posted",
                            self.slot
                        );
                    }
                }
            }
        }
    }

    /// The store has news: each completion goes to the owner core.
    pub(super) fn on_store_events(&mut self) {
        for completion in self.owner.completions() {
            self.tell_owner(Command::Completed(completion));
        }
    }

    fn reply_to_peer(&mut self, slot: usize, tag: u64, reply: Reply) {
        let answer = match reply {
            Reply::Published(result) => {
                return self.answer_publish(Origin::Peer { slot, tag }, result)
            }
            Reply::Answer(answer) => answer,
        };
        let (msg, lines) = match answer {
            Ok(a) => peer_answer(tag, a),
            Err(e) => {
                let msg = BusMsg::QueryAnswer {
                    tag,
                    seq: 0,
                    epoch: String::new(),
                    recovered: None,
                    error: Some(e.message),
                    oldest: None,
                    cursor: None,
                };
                (msg, Vec::new())
            }
        };
        let _ = self.links.send(slot, &msg, lines);
    }

    /// Hands a stored message to this worker's subscribers of `channel`, and
    /// to the `sub`s still waiting for their owner's answer. A message from
    /// another worker that skips seqs is held while the missing ones are
    /// fetched from the owner (`sync::stream`, `fetch_missing`).
    pub(super) fn deliver_local(&mut self, channel: &str, seq: u64, line: &Bytes) {
        self.pending.buffer(channel, seq, line);
        if self.subs.subscribers(channel).is_empty() {
            return;
        }
        match self.subs.arrive(channel, seq, line, sub_buffer_cap()) {
            Arrival::Deliver => self.send_msg(channel, seq, line),
            Arrival::Skip => {}
            Arrival::Fetch => self.fetch_missing(channel),
        }
    }

    /// Whether this worker keeps a `Stream` of `channel` for its subscribers:
    /// for channels another worker owns, but not inboxes, whose owner resends
    /// unacked messages with their old seq.
    pub(super) fn tracks_stream(&self, channel: &str) -> bool {
        !channel::is_inbox(channel)
            && (self.cluster.is_some() || self.owner_of(channel) != self.slot)
    }

    /// Queues message `seq` of `channel` to each local subscriber that does
    /// not have it yet.
    pub(super) fn send_msg(&mut self, channel: &str, seq: u64, line: &Bytes) {
        let subscribers = self.subs.subscribers(channel);
        let stream = self.subs.stream(channel);
        // One whole frame (header and payload) for every WebSocket
        // subscriber of this message: one segment each, no copy.
        let ws_frame = text_frame(line);
        for &key in subscribers {
            if stream.is_some_and(|s| s.has(key, seq)) {
                continue;
            }
            self.conns.send_live(key, line, &ws_frame);
            self.conns.stats.msgs_out += 1;
        }
    }
}

/// An answer as one frame: the lines travel as the payload, unparsed,
/// packed into a few segments (`packing`): a replay page is up to 2000 of
/// them, and the kernel copied them into the link much more slowly as as
/// many iovecs (docs/benchmarks.md).
fn peer_answer(tag: u64, a: Answer) -> (BusMsg, Vec<Bytes>) {
    let msg = BusMsg::QueryAnswer {
        tag,
        seq: a.seq,
        epoch: a.epoch,
        recovered: a.recovered,
        error: None,
        oldest: a.oldest,
        cursor: a.cursor,
    };
    let payload = match a.lines.len() {
        0 | 1 => a.lines,
        _ => {
            let mut packer = Packer::new(packing::CHUNK);
            for line in &a.lines {
                packer.room_for(line.len()).extend_from_slice(line);
            }
            packer.finish()
        }
    };
    (msg, payload)
}
