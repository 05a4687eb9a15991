//! The owner side: numbering and storing the messages of the shards this
//! worker owns, releasing them to subscribers once stored, and answering
//! resume and history queries from the cache or, off the loop, from disk.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::dispatch::{Origin, PublishOptions, StateWrite};
use super::Worker;
use crate::bus::frame::encode_header;
use crate::bus::BusMsg;
use crate::config::Durability;
use crate::proto::frames::{self, Acked, ErrorReply};
use crate::store::cache::Cached;
use crate::store::shard_db::{Append, Stored};
use crate::store::thread::{Event, Request};
use crate::sync::idempotency::Check;
use crate::sync::shard;

/// What a `sub` or `history` asks of the owner.
pub enum Query {
    /// A user's connection joins its inbox: replay what is not acked.
    Inbox,
    /// Who is in a presence channel (answer: a JSON array of uids).
    Presence,
    /// Is a user online (answer: a JSON object).
    User {
        uid: String,
    },
    /// One key of the channel's state (answer: a JSON object).
    Get {
        key: String,
    },
    /// All of the channel's state and the `seq` it is consistent with.
    State,
    Resume {
        since: Option<u64>,
        epoch: Option<String>,
    },
    History {
        since: u64,
        limit: usize,
    },
    /// A cumulative ack of an inbox: answered once it is stored.
    Ack {
        seq: u64,
    },
}

/// Where the owner's answer goes.
pub enum ReplyTo {
    /// A `Pending` of this worker, by tag.
    Local(u64),
    Peer {
        slot: usize,
        tag: u64,
    },
}

pub struct Answer {
    pub seq: u64,
    pub epoch: String,
    pub recovered: Option<bool>,
    /// With `recovered: false`: the oldest `seq` still retained.
    pub oldest: Option<u64>,
    /// `msg` lines, newline included, oldest first.
    pub lines: Vec<Bytes>,
}

/// A message numbered and sent to the store, not yet released.
pub struct Inflight {
    ticket: u64,
    state: Option<StateWrite>,
    idempotency_key: Option<String>,
    /// For direct messages: the `data`, kept for redelivery and dead letters.
    inbox_data: Option<String>,
    channel: String,
    seq: u64,
    expires_ms: i64,
    line: Bytes,
    origin: Origin,
}

/// A query waiting for the store thread to read the disk.
pub struct DiskRead {
    pub(super) reply_to: ReplyTo,
    pub(super) channel: String,
    pub(super) query: Query,
    pub(super) seq: u64,
    pub(super) epoch: String,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn fresh_epoch() -> String {
    format!("{:016x}", super::random_u64())
}

impl Worker {
    /// The epoch of channels this worker's shard has never seen.
    fn genesis_of(&self, channel: &str) -> String {
        let shard = self.shard_of(channel);
        self.genesis
            .get(&shard)
            .cloned()
            .unwrap_or_else(|| "0".into())
    }

    pub(super) fn shard_of(&self, channel: &str) -> u32 {
        shard::shard_of(channel, self.config.storage.shards)
    }

    /// Numbers a message and sends it to the store. In `memory` durability it
    /// is released at once; otherwise when its transaction has committed. A
    /// repeated `idempotency_key` gets the first publish's `seq` instead.
    pub(super) fn publish_owned(
        &mut self,
        origin: Origin,
        channel: &str,
        data: &str,
        options: PublishOptions,
    ) {
        let now_instant = std::time::Instant::now();
        let origin = match &options.idempotency_key {
            None => origin,
            Some(key) => match self.idempotency.check(channel, key, origin, now_instant) {
                Check::Publish(origin) => origin,
                Check::Done(seq, origin) => {
                    return self.answer_publish(origin, Ok(Acked { seq, version: None }))
                }
                Check::Queued => return,
            },
        };
        let genesis = self.genesis_of(channel);
        let (seq, epoch) = self.owner.assign(channel, &genesis);
        let now = now_ms();
        let keep = self.config.storage.retention_for(channel).1.as_millis() as i64;
        let keep = options
            .ttl
            .map_or(keep, |t| keep.min(t.saturating_mul(1000) as i64));
        let expires_ms = now.saturating_add(keep);
        let window = self.config.delivery.idempotency_window.as_millis() as i64;
        self.next_ticket += 1;
        let message = Inflight {
            ticket: self.next_ticket,
            inbox_data: channel.starts_with('#').then(|| data.to_string()),
            channel: channel.to_string(),
            seq,
            expires_ms,
            line: frames::msg_line(channel, seq, data),
            origin,
            idempotency_key: options.idempotency_key,
            state: options.state,
        };
        let request = Request::Append {
            shard: self.shard_of(channel),
            ticket: message.ticket,
            msg: Append {
                channel: channel.to_string(),
                seq,
                time_ms: now,
                expires_ms,
                data: data.to_string(),
                epoch,
                idempotency: message
                    .idempotency_key
                    .clone()
                    .map(|k| (k, now.saturating_add(window))),
                state: message
                    .state
                    .as_ref()
                    .map(|w| (w.key.clone(), w.value.clone(), w.version)),
            },
        };
        if self.store.requests.send(request).is_err() {
            log::error!("worker {}: the store thread is gone", self.slot);
            self.fatal = true;
            self.answer_publish(
                message.origin,
                Err(storage_failed("the store thread is gone")),
            );
            return;
        }
        if self.config.storage.durability == Durability::Memory {
            self.release(message);
        } else {
            self.inflight.push_back(message);
        }
    }

    /// As the owner: compare-and-set of `key` (`value: None` deletes). The
    /// winner's change is published like any message, and stored with it.
    pub(super) fn set_owned(
        &mut self,
        origin: Origin,
        channel: &str,
        key: &str,
        value: Option<String>,
        expected: u64,
    ) {
        let version = match self.keyed.cas(channel, key, expected, value.clone()) {
            Ok(version) => version,
            Err(current) => {
                let value_json = raw_or_null(current.value.as_deref());
                let detail = serde_json::json!({"key": key, "value": value_json, "version": current.version});
                let mut e = ErrorReply::new(
                    "conflict",
                    format!("`{key}` is at version {}, not {expected}", current.version),
                );
                e.current = Some(detail.to_string());
                return self.answer_publish(origin, Err(e));
            }
        };
        let change = serde_json::json!({
            "key": key,
            "version": version,
            "value": raw_or_null(value.as_deref()),
        });
        let options = PublishOptions {
            state: Some(StateWrite {
                key: key.to_string(),
                value,
                version,
            }),
            ..PublishOptions::default()
        };
        self.publish_owned(origin, channel, &change.to_string(), options);
    }

    /// The message is stored as the durability mode promises: now it may be
    /// seen. The same bytes go to every other worker and every local subscriber.
    fn release(&mut self, m: Inflight) {
        let channel = m.channel.as_str();
        self.owner.delivered(channel, m.seq);
        if let Some(data) = m.inbox_data {
            let now = std::time::Instant::now();
            self.inboxes
                .delivered(channel, m.seq, m.expires_ms, m.line.clone(), data, now);
        }
        let cached = Cached {
            seq: m.seq,
            expires_ms: m.expires_ms,
            line: m.line.clone(),
        };
        self.cache.push(channel, cached);
        let deliver = BusMsg::Deliver {
            channel: channel.to_string(),
            seq: m.seq,
        };
        let header = encode_header(&deliver, m.line.len());
        self.peers.broadcast(&header, &m.line, &mut self.bus_events);
        self.deliver_local(channel, m.seq, &m.line);
        if let Some(key) = &m.idempotency_key {
            for retry in self
                .idempotency
                .done(channel, key, m.seq, std::time::Instant::now())
            {
                self.answer_publish(
                    retry,
                    Ok(Acked {
                        seq: m.seq,
                        version: None,
                    }),
                );
            }
        }
        let version = m.state.as_ref().map(|s| s.version);
        if let Some(write) = m.state {
            self.keyed
                .commit(channel, &write.key, write.value, write.version);
        }
        self.answer_publish(
            m.origin,
            Ok(Acked {
                seq: m.seq,
                version,
            }),
        );
    }

    pub(super) fn on_store_events(&mut self) {
        let events: Vec<Event> = self.store.events.try_iter().collect();
        for event in events {
            match event {
                Event::Committed { upto, count } => {
                    self.stats.stored += count;
                    while self.inflight.front().is_some_and(|m| m.ticket <= upto) {
                        if let Some(m) = self.inflight.pop_front() {
                            self.release(m);
                        }
                    }
                }
                Event::Failed { error } => {
                    // Numbers given out may now have no message behind them:
                    // restart from what the disk holds rather than leave a hole.
                    log::error!(
                        "worker {}: storing messages failed, restarting: {error}",
                        self.slot
                    );
                    for m in std::mem::take(&mut self.inflight) {
                        self.answer_publish(m.origin, Err(storage_failed(&error)));
                    }
                    let acks: Vec<u64> = self.ack_replies.keys().copied().collect();
                    self.acks_stored(acks, Some(error));
                    self.fatal = true;
                }
                Event::Read { tag, result } => self.on_disk_read(tag, result),
                Event::Oldest { tag, result } => self.on_oldest(tag, result),
                Event::AcksStored { tags, error } => self.acks_stored(tags, error),
                Event::Swept { expired, trimmed } => {
                    self.stats.expired += expired;
                    self.stats.trimmed += trimmed;
                }
            }
        }
    }

    /// Answers a `sub`/resume or `history` for a channel this worker owns.
    pub(super) fn owner_query(&mut self, channel: &str, query: Query, reply_to: ReplyTo) {
        if self.owner_of(channel) != self.slot {
            let e = ErrorReply::new(
                "internal",
                "query sent to a worker that does not own the channel",
            );
            self.answer_query(reply_to, Err(e));
            return;
        }
        let query = match query {
            Query::Inbox => Query::History {
                since: self.inboxes.acked(channel),
                limit: self
                    .config
                    .storage
                    .retention_for(channel)
                    .0
                    .min(usize::MAX as u64) as usize,
            },
            Query::Presence => {
                let json =
                    serde_json::json!({"channel": channel, "uids": self.presence.uids(channel)});
                return self.answer_query(reply_to, Ok(json_answer(json.to_string())));
            }
            Query::Get { key } => {
                let entry = self.keyed.get(channel, &key);
                let value = raw_or_null(entry.value.as_deref());
                let json = serde_json::json!({"channel": channel, "key": key, "value": value, "version": entry.version});
                return self.answer_query(reply_to, Ok(json_answer(json.to_string())));
            }
            Query::State => {
                // Committed state and delivered seq move together (in
                // `release`), so this snapshot is consistent with `seq`.
                let (seq, epoch) = self.owner.current(channel, &self.genesis_of(channel));
                let keys: serde_json::Map<String, serde_json::Value> = self
                    .keyed
                    .all(channel)
                    .into_iter()
                    .map(|(k, e)| {
                        let value = raw_or_null(e.value.as_deref());
                        (
                            k.to_string(),
                            serde_json::json!({"value": value, "version": e.version}),
                        )
                    })
                    .collect();
                let json = serde_json::json!({"channel": channel, "seq": seq, "epoch": epoch, "keys": keys});
                return self.answer_query(reply_to, Ok(json_answer(json.to_string())));
            }
            Query::Ack { seq } => return self.owner_ack(channel, seq, reply_to),
            Query::User { uid } => {
                let connections = self.presence.connections(channel, &uid);
                let json = serde_json::json!({"uid": uid, "online": connections > 0, "connections": connections});
                return self.answer_query(reply_to, Ok(json_answer(json.to_string())));
            }
            query => query,
        };
        let (seq, epoch) = self.owner.current(channel, &self.genesis_of(channel));
        let answer = |recovered, lines| Answer {
            seq,
            epoch: epoch.clone(),
            recovered,
            oldest: None,
            lines,
        };
        let (after, upto, limit) = match &query {
            Query::Resume { since: None, .. } => {
                return self.answer_query(reply_to, Ok(answer(None, vec![])))
            }
            Query::Resume {
                since: Some(since),
                epoch: theirs,
            } => {
                // Beyond `history_size` the gap is not retained, even where
                // trimming has not caught up yet.
                let retained = self.config.storage.retention_for(channel).0;
                let other_epoch = theirs.as_deref().is_some_and(|e| e != epoch);
                if other_epoch || *since > seq || seq - since > retained {
                    let read = DiskRead {
                        reply_to,
                        channel: channel.to_string(),
                        query: Query::Resume {
                            since: None,
                            epoch: None,
                        },
                        seq,
                        epoch: epoch.clone(),
                    };
                    return self.find_oldest(read);
                }
                (*since, seq, (seq - since) as usize)
            }
            Query::History { since, limit } => {
                let oldest = seq.saturating_sub(self.config.storage.retention_for(channel).0);
                let after = (*since).max(oldest);
                (after, seq.min(after.saturating_add(*limit as u64)), *limit)
            }
            Query::Inbox
            | Query::Ack { .. }
            | Query::Presence
            | Query::User { .. }
            | Query::Get { .. }
            | Query::State => return,
        };
        let recovered = matches!(query, Query::Resume { .. }).then_some(true);
        if let Some(lines) = self.cache.range(channel, after, upto, now_ms()) {
            return self.answer_query(reply_to, Ok(answer(recovered, lines)));
        }
        self.stats.disk_reads += 1;
        let tag = self.next_tag();
        let read = Request::Read {
            tag,
            shard: self.shard_of(channel),
            channel: channel.to_string(),
            after,
            upto,
            limit,
        };
        if self.store.requests.send(read).is_err() {
            return self.answer_query(reply_to, Err(storage_failed("the store thread is gone")));
        }
        let waiting = DiskRead {
            reply_to,
            channel: channel.to_string(),
            query,
            seq,
            epoch,
        };
        self.disk_reads.insert(tag, waiting);
    }

    fn on_disk_read(&mut self, tag: u64, result: Result<(Vec<Stored>, Option<u64>), String>) {
        let Some(read) = self.disk_reads.remove(&tag) else {
            return;
        };
        let (rows, _) = match result {
            Ok(found) => found,
            Err(e) => return self.answer_query(read.reply_to, Err(storage_failed(&e))),
        };
        let now = now_ms();
        let live: Vec<&Stored> = rows.iter().filter(|m| m.expires_ms > now).collect();
        let lines = |msgs: &[&Stored]| -> Vec<Bytes> {
            msgs.iter()
                .map(|m| frames::msg_line(&read.channel, m.seq, &m.data))
                .collect()
        };
        let (recovered, lines) = match read.query {
            // A resume replays all of the gap or nothing: any message missing
            // (trimmed or expired) makes it `recovered: false`, with `oldest`.
            Query::Resume { since, .. } => {
                let from = since.unwrap_or(0);
                let whole = live.len() as u64 == read.seq - from
                    && live
                        .iter()
                        .enumerate()
                        .all(|(i, m)| m.seq == from + 1 + i as u64);
                if !whole {
                    return self.find_oldest(read);
                }
                (Some(true), lines(&live))
            }
            _ => (None, lines(&live)),
        };
        let answer = Answer {
            seq: read.seq,
            epoch: read.epoch,
            recovered,
            oldest: None,
            lines,
        };
        self.answer_query(read.reply_to, Ok(answer));
    }

    pub(super) fn answer_query(&mut self, reply_to: ReplyTo, answer: Result<Answer, ErrorReply>) {
        match reply_to {
            ReplyTo::Local(tag) => self.finish_query(tag, answer),
            ReplyTo::Peer { slot, tag } => {
                let (msg, payload) = match answer {
                    Ok(a) => {
                        let mut payload = Vec::with_capacity(a.lines.iter().map(Bytes::len).sum());
                        for line in &a.lines {
                            payload.extend_from_slice(line);
                        }
                        let msg = BusMsg::QueryAnswer {
                            tag,
                            seq: a.seq,
                            epoch: a.epoch,
                            recovered: a.recovered,
                            error: None,
                            oldest: a.oldest,
                        };
                        (msg, Bytes::from(payload))
                    }
                    Err(e) => {
                        let msg = BusMsg::QueryAnswer {
                            tag,
                            seq: 0,
                            epoch: String::new(),
                            recovered: None,
                            error: Some(e.message),
                            oldest: None,
                        };
                        (msg, Bytes::new())
                    }
                };
                let _ = self.peers.send(slot, &msg, payload);
            }
        }
    }
}

/// Stored JSON text as a value to embed, `null` when absent.
fn raw_or_null(value: Option<&str>) -> Box<serde_json::value::RawValue> {
    let text = value.unwrap_or("null").to_string();
    serde_json::value::RawValue::from_string(text)
        .or_else(|_| serde_json::value::RawValue::from_string("null".into()))
        .unwrap_or_default()
}

/// An answer that is one JSON value (presence, user status).
fn json_answer(json: String) -> Answer {
    Answer {
        seq: 0,
        epoch: String::new(),
        recovered: None,
        oldest: None,
        lines: vec![Bytes::from(json + "\n")],
    }
}

pub(super) fn storage_failed(message: &str) -> ErrorReply {
    ErrorReply::new("storage_failed", format!("storage failed: {message}"))
}
