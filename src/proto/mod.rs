//! Wire formats: the JSON frames, WebSocket framing helpers, HTTP and TCP lines.
//! Nothing here knows about sockets, workers or channels' state.

pub mod api;
pub mod compact;
pub mod frames;
pub mod http;
pub mod replies;
pub mod tcp;
pub mod ws;
pub mod ws_codec;
