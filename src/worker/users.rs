//! Users at the edge: a refused token, and this worker's count of its own
//! connections per user and channel (reported to the channel's owner, which
//! sums them). Binding a user, reporting counts and the broadcast /
//! disconnect calls need several parts: they are `Worker` methods in mod.rs.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::connections::Connections;
use super::{CLOSE_GRACE, CLOSE_UNAUTHORIZED};
use crate::auth;
use crate::config::Auth;
use crate::proto::frames::{self, ErrorReply};
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
