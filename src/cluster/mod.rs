//! The Redis engine: several syncd servers share channels through one
//! Redis (docs/cluster.md). `engine.rs` is the storage `Engine` the owner
//! core writes and reads through (a thread per worker, one pipeline per
//! loop turn); `subscriber.rs` is the thread that hears the pub/sub topics
//! of the channels this worker's clients watch; `edge.rs` is what the
//! worker keeps of them. Keys and Lua scripts are in `keys.rs` and
//! `scripts.rs`.

pub mod edge;
pub mod engine;
pub mod keys;
mod nodes;
mod replies;
pub mod scripts;
pub mod subscriber;

pub use edge::ClusterEdge;
pub use engine::RedisEngine;

use std::time::Duration;

/// First wait before reconnecting to Redis, doubled up to `MAX_BACKOFF`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A Redis that does not answer within this is treated as down.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects with timeouts, so a dead Redis costs a request at most
/// `IO_TIMEOUT`, never a hung thread.
pub fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}
