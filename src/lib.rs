//! syncd: a real-time data-sync server. See `docs/architecture.md` for the map.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod exposure;
pub mod logging;
pub mod master;
pub mod outbound;
pub mod private_socket;
pub mod proto;
pub mod signals;
pub mod store;
pub mod sync;
pub mod webhook;
pub mod worker;
