//! Counting for the caps of `[limits]`: open connections per client
//! address (`max_conns_per_ip`), and per connection the requests waiting
//! for an owner's answer (`max_inflight_per_conn`) and the `sub`s among
//! them (they count towards `max_subs_per_conn` before they subscribe).

use std::collections::HashMap;
use std::hash::Hash;

/// Open connections per key (a client IP), refused past `max`.
pub struct OpenPerKey<K> {
    /// 0: off (nothing is counted).
    max: usize,
    open: HashMap<K, usize>,
}

impl<K: Hash + Eq + Copy> OpenPerKey<K> {
    pub fn new(max: usize) -> OpenPerKey<K> {
        OpenPerKey {
            max,
            open: HashMap::new(),
        }
    }

    /// Counts one more connection from `key`, or refuses it (false).
    pub fn open(&mut self, key: K) -> bool {
        if self.max == 0 {
            return true;
        }
        let n = self.open.entry(key).or_default();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection `open` admitted is gone. Keys at zero are forgotten,
    /// so the map holds only addresses with open connections.
    pub fn close(&mut self, key: K) {
        if let Some(n) = self.open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }

    pub fn count(&self, key: K) -> usize {
        self.open.get(&key).copied().unwrap_or(0)
    }
}

/// What one connection has waiting for owners.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Requests not answered yet.
    pub requests: usize,
    /// The `sub`s among them.
    pub subs: usize,
}

/// `Waiting` per connection id (ids are never reused within a worker, so
/// a closed connection's late answers never count against a new one).
#[derive(Default)]
pub struct InflightCounts {
    by_conn: HashMap<u64, Waiting>,
}

impl InflightCounts {
    pub fn add(&mut self, conn_id: u64, sub: bool) {
        let w = self.by_conn.entry(conn_id).or_default();
        w.requests += 1;
        w.subs += usize::from(sub);
    }

    pub fn remove(&mut self, conn_id: u64, sub: bool) {
        if let Some(w) = self.by_conn.get_mut(&conn_id) {
            w.requests = w.requests.saturating_sub(1);
            if sub {
                w.subs = w.subs.saturating_sub(1);
            }
            if w.requests == 0 {
                self.by_conn.remove(&conn_id);
            }
        }
    }

    pub fn of(&self, conn_id: u64) -> Waiting {
        self.by_conn.get(&conn_id).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_key_are_capped_and_freed() {
        let mut open = OpenPerKey::new(2);
        assert!(open.open(1));
        assert!(open.open(1));
        assert!(!open.open(1), "a third from the same address is refused");
        assert!(open.open(2), "other addresses are not affected");
        open.close(1);
        assert!(open.open(1), "room again once one closed");
        open.close(1);
        open.close(1);
        open.close(1);
        assert_eq!(open.count(1), 0, "never below zero");
        assert!(!open.open.contains_key(&1), "forgotten at zero");
    }

    #[test]
    fn zero_turns_the_per_key_cap_off() {
        let mut open = OpenPerKey::new(0);
        assert!((0..1000).all(|_| open.open(7)));
        assert_eq!(open.count(7), 0, "nothing is counted when off");
    }

    #[test]
    fn inflight_counts_requests_and_subs_per_connection() {
        let mut c = InflightCounts::default();
        c.add(1, true);
        c.add(1, false);
        c.add(2, false);
        assert_eq!(
            c.of(1),
            Waiting {
                requests: 2,
                subs: 1
            }
        );
        c.remove(1, true);
        assert_eq!(
            c.of(1),
            Waiting {
                requests: 1,
                subs: 0
            }
        );
        c.remove(1, false);
        c.remove(1, false);
        assert_eq!(c.of(1), Waiting::default());
        assert!(!c.by_conn.contains_key(&1), "forgotten at zero");
        assert_eq!(c.of(2).requests, 1);
    }
}
