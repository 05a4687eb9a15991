//! Resumes that cannot be served in full. The owner answers them
//! `recovered: false` with `oldest`, the oldest `seq` still retained (found on
//! disk, off the loop). The subscriber's worker does the same when its buffer
//! of messages that arrived during the wait had to drop some: it asks the
//! owner for `oldest`, and never replays around a hole.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::owner::{now_ms, storage_failed, Answer, DiskRead, Query};
use super::pending::Awaiting;
use super::Worker;
use crate::proto::frames::{self, ErrorReply};
use crate::store::thread::Request;
use crate::sync::sub_buffer::SubBuffer;

/// An answered `sub`, as `finish_query` hands it on.
pub(super) struct SubAnswer {
    pub key: usize,
    pub conn_id: u64,
    pub id: Option<Box<RawValue>>,
    pub channel: String,
    pub buffer: SubBuffer,
    pub quiet: bool,
}

impl Worker {
    /// As the owner: answer `read` (a resume) `recovered: false`, once the
    /// store has found the oldest message within `history_size`.
    pub(super) fn find_oldest(&mut self, read: DiskRead) {
        let retained = self.config.storage.retention_for(&read.channel).0;
        let tag = self.next_tag();
        let request = Request::Oldest {
            tag,
            shard: self.shard_of(&read.channel),
            channel: read.channel.clone(),
            after: read.seq.saturating_sub(retained),
            now_ms: now_ms(),
        };
        if self.store.requests.send(request).is_err() {
            let e = storage_failed("the store thread is gone");
            return self.answer_query(read.reply_to, Err(e));
        }
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
        self.answer_query(read.reply_to, answer);
    }

    /// The owner answered a `sub`: reply, replay, and start delivering live
    /// messages, with no hole between the three.
    pub(super) fn finish_sub(&mut self, sub: SubAnswer, answer: Result<Answer, ErrorReply>) {
        let SubAnswer {
            key,
            conn_id,
            id,
            channel,
            buffer,
            quiet,
        } = sub;
        if !self.is_live(key, conn_id) {
            return;
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) if quiet => {
                return log::warn!(
                    "worker {}: inbox {channel} unavailable: {}",
                    self.slot,
                    e.message
                )
            }
            Err(e) => return self.reply(key, frames::error(id.as_deref(), &e)),
        };
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
                let what = Awaiting::Sub {
                    key,
                    conn_id,
                    id,
                    channel: channel.clone(),
                    buffer: SubBuffer::after_gap(upto),
                    quiet,
                };
                let query = Query::Resume {
                    since: Some(u64::MAX),
                    epoch: None,
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
            self.reply(key, reply);
        }
        let limit = self.config.limits.send_buffer_hard;
        if let Some(conn) = self.conns.get_mut(key) {
            conn.replay(lines, limit);
        }
        if self.subs.add(key, &channel) {
            self.track_presence(key, &channel, true);
        }
        self.mark_dirty(key);
    }
}
