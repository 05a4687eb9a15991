//! Users at the edge: a refused token, and this worker's count of its own
//! connections per user and channel (reported to the channel's owner, which
//! sums them). Binding a user, reporting counts and the broadcast /
//! disconnect calls need several parts: they are `Worker` methods, below.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::connections::Connections;
use super::pending::{Awaiting, HistoryFor, WaitingSub};
use super::{Worker, CLOSE_GRACE, CLOSE_UNAUTHORIZED};
use crate::auth;
use crate::bus::frame::encode_header;
use crate::bus::BusMsg;
use crate::config::Auth;
use crate::owner::{Command, Query};
use crate::proto::frames::{self, ErrorReply};
use crate::sync::channel;
use crate::sync::subscriptions::Subscriptions;

/// The channel that receives every dead letter.
pub const EXPIRED_CHANNEL: &str = "$expired";

/// This worker's connections per (channel, uid), as reported to owners.
#[derive(Default)]
pub struct LocalPresence {
    counts: HashMap<(String, String), usize>,
}

impl LocalPresence {
    /// A connection of `uid` joined (`true`) or left `channel`: returns this
    /// worker's new count.
    pub fn count(&mut self, channel: &str, uid: &str, joined: bool) -> usize {
        let entry_key = (channel.to_string(), uid.to_string());
        let count = self.counts.entry(entry_key.clone()).or_insert(0);
        *count = if joined {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
        let count = *count;
        if count == 0 {
            self.counts.remove(&entry_key);
        }
        count
    }

    /// Our counts in the channels `pick` picks, as (channel, uid, count).
    pub fn picked(&self, pick: impl Fn(&str) -> bool) -> Vec<(String, String, usize)> {
        self.counts
            .iter()
            .filter(|((channel, _), _)| pick(channel))
            .map(|((c, u), n)| (c.clone(), u.clone(), *n))
            .collect()
    }
}

impl Connections {
    /// An error frame, then the connection closes (WebSocket 4001).
    pub fn refuse_auth(&mut self, key: usize, id: Option<&RawValue>, e: &ErrorReply) {
        log::info!(
            "worker {}: refusing a connection: {}",
            self.slot(),
            e.message
        );
        self.reply(key, frames::error(id, e));
        let deadline = std::time::Instant::now() + CLOSE_GRACE;
        self.close_with(key, CLOSE_UNAUTHORIZED, &e.message, deadline);
    }

    /// `refresh_needed`, once per token: the client should answer `refresh`.
    pub fn ask_refresh(&mut self, key: usize) {
        let Some(conn) = self.get_mut(key) else {
            return;
        };
        conn.timers.refresh_asked = true;
        let exp = conn.user.as_ref().map_or(0, |u| u.exp);
        self.reply(key, format!("{{\"op\":\"refresh_needed\",\"exp\":{exp}}}"));
    }

    /// `refresh`: a newer token for the same user replaces the connection's
    /// (its grants and `exp`). A bad one is refused, and the old token
    /// still holds until it expires.
    pub fn refresh(&mut self, key: usize, id: Option<&RawValue>, rules: &Auth, token: &str) {
        let Some(conn) = self.get_mut(key) else {
            return;
        };
        let result = match (auth::verify(rules, token), &conn.user) {
            (_, None) => Err(auth::unauthorized(
                "`refresh` needs an authenticated connection",
            )),
            (Ok(user), Some(old)) if user.uid != old.uid => Err(auth::unauthorized(
                "`refresh` must carry a token for the same user",
            )),
            (result, Some(_)) => result,
        };
        let reply = match result {
            Ok(user) => {
                let reply = frames::ok_with(id, &format!("{{\"exp\":{}}}", user.exp));
                conn.user = Some(user);
                conn.timers.refresh_asked = false;
                reply
            }
            Err(e) => frames::error(id, &e),
        };
        self.reply(key, reply);
    }

    /// The uid of the connection's user, if it has one.
    pub fn uid_of(&self, key: usize) -> Option<String> {
        let user = self.get(key).and_then(|c| c.user.as_ref());
        user.map(|u| u.uid.clone())
    }

    /// A line for every subscriber of `channel` here.
    pub fn send_to_subscribers(&mut self, subs: &Subscriptions, channel: &str, line: &Bytes) {
        let keys = subs.subscribers(channel);
        if keys.is_empty() {
            return;
        }
        let frame = crate::proto::ws::text_frame(line);
        for &key in keys {
            self.send_live(key, line, &frame);
        }
    }
}

/// Users: binding, presence counts reported to owners, and the backend's
/// broadcast and disconnect. Each needs the connections and the routing.
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
            Err(e) => self.conns.refuse_auth(key, id, &e),
        }
    }

    /// Binds an authenticated user to the connection.
    pub(super) fn bind_user(&mut self, key: usize, user: auth::User) {
        let (slot, uid) = (self.slot, &user.uid);
        log::debug!("worker {slot}: connection key {key} is user {uid}");
        let inbox = channel::inbox(&user.uid);
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

    /// A user's connection joined (`true`) or left a channel: count it here
    /// and tell the channel's owner this worker's new total.
    pub(super) fn track_presence(&mut self, key: usize, channel: &str, joined: bool) {
        if let Some(uid) = self.conns.uid_of(key) {
            self.count_presence(channel, &uid, joined);
        }
    }

    pub(super) fn count_presence(&mut self, channel: &str, uid: &str, joined: bool) {
        if !channel::counts_presence(channel, &self.config.presence) {
            return;
        }
        let count = self.local_presence.count(channel, uid, joined);
        let owner = self.owner_of(channel);
        let (channel, uid) = (channel.to_string(), uid.to_string());
        if owner == self.slot {
            let slot = owner;
            self.tell_owner(Command::Presence {
                slot,
                channel,
                uid,
                count,
            });
        } else {
            let msg = BusMsg::Presence {
                channel,
                uid,
                count,
            };
            let _ = self.links.send(owner, &msg, []);
        }
    }

    /// A (new) process of worker `slot` is linked: it owns channels whose
    /// presence it may have lost, so tell it ours again.
    pub(super) fn resend_presence(&mut self, slot: usize) {
        let ours = self.local_presence.picked(|c| self.owner_of(c) == slot);
        for (channel, uid, count) in ours {
            let msg = BusMsg::Presence {
                channel,
                uid,
                count,
            };
            let _ = self.links.send(slot, &msg, []);
        }
    }

    pub(super) fn presence_query(&mut self, key: usize, channel: &str, reply: HistoryFor) {
        if let Err(e) = channel::presence_listed(channel, &self.config.presence) {
            return match reply {
                HistoryFor::Client { id } => {
                    self.conns.reply(key, frames::error(id.as_deref(), &e))
                }
                HistoryFor::Http { .. } => {
                    let conn_id = self.conns.get(key).map_or(0, |c| c.id);
                    self.conns.answer_http(key, conn_id, false, Err(e))
                }
            };
        }
        self.json_query(key, channel, Query::Presence, reply);
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
        self.links.broadcast(&header, &line);
        self.conns.broadcast_local(&line);
    }

    /// `POST /api/disconnect`: close every connection of `uid`, everywhere.
    pub(super) fn disconnect_everywhere(&mut self, uid: &str) {
        let msg = BusMsg::Disconnect {
            uid: uid.to_string(),
        };
        let header = encode_header(&msg, 0);
        let empty = Bytes::new();
        self.links.broadcast(&header, &empty);
        self.conns.disconnect_local(uid);
    }
}
