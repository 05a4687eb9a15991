//! Who is in a channel, kept by the channel's owner from what each worker
//! reports: for every (channel, uid), how many connections each worker has.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, PartialEq)]
pub enum Change {
    Joined,
    Left,
    Same,
}

#[derive(Default)]
pub struct Presence {
    /// channel → uid → worker slot → connections.
    channels: HashMap<String, BTreeMap<String, HashMap<usize, usize>>>,
}

impl Presence {
    /// Worker `slot` now has `count` connections of `uid` in `channel`.
    pub fn report(&mut self, channel: &str, uid: &str, slot: usize, count: usize) -> Change {
        let users = self.channels.entry(channel.to_string()).or_default();
        let before = users.get(uid).map_or(0, |w| w.values().sum::<usize>());
        let workers = users.entry(uid.to_string()).or_default();
        if count == 0 {
            workers.remove(&slot);
        } else {
            workers.insert(slot, count);
        }
        let after: usize = workers.values().sum();
        if after == 0 {
            users.remove(uid);
            if users.is_empty() {
                self.channels.remove(channel);
            }
        }
        match (before, after) {
            (0, n) if n > 0 => Change::Joined,
            (n, 0) if n > 0 => Change::Left,
            _ => Change::Same,
        }
    }

    /// Worker `slot` is gone: every user it alone held leaves.
    pub fn drop_slot(&mut self, slot: usize) -> Vec<(String, String)> {
        let mut left = Vec::new();
        let reports: Vec<(String, String)> = self
            .channels
            .iter()
            .flat_map(|(c, users)| {
                users
                    .iter()
                    .filter(|(_, w)| w.contains_key(&slot))
                    .map(move |(u, _)| (c.clone(), u.clone()))
            })
            .collect();
        for (channel, uid) in reports {
            if self.report(&channel, &uid, slot, 0) == Change::Left {
                left.push((channel, uid));
            }
        }
        left
    }

    pub fn uids(&self, channel: &str) -> Vec<String> {
        self.channels
            .get(channel)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn connections(&self, channel: &str, uid: &str) -> usize {
        self.channels
            .get(channel)
            .and_then(|u| u.get(uid))
            .map_or(0, |w| w.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_leaves_across_workers() {
        let mut p = Presence::default();
        assert_eq!(p.report("room", "alice", 0, 1), Change::Joined);
        assert_eq!(p.report("room", "alice", 1, 2), Change::Same);
        assert_eq!(p.connections("room", "alice"), 3);
        assert_eq!(p.report("room", "alice", 0, 0), Change::Same);
        assert_eq!(p.report("room", "bob", 1, 1), Change::Joined);
        assert_eq!(p.uids("room"), vec!["alice", "bob"]);
        let mut left = p.drop_slot(1);
        left.sort();
        assert_eq!(
            left,
            vec![
                ("room".into(), "alice".into()),
                ("room".into(), "bob".into())
            ]
        );
        assert!(p.uids("room").is_empty());
    }
}
