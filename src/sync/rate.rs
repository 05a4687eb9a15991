//! Token buckets for abuse limits: publishes per connection, connections
//! per client address. Time is passed in, so the rules are tested without a
//! clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// `rate` tokens a second, at most `burst` saved up; one per action.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full, so a new client may burst at once.
    pub fn new(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Full again by `now`: a bucket that can be forgotten.
    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(burst)
    }
}

/// One bucket per key (a client IP). Buckets that have refilled are dropped
/// now and then, so the map holds only recent keys.
pub struct RatePerKey<K> {
    rate: u32,
    burst: u32,
    buckets: HashMap<K, TokenBucket>,
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq> RatePerKey<K> {
    /// `rate` 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> RatePerKey<K> {
        RatePerKey {
            rate,
            burst: burst.max(1),
            buckets: HashMap::new(),
            next_sweep: None,
        }
    }

    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        if self.next_sweep.is_none_or(|at| now >= at) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| !b.is_full(rate, burst, now));
            self.next_sweep = Some(now + std::time::Duration::from_secs(10));
        }
        let burst = self.burst;
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(burst, now))
            .take(self.rate, burst, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert!((0..3).all(|_| b.take(10, 3, t0)));
        assert!(!b.take(10, 3, t0));
        assert!(!b.take(10, 3, t0 + Duration::from_millis(50)));
        assert!(b.take(10, 3, t0 + Duration::from_millis(150)));
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(10, 3, later)));
        assert!(!b.take(10, 3, later));
    }

    #[test]
    fn keys_are_limited_apart_and_refilled_ones_forgotten() {
        let t0 = Instant::now();
        let mut r = RatePerKey::new(1, 2);
        assert!(r.allow("a", t0) && r.allow("a", t0) && !r.allow("a", t0));
        assert!(r.allow("b", t0), "another key has its own bucket");
        assert_eq!(r.len(), 2);
        assert!(r.allow("c", t0 + Duration::from_secs(11)));
        assert_eq!(r.len(), 1, "a and b refilled and were swept");
        let mut off = RatePerKey::new(0, 0);
        assert!((0..1000).all(|_| off.allow("a", t0)) && off.is_empty());
    }
}
