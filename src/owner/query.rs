//! Questions to the owner: `sub` and resume, `history`, `get`/`state`,
//! presence and user status, inbox replay. Answered from memory or the
//! cache, or, when the cache does not hold the range, after a disk read.
//!
//! A resume replays all of its gap or nothing: a gap beyond retention, a
//! message missing on disk (trimmed or expired), or another epoch makes it
//! `recovered: false` with `oldest`, the oldest `seq` still retained.

use bytes::Bytes;

use super::publish::raw_or_null;
use super::{pages, storage_failed, Answer, Now, OwnerCore, Query, ReplyTo};
use crate::proto::frames::{self, ErrorReply};
use crate::store::message::Stored;
use crate::store::Request;

/// A query waiting for storage to read the disk.
pub(super) struct DiskRead {
    pub(super) to: ReplyTo,
    pub(super) channel: String,
    pub(super) query: Query,
    pub(super) seq: u64,
    pub(super) epoch: String,
    /// The last `seq` this read covers.
    pub(super) upto: u64,
    /// Where the whole answer ends (the channel's `seq`, or a replay's
    /// target): a page that stops before it has a cursor.
    pub(super) end: u64,
    pub(super) budget: usize,
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
        let shared = self.config.numbered_by_engine;
        if shared
            && matches!(
                query,
                Query::Presence | Query::User { .. } | Query::Get { .. } | Query::State { .. }
            )
        {
            return self.look_up(channel, query, to);
        }
        let inbox = query == Query::Inbox;
        // An inbox replays every unacked message at once (its client
        // acks them); everything else a client asks for comes in pages.
        let (query, budget) = match query {
            Query::Inbox => {
                let since = self.inboxes.acked(channel);
                let limit = storage.retention_for(channel).0.min(usize::MAX as u64) as usize;
                (Query::History { since, limit }, usize::MAX)
            }
            Query::History { since, limit } => {
                let limit = limit.min(frames::MAX_HISTORY_LIMIT);
                (Query::History { since, limit }, self.config.page_bytes)
            }
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
            Query::State { after, limit } => {
                // Committed state and delivered seq move together (in
                // `release`), so this page is consistent with `seq`.
                let (seq, epoch) = self.seqs.current(channel, self.genesis_of(channel));
                let keys = self.keyed.keys_after(channel, after.as_deref());
                let limit = limit.min(frames::MAX_HISTORY_LIMIT);
                let (keys, cursor) = pages::state_page(keys, limit, self.config.page_bytes);
                let mut json = serde_json::json!({"channel": channel, "seq": seq, "epoch": epoch, "keys": keys, "more": cursor.is_some()});
                if let Some(cursor) = cursor {
                    json["cursor"] = cursor.into();
                }
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            Query::Ack { seq } => return self.ack(channel, seq, to),
            Query::User { uid } => {
                let connections = self.presence.connections(channel, &uid);
                let json = serde_json::json!({"uid": uid, "online": connections > 0, "connections": connections});
                return self.reply_answer(to, Ok(json_answer(json.to_string())));
            }
            query => (query, self.config.replay_page_bytes),
        };
        if self.config.numbered_by_engine {
            return self.ask_shared(channel, query, to, budget, inbox);
        }
        let (seq, epoch) = self.seqs.current(channel, self.genesis_of(channel));
        let (after, upto, end, limit) = match &query {
            Query::Resume { since: None, .. } => {
                let answer = Answer {
                    seq,
                    epoch,
                    recovered: None,
                    oldest: None,
                    lines: vec![],
                    cursor: None,
                };
                return self.reply_answer(to, Ok(answer));
            }
            Query::Resume {
                since: Some(since),
                epoch: theirs,
                upto: target,
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
                            upto: None,
                        },
                        seq,
                        epoch: epoch.clone(),
                        upto: seq,
                        end: seq,
                        budget,
                    };
                    return self.find_oldest(read, now);
                }
                // The first page replays up to the delivered seq; the next
                // ones up to the same `seq` the first answer named.
                let end = target.map_or(seq, |t| t.min(seq)).max(*since);
                let upto = end.min(since.saturating_add(pages::REPLAY_PAGE_MSGS));
                (*since, upto, end, (upto - since) as usize)
            }
            Query::History { since, limit } => {
                let oldest = seq.saturating_sub(self.config.storage.retention_for(channel).0);
                let after = (*since).max(oldest);
                (
                    after,
                    seq.min(after.saturating_add(*limit as u64)),
                    seq,
                    *limit,
                )
            }
            Query::Inbox
            | Query::Ack { .. }
            | Query::Presence
            | Query::User { .. }
            | Query::Get { .. }
            | Query::State { .. } => return,
        };
        let read = DiskRead {
            to,
            channel: channel.to_string(),
            query,
            seq,
            epoch,
            upto,
            end,
            budget,
        };
        if let Some(lines) = self.cache.range(channel, after, upto, now.ms) {
            let seqs = (after + 1..=upto).collect();
            return self.reply_page(read, lines, seqs);
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
        self.disk_reads.insert(tag, read);
    }

    /// Answers `read` with `lines` (their `seqs` alongside): as many as fit
    /// in its budget, with a cursor when more follows.
    pub(super) fn reply_page(&mut self, read: DiskRead, mut lines: Vec<Bytes>, seqs: Vec<u64>) {
        let cut = pages::cut(&mut lines, read.budget);
        // Where this page ends: its last message if cut short, else the
        // end of the range read (messages expired in it are skipped).
        let reached = match lines.len().checked_sub(1) {
            Some(last) if cut => seqs.get(last).copied().unwrap_or(read.upto),
            _ => read.upto,
        };
        let recovered = matches!(read.query, Query::Resume { .. }).then_some(true);
        let answer = Answer {
            seq: read.seq,
            epoch: read.epoch,
            recovered,
            oldest: None,
            lines,
            cursor: (reached < read.end).then_some(reached),
        };
        self.reply_answer(read.to, Ok(answer));
    }

    pub(super) fn on_disk_read(&mut self, tag: u64, result: Result<Vec<Stored>, String>, now: Now) {
        let Some(read) = self.disk_reads.remove(&tag) else {
            return;
        };
        let rows = match result {
            Ok(found) => found,
            Err(e) => return self.reply_answer(read.to, Err(storage_failed(&e))),
        };
        let live: Vec<&Stored> = rows.iter().filter(|m| m.expires_ms > now.ms).collect();
        // A resume replays all of the gap or nothing: any message missing
        // (trimmed or expired) makes it `recovered: false`, with `oldest`.
        if let Query::Resume { since, .. } = read.query {
            let from = since.unwrap_or(0);
            let whole = live.len() as u64 == read.upto - from
                && live
                    .iter()
                    .enumerate()
                    .all(|(i, m)| m.seq == from + 1 + i as u64);
            if !whole {
                return self.find_oldest(read, now);
            }
        }
        let lines = live
            .iter()
            .map(|m| frames::msg_line(&read.channel, m.seq, &m.data))
            .collect();
        let seqs = live.iter().map(|m| m.seq).collect();
        self.reply_page(read, lines, seqs);
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
                cursor: None,
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
        cursor: None,
    }
}
