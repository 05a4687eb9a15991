//! syncd: a real-time data-sync server. See `docs/architecture.md` for the map.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod control;
pub mod exposure;
pub mod logging;
pub mod master;
pub mod outbound;
pub mod owner;
pub mod packing;
pub mod private_socket;
pub mod proto;
pub mod signals;
pub mod store;
pub mod sync;
pub mod webhook;
pub mod worker;

/// A random number for names that must differ between processes (epochs,
/// worker instances); not for secrets.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
