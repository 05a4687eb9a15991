//! Questions to the owner: `sub` and resume, `history`, `get`/`state`,
//! presence and user status, inbox replay. Answered from memory or the
//! cache, or, when the cache does not hold the range, after a disk read.
//!
//! A resume replays all of its gap or nothing: a gap beyond retention, a
//! message missing on disk (trimmed or expired), or another epoch makes it
//! `recovered: false` with `oldest`, the oldest `seq` still retained.

use bytes::Bytes;

use super::publish::raw_or_null;
use super::{storage_failed, Answer, Now, OwnerCore, Query, ReplyTo};
use crate::proto::frames::{self, ErrorReply};
use crate::store::shard_db::Stored;
use crate::store::Request;

/// A query waiting for storage to read the disk.
pub(super) struct DiskRead {
    to: ReplyTo,
    channel: String,
    query: Query,
    seq: u64,
    epoch: String,
}

impl OwnerCore {
    /// Answers a question about a channel this worker owns.
    pub(super) fn query(&mut self, channel: &str, query: Query, to: ReplyTo, now: Now) {
        let storage = &self.config.storage;
        let owner = crate::sync::shard::owner_of(channel, storage.shards, self.config.workers);
        if owner != self.config.slot {
            let e = ErrorReply::new(
                "internal",
                "query sent to a worker that does not own the channel",
            );
            return self.reply_answer(to, Err(e));
        }
        let query = match query {
            Query::Inbox => Query::History {
                since: self.inboxes.acked(channel),
                limit: storage.retention_for(channel).0.min(usize::MAX as u64) as usize,
            },
            Query::Presence => {
                let json =
                    serde_json::json!({"channel": channel, "uids": self.presence.uids(channel)});
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            Query::Get { key } => {
                let entry = self.keyed.get(channel, &key);
                let value = raw_or_null(entry.value.as_deref());
                let json = serde_json::json!({"channel": channel, "key": key, "value": value, "version": entry.version});
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            Query::State => {
                // Committed state and delivered seq move together (in
                // `release`), so this snapshot is consistent with `seq`.
                let (seq, epoch) = self.seqs.current(channel, &self.genesis_of(channel));
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
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            Query::Ack { seq } => return self.ack(channel, seq, to),
            Query::User { uid } => {
                let connections = self.presence.connections(channel, &uid);
                let json = serde_json::json!({"uid": uid, "online": connections > 0, "connections": connections});
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            query => query,
        };
        let (seq, epoch) = self.seqs.current(channel, &self.genesis_of(channel));
        let answer = |recovered, lines| Answer {
            seq,
            epoch: epoch.clone(),
            recovered,
            oldest: None,
            lines,
        };
        let (after, upto, limit) = match &query {
            Query::Resume { since: None, .. } => {
                return self.reply_answer(to, Ok(answer(None, vec![])))
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
                        to,
                        channel: channel.to_string(),
                        query: Query::Resume {
                            since: None,
                            epoch: None,
                        },
                        seq,
                        epoch: epoch.clone(),
                    };
                    return self.find_oldest(read, now);
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
        if let Some(lines) = self.cache.range(channel, after, upto, now.ms) {
            return self.reply_answer(to, Ok(answer(recovered, lines)));
        }
        self.stats.disk_reads += 1;
        let tag = self.next_tag();
        self.store(Request::Read {
            tag,
            shard: self.shard_of(channel),
            channel: channel.to_string(),
            after,
            upto,
            limit,
        });
        let waiting = DiskRead {
            to,
            channel: channel.to_string(),
            query,
            seq,
            epoch,
        };
        self.disk_reads.insert(tag, waiting);
    }

    pub(super) fn on_disk_read(
        &mut self,
        tag: u64,
        result: Result<(Vec<Stored>, Option<u64>), String>,
        now: Now,
    ) {
        let Some(read) = self.disk_reads.remove(&tag) else {
            return;
        };
        let (rows, _) = match result {
            Ok(found) => found,
            Err(e) => return self.reply_answer(read.to, Err(storage_failed(&e))),
        };
        let live: Vec<&Stored> = rows.iter().filter(|m| m.expires_ms > now.ms).collect();
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
                    return self.find_oldest(read, now);
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
        self.reply_answer(read.to, Ok(answer));
    }

    /// Answers `read` (a resume) `recovered: false`, once storage has found
    /// the oldest message within `history_size`.
    fn find_oldest(&mut self, read: DiskRead, now: Now) {
        let retained = self.config.storage.retention_for(&read.channel).0;
        let tag = self.next_tag();
        self.store(Request::Oldest {
            tag,
            shard: self.shard_of(&read.channel),
            channel: read.channel.clone(),
            after: read.seq.saturating_sub(retained),
            now_ms: now.ms,
        });
        self.disk_reads.insert(tag, read);
    }

    pub(super) fn on_oldest(&mut self, tag: u64, result: Result<Option<u64>, String>) {
        let Some(read) = self.disk_reads.remove(&tag) else {
            return;
        };
        let answer = result
            .map(|found| Answer {
                seq: read.seq,
                epoch: read.epoch,
                recovered: Some(false),
                // Nothing retained: the next message will be the oldest.
                oldest: Some(found.unwrap_or(read.seq + 1)),
                lines: Vec::new(),
            })
            .map_err(|e| storage_failed(&e));
        self.reply_answer(read.to, answer);
    }
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
