//! What arrives: client input, read under backpressure, and frames from
//! other workers. A connection whose reading must wait (the store's queue
//! is full, it has `max_inflight_per_conn` requests unanswered, or it
//! published on a congested channel: `sync::pressure`, `settle_pressure`)
//! is paused instead, and read again by `resume_paused` once that clears;
//! a `sub` past `max_subs_per_conn` is refused here. `max_channels` is the
//! owner core's (src/owner/publish.rs) and `max_conns_per_ip` the
//! connection table's (accept). Frames from other workers are publishes
//! and queries for the channels this worker owns, answers to what it
//! asked, messages for its subscribers, and broken links.

use super::conn::Protocol;
use super::dispatch::{Origin, PublishOptions};
use super::pending::unavailable;
use super::Worker;
use crate::bus::frame::encode_header;
use crate::bus::{BusEvent, BusMsg};
use crate::logging::LogLimit;
use crate::owner::{Answer, Command, Query, Reply, ReplyTo};
use crate::proto::frames::{self, Acked, ErrorReply};
use crate::sync::pressure::News;
use bytes::Bytes;
use std::cell::RefCell;
use std::time::{Duration, Instant};

impl Worker {
    pub(super) fn read_conn(&mut self, key: usize) {
        if self.read_must_wait(key) {
            return;
        }
        let Some((protocol, before)) = self.conns.start_read(key) else {
            return self.forget_closed();
        };
        match protocol {
            Protocol::Http => {
                if let Some(filled) = self.conns.fill_http(key) {
                    self.serve_http(key);
                    self.conns.end_http_read(key, filled);
                }
            }
            Protocol::Ws => self.read_ws(key),
            Protocol::Tcp => {
                let room = self.inflight_room(key);
                if let Some(read) = self.conns.read_tcp(key, room) {
                    for line in read.lines() {
                        match line {
                            Some(text) => self.on_frame(key, text),
                            None => self.conns.not_utf8(key),
                        }
                    }
                    self.conns.end_tcp_read(key, read);
                }
            }
        }
        self.conns.note_input(key, before);
        self.forget_closed();
    }

    /// Messages from the queue ingest threads, published as `POST
    /// /api/publish` would be (the threads checked them with the same
    /// rules); each answer goes back to its thread, which then acks the
    /// broker. Like client reads, they wait while the store queue is full.
    pub(super) fn on_ingest(&mut self) {
        if self.owner.is_busy() {
            return;
        }
        for request in self.connectors.take_requests() {
            self.conns.stats.msgs_in += 1;
            let origin = Origin::Ingest {
                ingest: request.ingest,
                id: request.id,
                session: request.session,
            };
            self.publish(origin, &request.channel, &request.data, request.options);
        }
    }

    fn read_ws(&mut self, key: usize) {
        let room = self.inflight_room(key);
        if let Some(read) = self.conns.read_ws(key, room) {
            for text in &read.texts {
                if self.conns.get(key).is_some_and(|c| c.closing.is_none()) {
                    self.on_frame(key, text);
                }
            }
            self.conns.end_ws_read(key, read);
        }
    }
}

thread_local! {
    /// Cap hits are logged within this budget (one worker loop per process).
    static CAP_LOG: RefCell<LogLimit> = const { RefCell::new(LogLimit::new(5)) };
}

fn log_cap(line: impl FnOnce(u64) -> String) {
    if let Some(left_out) = CAP_LOG.with(|l| l.borrow_mut().allow(Instant::now())) {
        log::warn!("{}", line(left_out));
    }
}

impl Worker {
    /// `max_subs_per_conn`: may connection `key` start one more `sub`?
    pub(super) fn sub_cap(&mut self, key: usize, conn_id: u64) -> Result<(), ErrorReply> {
        let max = self.config.limits.max_subs_per_conn;
        let held = self.subs.count_of(key) + self.pending.waiting(conn_id).subs;
        if held < max {
            return Ok(());
        }
        self.conns.stats.subs_refused += 1;
        let slot = self.slot;
        log_cap(|n| {
            format!("worker {slot}: connection {conn_id} is at max_subs_per_conn ({max}); {n} more cap hits not logged")
        });
        Err(ErrorReply::new(
            "too_many_subs",
            format!(
                "this connection has {max} subscriptions (limits.max_subs_per_conn); unsub first"
            ),
        ))
    }

    /// How many more requests connection `key` may have waiting.
    pub(super) fn inflight_room(&self, key: usize) -> usize {
        let max = self.config.limits.max_inflight_per_conn;
        let waiting = self
            .conns
            .get(key)
            .map_or(0, |c| self.pending.waiting(c.id).requests);
        max.saturating_sub(waiting)
    }

    /// Whether reading `key` must wait: the store's queue is full (every
    /// client waits), or the connection has `max_inflight_per_conn` requests
    /// unanswered. Then it is paused, and `resume_paused` reads it again.
    /// A closing connection is always read (its close and linger go on).
    pub(super) fn read_must_wait(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if conn.closing.is_some() {
            return false;
        }
        let store_full = self.owner.is_busy();
        let counted = matches!(conn.session.protocol(), Protocol::Ws | Protocol::Tcp);
        let at_cap = counted && self.inflight_room(key) == 0;
        let held = self.pressure.holds(key);
        if !store_full && !at_cap && !held {
            return false;
        }
        if !self.conns.pause_read(key) {
            return true;
        }
        let slot = self.slot;
        if held {
            self.conns.stats.pressure_holds += 1;
            log::debug!("worker {slot}: connection key {key} waits: its channel is congested");
        } else if store_full {
            self.conns.stats.store_full_pauses += 1;
            log_cap(|n| {
                format!("worker {slot}: the store queue is full (limits.store_queue); clients wait; {n} more cap hits not logged")
            });
        } else {
            self.conns.stats.inflight_pauses += 1;
            let max = self.config.limits.max_inflight_per_conn;
            log::debug!("worker {slot}: connection key {key} waits: {max} requests unanswered");
        }
        true
    }

    /// Reads again the paused connections whose reason cleared.
    pub(super) fn resume_paused(&mut self) {
        if !self.conns.has_paused() {
            return;
        }
        let store_full = self.owner.is_busy();
        for key in self.conns.take_paused() {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            let go = conn.closing.is_some()
                || (!store_full && self.inflight_room(key) > 0 && !self.pressure.holds(key));
            if go {
                self.conns.unpause(key);
                self.conns.requeue_read(key);
            } else {
                self.conns.keep_paused(key);
            }
        }
    }
}

impl Worker {
    pub(super) fn on_bus_events(&mut self) {
        while self.links.has_events() {
            for event in self.links.take_events() {
                match event {
                    BusEvent::Msg { from, msg, payload } => self.on_bus_msg(from, msg, payload),
                    BusEvent::Down { slot } => {
                        self.interest.watchers.slot_down(slot);
                        self.pressure.slot_down(slot);
                        self.fail_pending(slot);
                        self.tell_owner(Command::SlotDown { slot });
                        self.stall_streams(slot);
                    }
                    BusEvent::Up { slot } => {
                        self.rewatch(slot);
                        self.retell_pressure(slot);
                        self.resend_presence(slot);
                        self.refetch_streams(slot);
                    }
                }
            }
        }
    }

    pub(super) fn on_bus_msg(&mut self, from: usize, msg: BusMsg, payload: Bytes) {
        match msg {
            BusMsg::Deliver { channel, seq } => {
                self.conns.stats.link_msgs_in += 1;
                self.deliver_local(&channel, seq, &payload)
            }
            BusMsg::Watch { channel, on: true } => self.interest.watchers.watch(&channel, from),
            BusMsg::Watch { channel, on: false } => self.interest.watchers.unwatch(&channel, from),
            BusMsg::Publish {
                tag,
                channel,
                ttl,
                idempotency_key,
                ingest_window_ms,
                mirrored,
            } => {
                let origin = Origin::Peer { slot: from, tag };
                match std::str::from_utf8(&payload) {
                    Ok(data) if self.owner_of(&channel) == self.slot => {
                        let options = PublishOptions {
                            ttl,
                            idempotency_key,
                            state: None,
                            ingest: ingest_window_ms.map(Duration::from_millis),
                            mirrored,
                        };
                        self.tell_owner(Command::Publish {
                            to: ReplyTo::Peer { slot: from, tag },
                            channel,
                            data: data.into(),
                            options,
                        });
                    }
                    _ => {
                        log::error!("worker {}: misrouted publish for {channel}", self.slot);
                        let e = ErrorReply::new("internal", "misrouted publish");
                        self.answer_publish(origin, Err(e));
                    }
                }
            }
            BusMsg::Published {
                tag,
                seq,
                version,
                duplicate,
                error,
            } => {
                let result = match (seq, error) {
                    (Some(seq), _) => Ok(Acked {
                        seq,
                        version,
                        duplicate,
                    }),
                    (None, Some((code, message, current))) => Err(ErrorReply {
                        code: frames::known_code(&code),
                        message,
                        current,
                    }),
                    (None, None) => Err(ErrorReply::new("internal", "publish failed")),
                };
                self.finish(tag, Reply::Published(result));
            }
            BusMsg::StateSet {
                tag,
                channel,
                key,
                version,
                delete,
            } => {
                let value = (!delete).then(|| String::from_utf8_lossy(&payload).into_owned());
                self.tell_owner(Command::Set {
                    to: ReplyTo::Peer { slot: from, tag },
                    channel,
                    key,
                    value,
                    expected: version,
                });
            }
            BusMsg::StateQuery {
                tag,
                channel,
                key,
                after,
                limit,
            } => {
                let query = match key {
                    Some(key) => Query::Get { key },
                    None => Query::State {
                        after,
                        limit: limit.unwrap_or(frames::MAX_HISTORY_LIMIT),
                    },
                };
                self.owner_query(from, tag, channel, query)
            }
            BusMsg::SubQuery {
                tag,
                channel,
                since,
                epoch,
                inbox,
                upto,
            } => {
                // From here on, its messages go to `from` too (see `send_to_watchers`).
                self.interest.watchers.watch(&channel, from);
                let query = if inbox {
                    Query::Inbox
                } else {
                    Query::Resume { since, epoch, upto }
                };
                self.owner_query(from, tag, channel, query)
            }
            BusMsg::PresenceQuery { tag, channel } => {
                self.owner_query(from, tag, channel, Query::Presence)
            }
            BusMsg::UserQuery { tag, uid } => {
                let inbox = crate::sync::channel::inbox(&uid);
                self.owner_query(from, tag, inbox, Query::User { uid })
            }
            BusMsg::Ack { tag, channel, seq } => {
                self.owner_query(from, tag, channel, Query::Ack { seq })
            }
            BusMsg::Presence {
                channel,
                uid,
                count,
            } => self.tell_owner(Command::Presence {
                slot: from,
                channel,
                uid,
                count,
            }),
            BusMsg::Event { channel } => {
                self.conns.stats.link_msgs_in += 1;
                self.conns
                    .send_to_subscribers(&self.subs, &channel, &payload)
            }
            BusMsg::Pressure { channel, on } => {
                let channel = channel.map(Into::into);
                self.pressure.heard(from, News { channel, on })
            }
            BusMsg::Broadcast => self.conns.broadcast_local(&payload),
            BusMsg::Disconnect { uid } => self.conns.disconnect_local(&uid),
            BusMsg::HistoryQuery {
                tag,
                channel,
                since,
                limit,
            } => {
                let limit = limit.min(frames::MAX_HISTORY_LIMIT);
                self.owner_query(from, tag, channel, Query::History { since, limit })
            }
            BusMsg::QueryAnswer {
                tag,
                seq,
                epoch,
                recovered,
                error,
                oldest,
                cursor,
            } => {
                let answer = match error {
                    Some(message) => Err(ErrorReply::new("storage_failed", message)),
                    None => Ok(Answer {
                        seq,
                        epoch,
                        recovered,
                        oldest,
                        lines: split_lines(&payload),
                        cursor,
                    }),
                };
                self.finish(tag, Reply::Answer(answer));
            }
            BusMsg::Hello { .. } | BusMsg::Welcome { .. } => {}
        }
    }

    /// A question from worker `from` for this worker's owner core.
    fn owner_query(&mut self, from: usize, tag: u64, channel: String, query: Query) {
        let to = ReplyTo::Peer { slot: from, tag };
        self.tell_owner(Command::Query { to, channel, query });
    }

    /// A link to `slot` broke: messages it released may not have reached us,
    /// and a new process of it may number its channels anew (another
    /// epoch). Its channels' streams hold what arrives until it is asked.
    fn stall_streams(&mut self, slot: usize) {
        if slot == self.slot {
            return;
        }
        for channel in self.subs.streams_where(|c| self.owner_of(c) == slot) {
            self.subs.stall(&channel);
        }
    }

    /// Our link reached a (new) process of worker `slot`: whatever it stored
    /// but its previous process never released, and whatever it released
    /// while the link was down, is fetched for each of its channels that has
    /// subscribers here.
    fn refetch_streams(&mut self, slot: usize) {
        if slot == self.slot {
            return;
        }
        for channel in self.subs.streams_where(|c| self.owner_of(c) == slot) {
            self.fetch_missing(&channel);
        }
    }

    /// Sends one frame (`msg` naming `channel`, `line` its payload) to the
    /// workers that want `channel`: those whose `sub` query reached us and
    /// that have not said they are done with it (`sync::interest`).
    pub(super) fn send_to_watchers(
        &mut self,
        channel: &str,
        line: &Bytes,
        msg: impl FnOnce(String) -> BusMsg,
    ) {
        let slots = self.interest.watchers.of(channel);
        if slots.is_empty() {
            return;
        }
        let header = encode_header(&msg(channel.to_string()), line.len());
        let sent = self.links.multicast(slots.iter(), &header, line);
        self.conns.stats.link_msgs_out += sent as u64;
    }

    /// Tells owners of the channels no longer wanted here (no subscriber,
    /// waiting `sub` or replay left) to stop sending them. Run before each
    /// write round, so whatever happened in the loop turn has settled.
    pub(super) fn settle_interest(&mut self) {
        let mut maybe = self.subs.take_emptied();
        maybe.extend(self.pending.take_emptied());
        if let Some(cluster) = &mut self.cluster {
            let (subs, pending) = (&self.subs, &self.pending);
            let wanted = |c: &str| !subs.subscribers(c).is_empty() || pending.wants(c);
            cluster.settle(maybe.clone(), wanted);
        }
        self.interest.watching.maybe_unwanted(maybe);
        if !self.interest.watching.has_candidates() {
            return;
        }
        let (subs, pending) = (&self.subs, &self.pending);
        let wanted = |c: &str| !subs.subscribers(c).is_empty() || pending.wants(c);
        for channel in self.interest.watching.settle(wanted) {
            let owner = self.owner_of(&channel);
            let msg = BusMsg::Watch {
                channel: channel.into(),
                on: false,
            };
            let _ = self.links.send(owner, &msg, []);
        }
    }

    /// Backpressure: subscribers that started or stopped holding back
    /// publishers (their queue passed its mark, or fell back, or their
    /// reader stalled), and our link queues, update what is congested here;
    /// what changed goes to every other worker, whose publishers it holds too.
    pub(super) fn settle_pressure(&mut self) {
        for (key, holding) in self.conns.take_hold_changes() {
            match holding {
                true => self.pressure.conn_over(key, self.subs.channels_of(key)),
                false => self.pressure.conn_under(key),
            }
        }
        self.pressure.links_queued(self.links.most_queued());
        for news in self.pressure.take_news() {
            let msg = BusMsg::Pressure {
                channel: news.channel.map(String::from),
                on: news.on,
            };
            self.links.broadcast(&encode_header(&msg, 0), &Bytes::new());
        }
        if self.pressure.take_cleared() {
            // Read the held publishers again this turn, not at the next event.
            self.resume_paused();
        }
    }

    /// Worker `slot` linked anew: it forgot what is congested here.
    fn retell_pressure(&mut self, slot: usize) {
        if slot == self.slot {
            return;
        }
        for news in self.pressure.state() {
            let msg = BusMsg::Pressure {
                channel: news.channel.map(String::from),
                on: news.on,
            };
            let _ = self.links.send(slot, &msg, []);
        }
    }

    /// Worker `slot` linked anew: it forgot what we want of its channels
    /// when the link broke (or is a new process), so it is told again.
    fn rewatch(&mut self, slot: usize) {
        if slot == self.slot {
            return;
        }
        for channel in self.interest.watching.picked(|c| self.owner_of(c) == slot) {
            let msg = BusMsg::Watch {
                channel: channel.into(),
                on: true,
            };
            let _ = self.links.send(slot, &msg, []);
        }
    }

    /// A link to `slot` broke: nothing waiting on it will be answered.
    pub(super) fn fail_pending(&mut self, slot: usize) {
        if slot == self.slot {
            return;
        }
        for tag in self.pending.tags_on(slot) {
            self.finish(tag, Reply::Answer(Err(unavailable(slot))));
        }
    }
}

/// Splits concatenated `msg` lines into shared slices, newline kept.
pub fn split_lines(payload: &Bytes) -> Vec<Bytes> {
    let mut lines = Vec::new();
    let mut start = 0;
    // A replay page is up to 1 MiB: memchr, not a byte at a time.
    for end in memchr::memchr_iter(b'\n', payload) {
        lines.push(payload.slice(start..=end));
        start = end + 1;
    }
    lines
}
