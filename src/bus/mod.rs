//! Worker-to-worker links over Unix-domain sockets: one hop, never through the
//! master. See `docs/architecture.md` ("Worker links") for the handshake.

pub mod frame;
pub mod link;
pub mod peers;
pub mod secret;

pub use frame::BusMsg;
pub use peers::{BusEvent, Peers};
pub use secret::LinkSecret;
