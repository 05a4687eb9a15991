//! Who on this worker is subscribed to which channel, both ways round, so a
//! message finds its subscribers and a closing connection leaves every channel;
//! and, for channels owned by another worker, each channel's `Stream` (the
//! last seq handed on, and what is held while a gap is filled).

use std::collections::HashMap;

use bytes::Bytes;

pub use super::stream::ConnKey;
use super::stream::{Arrival, Fetched, Out, Stream};

#[derive(Default)]
pub struct Subscriptions {
    /// Each channel's subscribers, in no particular order: fan-out walks a
    /// plain slice.
    by_channel: HashMap<Box<str>, Vec<ConnKey>>,
    /// Each connection's channels, with its index in that channel's list,
    /// so leaving a channel is a `swap_remove` (O(1)), not a scan.
    by_conn: HashMap<ConnKey, HashMap<Box<str>, usize>>,
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
        if channels.contains_key(channel) {
            return false;
        }
        let list = match self.by_channel.get_mut(channel) {
            Some(list) => list,
            None => self.by_channel.entry(channel.into()).or_default(),
        };
        channels.insert(channel.into(), list.len());
        list.push(conn);
        true
    }

    /// Returns false if the connection was not subscribed.
    pub fn remove(&mut self, conn: ConnKey, channel: &str) -> bool {
        let Some(channels) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        let Some(index) = channels.remove(channel) else {
            return false;
        };
        if channels.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.detach(conn, channel, index);
        true
    }

    /// Removes a closing connection from every channel; returns them.
    pub fn remove_conn(&mut self, conn: ConnKey) -> Vec<Box<str>> {
        let channels = self.by_conn.remove(&conn).unwrap_or_default();
        let mut left = Vec::with_capacity(channels.len());
        for (channel, index) in channels {
            self.detach(conn, &channel, index);
            left.push(channel);
        }
        left
    }

    /// Takes `conn` out of `channel`'s list, where it is at `index`: the last
    /// one takes its place, and its own index is updated.
    fn detach(&mut self, conn: ConnKey, channel: &str, index: usize) {
        if let Some(list) = self.by_channel.get_mut(channel) {
            debug_assert_eq!(list.get(index), Some(&conn));
            if list.get(index) == Some(&conn) {
                list.swap_remove(index);
                if let Some(&moved) = list.get(index) {
                    let at = self.by_conn.get_mut(&moved);
                    if let Some(i) = at.and_then(|m| m.get_mut(channel)) {
                        *i = index;
                    }
                }
            }
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
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn count_of(&self, conn: ConnKey) -> usize {
        self.by_conn.get(&conn).map_or(0, HashMap::len)
    }

    pub fn is_subscribed(&self, conn: ConnKey, channel: &str) -> bool {
        self.by_conn
            .get(&conn)
            .is_some_and(|c| c.contains_key(channel))
    }

    pub fn total(&self) -> usize {
        self.by_conn.values().map(HashMap::len).sum()
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

    /// Every index kept in `by_conn` points at its connection.
    fn consistent(s: &Subscriptions) -> bool {
        s.by_conn.iter().all(|(conn, channels)| {
            channels
                .iter()
                .all(|(c, &i)| s.by_channel.get(c).and_then(|l| l.get(i)) == Some(conn))
        }) && s.by_channel.values().map(Vec::len).sum::<usize>() == s.total()
    }

    #[test]
    fn leaving_swaps_the_last_subscriber_in_and_keeps_every_index() {
        let mut s = Subscriptions::default();
        for conn in 0..1000 {
            assert!(s.add(conn, "big"));
            if conn % 3 == 0 {
                assert!(s.add(conn, "small"));
            }
        }
        assert!(consistent(&s));
        // From the middle, the front and the back, in a scattered order.
        for conn in (0..1000).filter(|c| c % 7 == 2 || *c < 5 || *c > 990) {
            assert!(s.remove(conn, "big"));
            assert!(!s.is_subscribed(conn, "big"));
        }
        assert!(consistent(&s));
        for conn in (0..1000).step_by(3) {
            s.remove_conn(conn);
        }
        assert!(consistent(&s));
        assert!(s.subscribers("small").is_empty());
        let mut left: Vec<ConnKey> = s.subscribers("big").to_vec();
        left.sort_unstable();
        let want: Vec<ConnKey> = (0..1000)
            .filter(|c| !(c % 7 == 2 || *c < 5 || *c > 990 || c % 3 == 0))
            .collect();
        assert_eq!(left, want);
        assert_eq!(s.take_emptied(), vec![Box::from("small")]);
        for conn in want {
            s.remove_conn(conn);
        }
        assert_eq!((s.total(), s.take_emptied()), (0, vec![Box::from("big")]));
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
