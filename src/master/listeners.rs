//! The listening sockets: one SO_REUSEPORT socket per worker slot and port,
//! created by the master and inherited by the slot's worker, so the kernel's
//! accept queue (and connections waiting in it) outlives any one worker.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

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
    let backlog = config.listen.backlog;
    (0..config.workers)
        .map(|_| {
            let ws = bind(config.listen.ws, backlog)?;
            defer_accept(&ws, config.limits.handshake_timeout)?;
            Ok(SlotSockets {
                ws,
                tcp: bind(config.listen.tcp, backlog)?,
            })
        })
        .collect()
}

/// On the ws port the client always speaks first (an HTTP request), so the
/// kernel hands a connection over only once its request has arrived
/// (TCP_DEFER_ACCEPT, as nginx's `deferred`): the worker wakes once per
/// connection, for the accept and the request together, instead of twice.
/// A client silent for `handshake_timeout` is handed over anyway, and the
/// handshake timeout closes it. The TCP port is left alone: a client there
/// may wait for the server.
fn defer_accept(listener: &TcpListener, silent_for: Duration) -> io::Result<()> {
    let secs = silent_for.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    let fd = listener.as_raw_fd();
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let value = (&secs as *const libc::c_int).cast();
    // SAFETY: a valid socket and a c_int option value of the size given.
    let rc =
        unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, value, size) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
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
    // Accepted sockets inherit these from the listener (Linux), which
    // saves two system calls per connection: replies and messages go out
    // at once, and dead peers the heartbeat does not cover (TCP without
    // tcp_ping) are found by the kernel, eventually.
    socket.set_tcp_nodelay(true)?;
    socket.set_keepalive(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY");
        assert!(
            socket2::SockRef::from(&accepted).keepalive().unwrap(),
            "SO_KEEPALIVE"
        );
    }
}
