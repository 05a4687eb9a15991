//! Plain logic of the edge, with no sockets in it: which worker owns a
//! channel, who is subscribed to what on this worker, what a `sub`
//! waiting for its owner buffers meanwhile, a resume's
//! replay in pages, connections' deadlines, and the
//! rate limits.

pub mod deadlines;
pub mod rate;
pub mod replay;
pub mod shard;
pub mod stream;
pub mod sub_buffer;
pub mod subscriptions;
