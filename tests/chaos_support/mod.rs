//! Support for `tests/chaos.rs`: a seedable random source, the state the
//! publishers, subscribers and the chaos share, and the clients themselves
//! (`publisher`: HTTP publishes retried until acknowledged; `subscriber`:
//! WebSocket or TCP subscribers that resume after every lost connection).

pub mod publisher;
pub mod subscriber;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;
use std::time::Instant;

/// xorshift64*: small, seedable, good enough to pick actions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds differ and 0 works.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn seed() -> u64 {
    match std::env::var("SYNCD_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("SYNCD_CHAOS_SEED={s:?}: {e}"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Milliseconds since the test started, for the event log.
pub fn ms(t0: Instant) -> u128 {
    t0.elapsed().as_millis()
}

pub struct Shared {
    pub t0: Instant,
    pub addr: SocketAddr,
    pub tcp_port: u16,
    pub channels: Vec<String>,
    pub stop_publishing: AtomicBool,
    pub stop_subscribers: AtomicBool,
    pub acked: AtomicU64,
    pub attempts: AtomicU64,
    /// Subscribers repair a live gap by resubscribing (and report it)
    /// instead of failing on it.
    pub repair: bool,
    /// Chaos log lines, printed if something fails.
    pub events: Mutex<Vec<String>>,
}

impl Shared {
    pub fn event(&self, text: String) {
        self.events
            .lock()
            .unwrap()
            .push(format!("{:>6} ms {text}", ms(self.t0)));
    }
}
