//! Frames from other workers: publishes and queries for the channels this
//! worker owns, answers to what it asked, messages for its subscribers, and
//! broken links.

use bytes::Bytes;

use super::dispatch::{Origin, PublishOptions};
use super::owner::{Answer, Query, ReplyTo};
use super::pending::{unavailable, Awaiting, Pending};
use super::Worker;
use crate::bus::{BusEvent, BusMsg};
use crate::proto::frames::{self, Acked, ErrorReply};

impl Worker {
    pub(super) fn on_bus_events(&mut self) {
        while !self.bus_events.is_empty() {
            for event in std::mem::take(&mut self.bus_events) {
                match event {
                    BusEvent::Msg { from, msg, payload } => self.on_bus_msg(from, msg, payload),
                    BusEvent::Down { slot } => {
                        self.fail_pending(slot);
                        self.presence_slot_down(slot);
                    }
                    BusEvent::Up { slot } => self.resend_presence(slot),
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
                        let data = data.to_string();
                        let options = PublishOptions {
                            ttl,
                            idempotency_key,
                            state: None,
                        };
                        self.publish_owned(origin, &channel, &data, options);
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
                if let Some(Pending {
                    what: Awaiting::Publish(origin),
                    ..
                }) = self.pending.remove(&tag)
                {
                    let result = match (seq, error) {
                        (Some(seq), _) => Ok(Acked { seq, version }),
                        (None, Some((code, message, current))) => Err(ErrorReply {
                            code: frames::known_code(&code),
                            message,
                            current,
                        }),
                        (None, None) => Err(ErrorReply::new("internal", "publish failed")),
                    };
                    self.answer_publish(origin, result);
                }
            }
            BusMsg::StateSet {
                tag,
                channel,
                key,
                version,
                delete,
            } => {
                let origin = Origin::Peer { slot: from, tag };
                let value = (!delete).then(|| String::from_utf8_lossy(&payload).into_owned());
                self.set_owned(origin, &channel, &key, value, version);
            }
            BusMsg::StateQuery { tag, channel, key } => {
                let query = match key {
                    Some(key) => Query::Get { key },
                    None => Query::State,
                };
                self.owner_query(&channel, query, ReplyTo::Peer { slot: from, tag })
            }
            BusMsg::SubQuery {
                tag,
                channel,
                since,
                epoch,
                inbox,
            } => {
                let query = if inbox {
                    Query::Inbox
                } else {
                    Query::Resume { since, epoch }
                };
                self.owner_query(&channel, query, ReplyTo::Peer { slot: from, tag })
            }
            BusMsg::PresenceQuery { tag, channel } => {
                self.owner_query(&channel, Query::Presence, ReplyTo::Peer { slot: from, tag })
            }
            BusMsg::UserQuery { tag, uid } => {
                let inbox = crate::auth::inbox(&uid);
                self.owner_query(
                    &inbox,
                    Query::User { uid },
                    ReplyTo::Peer { slot: from, tag },
                )
            }
            BusMsg::Ack { tag, channel, seq } => self.owner_query(
                &channel,
                Query::Ack { seq },
                ReplyTo::Peer { slot: from, tag },
            ),
            BusMsg::Presence {
                channel,
                uid,
                count,
            } => self.on_presence_report(from, &channel, &uid, count),
            BusMsg::Event { channel } => self.send_to_subscribers(&channel, &payload),
            BusMsg::Broadcast => self.broadcast_local(&payload),
            BusMsg::Disconnect { uid } => self.disconnect_local(&uid),
            BusMsg::HistoryQuery {
                tag,
                channel,
                since,
                limit,
            } => {
                let limit = limit.min(frames::MAX_HISTORY_LIMIT);
                self.owner_query(
                    &channel,
                    Query::History { since, limit },
                    ReplyTo::Peer { slot: from, tag },
                )
            }
            BusMsg::QueryAnswer {
                tag,
                seq,
                epoch,
                recovered,
                error,
                oldest,
            } => {
                let answer = match error {
                    Some(message) => Err(ErrorReply::new("storage_failed", message)),
                    None => Ok(Answer {
                        seq,
                        epoch,
                        recovered,
                        oldest,
                        lines: split_lines(&payload),
                    }),
                };
                self.finish_query(tag, answer);
            }
            BusMsg::Hello { .. } | BusMsg::Welcome { .. } => {}
        }
    }

    /// A link to `slot` broke: nothing waiting on it will be answered.
    pub(super) fn fail_pending(&mut self, slot: usize) {
        let tags: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.slot == slot && slot != self.slot)
            .map(|(&t, _)| t)
            .collect();
        for tag in tags {
            if let Some(Pending {
                what: Awaiting::Publish(_),
                ..
            }) = self.pending.get(&tag)
            {
                if let Some(Pending {
                    what: Awaiting::Publish(origin),
                    ..
                }) = self.pending.remove(&tag)
                {
                    self.answer_publish(origin, Err(unavailable(slot)));
                }
            } else {
                self.finish_query(tag, Err(unavailable(slot)));
            }
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
