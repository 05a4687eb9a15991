//! Plain logic of the edge, with no sockets in it: which worker owns a
//! channel, who is subscribed to what on this worker, what a `sub`
//! waiting for its owner buffers meanwhile, and connections' deadlines.

pub mod deadlines;
pub mod shard;
pub mod sub_buffer;
pub mod subscriptions;
