//! Direct-message delivery rules, kept by the owner of each `#uid` inbox: the
//! user's cumulative ack, and for every message not acked yet, when to send
//! it again (exponential backoff from `ack_timeout`) or give it up as a dead
//! letter (expired, or out of attempts).

use std::collections::{BTreeMap, HashMap};
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

pub struct Inboxes {
    acked: HashMap<String, u64>,
    unacked: HashMap<String, BTreeMap<u64, Unacked>>,
    ack_timeout: Duration,
    max_attempts: u32,
}

impl Inboxes {
    pub fn new(ack_timeout: Duration, max_attempts: u32) -> Self {
        Inboxes {
            acked: HashMap::new(),
            unacked: HashMap::new(),
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
            *pending = pending.split_off(&(seq + 1));
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
        let entry = Unacked {
            attempts: 1,
            due: now + self.ack_timeout,
            expires_ms,
            line,
            data,
        };
        self.unacked
            .entry(channel.to_string())
            .or_default()
            .insert(seq, entry);
    }

    /// The user connected again: everything unacked was just replayed to it.
    pub fn reconnected(&mut self, channel: &str, now: Instant) {
        for entry in self
            .unacked
            .get_mut(channel)
            .into_iter()
            .flat_map(BTreeMap::values_mut)
        {
            entry.due = now + self.ack_timeout;
        }
    }

    /// What to send again now (only to online users), and what to give up.
    pub fn due(
        &mut self,
        now: Instant,
        now_ms: i64,
        online: impl Fn(&str) -> bool,
    ) -> (Vec<(String, u64, Bytes)>, Vec<DeadLetter>) {
        let (mut resend, mut dead) = (Vec::new(), Vec::new());
        for (channel, pending) in self.unacked.iter_mut() {
            let is_online = online(channel);
            pending.retain(|&seq, entry| {
                let reason = if entry.expires_ms <= now_ms {
                    Some("expired")
                } else if is_online && entry.due <= now && entry.attempts >= self.max_attempts {
                    Some("max_attempts")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    dead.push(DeadLetter {
                        channel: channel.clone(),
                        seq,
                        data: std::mem::take(&mut entry.data),
                        reason,
                    });
                    return false;
                }
                if is_online && entry.due <= now {
                    entry.attempts += 1;
                    entry.due = now + self.ack_timeout * 2u32.saturating_pow(entry.attempts - 1);
                    resend.push((channel.clone(), seq, entry.line.clone()));
                }
                true
            });
        }
        self.unacked.retain(|_, pending| !pending.is_empty());
        (resend, dead)
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
        let (_, dead) = inbox.due(t0 + Duration::from_secs(60), 1000, online);
        assert_eq!(dead[0].reason, "max_attempts");
        assert_eq!(inbox.acked("#a"), 1);
    }
}
