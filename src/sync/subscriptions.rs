//! Who on this worker is subscribed to which channel, both ways round, so a
//! message finds its subscribers and a closing connection leaves every channel.

use std::collections::{HashMap, HashSet};

/// A connection's key in the worker's connection table.
pub type ConnKey = usize;

#[derive(Default)]
pub struct Subscriptions {
    by_channel: HashMap<Box<str>, Vec<ConnKey>>,
    by_conn: HashMap<ConnKey, HashSet<Box<str>>>,
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
            }
        }
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
}
