//! What a worker keeps of the cluster: the pub/sub topics its clients
//! want (a channel is wanted from the `sub` that asks for it until no
//! subscriber, waiting `sub` or replay of it is left, as `sync::interest`
//! decides between workers), and which are confirmed subscribed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mio::Waker;

use super::keys::Keys;
use super::subscriber::{Heard, Subscriber};
use crate::config::Cluster;
use crate::owner::Query;
use crate::sync::interest::Watching;

pub struct ClusterEdge {
    subscriber: Subscriber,
    wanted: Watching,
    confirmed: HashSet<String>,
    /// Questions (by pending tag) held until their channel is confirmed.
    deferred: HashMap<String, Vec<(u64, Query)>>,
}

impl ClusterEdge {
    pub fn start(cluster: &Cluster, waker: Arc<Waker>) -> std::io::Result<ClusterEdge> {
        let keys = Keys::new(&cluster.prefix);
        Ok(ClusterEdge {
            subscriber: Subscriber::spawn(&cluster.redis_url, keys, waker)?,
            wanted: Watching::default(),
            confirmed: HashSet::new(),
            deferred: HashMap::new(),
        })
    }

    /// A `sub` of `channel` is asked: hear its topic from now on.
    pub fn want(&mut self, channel: &str) {
        if !self.wanted.is_watching(channel) {
            self.wanted.note(channel);
            self.subscriber.subscribe(channel);
        }
    }

    /// Channels whose local interest may have ended: the ones no longer
    /// `wanted` are unsubscribed.
    pub fn settle(&mut self, maybe: Vec<Box<str>>, wanted: impl Fn(&str) -> bool) {
        self.wanted.maybe_unwanted(maybe);
        if !self.wanted.has_candidates() {
            return;
        }
        for channel in self.wanted.settle(wanted) {
            self.confirmed.remove(&*channel);
            self.deferred.remove(&*channel);
            self.subscriber.unsubscribe(&channel);
        }
    }

    /// Holds the question with pending `tag` until `channel` is confirmed.
    pub fn defer(&mut self, channel: &str, tag: u64, query: Query) {
        let held = self.deferred.entry(channel.to_string()).or_default();
        held.push((tag, query));
    }

    pub fn take_deferred(&mut self, channel: &str) -> Vec<(u64, Query)> {
        self.deferred.remove(channel).unwrap_or_default()
    }

    /// Whether nothing published on `channel` from now on can be missed.
    pub fn is_confirmed(&self, channel: &str) -> bool {
        self.confirmed.contains(channel)
    }

    /// What the subscriber thread heard since last asked.
    pub fn heard(&mut self) -> Vec<Heard> {
        let heard: Vec<Heard> = self.subscriber.heard().collect();
        for h in &heard {
            match h {
                Heard::Subscribed(channels) => {
                    for c in channels.iter().filter(|c| self.wanted.is_watching(c)) {
                        self.confirmed.insert(c.clone());
                    }
                }
                Heard::Down => self.confirmed.clear(),
                Heard::Msg { .. } | Heard::Event { .. } => {}
            }
        }
        heard
    }
}
