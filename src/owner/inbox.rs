//! Direct-message delivery rules, kept by the owner of each `#uid` inbox: the
//! user's cumulative ack, and for every message not acked yet, when to send
//! it again (exponential backoff from `ack_timeout`) or give it up as a dead
//! letter (expired, or out of attempts).
//!
//! What comes due is found in two min-heaps (by due instant, and by expiry
//! in wall-clock ms), so a tick touches only the messages due now, not every
//! inbox. Heap items are not removed when their message is acked or
//! rescheduled: an item that no longer matches its message is skipped when
//! it comes up, and the heaps are rebuilt when stale items outnumber live
//! ones. A message that comes due while its user is offline is parked (its
//! item dropped): the user's next connection (`reconnected`, on presence
//! `Joined`) schedules every unacked message of the inbox again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub struct Unacked {
    /// Sends so far while the user was online (the first delivery is 1).
    pub attempts: u32,
    pub due: Instant,
    pub expires_ms: i64,
    pub line: Bytes,
    pub data: String,
}

#[derive(Debug, PartialEq)]
pub struct DeadLetter {
    pub channel: String,
    pub seq: u64,
    pub data: String,
    pub reason: &'static str,
}

/// What `due` hands back: messages to send again, and dead letters.
pub type Due = (Vec<(String, u64, Bytes)>, Vec<DeadLetter>);

pub struct Inboxes {
    acked: HashMap<String, u64>,
    unacked: HashMap<String, BTreeMap<u64, Unacked>>,
    /// (due, inbox, seq) of unacked messages, earliest first.
    by_due: BinaryHeap<Reverse<(Instant, String, u64)>>,
    /// (expires_ms, inbox, seq) of unacked messages with an expiry.
    by_expiry: BinaryHeap<Reverse<(i64, String, u64)>>,
    /// Unacked messages in all inboxes.
    live: usize,
    ack_timeout: Duration,
    max_attempts: u32,
}

/// Heaps are rebuilt once they hold this many items more than twice the
/// live messages.
const STALE_SLACK: usize = 1024;

impl Inboxes {
    pub fn new(ack_timeout: Duration, max_attempts: u32) -> Self {
        Inboxes {
            acked: HashMap::new(),
            unacked: HashMap::new(),
            by_due: BinaryHeap::new(),
            by_expiry: BinaryHeap::new(),
            live: 0,
            ack_timeout,
            max_attempts,
        }
    }

    pub fn acked(&self, channel: &str) -> u64 {
        self.acked.get(channel).copied().unwrap_or(0)
    }

    /// A cumulative ack; returns true if it moved the ack forward.
    pub fn ack(&mut self, channel: &str, seq: u64) -> bool {
        let acked = self.acked.entry(channel.to_string()).or_insert(0);
        if seq <= *acked {
            return false;
        }
        *acked = seq;
        if let Some(pending) = self.unacked.get_mut(channel) {
            let before = pending.len();
            *pending = pending.split_off(&(seq + 1));
            self.live -= before - pending.len();
            if pending.is_empty() {
                self.unacked.remove(channel);
            }
        }
        true
    }

    /// A message was sent to the inbox (or found unacked on disk at start-up).
    pub fn delivered(
        &mut self,
        channel: &str,
        seq: u64,
        expires_ms: i64,
        line: Bytes,
        data: String,
        now: Instant,
    ) {
        if seq <= self.acked(channel) {
            return;
        }
        let due = now + self.ack_timeout;
        let entry = Unacked {
            attempts: 1,
            due,
            expires_ms,
            line,
            data,
        };
        let pending = self.unacked.entry(channel.to_string()).or_default();
        if pending.insert(seq, entry).is_none() {
            self.live += 1;
        }
        self.by_due.push(Reverse((due, channel.to_string(), seq)));
        if expires_ms != i64::MAX {
            let item = (expires_ms, channel.to_string(), seq);
            self.by_expiry.push(Reverse(item));
        }
    }

    /// The user connected again: everything unacked was just replayed to it.
    pub fn reconnected(&mut self, channel: &str, now: Instant) {
        let due = now + self.ack_timeout;
        let Some(pending) = self.unacked.get_mut(channel) else {
            return;
        };
        for (&seq, entry) in pending.iter_mut() {
            entry.due = due;
            self.by_due.push(Reverse((due, channel.to_string(), seq)));
        }
        self.compact();
    }

    /// Message `seq` came due but its user is offline (as someone else
    /// knows: a shared engine): parked until `reconnected`, the attempt
    /// not counted.
    pub fn park(&mut self, channel: &str, seq: u64) {
        let Some(entry) = self.unacked.get_mut(channel).and_then(|p| p.get_mut(&seq)) else {
            return;
        };
        entry.attempts = entry.attempts.saturating_sub(1);
        // Its heap item no longer matches, so it is skipped.
        entry.due += Duration::from_nanos(1);
    }

    /// When `due` next has something to look at: the earliest redelivery
    /// (as an instant) and the earliest expiry (in Unix ms). Either may be
    /// a message acked since; `due` then finds nothing.
    pub fn next_due(&self) -> (Option<Instant>, Option<i64>) {
        let due = self.by_due.peek().map(|i| i.0 .0);
        let expiry = self.by_expiry.peek().map(|i| i.0 .0);
        (due, expiry)
    }

    /// What to send again now (only to online users), and what to give up:
    /// only the messages due by `now` (or expired by `now_ms`) are looked at.
    pub fn due(&mut self, now: Instant, now_ms: i64, online: impl Fn(&str) -> bool) -> Due {
        let (mut resend, mut dead) = (Vec::new(), Vec::new());
        while self.by_expiry.peek().is_some_and(|i| i.0 .0 <= now_ms) {
            let Some(Reverse((at, channel, seq))) = self.by_expiry.pop() else {
                break;
            };
            let expired = self
                .entry(&channel, seq)
                .is_some_and(|e| e.expires_ms == at);
            if let Some(entry) = expired.then(|| self.take(&channel, seq)).flatten() {
                dead.push(DeadLetter {
                    channel,
                    seq,
                    data: entry.data,
                    reason: "expired",
                });
            }
        }
        while self.by_due.peek().is_some_and(|i| i.0 .0 <= now) {
            let Some(Reverse((at, channel, seq))) = self.by_due.pop() else {
                break;
            };
            let attempts = match self.entry(&channel, seq) {
                Some(entry) if entry.due == at => entry.attempts,
                // Acked, given up, or rescheduled since.
                _ => continue,
            };
            if !online(&channel) {
                // Parked until `reconnected`.
                continue;
            }
            if attempts >= self.max_attempts {
                if let Some(entry) = self.take(&channel, seq) {
                    dead.push(DeadLetter {
                        channel,
                        seq,
                        data: entry.data,
                        reason: "max_attempts",
                    });
                }
                continue;
            }
            let due = now + self.ack_timeout * 2u32.saturating_pow(attempts);
            let Some(entry) = self.unacked.get_mut(&channel).and_then(|p| p.get_mut(&seq)) else {
                continue;
            };
            entry.attempts += 1;
            entry.due = due;
            resend.push((channel.clone(), seq, entry.line.clone()));
            self.by_due.push(Reverse((due, channel, seq)));
        }
        resend.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        dead.sort_unstable_by(|a, b| (&a.channel, a.seq).cmp(&(&b.channel, b.seq)));
        self.compact();
        (resend, dead)
    }

    fn entry(&self, channel: &str, seq: u64) -> Option<&Unacked> {
        self.unacked.get(channel)?.get(&seq)
    }

    fn take(&mut self, channel: &str, seq: u64) -> Option<Unacked> {
        let pending = self.unacked.get_mut(channel)?;
        let entry = pending.remove(&seq)?;
        self.live -= 1;
        if pending.is_empty() {
            self.unacked.remove(channel);
        }
        Some(entry)
    }

    /// Rebuilds a heap whose stale items outnumber the live messages.
    fn compact(&mut self) {
        let limit = 2 * self.live + STALE_SLACK;
        if self.by_due.len() > limit {
            let live = self.items(|e| Some(e.due));
            self.by_due = live.into_iter().map(Reverse).collect();
        }
        if self.by_expiry.len() > limit {
            let live = self.items(|e| (e.expires_ms != i64::MAX).then_some(e.expires_ms));
            self.by_expiry = live.into_iter().map(Reverse).collect();
        }
    }

    fn items<K>(&self, key: impl Fn(&Unacked) -> Option<K>) -> Vec<(K, String, u64)> {
        let mut items = Vec::with_capacity(self.live);
        for (channel, pending) in &self.unacked {
            for (&seq, entry) in pending {
                if let Some(k) = key(entry) {
                    items.push((k, channel.clone(), seq));
                }
            }
        }
        items
    }

    /// Heap items held, live and stale (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.by_due.len() + self.by_expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_then_dead_letter_and_acks_clear() {
        let t0 = Instant::now();
        let mut inbox = Inboxes::new(Duration::from_secs(1), 3);
        for seq in 1..=3 {
            inbox.delivered(
                "#a",
                seq,
                if seq == 3 { 500 } else { i64::MAX },
                Bytes::new(),
                format!("{seq}"),
                t0,
            );
        }
        let online = |_: &str| true;
        let (resend, dead) = inbox.due(t0, 0, online);
        assert!(resend.is_empty() && dead.is_empty());
        let (resend, _) = inbox.due(t0 + Duration::from_secs(1), 0, online);
        assert_eq!(resend.len(), 3, "second attempt after ack_timeout");
        assert!(inbox.ack("#a", 1));
        assert!(!inbox.ack("#a", 1));
        let (resend, dead) = inbox.due(t0 + Duration::from_secs(2), 1000, online);
        assert!(resend.is_empty(), "next one waits 2s (backoff)");
        assert_eq!(
            dead,
            vec![DeadLetter {
                channel: "#a".into(),
                seq: 3,
                data: "3".into(),
                reason: "expired"
            }]
        );
        let (resend, _) = inbox.due(t0 + Duration::from_secs(3), 1000, online);
        assert_eq!(
            resend.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![2],
            "third attempt"
        );
        let (_, dead) = inbox.due(t0 + Duration::from_secs(60), 1000, |_| false);
        assert!(dead.is_empty(), "offline users do not use up attempts");
        let (resend, dead) = inbox.due(t0 + Duration::from_secs(60), 1000, online);
        assert!(
            resend.is_empty() && dead.is_empty(),
            "parked until it connects"
        );
        // Presence `Joined`: it connects, gets the replay, and the wait restarts.
        inbox.reconnected("#a", t0 + Duration::from_secs(60));
        let (_, dead) = inbox.due(t0 + Duration::from_secs(60), 1000, online);
        assert!(dead.is_empty());
        let (_, dead) = inbox.due(t0 + Duration::from_secs(61), 1000, online);
        assert_eq!(dead[0].reason, "max_attempts");
        assert_eq!(inbox.acked("#a"), 1);
    }

    #[test]
    fn a_tick_touches_only_what_is_due_and_stale_items_are_dropped() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut inbox = Inboxes::new(secs(1), 10);
        // 10 000 inboxes, each with a message sent a second after the last.
        for i in 0..10_000u64 {
            let channel = format!("#u{i}");
            let at = t0 + secs(i);
            inbox.delivered(&channel, 1, i64::MAX, Bytes::new(), String::new(), at);
        }
        let online = |_: &str| true;
        let (resend, dead) = inbox.due(t0 + secs(3), 0, online);
        let got: Vec<&str> = resend.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(got, vec!["#u0", "#u1", "#u2"]);
        assert!(dead.is_empty());
        // Acked ones leave stale items behind, and the heaps shrink back.
        for i in 0..10_000u64 {
            inbox.ack(&format!("#u{i}"), 1);
        }
        assert_eq!(inbox.live, 0);
        let (resend, _) = inbox.due(t0 + secs(100_000), 0, online);
        assert!(resend.is_empty());
        assert_eq!(inbox.held(), 0);
        // An expiry comes up on its own heap, online or not.
        inbox.delivered("#x", 5, 2_000, Bytes::new(), "d".into(), t0);
        inbox.delivered("#x", 6, i64::MAX, Bytes::new(), "e".into(), t0);
        let (_, dead) = inbox.due(t0, 1_999, |_| false);
        assert!(dead.is_empty());
        let (_, dead) = inbox.due(t0, 2_000, |_| false);
        assert_eq!((dead.len(), dead[0].seq, dead[0].reason), (1, 5, "expired"));
        assert_eq!(inbox.live, 1);
        for _ in 0..3000 {
            inbox.reconnected("#x", t0);
        }
        assert!(inbox.held() <= 2 * inbox.live + STALE_SLACK + 1);
    }
}
