//! What Redis brought, with `[cluster] engine = "redis"`: messages and
//! presence events heard on pub/sub, topics newly subscribed (the questions
//! held for them go on), and the periodic retry of what failed while Redis
//! was down. The local engine never gets here.

use super::pending::{Awaiting, WaitingSub};
use super::Worker;
use crate::cluster::subscriber::Heard;
use crate::owner::Query;
use std::time::Instant;

impl Worker {
    /// What Redis pub/sub brought (cluster engine): messages pass the
    /// channel's stream like messages from an owner (a message of another
    /// epoch holds it until fetched), and a topic (re)subscribed fetches
    /// what may have been published before.
    pub(super) fn on_cluster_events(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        for heard in cluster.heard() {
            match heard {
                Heard::Msg {
                    channel,
                    epoch,
                    seq,
                    line,
                } => {
                    if self
                        .subs
                        .stream(&channel)
                        .is_some_and(|s| s.epoch() != epoch)
                    {
                        self.subs.stall(&channel);
                    }
                    self.deliver_local(&channel, seq, &line);
                }
                Heard::Subscribed(channels) => {
                    for channel in channels {
                        self.ask_deferred(&channel);
                        self.fetch_missing(&channel);
                    }
                }
                Heard::Event { channel, line } => {
                    self.conns.send_to_subscribers(&self.subs, &channel, &line)
                }
                Heard::Down | Heard::Up => {}
            }
        }
    }

    /// On Redis, a stream whose fetch failed (Redis was down) asks again
    /// every `RETRY_STALLED`: no owner link comes up to say Redis is back,
    /// and a quiet channel brings no next message to trigger it.
    pub(super) fn retry_stalled_streams(&mut self, now: Instant) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if !cluster.retry_due(now) {
            return;
        }
        let stalled = self
            .subs
            .streams_where(|_| true)
            .into_iter()
            .filter(|c| self.subs.stream(c).is_some_and(|s| s.is_stalled()));
        for channel in stalled.collect::<Vec<_>>() {
            self.fetch_missing(&channel);
        }
        let inboxes = self.cluster.as_mut().map(|c| c.take_inbox_retries());
        for (key, conn_id, channel) in inboxes.unwrap_or_default() {
            if self.conns.is_live(key, conn_id) {
                let what = Awaiting::Sub(WaitingSub {
                    key,
                    conn_id,
                    id: None,
                    channel: channel.clone(),
                    buffer: Default::default(),
                    quiet: true,
                    unsub: None,
                });
                self.ask_owner(&channel, Query::Inbox, what);
            }
        }
    }

    /// The topic of `channel` is subscribed: the questions held for it go
    /// to its owner (those not timed out meanwhile).
    fn ask_deferred(&mut self, channel: &str) {
        let deferred = match &mut self.cluster {
            Some(cluster) => cluster.take_deferred(channel),
            None => return,
        };
        let owner = self.owner_of(channel);
        for (tag, query) in deferred {
            if self.pending.retarget(tag, owner) {
                if owner != self.slot {
                    self.interest.watching.note(channel);
                }
                self.route_query(owner, channel, tag, query);
            }
        }
    }
}
