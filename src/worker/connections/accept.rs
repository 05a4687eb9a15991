//! Accepting connections (or refusing them over a limit), and what the
//! poll watches each one for.
//!
//! A connection is watched for input only, until a write leaves bytes its
//! socket would not take (few ever do): watched for output from the start,
//! the poll would report every new socket writable at once, a loop turn
//! each for nothing. On the ws port a connection arrives with its request
//! (TCP_DEFER_ACCEPT, `master/listeners.rs`), so the worker reads it before
//! the poll watches the socket at all (`Worker::accept`), and the accept,
//! the request and the 101 take one turn.

use std::io::{self, Write};
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Interest, Token};

use super::super::conn::{Conn, Session, Transport};
use super::super::{Port, CONN_BASE};
use super::Connections;
use crate::proto::{frames, http};
use crate::sync::deadlines::{ConnTimers, Rules};

impl Connections {
    /// Takes every connection waiting on `listener`. A TCP port connection
    /// is watched for input at once; a ws port connection is not, and its
    /// key is returned: its request is read first, then `watch` it.
    pub fn accept(&mut self, port: Port, listener: &mut TcpListener) -> Vec<usize> {
        let mut unwatched = Vec::new();
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return unwatched,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the queue for later.
                    log::warn!("worker {}: accept failed: {e}", self.slot);
                    return unwatched;
                }
            };
            let refusal = if self.slab.len() >= self.limits.max_connections {
                self.stats.refused += 1;
                Some((
                    503,
                    "too_many_connections",
                    "server is full (max_connections)",
                ))
            } else if !self.connect_rates.allow(peer.ip(), Instant::now()) {
                self.stats.rate_limited += 1;
                let why = "too many new connections from your address (connect_rate_per_ip)";
                Some((429, "rate_limited", why))
            } else if !self.open_per_ip.open(peer.ip()) {
                // Last, as it counts the connection when it lets it in.
                self.stats.conns_per_ip_refused += 1;
                let why = "too many open connections from your address (limits.max_conns_per_ip)";
                Some((429, "too_many_conns_per_ip", why))
            } else {
                None
            };
            if let Some((status, code, message)) = refusal {
                if let Some(left_out) = self.refusal_log.allow(Instant::now()) {
                    let slot = self.slot;
                    log::warn!(
                        "worker {slot}: refusing {peer}: {message}; {left_out} more not logged"
                    );
                }
                let answer = match port {
                    Port::Ws => http::json_error(status, code, message),
                    Port::Tcp => {
                        let e = frames::ErrorReply::new(code, message);
                        (frames::error(None, &e) + "\n").into_bytes()
                    }
                };
                let _ = stream.write(&answer);
                continue;
            }
            // TCP_NODELAY and SO_KEEPALIVE come from the listener
            // (master/listeners.rs).
            let entry = self.slab.vacant_entry();
            let token = Token(CONN_BASE + entry.key());
            let watched = port == Port::Tcp;
            if watched {
                if let Err(e) = self
                    .registry
                    .register(&mut stream, token, Interest::READABLE)
                {
                    log::error!("worker {}: cannot register connection: {e}", self.slot);
                    self.open_per_ip.close(peer.ip());
                    continue;
                }
            } else {
                unwatched.push(entry.key());
            }
            let session = match port {
                Port::Ws => Session::Http { buf: Vec::new() },
                Port::Tcp => Session::Tcp {
                    buf: Vec::new(),
                    start: 0,
                },
            };
            let limits = &self.limits;
            let mut transport =
                Transport::new(stream, limits.send_buffer_hard, limits.send_buffer_soft);
            transport.watched = watched;
            let timers = ConnTimers::new(Instant::now(), &Rules::from_limits(limits));
            entry.insert(Conn::new(self.next_id, peer, transport, session, timers));
            self.next_id += 1;
        }
    }

    /// The poll watches `key` for input from now on (a ws port connection
    /// after its first read); one it cannot watch is closed.
    pub fn watch(&mut self, key: usize) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.t.watched {
            return;
        }
        let token = Token(CONN_BASE + key);
        match self
            .registry
            .register(&mut conn.t.stream, token, Interest::READABLE)
        {
            Ok(()) => conn.t.watched = true,
            Err(e) => {
                log::error!("worker {}: cannot register connection: {e}", self.slot);
                self.drop_conn(key);
            }
        }
    }

    /// After a write: if bytes are left that the socket would not take, the
    /// poll must say when it takes more. Once watched for output, a
    /// connection stays so (an edge comes only after a full socket drains).
    pub(in crate::worker) fn watch_output(&mut self, key: usize) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.t.writable_watched || !conn.t.watched || conn.t.out.is_empty() {
            return;
        }
        let token = Token(CONN_BASE + key);
        let both = Interest::READABLE | Interest::WRITABLE;
        match self.registry.reregister(&mut conn.t.stream, token, both) {
            Ok(()) => conn.t.writable_watched = true,
            Err(e) => {
                log::error!(
                    "worker {}: cannot watch a connection's output: {e}",
                    self.slot
                );
                self.drop_conn(key);
            }
        }
    }
}
