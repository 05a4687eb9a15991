//! Routing requests to channel owners and messages to subscribers.
//!
//! A channel's owner worker (`sync::shard`) numbers its messages. A request for a
//! channel owned elsewhere crosses the bus and its answer comes back as a bus
//! event; `Pending` remembers who was waiting for it.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::conn::Session;
use super::Worker;
use crate::bus::frame::encode_header;
use crate::bus::{BusEvent, BusMsg};
use crate::proto::frames::{self, ErrorReply, Op};
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
}

/// A request sent to another worker, waiting for its answer.
pub struct Pending {
    slot: usize,
    what: Awaiting,
}

enum Awaiting {
    Publish(Origin),
    Sub {
        key: usize,
        conn_id: u64,
        id: Option<Box<RawValue>>,
        channel: String,
        resume: Option<(u64, Option<String>)>,
    },
}

fn unavailable(slot: usize) -> ErrorReply {
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
        match request.op {
            Op::Ping => self.reply(key, frames::pong(id)),
            Op::Sub {
                channel,
                since,
                epoch,
            } => {
                let resume = since.map(|s| (s, epoch.map(|e| e.into_owned())));
                self.subscribe(key, id.map(RawValue::to_owned), &channel, resume)
            }
            Op::Unsub { channel } => {
                self.subs.remove(key, &channel);
                self.reply(key, frames::ok(id));
            }
            Op::Pub { channel, data } => {
                let origin = self.client_origin(key, id);
                self.publish(origin, &channel, data.get());
            }
        }
    }

    fn client_origin(&self, key: usize, id: Option<&RawValue>) -> Origin {
        Origin::Client {
            key,
            conn_id: self.conns.get(key).map_or(0, |c| c.id),
            id: id.map(RawValue::to_owned),
        }
    }

    /// Queues one reply frame (a JSON text) to a WebSocket or TCP client.
    pub(super) fn reply(&mut self, key: usize, text: String) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        match conn.session {
            Session::Ws { .. } => {
                let header = text_frame_header(text.len());
                conn.t.queue(&[&header, &Bytes::from(text)]);
            }
            Session::Tcp { .. } => {
                let mut line = text.into_bytes();
                line.push(b'\n');
                conn.t.queue(&[&Bytes::from(line)]);
            }
            Session::Http { .. } => return,
        }
        self.mark_dirty(key);
    }

    fn subscribe(
        &mut self,
        key: usize,
        id: Option<Box<RawValue>>,
        channel: &str,
        resume: Option<(u64, Option<String>)>,
    ) {
        if self.subs.is_subscribed(key, channel) {
            let e = ErrorReply::new(
                "already_subscribed",
                format!("already subscribed to {channel}"),
            );
            self.reply(key, frames::error(id.as_deref(), &e));
            return;
        }
        let owner = self.owner_of(channel);
        if owner == self.slot {
            let seq = self.owner.current(channel);
            let epoch = self.owner.epoch().to_string();
            self.complete_sub(key, id, channel, seq, &epoch, resume);
            return;
        }
        let tag = self.next_tag();
        let query = BusMsg::SubQuery {
            tag,
            channel: channel.to_string(),
        };
        if self.peers.send(owner, &query, Bytes::new()).is_err() {
            self.reply(key, frames::error(id.as_deref(), &unavailable(owner)));
            return;
        }
        let conn_id = self.conns.get(key).map_or(0, |c| c.id);
        let what = Awaiting::Sub {
            key,
            conn_id,
            id,
            channel: channel.to_string(),
            resume,
        };
        self.pending.insert(tag, Pending { slot: owner, what });
    }

    /// Subscribes as of the owner's `seq`: every later message arrives after
    /// this reply, on the same ordered link.
    fn complete_sub(
        &mut self,
        key: usize,
        id: Option<Box<RawValue>>,
        channel: &str,
        seq: u64,
        epoch: &str,
        resume: Option<(u64, Option<String>)>,
    ) {
        // No history yet: a resume is exact only when nothing was missed.
        let recovered = resume.map(|(since, their_epoch)| {
            since == seq && their_epoch.as_deref().is_none_or(|e| e == epoch)
        });
        self.subs.add(key, channel);
        self.reply(
            key,
            frames::ok_sub(id.as_deref(), channel, seq, epoch, recovered),
        );
    }

    fn owner_of(&self, channel: &str) -> usize {
        shard::owner_of(channel, self.config.storage.shards, self.config.workers)
    }

    pub(super) fn publish(&mut self, origin: Origin, channel: &str, data: &str) {
        let owner = self.owner_of(channel);
        if owner == self.slot {
            let seq = self.publish_owned(channel, data);
            self.answer_publish(origin, Ok(seq));
            return;
        }
        let tag = self.next_tag();
        let msg = BusMsg::Publish {
            tag,
            channel: channel.to_string(),
        };
        let payload = Bytes::copy_from_slice(data.as_bytes());
        if self.peers.send(owner, &msg, payload).is_err() {
            self.answer_publish(origin, Err(unavailable(owner)));
            return;
        }
        let what = Awaiting::Publish(origin);
        self.pending.insert(tag, Pending { slot: owner, what });
    }

    /// As the owner: numbers the message, serializes it once, and hands the
    /// same bytes to every other worker and every local subscriber.
    fn publish_owned(&mut self, channel: &str, data: &str) -> u64 {
        let seq = self.owner.next_seq(channel);
        let line = frames::msg_line(channel, seq, data);
        let deliver = BusMsg::Deliver {
            channel: channel.to_string(),
            seq,
        };
        let header = encode_header(&deliver, line.len());
        self.peers.broadcast(&header, &line, &mut self.bus_events);
        self.deliver_local(channel, &line);
        seq
    }

    fn deliver_local(&mut self, channel: &str, line: &Bytes) {
        let subscribers = self.subs.subscribers(channel);
        if subscribers.is_empty() {
            return;
        }
        let body = line.slice(..line.len().saturating_sub(1));
        let ws_header = text_frame_header(body.len());
        for &key in subscribers {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.closing.is_some() {
                continue;
            }
            match conn.session {
                Session::Ws { .. } => conn.t.queue(&[&ws_header, &body]),
                _ => conn.t.queue(&[line]),
            }
            self.stats.msgs_out += 1;
            self.dirty.push(key);
        }
    }

    pub(super) fn answer_publish(&mut self, origin: Origin, result: Result<u64, ErrorReply>) {
        match origin {
            Origin::Client { key, conn_id, id } => {
                if self.conns.get(key).is_some_and(|c| c.id == conn_id) {
                    let text = match result {
                        Ok(seq) => frames::ok_pub(id.as_deref(), seq),
                        Err(e) => frames::error(id.as_deref(), &e),
                    };
                    self.reply(key, text);
                }
            }
            Origin::Http {
                key,
                conn_id,
                keep_alive,
            } => self.answer_http_publish(key, conn_id, keep_alive, result),
        }
    }

    pub(super) fn on_bus_events(&mut self) {
        while !self.bus_events.is_empty() {
            for event in std::mem::take(&mut self.bus_events) {
                match event {
                    BusEvent::Msg { from, msg, payload } => self.on_bus_msg(from, msg, payload),
                    BusEvent::Down { slot } => self.fail_pending(slot),
                }
            }
        }
    }

    fn on_bus_msg(&mut self, from: usize, msg: BusMsg, payload: Bytes) {
        match msg {
            BusMsg::Deliver { channel, .. } => self.deliver_local(&channel, &payload),
            BusMsg::Publish { tag, channel } => {
                let seq = match std::str::from_utf8(&payload) {
                    Ok(data) if self.owner_of(&channel) == self.slot => {
                        Some(self.publish_owned(&channel, data))
                    }
                    _ => {
                        log::error!("worker {}: misrouted publish for {channel}", self.slot);
                        None
                    }
                };
                let answer = BusMsg::Published { tag, seq };
                let _ = self.peers.send(from, &answer, Bytes::new());
            }
            BusMsg::Published { tag, seq } => {
                if let Some(Pending {
                    what: Awaiting::Publish(origin),
                    ..
                }) = self.pending.remove(&tag)
                {
                    let result = seq.ok_or_else(|| ErrorReply::new("internal", "publish failed"));
                    self.answer_publish(origin, result);
                }
            }
            BusMsg::SubQuery { tag, channel } => {
                let answer = BusMsg::SubState {
                    tag,
                    seq: self.owner.current(&channel),
                    epoch: self.owner.epoch().to_string(),
                };
                let _ = self.peers.send(from, &answer, Bytes::new());
            }
            BusMsg::SubState { tag, seq, epoch } => {
                if let Some(Pending {
                    what:
                        Awaiting::Sub {
                            key,
                            conn_id,
                            id,
                            channel,
                            resume,
                        },
                    ..
                }) = self.pending.remove(&tag)
                {
                    if self.conns.get(key).is_some_and(|c| c.id == conn_id) {
                        self.complete_sub(key, id, &channel, seq, &epoch, resume);
                    }
                }
            }
            BusMsg::Hello { .. } | BusMsg::Welcome { .. } => {}
        }
    }

    /// A link to `slot` broke: nothing waiting on it will be answered.
    fn fail_pending(&mut self, slot: usize) {
        let tags: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.slot == slot)
            .map(|(&t, _)| t)
            .collect();
        for tag in tags {
            let Some(pending) = self.pending.remove(&tag) else {
                continue;
            };
            match pending.what {
                Awaiting::Publish(origin) => self.answer_publish(origin, Err(unavailable(slot))),
                Awaiting::Sub {
                    key, conn_id, id, ..
                } => {
                    if self.conns.get(key).is_some_and(|c| c.id == conn_id) {
                        self.reply(key, frames::error(id.as_deref(), &unavailable(slot)));
                    }
                }
            }
        }
    }
}
