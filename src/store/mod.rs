//! Durable storage: one SQLite file per shard, written only by the shard's owner
//! worker through its store thread, and an in-memory cache of recent messages.

pub mod backup;
pub mod cache;
pub mod meta;
pub mod shard_db;
pub mod thread;
