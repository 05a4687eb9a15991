//! Users at the edge: authentication, each worker's count of its own
//! connections per user and channel (reported to the channel's owner, which
//! sums them), inbox acks (sent to the owner of `#uid`), and the broadcast /
//! disconnect backend calls.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::pending::{Awaiting, HistoryFor, WaitingSub};
use super::Worker;
use crate::auth;
use crate::bus::frame::encode_header;
use crate::bus::BusMsg;
use crate::owner::{Command, Query};
use crate::proto::frames::{self, ErrorReply};

/// The channel that receives every dead letter.
pub const EXPIRED_CHANNEL: &str = "$expired";

impl Worker {
    pub(super) fn authenticate(&mut self, key: usize, id: Option<&RawValue>, token: &str) {
        if self.conns.get(key).is_some_and(|c| c.user.is_some()) {
            let e = ErrorReply::new(
                "already_authenticated",
                "this connection is already authenticated",
            );
            return self.conns.reply(key, frames::error(id, &e));
        }
        match auth::verify(&self.config.auth, token) {
            Ok(user) => {
                let reply = frames::ok_auth(id, &user.uid);
                self.bind_user(key, user);
                self.conns.reply(key, reply);
            }
            Err(e) => self.refuse_auth(key, id, &e),
        }
    }

    /// Binds an authenticated user to the connection.
    pub(super) fn bind_user(&mut self, key: usize, user: auth::User) {
        log::debug!(
            "worker {}: connection key {key} is user {}",
            self.slot,
            user.uid
        );
        let inbox = auth::inbox(&user.uid);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.user = Some(user);
        let conn_id = conn.id;
        // Channels joined before authenticating count for presence from now
        // on, so leaving them later is symmetric.
        for channel in self.subs.channels_of(key) {
            self.track_presence(key, &channel, true);
        }
        // Every connection of a user hears its inbox: what was sent while it
        // was away (after its last ack), then live direct messages.
        let what = Awaiting::Sub(WaitingSub {
            key,
            conn_id,
            id: None,
            channel: inbox.clone(),
            buffer: Default::default(),
            quiet: true,
            unsub: None,
        });
        self.ask_owner(&inbox, Query::Inbox, what);
    }

    /// An error frame, then the connection closes (WebSocket 4001).
    pub(super) fn refuse_auth(&mut self, key: usize, id: Option<&RawValue>, e: &ErrorReply) {
        log::info!("worker {}: refusing a connection: {}", self.slot, e.message);
        self.conns.reply(key, frames::error(id, e));
        let deadline = std::time::Instant::now() + super::CLOSE_GRACE;
        self.conns
            .close_with(key, super::CLOSE_UNAUTHORIZED, &e.message, deadline);
    }

    fn tracked(&self, channel: &str) -> bool {
        channel.starts_with('#') || self.config.presence.enabled(channel)
    }

    /// A user's connection joined (`true`) or left a channel: count it here
    /// and tell the channel's owner this worker's new total.
    pub(super) fn track_presence(&mut self, key: usize, channel: &str, joined: bool) {
        let Some(uid) = self
            .conns
            .get(key)
            .and_then(|c| c.user.as_ref())
            .map(|u| u.uid.clone())
        else {
            return;
        };
        self.count_presence(channel, &uid, joined);
    }

    pub(super) fn count_presence(&mut self, channel: &str, uid: &str, joined: bool) {
        if !self.tracked(channel) {
            return;
        }
        let entry_key = (channel.to_string(), uid.to_string());
        let count = self.local_presence.entry(entry_key.clone()).or_insert(0);
        *count = if joined {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
        let count = *count;
        if count == 0 {
            self.local_presence.remove(&entry_key);
        }
        self.report_presence(channel, uid, count);
    }

    fn report_presence(&mut self, channel: &str, uid: &str, count: usize) {
        let owner = self.owner_of(channel);
        if owner == self.slot {
            self.tell_owner(Command::Presence {
                slot: owner,
                channel: channel.to_string(),
                uid: uid.to_string(),
                count,
            });
        } else {
            let msg = BusMsg::Presence {
                channel: channel.to_string(),
                uid: uid.to_string(),
                count,
            };
            let _ = self.peers.send(owner, &msg, Bytes::new());
        }
    }

    /// A (new) process of worker `slot` is linked: it owns channels whose
    /// presence it may have lost, so tell it ours again.
    pub(super) fn resend_presence(&mut self, slot: usize) {
        let ours: Vec<(String, String, usize)> = self
            .local_presence
            .iter()
            .filter(|((channel, _), _)| self.owner_of(channel) == slot)
            .map(|((c, u), n)| (c.clone(), u.clone(), *n))
            .collect();
        for (channel, uid, count) in ours {
            let msg = BusMsg::Presence {
                channel,
                uid,
                count,
            };
            let _ = self.peers.send(slot, &msg, Bytes::new());
        }
    }

    pub(super) fn send_to_subscribers(&mut self, channel: &str, line: &Bytes) {
        for key in self.subs.subscribers(channel).to_vec() {
            self.conns.send_line(key, line);
        }
    }

    pub(super) fn presence_query(&mut self, key: usize, channel: &str, reply: HistoryFor) {
        if !self.config.presence.enabled(channel) {
            let e = ErrorReply::new(
                "presence_off",
                format!("{channel} has no presence (see [presence] channels)"),
            );
            return match reply {
                HistoryFor::Client { id } => {
                    self.conns.reply(key, frames::error(id.as_deref(), &e))
                }
                HistoryFor::Http { .. } => {
                    let conn_id = self.conns.get(key).map_or(0, |c| c.id);
                    self.answer_http(key, conn_id, false, Err(e))
                }
            };
        }
        self.json_query(key, channel, Query::Presence, reply);
    }

    pub(super) fn user_query(&mut self, key: usize, uid: &str, keep_alive: bool) {
        let query = Query::User {
            uid: uid.to_string(),
        };
        self.json_query(
            key,
            &auth::inbox(uid),
            query,
            HistoryFor::Http { keep_alive },
        );
    }

    /// A client's `ack`: answered `ok` only once the inbox's owner has
    /// stored it, as a publish is answered only once stored.
    pub(super) fn ack(&mut self, key: usize, id: Option<Box<RawValue>>, channel: &str, seq: u64) {
        let conn_id = self.conns.get(key).map_or(0, |c| c.id);
        let what = Awaiting::Ack { key, conn_id, id };
        self.ask_owner(channel, Query::Ack { seq }, what);
    }

    /// `POST /api/broadcast`: a line for every connection on every worker.
    pub(super) fn broadcast_all(&mut self, data: &str) {
        let line = frames::broadcast_line(data);
        let header = encode_header(&BusMsg::Broadcast, line.len());
        self.peers.broadcast(&header, &line, &mut self.bus_events);
        self.conns.broadcast_local(&line);
    }

    /// `POST /api/disconnect`: close every connection of `uid`, everywhere.
    pub(super) fn disconnect_everywhere(&mut self, uid: &str) {
        let msg = BusMsg::Disconnect {
            uid: uid.to_string(),
        };
        let header = encode_header(&msg, 0);
        self.peers
            .broadcast(&header, &Bytes::new(), &mut self.bus_events);
        self.conns.disconnect_local(uid);
    }
}
