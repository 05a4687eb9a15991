//! Durable storage: one SQLite file per shard, written only by the shard's owner
//! worker through its store thread (an `Engine`), and an in-memory cache of
//! recent messages.

pub mod backup;
pub mod cache;
pub mod checkpointer;
pub mod engine;
pub mod message;
pub mod meta;
pub mod open;
pub mod segments;
pub mod shard_db;
pub mod thread;
pub mod trimming;

pub use engine::{Completion, Engine, Gone, Looked, Numbered, Outcome, Range, Redelivery, Request};
