//! Who on this worker is subscribed to which channel, both ways round, so a
//! message finds its subscribers and a closing connection leaves every channel;
//! and, for channels owned by another worker, each channel's `Stream` (the
//! last seq handed on, and what is held while a gap is filled).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

pub use super::stream::ConnKey;
use super::stream::{Arrival, Fetched, Out, Stream};

#[derive(Default)]
pub struct Subscriptions {
    by_channel: HashMap<Box<str>, Vec<ConnKey>>,
    by_conn: HashMap<ConnKey, HashSet<Box<str>>>,
    /// Channels whose messages come from another worker, while they have
    /// subscribers here.
    streams: HashMap<Box<str>, Stream>,
    /// Numbers the fetches, so a late answer to an older one is ignored.
    rounds: u64,
    /// Channels whose last subscriber left since `take_emptied`.
    emptied: Vec<Box<str>>,
}

impl Subscriptions {
    /// Returns false if the connection was already subscribed.
    pub fn add(&mut self, conn: ConnKey, channel: &str) -> bool {
        let channels = self.by_conn.entry(conn).or_default();
        if !channels.insert(channel.into()) {
            return false;
        }
        self.by_channel
            .entry(channel.into())
            .or_default()
            .push(conn);
        true
    }

    /// Returns false if the connection was not subscribed.
    pub fn remove(&mut self, conn: ConnKey, channel: &str) -> bool {
        let Some(channels) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        if !channels.remove(channel) {
            return false;
        }
        if channels.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.detach(conn, channel);
        true
    }

    /// Removes a closing connection from every channel; returns them.
    pub fn remove_conn(&mut self, conn: ConnKey) -> Vec<Box<str>> {
        let channels: Vec<Box<str>> = self
            .by_conn
            .remove(&conn)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for channel in &channels {
            self.detach(conn, channel);
        }
        channels
    }

    fn detach(&mut self, conn: ConnKey, channel: &str) {
        if let Some(list) = self.by_channel.get_mut(channel) {
            list.retain(|&c| c != conn);
            if list.is_empty() {
                self.by_channel.remove(channel);
                self.emptied.push(channel.into());
            }
        }
        if !self.by_channel.contains_key(channel) {
            self.streams.remove(channel);
        } else if let Some(stream) = self.streams.get_mut(channel) {
            stream.leave(conn);
        }
    }

    /// After `add`, for a channel another worker owns: the connection has had
    /// every message up to `seq` of `epoch`. The first subscriber starts the
    /// channel's stream there.
    pub fn track(&mut self, conn: ConnKey, channel: &str, seq: u64, epoch: &str) {
        if !self.by_channel.contains_key(channel) {
            return;
        }
        match self.streams.get_mut(channel) {
            Some(stream) => stream.join(conn, seq),
            None => {
                self.streams.insert(channel.into(), Stream::new(seq, epoch));
            }
        }
    }

    /// A message of `channel` from its owner (see `Stream::arrive`); a
    /// channel without a stream hands every message on.
    pub fn arrive(&mut self, channel: &str, seq: u64, line: &Bytes, cap: usize) -> Arrival {
        match self.streams.get_mut(channel) {
            Some(stream) => stream.arrive(seq, line, cap),
            None => Arrival::Deliver,
        }
    }

    /// The stream of `channel`, if it has one: `Stream::has` tells which
    /// subscribers already have a message.
    pub fn stream(&self, channel: &str) -> Option<&Stream> {
        self.streams.get(channel)
    }

    /// Starts a fetch of what follows the stream: (round, since, epoch).
    pub fn start_fetch(&mut self, channel: &str) -> Option<(u64, u64, String)> {
        let stream = self.streams.get_mut(channel)?;
        self.rounds += 1;
        let (since, epoch) = stream.start_fetch(self.rounds);
        Some((self.rounds, since, epoch))
    }

    /// The answer to fetch `round` (see `Stream::resolve`).
    pub fn resolve(
        &mut self,
        channel: &str,
        round: u64,
        answer: Option<Fetched>,
        cap: usize,
    ) -> (Vec<Out>, bool) {
        match self.streams.get_mut(channel) {
            Some(stream) => stream.resolve(round, answer, cap),
            None => (Vec::new(), false),
        }
    }

    /// Channels with a stream, for which `of` holds (their owner's link
    /// broke, or reached a new process).
    pub fn streams_where(&self, of: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        self.streams.keys().filter(|c| of(c)).cloned().collect()
    }

    pub fn stall(&mut self, channel: &str) {
        if let Some(stream) = self.streams.get_mut(channel) {
            stream.stall();
        }
    }

    /// Channels whose last subscriber left since the last call.
    pub fn take_emptied(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.emptied)
    }

    pub fn subscribers(&self, channel: &str) -> &[ConnKey] {
        self.by_channel.get(channel).map_or(&[], Vec::as_slice)
    }

    pub fn channels_of(&self, conn: ConnKey) -> Vec<Box<str>> {
        self.by_conn
            .get(&conn)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn count_of(&self, conn: ConnKey) -> usize {
        self.by_conn.get(&conn).map_or(0, HashSet::len)
    }

    pub fn is_subscribed(&self, conn: ConnKey, channel: &str) -> bool {
        self.by_conn.get(&conn).is_some_and(|c| c.contains(channel))
    }

    pub fn total(&self) -> usize {
        self.by_conn.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_close() {
        let mut s = Subscriptions::default();
        assert!(s.add(1, "a") && s.add(2, "a") && s.add(1, "b"));
        assert!(!s.add(1, "a"));
        assert_eq!(s.subscribers("a"), &[1, 2]);
        assert!(s.remove(2, "a") && !s.remove(2, "a"));
        s.remove_conn(1);
        assert!(s.subscribers("a").is_empty() && s.subscribers("b").is_empty());
        assert_eq!(s.total(), 0);
    }

    #[test]
    fn a_stream_lives_while_its_channel_has_subscribers() {
        let mut s = Subscriptions::default();
        let line = Bytes::from_static(b"x\n");
        assert!(s.add(1, "a") && s.add(2, "a"));
        s.track(1, "a", 4, "e");
        s.track(2, "a", 4, "e");
        assert_eq!(s.arrive("a", 6, &line, 10), Arrival::Fetch);
        assert_eq!(s.start_fetch("a"), Some((1, 4, "e".to_string())));
        s.remove(1, "a");
        assert!(s.stream("a").is_some());
        s.remove_conn(2);
        assert!(s.stream("a").is_none() && s.start_fetch("a").is_none());
        assert_eq!(s.arrive("a", 9, &line, 10), Arrival::Deliver);
    }
}
