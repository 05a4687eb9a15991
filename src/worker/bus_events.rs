//! Frames from other workers: publishes and queries for the channels this
//! worker owns, answers to what it asked, messages for its subscribers, and
//! broken links.

use bytes::Bytes;

use super::dispatch::{Origin, PublishOptions};
use super::pending::unavailable;
use super::Worker;
use crate::bus::{BusEvent, BusMsg};
use crate::owner::{Answer, Command, Query, Reply, ReplyTo};
use crate::proto::frames::{self, Acked, ErrorReply};

impl Worker {
    pub(super) fn on_bus_events(&mut self) {
        while self.links.has_events() {
            for event in self.links.take_events() {
                match event {
                    BusEvent::Msg { from, msg, payload } => self.on_bus_msg(from, msg, payload),
                    BusEvent::Down { slot } => {
                        self.fail_pending(slot);
                        self.tell_owner(Command::SlotDown { slot });
                        self.stall_streams(slot);
                    }
                    BusEvent::Up { slot } => {
                        self.resend_presence(slot);
                        self.refetch_streams(slot);
                    }
                }
            }
        }
    }

    pub(super) fn on_bus_msg(&mut self, from: usize, msg: BusMsg, payload: Bytes) {
        match msg {
            BusMsg::Deliver { channel, seq } => self.deliver_local(&channel, seq, &payload),
            BusMsg::Publish {
                tag,
                channel,
                ttl,
                idempotency_key,
            } => {
                let origin = Origin::Peer { slot: from, tag };
                match std::str::from_utf8(&payload) {
                    Ok(data) if self.owner_of(&channel) == self.slot => {
                        let options = PublishOptions {
                            ttl,
                            idempotency_key,
                            state: None,
                        };
                        self.tell_owner(Command::Publish {
                            to: ReplyTo::Peer { slot: from, tag },
                            channel,
                            data: data.to_string(),
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
                error,
            } => {
                let result = match (seq, error) {
                    (Some(seq), _) => Ok(Acked { seq, version }),
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
            BusMsg::Event { channel } => self
                .conns
                .send_to_subscribers(&self.subs, &channel, &payload),
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
    for (i, &b) in payload.iter().enumerate() {
        if b == b'\n' {
            lines.push(payload.slice(start..=i));
            start = i + 1;
        }
    }
    lines
}
