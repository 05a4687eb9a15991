//! Backend retries without double publishing: the owner remembers, per
//! channel, which `idempotency_key`s it has published (and their `seq`) for
//! `idempotency_window`; a retry gets the first result. A retry that arrives
//! while the first is still being stored waits for it.

use std::collections::HashMap;
use std::time::Instant;

enum Entry<W> {
    Done { seq: u64, until: Instant },
    InFlight(Vec<W>),
}

pub enum Check<W> {
    /// First time: publish it (the waiter is handed back).
    Publish(W),
    /// Published before: answer with this `seq`.
    Done(u64, W),
    /// The first is still being stored; the waiter will get its `seq`.
    Queued,
}

pub struct Idempotency<W> {
    entries: HashMap<(String, String), Entry<W>>,
}

impl<W> Default for Idempotency<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Idempotency<W> {
    pub fn new() -> Self {
        Idempotency {
            entries: HashMap::new(),
        }
    }

    pub fn check(&mut self, channel: &str, key: &str, waiter: W, now: Instant) -> Check<W> {
        let id = (channel.to_string(), key.to_string());
        match self.entries.get_mut(&id) {
            Some(Entry::Done { seq, until }) if *until > now => Check::Done(*seq, waiter),
            Some(Entry::InFlight(waiters)) => {
                waiters.push(waiter);
                Check::Queued
            }
            _ => {
                self.entries.insert(id, Entry::InFlight(Vec::new()));
                Check::Publish(waiter)
            }
        }
    }

    /// The publish with this key got `seq`, kept until `until` (its
    /// window may differ from the default: a queue ingest's
    /// `dedupe_window`); returns the retries to answer.
    pub fn done(&mut self, channel: &str, key: &str, seq: u64, until: Instant) -> Vec<W> {
        match self.entries.insert(
            (channel.to_string(), key.to_string()),
            Entry::Done { seq, until },
        ) {
            Some(Entry::InFlight(waiters)) => waiters,
            _ => Vec::new(),
        }
    }

    /// Recorded on disk by an earlier run, valid until `until`.
    pub fn load(&mut self, channel: &str, key: &str, seq: u64, until: Instant) {
        self.entries.insert(
            (channel.to_string(), key.to_string()),
            Entry::Done { seq, until },
        );
    }

    pub fn purge(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| !matches!(e, Entry::Done { until, .. } if *until <= now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_retry_gets_the_first_result() {
        let t0 = Instant::now();
        let mut idem = Idempotency::new();
        let window = Duration::from_secs(60);
        assert!(matches!(idem.check("c", "k", 1, t0), Check::Publish(1)));
        assert!(matches!(idem.check("c", "k", 2, t0), Check::Queued));
        assert_eq!(idem.done("c", "k", 7, t0 + window), vec![2]);
        assert!(matches!(idem.check("c", "k", 3, t0), Check::Done(7, 3)));
        assert!(matches!(idem.check("other", "k", 4, t0), Check::Publish(4)));
        idem.purge(t0 + Duration::from_secs(61));
        assert!(matches!(
            idem.check("c", "k", 5, t0 + Duration::from_secs(61)),
            Check::Publish(5)
        ));
    }
}
