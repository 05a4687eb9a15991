//! The recent tail of each channel's messages, kept by the owner worker so a
//! resume or history read within it never touches disk. Bounded per channel
//! (`history_size`) and in total (`cache_bytes`): when over, the channels used
//! least recently are dropped whole.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

#[derive(Clone)]
pub struct Cached {
    pub seq: u64,
    pub expires_ms: i64,
    /// The `msg` line, newline included.
    pub line: Bytes,
}

#[derive(Default)]
struct Tail {
    msgs: VecDeque<Cached>,
    bytes: usize,
    last_used: u64,
}

pub struct HistoryCache {
    tails: HashMap<Box<str>, Tail>,
    bytes: usize,
    limit: usize,
    per_channel: usize,
    clock: u64,
}

/// Per-entry bookkeeping counted against the limit, besides the line itself.
const OVERHEAD: usize = 48;

impl HistoryCache {
    pub fn new(limit: usize, per_channel: u64) -> Self {
        HistoryCache {
            tails: HashMap::new(),
            bytes: 0,
            limit,
            per_channel: per_channel.min(usize::MAX as u64) as usize,
            clock: 0,
        }
    }

    /// Adds the next message of `channel`. A message that does not follow the
    /// cached tail (after an eviction) starts the tail afresh.
    pub fn push(&mut self, channel: &str, msg: Cached) {
        self.clock += 1;
        let size = msg.line.len() + OVERHEAD;
        if size > self.limit {
            return;
        }
        let tail = match self.tails.get_mut(channel) {
            Some(tail) => tail,
            None => self.tails.entry(channel.into()).or_default(),
        };
        if tail.msgs.back().is_some_and(|last| last.seq + 1 != msg.seq) {
            self.bytes -= tail.bytes;
            tail.msgs.clear();
            tail.bytes = 0;
        }
        tail.last_used = self.clock;
        tail.msgs.push_back(msg);
        tail.bytes += size;
        self.bytes += size;
        while tail.msgs.len() > self.per_channel {
            if let Some(old) = tail.msgs.pop_front() {
                let size = old.line.len() + OVERHEAD;
                tail.bytes -= size;
                self.bytes -= size;
            }
        }
        if self.bytes > self.limit {
            self.evict(channel);
        }
    }

    /// Drops the coldest channels until under 90% of the limit; if `keep`
    /// (the channel just written) alone is over it, its oldest messages go.
    fn evict(&mut self, keep: &str) {
        let mut by_age: Vec<(u64, Box<str>)> = self
            .tails
            .iter()
            .filter(|(name, _)| &***name != keep)
            .map(|(name, tail)| (tail.last_used, name.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, name) in by_age {
            if self.bytes <= self.limit / 10 * 9 {
                break;
            }
            if let Some(tail) = self.tails.remove(&name) {
                self.bytes -= tail.bytes;
            }
        }
        if let Some(tail) = self.tails.get_mut(keep) {
            while self.bytes > self.limit / 10 * 9 && tail.msgs.len() > 1 {
                if let Some(old) = tail.msgs.pop_front() {
                    let size = old.line.len() + OVERHEAD;
                    tail.bytes -= size;
                    self.bytes -= size;
                }
            }
        }
    }

    /// The messages with `after < seq <= upto`, if the cache holds every one of
    /// them and none has expired; `None` means ask the disk.
    pub fn range(
        &mut self,
        channel: &str,
        after: u64,
        upto: u64,
        now_ms: i64,
    ) -> Option<Vec<Bytes>> {
        if after >= upto {
            return Some(Vec::new());
        }
        self.clock += 1;
        let tail = self.tails.get_mut(channel)?;
        tail.last_used = self.clock;
        let first = tail.msgs.front()?.seq;
        let last = tail.msgs.back()?.seq;
        if first > after + 1 || last < upto {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        let take = (upto - after) as usize;
        let msgs: Vec<&Cached> = tail.msgs.iter().skip(skip).take(take).collect();
        if msgs.iter().any(|m| m.expires_ms <= now_ms) {
            return None;
        }
        Some(msgs.into_iter().map(|m| m.line.clone()).collect())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Cached {
        Cached {
            seq,
            expires_ms: if seq == 99 { 0 } else { i64::MAX },
            line: Bytes::from(vec![b'x'; 52]),
        }
    }

    #[test]
    fn keeps_a_bounded_contiguous_tail() {
        let mut c = HistoryCache::new(100 * 100, 5);
        for seq in 1..=8 {
            c.push("a", msg(seq));
        }
        assert_eq!(c.range("a", 3, 8, 1).map(|v| v.len()), Some(5));
        assert!(c.range("a", 2, 8, 1).is_none(), "seq 3 was dropped");
        assert!(c.range("a", 8, 9, 1).is_none(), "9 not there yet");
        c.push("a", msg(20));
        assert!(c.range("a", 7, 8, 1).is_none(), "a gap restarts the tail");
        assert_eq!(c.range("a", 19, 20, 1).map(|v| v.len()), Some(1));
    }

    #[test]
    fn evicts_the_coldest_channel() {
        let mut c = HistoryCache::new(10 * 100, 100);
        for seq in 1..=5 {
            c.push("cold", msg(seq));
        }
        for seq in 1..=6 {
            c.push("hot", msg(seq));
        }
        assert!(c.bytes() <= 1000);
        assert!(c.range("cold", 0, 5, 1).is_none());
        assert!(c.range("hot", 0, 6, 1).is_some());
        for seq in 7..=40 {
            c.push("hot", msg(seq));
        }
        assert!(
            c.bytes() <= 1000,
            "one channel alone stays under the limit too"
        );
        assert!(c.range("hot", 38, 40, 1).is_some());
    }
}
