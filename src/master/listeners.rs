//! The listening sockets: one SO_REUSEPORT socket per worker slot and port,
//! created by the master and inherited by the slot's worker, so the kernel's
//! accept queue (and connections waiting in it) outlives any one worker.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

use crate::config::Config;

pub struct SlotSockets {
    pub ws: TcpListener,
    pub tcp: TcpListener,
}

pub fn bind_all(config: &Config) -> io::Result<Vec<SlotSockets>> {
    for addr in [config.listen.ws, config.listen.tcp] {
        ensure_free(addr)?;
    }
    (0..config.workers)
        .map(|_| {
            Ok(SlotSockets {
                ws: bind(config.listen.ws, config.listen.backlog)?,
                tcp: bind(config.listen.tcp, config.listen.backlog)?,
            })
        })
        .collect()
}

/// SO_REUSEPORT would let us silently share a port with another server, so
/// first check that nobody holds it.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}
