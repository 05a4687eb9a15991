//! The core on an engine shared by several servers (Redis): the engine
//! numbers messages and decides idempotency and compare-and-set, since a
//! retry or a racing writer may come through another server; and resumes
//! and history are read from it, since other servers' messages never pass
//! through this core. What the core still does: order a turn's writes,
//! answer each writer, and cut answers into pages.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::inbox::DeadLetter;
use super::publish::{change_json, conflict, raw_or_null, Inflight};
use super::query::DiskRead;
use super::state::Entry;
use super::{pages, Answer, Now, OwnerCore, Query, ReplyTo};
use crate::proto::frames::{self, Acked, ErrorReply};
use crate::store::{Looked, Outcome, Range, Redelivery, Request};

/// A question waiting for the engine's `Range`.
pub(super) struct SharedRead {
    to: ReplyTo,
    channel: String,
    query: Query,
    budget: usize,
}

/// Storage cannot be reached now: the request fails, the server goes on.
pub fn unavailable(error: &str) -> ErrorReply {
    ErrorReply::new("unavailable", format!("storage unavailable: {error}"))
}

impl OwnerCore {
    /// What the engine made of one write.
    pub(super) fn settle(&mut self, mut m: Inflight, outcome: Outcome, now: Now) {
        match outcome {
            Outcome::Stored { seq, version } => {
                m.seq = seq;
                if let (Some(write), Some(version)) = (m.state.as_mut(), version) {
                    write.version = version;
                    m.data = change_json(&write.key, write.value.as_deref(), version).into();
                }
                self.release(m, now);
            }
            Outcome::Duplicate { seq } => self.reply_published(
                m.to,
                Ok(Acked {
                    seq,
                    version: None,
                    duplicate: true,
                }),
            ),
            Outcome::Conflict { value, version } => {
                let (key, expected) = m
                    .state
                    .as_ref()
                    .map_or((String::new(), 0), |w| (w.key.clone(), w.version));
                let e = conflict(&key, value.as_deref(), version, expected);
                self.reply_published(m.to, Err(e));
            }
            Outcome::Unavailable { error } => self.reply_published(m.to, Err(unavailable(&error))),
        }
    }

    /// A resume or history: read from the engine, with the channel's seq
    /// and epoch as the engine has them now.
    /// An inbox's replay starts after the ack the engine holds.
    pub(super) fn ask_shared(
        &mut self,
        channel: &str,
        query: Query,
        to: ReplyTo,
        budget: usize,
        from_ack: bool,
    ) {
        let (after, limit) = match &query {
            Query::Resume { since: Some(s), .. } => (*s, pages::REPLAY_PAGE_MSGS as usize),
            Query::History { since, limit } => (*since, *limit),
            _ => (0, 0),
        };
        let tag = self.next_tag();
        self.store(Request::Range {
            tag,
            channel: channel.to_string(),
            after,
            limit,
            from_ack,
        });
        let read = SharedRead {
            to,
            channel: channel.to_string(),
            query,
            budget,
        };
        self.shared_reads.insert(tag, read);
    }

    pub(super) fn on_range(&mut self, tag: u64, result: Result<Range, String>, now: Now) {
        let Some(asked) = self.shared_reads.remove(&tag) else {
            return;
        };
        let range = match result {
            Ok(range) => range,
            Err(e) => return self.reply_answer(asked.to, Err(unavailable(&e))),
        };
        let (seq, epoch) = (range.seq, range.epoch.clone());
        let live: Vec<_> = range
            .rows
            .iter()
            .filter(|m| m.expires_ms > now.ms && m.seq <= seq)
            .collect();
        let lost = Answer {
            seq,
            epoch: epoch.clone(),
            recovered: Some(false),
            oldest: Some(range.oldest.unwrap_or(seq + 1).max(1)),
            lines: Vec::new(),
            cursor: None,
        };
        let (upto, end) = match &asked.query {
            Query::Resume { since: None, .. } => {
                let answer = Answer {
                    recovered: None,
                    oldest: None,
                    ..lost
                };
                return self.reply_answer(asked.to, Ok(answer));
            }
            Query::Resume {
                since: Some(since),
                epoch: theirs,
                upto: target,
            } => {
                let since = *since;
                let retained = self.config.storage.retention_for(&asked.channel).0;
                let other_epoch = theirs.as_deref().is_some_and(|e| e != epoch);
                if other_epoch || since > seq || seq - since > retained {
                    return self.reply_answer(asked.to, Ok(lost));
                }
                let end = target.map_or(seq, |t| t.min(seq)).max(since);
                let upto = end.min(since.saturating_add(pages::REPLAY_PAGE_MSGS));
                // All of the gap or nothing.
                let whole = live.iter().take_while(|m| m.seq <= upto).count() as u64
                    == upto - since
                    && live
                        .iter()
                        .take_while(|m| m.seq <= upto)
                        .enumerate()
                        .all(|(i, m)| m.seq == since + 1 + i as u64);
                if !whole {
                    return self.reply_answer(asked.to, Ok(lost));
                }
                (upto, end)
            }
            Query::History { limit, .. } => match live.last() {
                Some(last) if range.rows.len() >= *limit => (last.seq, seq),
                _ => (seq, seq),
            },
            _ => (seq, seq),
        };
        let rows: Vec<_> = live.into_iter().filter(|m| m.seq <= upto).collect();
        let lines = rows
            .iter()
            .map(|m| frames::msg_line(&asked.channel, m.seq, &m.data))
            .collect();
        let seqs = rows.iter().map(|m| m.seq).collect();
        let read = DiskRead {
            to: asked.to,
            channel: asked.channel,
            query: asked.query,
            seq,
            epoch,
            upto,
            end,
            budget: asked.budget,
        };
        self.reply_page(read, lines, seqs);
    }
}

impl OwnerCore {
    /// `get`, `state`, `presence` and user status: read from the engine,
    /// since other servers write the state and hold the members.
    pub(super) fn look_up(&mut self, channel: &str, query: Query, to: ReplyTo) {
        let tag = self.next_tag();
        let channel = channel.to_string();
        self.store(Request::Lookup {
            tag,
            channel: channel.clone(),
        });
        let budget = self.config.page_bytes;
        let read = SharedRead {
            to,
            channel,
            query,
            budget,
        };
        self.shared_reads.insert(tag, read);
    }

    pub(super) fn on_looked(&mut self, tag: u64, result: Result<Looked, String>) {
        let Some(asked) = self.shared_reads.remove(&tag) else {
            return;
        };
        let looked = match result {
            Ok(looked) => looked,
            Err(e) => return self.reply_answer(asked.to, Err(unavailable(&e))),
        };
        let channel = asked.channel.as_str();
        let json = match asked.query {
            Query::Presence => {
                let mut uids = looked.members;
                uids.sort();
                uids.dedup();
                serde_json::json!({"channel": channel, "uids": uids})
            }
            Query::User { uid } => {
                // Counted per server the user is connected to.
                let connections = looked.members.iter().filter(|m| **m == uid).count();
                serde_json::json!({"uid": uid, "online": connections > 0, "connections": connections})
            }
            Query::Get { key } => {
                let entry = looked.state.into_iter().find(|(k, _, _)| *k == key);
                let (value, version) = entry.map_or((None, 0), |(_, v, n)| (v, n));
                let value = raw_or_null(value.as_deref());
                serde_json::json!({"channel": channel, "key": key, "value": value, "version": version})
            }
            Query::State { after, limit } => {
                let keys: BTreeMap<String, Entry> = looked
                    .state
                    .into_iter()
                    .filter(|(k, v, _)| v.is_some() && after.as_ref().is_none_or(|a| k > a))
                    .map(|(k, value, version)| (k, Entry { value, version }))
                    .collect();
                let keys = keys.iter().map(|(k, e)| (k.as_str(), e));
                let limit = limit.min(frames::MAX_HISTORY_LIMIT);
                let (keys, cursor) = pages::state_page(keys, limit, asked.budget);
                let mut json = serde_json::json!({"channel": channel, "seq": looked.seq, "epoch": looked.epoch, "keys": keys, "more": cursor.is_some()});
                if let Some(cursor) = cursor {
                    json["cursor"] = cursor.into();
                }
                json
            }
            _ => serde_json::Value::Null,
        };
        let answer = Answer {
            seq: 0,
            epoch: String::new(),
            recovered: None,
            oldest: None,
            lines: vec![Bytes::from(json.to_string() + "\n")],
            cursor: None,
        };
        self.reply_answer(asked.to, Ok(answer));
    }
}

impl OwnerCore {
    /// Timed redelivery on a shared engine: the user may be connected to
    /// any server and may have acked through any of them, so each due
    /// message goes to the engine, which sends it only when it is still
    /// unacked and its user is online somewhere, and checks the ack before
    /// a message becomes a dead letter.
    pub(super) fn redeliver_shared(&mut self, now: Now) {
        let (resend, dead) = self.inboxes.due(now.at, now.ms, |_| true);
        for (channel, seq, line) in resend {
            let give_up = None;
            self.store(Request::Redeliver {
                channel,
                seq,
                line,
                give_up,
            });
        }
        for letter in dead {
            self.store(Request::Redeliver {
                channel: letter.channel,
                seq: letter.seq,
                line: Bytes::new(),
                give_up: Some((letter.reason, letter.data)),
            });
        }
    }

    pub(super) fn on_redelivered(
        &mut self,
        channel: String,
        seq: u64,
        outcome: Redelivery,
        give_up: Option<(&'static str, String)>,
        now: Now,
    ) {
        match outcome {
            Redelivery::Acked(upto) => {
                self.inboxes.ack(&channel, upto);
                return;
            }
            Redelivery::Offline => self.inboxes.park(&channel, seq),
            Redelivery::Sent | Redelivery::Unacked | Redelivery::Failed => {}
        }
        if let Some((reason, data)) = give_up {
            let letter = DeadLetter {
                channel,
                seq,
                data,
                reason,
            };
            self.dead_letter(letter, now);
        }
    }
}
