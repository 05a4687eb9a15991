//! Plain logic of the edge, with no sockets in it: what a channel's name
//! allows (`channel`), which worker owns a channel, who is subscribed to
//! what on this worker, which workers want which channel's messages, what a `sub` waiting for its owner buffers
//! meanwhile, a resume's replay in pages, connections' deadlines, backpressure on publishers,
//! the rate limits and the caps.

pub mod caps;
pub mod channel;
pub mod deadlines;
pub mod interest;
pub mod pressure;
pub mod rate;
pub mod replay;
pub mod shard;
pub mod stream;
#[cfg(test)]
mod stream_model_test;
pub mod sub_buffer;
pub mod subscriptions;
pub mod write_delay;
