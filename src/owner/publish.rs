//! The write path: numbering a message, sending it to storage, and releasing
//! it (cache, delivery, answers) once storage has it.

use std::sync::Arc;

use super::idempotency::Check;
use super::{storage_failed, Effect, Now, OwnerCore, PublishOptions, ReplyTo, StateWrite};
use crate::config::Durability;
use crate::proto::frames::{self, Acked, ErrorReply};
use crate::store::cache::Cached;
use crate::store::message::Append;
use crate::store::Request;
use crate::sync::channel::is_inbox;

thread_local! {
    /// `max_channels` refusals are logged within this budget (one owner
    /// core per worker process).
    static CAP_LOG: std::cell::RefCell<crate::logging::LogLimit> =
        const { std::cell::RefCell::new(crate::logging::LogLimit::new(5)) };
}

/// A message numbered and sent to storage, not yet released.
pub(super) struct Inflight {
    pub(super) ticket: u64,
    /// With an engine that numbers messages, `version` is the one the
    /// writer expects until the engine has decided (`shared::settle`).
    pub(super) state: Option<StateWrite>,
    idempotency_key: Option<String>,
    dedupe_window: std::time::Duration,
    /// The line is made at release, when the seq is final (an engine that
    /// numbers messages itself may give another one).
    pub(super) data: Arc<str>,
    channel: Arc<str>,
    pub(super) seq: u64,
    expires_ms: i64,
    pub(super) to: ReplyTo,
}

impl OwnerCore {
    /// Numbers a message and sends it to storage. In `memory` durability it
    /// is released at once; otherwise when its transaction has committed. A
    /// repeated `idempotency_key` gets the first publish's `seq` instead.
    pub(super) fn publish(
        &mut self,
        to: ReplyTo,
        channel: &str,
        data: Arc<str>,
        options: PublishOptions,
        now: Now,
    ) {
        if self.fatal {
            // Nothing more is numbered once storage has failed.
            return self.reply_published(to, Err(storage_failed("the store thread is gone")));
        }
        if let Some(e) = self.refuse_new_channel(&to, channel, now) {
            return self.reply_published(to, Err(e));
        }
        let shared = self.config.numbered_by_engine;
        let to = match &options.idempotency_key {
            // A shared engine decides, since a retry may reach another server.
            _ if shared => to,
            None => to,
            Some(key) => match self.idempotency.check(channel, key, to, now.at) {
                Check::Publish(to) => to,
                Check::Done(seq, to) => {
                    let acked = Acked {
                        seq,
                        version: None,
                        duplicate: true,
                    };
                    return self.reply_published(to, Ok(acked));
                }
                Check::Queued => return,
            },
        };
        let shard = self.shard_of(channel);
        let genesis = super::genesis_in(&self.genesis, shard);
        let assigned = self.seqs.assign(channel, || genesis.into());
        let seq = assigned.seq;
        let storage = &self.config.storage;
        let keep = storage.retention_for(channel).1.as_millis() as i64;
        let keep = options
            .ttl
            .map_or(keep, |t| keep.min(t.saturating_mul(1000) as i64));
        let expires_ms = now.ms.saturating_add(keep);
        let dedupe_window = options.ingest.unwrap_or(self.config.idempotency_window);
        let window = dedupe_window.as_millis() as i64;
        self.next_ticket += 1;
        let message = Inflight {
            ticket: self.next_ticket,
            data: data.clone(),
            channel: assigned.name.clone(),
            seq,
            expires_ms,
            to,
            idempotency_key: options.idempotency_key,
            dedupe_window,
            state: options.state,
        };
        let request = Request::Append {
            shard,
            ticket: message.ticket,
            msg: Append {
                channel: assigned.name,
                seq,
                time_ms: now.ms,
                expires_ms,
                data,
                epoch: assigned.epoch,
                idempotency: message
                    .idempotency_key
                    .clone()
                    .map(|k| (k, now.ms.saturating_add(window))),
                state: message
                    .state
                    .as_ref()
                    .map(|w| (w.key.clone(), w.value.clone(), w.version)),
                expected: message.state.as_ref().filter(|_| shared).map(|w| w.version),
                ingested: options.mirrored,
            },
        };
        self.store(request);
        let early = self.config.storage.durability == Durability::Memory;
        if early && !self.config.numbered_by_engine {
            self.release(message, now);
        } else {
            self.inflight.push_back(message);
        }
    }

    /// Compare-and-set of `key` (`value: None` deletes). The winner's change
    /// is published like any message, and stored with it.
    pub(super) fn set(
        &mut self,
        to: ReplyTo,
        channel: &str,
        key: &str,
        value: Option<String>,
        expected: u64,
        now: Now,
    ) {
        // Before the compare-and-set, which would otherwise hold a write
        // that is never published.
        if let Some(e) = self.refuse_new_channel(&to, channel, now) {
            return self.reply_published(to, Err(e));
        }
        if self.config.numbered_by_engine {
            // Other servers write this key too: the engine compares and
            // sets, and its answer names the version (`shared::settle`).
            let write = StateWrite {
                key: key.to_string(),
                value,
                version: expected,
            };
            let options = PublishOptions {
                state: Some(write),
                ..PublishOptions::default()
            };
            return self.publish(to, channel, "null".into(), options, now);
        }
        let version = match self.keyed.cas(channel, key, expected, value.clone()) {
            Ok(version) => version,
            Err(current) => {
                let e = conflict(key, current.value.as_deref(), current.version, expected);
                return self.reply_published(to, Err(e));
            }
        };
        let change = change_json(key, value.as_deref(), version);
        let options = PublishOptions {
            state: Some(StateWrite {
                key: key.to_string(),
                value,
                version,
            }),
            ..PublishOptions::default()
        };
        self.publish(to, channel, change.into(), options, now);
    }

    /// `max_channels`: a publish that would create a channel past it is
    /// refused; the server's own (dead letters on `$expired`) never is.
    fn refuse_new_channel(&mut self, to: &ReplyTo, channel: &str, now: Now) -> Option<ErrorReply> {
        let max = self.config.max_channels;
        if *to == ReplyTo::Internal || self.seqs.knows(channel) || self.seqs.channels() < max {
            return None;
        }
        self.stats.channels_refused += 1;
        if let Some(left_out) = CAP_LOG.with(|l| l.borrow_mut().allow(now.at)) {
            log::warn!(
                "refusing to create channel {channel}: max_channels ({max}) reached; \
                 {left_out} more refusals not logged"
            );
        }
        Some(ErrorReply::new(
            "too_many_channels",
            format!("this server holds {max} channels here (limits.max_channels); publish to an existing channel"),
        ))
    }

    /// The message is stored as the durability mode promises: now it may be
    /// seen. The same bytes go to every other worker and every local subscriber.
    pub(super) fn release(&mut self, m: Inflight, now: Now) {
        let channel = m.channel;
        self.seqs.delivered(&channel, m.seq);
        let line = frames::msg_line(&channel, m.seq, &m.data);
        if is_inbox(&channel) {
            // Kept for redelivery and dead letters.
            self.inboxes.delivered(
                &channel,
                m.seq,
                m.expires_ms,
                line.clone(),
                m.data.to_string(),
                now.at,
            );
        }
        let cached = Cached {
            seq: m.seq,
            expires_ms: m.expires_ms,
            line: line.clone(),
        };
        if !self.config.numbered_by_engine {
            // A shared engine answers resumes itself: other servers'
            // messages are not in this cache.
            self.cache.push(&channel, cached);
        }
        let retries = match &m.idempotency_key {
            Some(key) => self
                .idempotency
                .done(&channel, key, m.seq, now.at + m.dedupe_window),
            None => Vec::new(),
        };
        let version = m.state.as_ref().map(|s| s.version);
        if let Some(write) = m.state.filter(|_| !self.config.numbered_by_engine) {
            // (A shared engine keeps the state: `get` and `state` read it.)
            self.keyed
                .commit(&channel, &write.key, write.value, write.version);
        }
        self.effects.push_back(Effect::Deliver {
            channel,
            seq: m.seq,
            line,
        });
        for retry in retries {
            let acked = Acked {
                seq: m.seq,
                version: None,
                duplicate: true,
            };
            self.reply_published(retry, Ok(acked));
        }
        let acked = Acked {
            seq: m.seq,
            version,
            duplicate: false,
        };
        self.reply_published(m.to, Ok(acked));
    }
}

/// The message that records a keyed-state change.
pub(super) fn change_json(key: &str, value: Option<&str>, version: u64) -> String {
    serde_json::json!({
        "key": key,
        "version": version,
        "value": raw_or_null(value),
    })
    .to_string()
}

/// A compare-and-set that lost: the key's current value and version.
pub(super) fn conflict(key: &str, value: Option<&str>, version: u64, expected: u64) -> ErrorReply {
    let detail = serde_json::json!({"key": key, "value": raw_or_null(value), "version": version});
    let mut e = ErrorReply::new(
        "conflict",
        format!("`{key}` is at version {version}, not {expected}"),
    );
    e.current = Some(detail.to_string());
    e
}

/// Stored JSON text as a value to embed, `null` when absent.
pub(super) fn raw_or_null(value: Option<&str>) -> Box<serde_json::value::RawValue> {
    let text = value.unwrap_or("null").to_string();
    serde_json::value::RawValue::from_string(text)
        .or_else(|_| serde_json::value::RawValue::from_string("null".into()))
        .unwrap_or_default()
}
