//! Answers reach whoever asked: a publish's ack, a query's answer, and a
//! `sub`'s reply, replay and live messages, with no hole and no duplicate.
//! A replay longer than one page goes on in pages (`sync::replay`): the
//! next page is asked of the owner only once the connection's send queue
//! has drained below half of `send_buffer_soft`, so a resume of any length
//! streams at the client's pace, and live messages are held until the
//! replay reaches them. Gaps in a stream from another worker are repaired
//! here too (`fetch_missing`).

use super::pending::{sub_buffer_cap, HistoryFor};
use super::pending::{Awaiting, Origin, WaitingSub};
use super::Worker;
use crate::bus::BusMsg;
use crate::owner::Reply;
use crate::owner::{Answer, Query};
use crate::proto::frames::{self, Acked, ErrorReply};
use crate::sync::replay::{Replay, Step};
use crate::sync::stream::{Fetched, Out};
use crate::sync::sub_buffer::SubBuffer;
use bytes::Bytes;
use serde_json::value::RawValue;

impl Worker {
    /// The owner answered a `sub`: reply, replay, and start delivering live
    /// messages, with no hole between the three. When the buffer of messages
    /// that arrived during the wait had to drop some, the worker asks the
    /// owner for `oldest` (a resume from past the end), and never replays
    /// around a hole.
    pub(super) fn finish_sub(&mut self, sub: WaitingSub, answer: Result<Answer, ErrorReply>) {
        let WaitingSub {
            key,
            conn_id,
            id,
            channel,
            buffer,
            quiet,
            unsub,
        } = sub;
        if !self.conns.is_live(key, conn_id) {
            return;
        }
        if let Some(unsub) = unsub {
            let reply = match answer {
                Ok(a) => frames::ok_sub(id.as_deref(), &channel, a.seq, &a.epoch, a.recovered),
                Err(e) => frames::error(id.as_deref(), &e),
            };
            self.conns.reply(key, reply);
            if unsub.answer {
                self.conns.reply(key, frames::ok(unsub.id.as_deref()));
            }
            return;
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) if quiet => {
                if let Some(cluster) = &mut self.cluster {
                    // Redis was down: the inbox is asked for again soon.
                    cluster.retry_inbox(key, conn_id, &channel);
                }
                return log::warn!(
                    "worker {}: inbox {channel} unavailable: {}",
                    self.slot,
                    e.message
                );
            }
            Err(e) => return self.conns.reply(key, frames::error(id.as_deref(), &e)),
        };
        if let (Some(cursor), Some(true), false) = (answer.cursor, answer.recovered, quiet) {
            // More pages follow: reply and first page now, the rest as the
            // client reads.
            let reply = frames::ok_sub(
                id.as_deref(),
                &channel,
                answer.seq,
                &answer.epoch,
                Some(true),
            );
            self.conns.reply(key, reply);
            let limit = self.config.limits.send_buffer_hard;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.replay(answer.lines, limit);
            }
            let replay = Replay::new(conn_id, cursor, answer.seq, answer.epoch, buffer);
            self.pending.replays.start(key, &channel, replay);
            return self.conns.mark_dirty(key);
        }
        // Live messages after this one follow on without a hole.
        let upto = answer.seq.max(buffer.last_seen());
        let was_gap = buffer.is_gap();
        let lines: Vec<Bytes> = match (buffer.after(answer.seq), answer.recovered) {
            (Some(live), _) => answer.lines.into_iter().chain(live).collect(),
            // An inbox's missing messages come again by redelivery.
            (None, _) if quiet => answer.lines,
            (None, Some(true)) if !was_gap => {
                // The replay is whole but what came meanwhile is not: ask the
                // owner for `oldest`, which a resume from past the end gets.
                let what = Awaiting::Sub(WaitingSub {
                    key,
                    conn_id,
                    id,
                    channel: channel.clone(),
                    buffer: SubBuffer::after_gap(upto),
                    quiet,
                    unsub: None,
                });
                let query = Query::Resume {
                    since: Some(u64::MAX),
                    epoch: None,
                    upto: None,
                };
                return self.ask_owner(&channel, query, what);
            }
            // A plain `sub` just starts later; a resume is not recovered.
            (None, _) => Vec::new(),
        };
        let gap = (was_gap || answer.recovered == Some(false)) && !quiet;
        let seq = if lines.is_empty() { upto } else { answer.seq };
        let reply = if gap {
            let oldest = answer.oldest.unwrap_or(seq + 1);
            frames::ok_sub_gap(id.as_deref(), &channel, seq, &answer.epoch, oldest)
        } else {
            frames::ok_sub(
                id.as_deref(),
                &channel,
                seq,
                &answer.epoch,
                answer.recovered,
            )
        };
        if !quiet {
            self.conns.reply(key, reply);
        }
        let limit = self.config.limits.send_buffer_hard;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.replay(lines, limit);
        }
        if self.subs.add(key, &channel) {
            self.track_presence(key, &channel, true);
            self.track_stream(key, &channel, upto, &answer.epoch);
        }
        self.conns.mark_dirty(key);
    }

    /// The connection has every message of `channel` up to `upto`: its
    /// stream goes on from there.
    fn track_stream(&mut self, key: usize, channel: &str, upto: u64, epoch: &str) {
        if self.tracks_stream(channel) {
            self.subs.track(key, channel, upto, epoch);
        }
    }

    /// Written out what it could: a connection replaying pages whose queue
    /// has drained below half of its soft limit asks for the next ones.
    pub(super) fn feed_replays(&mut self, key: usize) {
        if !self.pending.replays.has_conn(key) {
            return;
        }
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let room = conn.t.out.len() <= conn.t.out_limit() / 2;
        if conn.closing.is_some() || !conn.backlog.is_empty() || !room {
            return;
        }
        for ask in self.pending.replays.ask(key) {
            let query = Query::Resume {
                since: Some(ask.after),
                epoch: Some(ask.epoch),
                upto: Some(ask.upto),
            };
            let what = Awaiting::Page {
                key,
                conn_id: ask.conn_id,
                channel: ask.channel.clone(),
            };
            self.ask_owner(&ask.channel, query, what);
        }
    }

    /// The owner answered a page of a replay. A page that cannot be had
    /// (trimmed or expired meanwhile, another epoch, no answer in time) ends
    /// the replay with a `resync` frame naming what is missed: never a
    /// silent hole.
    pub(super) fn finish_page(
        &mut self,
        key: usize,
        conn_id: u64,
        channel: &str,
        answer: Result<Answer, ErrorReply>,
    ) {
        let Some(mut replay) = self.pending.replays.take(key, channel, conn_id) else {
            return;
        };
        if !self.conns.is_live(key, conn_id) {
            return;
        }
        let (step, lines, oldest) = match answer {
            Ok(a) if a.recovered == Some(true) && a.epoch == replay.epoch => {
                (replay.advance(a.lines.len(), a.cursor), a.lines, None)
            }
            Ok(a) => (Step::Broken, Vec::new(), a.oldest),
            Err(e) => {
                log::debug!(
                    "worker {}: {channel}: page failed: {}",
                    self.slot,
                    e.message
                );
                (Step::Broken, Vec::new(), None)
            }
        };
        let limit = self.config.limits.send_buffer_hard;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.replay(lines, limit);
        }
        match step {
            Step::More => {
                self.pending.replays.start(key, channel, replay);
                self.conns.mark_dirty(key);
            }
            Step::Done => self.go_live(key, channel, replay),
            Step::Broken => {
                log::warn!(
                    "worker {}: {channel}: replay cut short after {} (of {}); resync",
                    self.slot,
                    replay.after,
                    replay.upto
                );
                let (after, upto) = (replay.after, replay.upto);
                let line = frames::resync_line(channel, after, upto, &replay.epoch, oldest);
                self.conns.send_line(key, &line);
                self.go_live(key, channel, replay);
            }
        }
    }

    /// The replay is out: the live messages held meanwhile follow, and the
    /// connection joins the channel's subscribers.
    fn go_live(&mut self, key: usize, channel: &str, replay: Replay) {
        let last_seen = replay.buffer.last_seen();
        let upto = replay.upto.max(last_seen);
        match replay.buffer.after(replay.upto) {
            Some(live) => {
                let limit = self.config.limits.send_buffer_hard;
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.replay(live, limit);
                }
            }
            // More came meanwhile than can be held: say what is missed.
            None => {
                let line =
                    frames::resync_line(channel, replay.upto, last_seen, &replay.epoch, None);
                self.conns.send_line(key, &line);
            }
        }
        if self.subs.add(key, channel) {
            self.track_presence(key, channel, true);
            self.track_stream(key, channel, upto, &replay.epoch);
        }
        self.conns.mark_dirty(key);
    }
}

impl Worker {
    /// An `unsub` that overtakes this connection's `sub` of the channel, still
    /// waiting for the owner: the `sub` is answered when the owner's answer
    /// comes but does not subscribe, and the `unsub`'s `ok` follows it, so the
    /// connection ends up unsubscribed, as its last request said. Returns
    /// false when no `sub` waits (the `unsub` is answered at once). A
    /// replay in pages just stops: the connection never subscribed.
    pub(super) fn overtake_waiting_sub(
        &mut self,
        key: usize,
        conn_id: u64,
        channel: &str,
        id: Option<&RawValue>,
    ) -> bool {
        if self.pending.replays.cancel(key, channel) {
            self.conns.reply(key, frames::ok(id));
            return true;
        }
        let id = id.map(RawValue::to_owned);
        self.pending.overtake(key, conn_id, channel, id)
    }

    /// The owner answered the request with this tag.
    pub(super) fn finish(&mut self, tag: u64, reply: Reply) {
        let Some(pending) = self.pending.remove(tag) else {
            // Answered already: `unavailable` after request_timeout, or when
            // the owner's link broke.
            self.conns.stats.late_replies += 1;
            return;
        };
        let answer = match (pending.what, reply) {
            (Awaiting::Publish(origin), Reply::Published(result)) => {
                return self.answer_publish(origin, result)
            }
            (Awaiting::Publish(origin), Reply::Answer(answer)) => {
                let e = ErrorReply::new("internal", "unexpected answer");
                return self.answer_publish(origin, answer.and(Err(e)));
            }
            (what, Reply::Answer(answer)) => (what, answer),
            (what, Reply::Published(result)) => {
                let e = ErrorReply::new("internal", "unexpected answer");
                (what, result.and(Err(e)))
            }
        };
        match answer {
            (Awaiting::Sub(sub), answer) => self.finish_sub(sub, answer),
            (
                Awaiting::Page {
                    key,
                    conn_id,
                    channel,
                },
                answer,
            ) => self.finish_page(key, conn_id, &channel, answer),
            (Awaiting::Repair { channel, round }, answer) => {
                self.finish_repair(&channel, round, answer)
            }
            (
                Awaiting::History {
                    key,
                    conn_id,
                    channel,
                    reply,
                },
                answer,
            ) => {
                if !self.conns.is_live(key, conn_id) {
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
                                a.cursor,
                            ),
                            Err(e) => frames::error(id.as_deref(), &e),
                        };
                        self.conns.reply(key, text);
                    }
                    HistoryFor::Http { keep_alive } => {
                        let body = answer.map(|a| {
                            let (seq, epoch) = (a.seq, &a.epoch);
                            frames::history_reply(None, &channel, seq, epoch, &a.lines, a.cursor)
                        });
                        self.conns.answer_http(key, conn_id, keep_alive, body);
                    }
                }
            }
            (
                Awaiting::Json {
                    key,
                    conn_id,
                    reply,
                },
                answer,
            ) => {
                if !self.conns.is_live(key, conn_id) {
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
                        self.conns.reply(key, text);
                    }
                    HistoryFor::Http { keep_alive } => {
                        self.conns.answer_http(key, conn_id, keep_alive, json)
                    }
                }
            }
            (Awaiting::Ack { key, conn_id, id }, answer) => {
                if self.conns.is_live(key, conn_id) {
                    let text = match answer {
                        Ok(_) => frames::ok(id.as_deref()),
                        Err(e) => frames::error(id.as_deref(), &e),
                    };
                    self.conns.reply(key, text);
                }
            }
            (Awaiting::Publish(_), _) => {}
        }
    }

    /// Asks the owner of `channel` for every message after the last one its
    /// subscribers here have had (a resume in the stream's epoch); what
    /// arrives meanwhile is held.
    pub(super) fn fetch_missing(&mut self, channel: &str) {
        let Some((round, since, epoch)) = self.subs.start_fetch(channel) else {
            return;
        };
        log::debug!(
            "worker {}: {channel}: fetching what follows seq {since}",
            self.slot
        );
        let query = Query::Resume {
            since: Some(since),
            epoch: Some(epoch),
            upto: None,
        };
        let what = Awaiting::Repair {
            channel: channel.to_string(),
            round,
        };
        self.ask_owner(channel, query, what);
    }

    /// The owner answered a fetch: the missing messages, then the held ones,
    /// go to the subscribers; what cannot be filled is announced with a
    /// `resync` frame (docs/protocol.md). No answer (the link broke) leaves
    /// the stream held until the owner's next process links up or the next
    /// message arrives.
    fn finish_repair(&mut self, channel: &str, round: u64, answer: Result<Answer, ErrorReply>) {
        let fetched = match answer {
            Ok(a) => Some(Fetched {
                seq: a.seq,
                epoch: a.epoch,
                recovered: a.recovered == Some(true),
                oldest: a.oldest,
                lines: a.lines,
            }),
            Err(e) => {
                log::debug!(
                    "worker {}: {channel}: fetch failed: {}",
                    self.slot,
                    e.message
                );
                None
            }
        };
        let (out, again) = self.subs.resolve(channel, round, fetched, sub_buffer_cap());
        for out in out {
            match out {
                Out::Msg(seq, line) => self.send_msg(channel, seq, &line),
                Out::Resync {
                    after,
                    seq,
                    epoch,
                    oldest,
                } => {
                    log::warn!(
                        "worker {}: {channel}: messages after {after} up to {seq} cannot be \
                         delivered here; subscribers are told to resync",
                        self.slot
                    );
                    let line = frames::resync_line(channel, after, seq, &epoch, oldest);
                    let stream = self.subs.stream(channel);
                    let keys: Vec<usize> = self
                        .subs
                        .subscribers(channel)
                        .iter()
                        .copied()
                        .filter(|&k| !stream.is_some_and(|s| s.has(k, seq)))
                        .collect();
                    for key in keys {
                        self.conns.send_line(key, &line);
                    }
                }
            }
        }
        if again {
            self.fetch_missing(channel);
        }
    }
}

impl Worker {
    pub(super) fn answer_publish(&mut self, origin: Origin, result: Result<Acked, ErrorReply>) {
        match origin {
            Origin::Client { key, conn_id, id } => {
                if self.conns.is_live(key, conn_id) {
                    match result {
                        Ok(acked) => self
                            .conns
                            .reply_with(key, |out| frames::put_ok_acked(out, id.as_deref(), acked)),
                        Err(e) => self.conns.reply(key, frames::error(id.as_deref(), &e)),
                    }
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
                self.conns.answer_http(key, conn_id, keep_alive, body);
            }
            Origin::Ingest {
                ingest,
                id,
                session,
            } => self.connectors.answer(ingest, id, session, result),
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
                        duplicate: a.duplicate,
                        error: None,
                    },
                    Err(e) => BusMsg::Published {
                        tag,
                        seq: None,
                        version: None,
                        duplicate: false,
                        error: Some((e.code.to_string(), e.message, e.current)),
                    },
                };
                let _ = self.links.send(slot, &msg, []);
            }
        }
    }
}
