//! Users at the owner: presence summed over workers (join/leave events),
//! inbox acks (answered once stored), redelivery of unacked direct messages
//! to online users, and dead letters.

use super::inbox::DeadLetter;
use super::presence::Change;
use super::{storage_failed, Answer, Effect, Now, OwnerCore, ReplyTo};
use crate::proto::frames;
use crate::store::Request;
use crate::sync::channel::is_inbox;

impl OwnerCore {
    /// Worker `slot`'s count of `uid` in `channel` changed.
    pub(super) fn presence_report(
        &mut self,
        slot: usize,
        channel: &str,
        uid: &str,
        count: usize,
        now: Now,
    ) {
        let change = self.presence.report(channel, uid, slot, count);
        if self.config.numbered_by_engine && change != Change::Same {
            // This server's change: the engine tells every server's
            // subscribers when the user's presence across all changes.
            let (channel, uid) = (channel.to_string(), uid.to_string());
            let joined = change == Change::Joined;
            self.store(Request::Presence {
                channel,
                uid,
                joined,
            });
        }
        if is_inbox(channel) {
            if change == Change::Joined {
                self.inboxes.reconnected(channel, now.at);
            }
            return;
        }
        match change {
            _ if self.config.numbered_by_engine => {}
            Change::Joined => self.emit_event(channel, "join", uid),
            Change::Left => self.emit_event(channel, "leave", uid),
            Change::Same => {}
        }
    }

    /// Worker `slot` is gone, and so are its users.
    pub(super) fn slot_down(&mut self, slot: usize) {
        for (channel, uid) in self.presence.drop_slot(slot) {
            if self.config.numbered_by_engine {
                let joined = false;
                self.store(Request::Presence {
                    channel,
                    uid,
                    joined,
                });
            } else if !is_inbox(&channel) {
                self.emit_event(&channel, "leave", &uid);
            }
        }
    }

    fn emit_event(&mut self, channel: &str, op: &str, uid: &str) {
        let line = frames::event_line(op, channel, uid);
        let channel = channel.to_string();
        self.effects.push_back(Effect::Event { channel, line });
    }

    /// A cumulative ack of an inbox. Redelivery stops now; the answer waits
    /// for storage. An ack that moves nothing is stored again all the same,
    /// so its answer also waits for the earlier ones.
    pub(super) fn ack(&mut self, channel: &str, seq: u64, to: ReplyTo) {
        self.inboxes.ack(channel, seq);
        let tag = self.next_tag();
        self.store(Request::Ack {
            tag,
            shard: self.shard_of(channel),
            channel: channel.to_string(),
            seq,
        });
        self.ack_replies.insert(tag, to);
    }

    /// Storage has recorded (or failed to record) these acks.
    pub(super) fn acks_stored(&mut self, tags: Vec<u64>, error: Option<String>) {
        for tag in tags {
            let Some(to) = self.ack_replies.remove(&tag) else {
                continue;
            };
            let answer = match &error {
                None => Ok(Answer {
                    seq: 0,
                    epoch: String::new(),
                    recovered: None,
                    oldest: None,
                    lines: Vec::new(),
                    cursor: None,
                }),
                Some(e) => Err(storage_failed(e)),
            };
            self.reply_answer(to, answer);
        }
    }

    /// Sends unacked direct messages again to online users, and turns
    /// expired or exhausted ones into dead letters.
    pub(super) fn redeliver(&mut self, now: Now) {
        if self.config.numbered_by_engine {
            return self.redeliver_shared(now);
        }
        let presence = &self.presence;
        let (resend, dead) = self.inboxes.due(now.at, now.ms, |channel| {
            presence.connections(channel, &channel[1..]) > 0
        });
        for (channel, seq, line) in resend {
            log::debug!("redelivering {channel} seq {seq}");
            self.effects.push_back(Effect::Deliver {
                channel: channel.into(),
                seq,
                line,
            });
        }
        for letter in dead {
            self.dead_letter(letter, now);
        }
    }

    /// Never lost silently: recorded in the shard, then handed on to be
    /// published on `$expired` and posted to the webhook.
    pub(super) fn dead_letter(&mut self, letter: DeadLetter, now: Now) {
        log::info!(
            "dead letter {} seq {} ({})",
            letter.channel,
            letter.seq,
            letter.reason
        );
        let uid = letter.channel[1..].to_string();
        let data =
            serde_json::value::RawValue::from_string(letter.data.clone()).unwrap_or_else(|_| {
                serde_json::value::RawValue::from_string("null".into()).unwrap_or_default()
            });
        let report = serde_json::json!({
            "uid": uid,
            "channel": letter.channel,
            "seq": letter.seq,
            "reason": letter.reason,
            "data": data,
        })
        .to_string();
        if !self.config.numbered_by_engine {
            self.store(Request::DeadLetter {
                shard: self.shard_of(&letter.channel),
                channel: letter.channel,
                seq: letter.seq,
                reason: letter.reason,
                data: letter.data,
                time_ms: now.ms,
            });
        }
        self.effects.push_back(Effect::DeadLetter { report });
    }
}
