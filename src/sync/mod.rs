//! Channel logic with no sockets in it: which worker owns a channel, the owner's
//! sequence numbers, and who is subscribed to what on this worker.

pub mod idempotency;
pub mod inbox;
pub mod owner;
pub mod presence;
pub mod shard;
pub mod state;
pub mod sub_buffer;
pub mod subscriptions;
