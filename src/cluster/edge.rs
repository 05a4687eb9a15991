//! What a worker keeps of the cluster: the pub/sub topics its clients
//! want (a channel is wanted from the `sub` that asks for it until no
//! subscriber, waiting `sub` or replay of it is left, as `sync::interest`
//! decides between workers), and which are confirmed subscribed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Waker;

use super::keys::Keys;
use super::subscriber::{Heard, Subscriber};
use crate::config::Cluster;
use crate::owner::Query;
use crate::sync::interest::Watching;

/// How often streams whose gap fetch failed ask again.
const RETRY_STALLED: Duration = Duration::from_secs(1);

pub struct ClusterEdge {
    subscriber: Subscriber,
    wanted: Watching,
    confirmed: HashSet<String>,
    /// The subscriber thread is connected (as far as we heard).
    up: bool,
    next_retry: Instant,
    /// Users' inboxes whose joining failed (Redis down): (connection key,
    /// connection id, inbox), asked for again at the next retry.
    inbox_retries: Vec<(usize, u64, String)>,
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
            up: true,
            next_retry: Instant::now(),
            inbox_retries: Vec::new(),
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

    /// Whether stalled streams should ask again now (once a second).
    pub fn retry_due(&mut self, now: Instant) -> bool {
        if now < self.next_retry {
            return false;
        }
        self.next_retry = now + RETRY_STALLED;
        true
    }

    pub fn retry_inbox(&mut self, key: usize, conn_id: u64, channel: &str) {
        self.inbox_retries.push((key, conn_id, channel.to_string()));
    }

    pub fn take_inbox_retries(&mut self) -> Vec<(usize, u64, String)> {
        std::mem::take(&mut self.inbox_retries)
    }

    /// Whether Redis pub/sub is reachable (optimistic until told it is not).
    pub fn is_up(&self) -> bool {
        self.up
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
                Heard::Down => {
                    self.up = false;
                    self.confirmed.clear();
                }
                Heard::Up => self.up = true,
                Heard::Msg { .. } | Heard::Event { .. } => {}
            }
        }
        heard
    }
}
