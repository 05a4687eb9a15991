//! Client connections' lifecycle: accepting (or refusing over the limit),
//! writing queued output, cutting off slow consumers, and closing.

use std::io::{self, Write};
use std::time::Instant;

use bytes::Bytes;
use mio::{Interest, Token};

use super::conn::{Conn, Session, Transport};
use super::timers::{self, ConnTimers, Rules, CLOSE_IDLE, CLOSE_PONG_TIMEOUT};
use super::{Port, Worker, CLOSE_DISCONNECTED, CLOSE_GRACE, CLOSE_UNAUTHORIZED, CONN_BASE};
use crate::control::Retire;
use crate::proto::{frames, http};

/// WebSocket close codes (RFC 6455 7.4.1, IANA registry) for a retiring
/// worker: "going away" for a stop, "service restart" for a reload.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_SERVICE_RESTART: u16 = 1012;

/// The close code and reason clients get when their worker retires.
pub(super) fn goodbye(why: Retire) -> (u16, &'static str) {
    match why {
        Retire::Shutdown => (CLOSE_GOING_AWAY, "server shutting down"),
        Retire::Reload => (
            CLOSE_SERVICE_RESTART,
            "server reloading: reconnect now and resume (sub with since and epoch)",
        ),
    }
}

impl Worker {
    pub(super) fn accept(&mut self, port: Port) {
        if !self.serving || self.stopping.is_some() {
            return;
        }
        let Some(index) = self.listeners.iter().position(|(p, _)| *p == port) else {
            return;
        };
        loop {
            let (mut stream, peer) = match self.listeners[index].1.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the queue for later.
                    log::warn!("worker {}: accept failed: {e}", self.slot);
                    return;
                }
            };
            if self.conns.len() >= self.config.limits.max_connections {
                self.stats.refused += 1;
                log::warn!(
                    "worker {}: refusing {peer}: max_connections reached",
                    self.slot
                );
                let refusal = match port {
                    Port::Ws => http::json_error(503, "too_many_connections", "server is full"),
                    Port::Tcp => {
                        let e = frames::ErrorReply::new("too_many_connections", "server is full");
                        (frames::error(None, &e) + "\n").into_bytes()
                    }
                };
                let _ = stream.write(&refusal);
                continue;
            }
            let _ = stream.set_nodelay(true);
            // Dead peers the heartbeat does not cover (TCP without tcp_ping)
            // are found by the kernel, eventually.
            let _ = socket2::SockRef::from(&stream).set_keepalive(true);
            let entry = self.conns.vacant_entry();
            let token = Token(CONN_BASE + entry.key());
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::error!("worker {}: cannot register connection: {e}", self.slot);
                continue;
            }
            let session = match port {
                Port::Ws => Session::Http { buf: Vec::new() },
                Port::Tcp => Session::Tcp {
                    buf: Vec::new(),
                    start: 0,
                },
            };
            let limits = &self.config.limits;
            let transport =
                Transport::new(stream, limits.send_buffer_hard, limits.send_buffer_soft);
            let timers = ConnTimers::new(Instant::now(), &Rules::from_limits(limits));
            entry.insert(Conn::new(
                self.next_conn_id,
                peer,
                transport,
                session,
                timers,
            ));
            self.next_conn_id += 1;
        }
    }

    pub(super) fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.timers.linger_until.is_some() {
            // The write side is shut; only reading remains.
            return;
        }
        let mut result = conn.t.flush_out();
        // Room freed: let a waiting replay move on, as long as the socket takes it.
        while result.is_ok() && !conn.backlog.is_empty() && conn.t.out.is_empty() {
            conn.refill();
            result = conn.t.flush_out();
        }
        if !conn.backlog.is_empty() {
            conn.refill();
        }
        if result.is_err() {
            self.drop_conn(key);
            return;
        }
        // The limits are checked only now, after the socket took what it could.
        if conn.closing.is_none() {
            let soft_for = self.config.limits.send_buffer_soft_for;
            if conn.t.overflowed {
                self.cut_off_slow(key, "send_buffer_hard");
            } else if conn
                .timers
                .track_soft(conn.t.out.len(), conn.t.out_limit(), soft_for)
            {
                self.cut_off_slow(key, "send_buffer_soft");
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing.is_some() {
            if !conn.t.out.is_empty() && conn.t.flush_out().is_err() {
                self.drop_conn(key);
            } else if conn.t.out.is_empty() {
                self.linger(key);
            }
            return;
        }
        // The client read enough of its pipelined answers: serve the rest.
        if conn.http_stalled && conn.t.out.len() <= conn.t.out_limit() / 4 {
            conn.http_stalled = false;
            self.requeue_read(key);
        }
    }

    /// Cuts off a client whose queue passed `send_buffer_hard`, or stayed
    /// over `send_buffer_soft` too long (`limit` names which): what it has not
    /// started receiving is dropped, then it gets 1008 / `slow_consumer`.
    pub(super) fn cut_off_slow(&mut self, key: usize, limit: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        self.stats.send_failures += 1;
        let why = format!(
            "slow consumer: {} bytes queued, over {limit}",
            conn.t.out.len()
        );
        timers::log_cut_off(self.slot, conn, &why);
        conn.t.out.discard_unsent();
        timers::trim_soon(Instant::now());
        let reason = format!("slow_consumer: send buffer over {limit}");
        self.close_with(key, 1008, &reason, Instant::now() + CLOSE_GRACE);
    }

    /// Our last frame is out: shut the write side (the peer sees it, then
    /// EOF) and read and discard what still comes, until the peer closes or
    /// `linger_timeout` passes. Closing with unread input would send a reset,
    /// which can destroy the last frame before the peer reads it.
    fn linger(&mut self, key: usize) {
        let linger = self.config.limits.linger_timeout;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.input_done || linger.is_zero() {
            self.drop_conn(key);
            return;
        }
        conn.timers.linger_until = Some(Instant::now() + linger);
        let _ = conn.t.stream.shutdown(std::net::Shutdown::Write);
        // Input that is already waiting raises no new event.
        self.requeue_read(key);
    }

    /// Sends a last frame (WebSocket close `code`, or an error/bye line on TCP)
    /// and drops the connection once it is written or at `deadline`.
    pub(super) fn close_with(&mut self, key: usize, code: u16, reason: &str, deadline: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        conn.closing = Some(deadline);
        match &mut conn.session {
            Session::Ws { ctx, .. } => {
                use tungstenite::protocol::frame::CloseFrame;
                let frame = CloseFrame {
                    code: code.into(),
                    reason: close_reason(reason).into(),
                };
                // Room for the close frame even when the queue was full.
                conn.t.overflowed = false;
                let _ = ctx.close(&mut conn.t, Some(frame));
                let _ = ctx.flush(&mut conn.t);
            }
            // A refused token already got its error frame, with the request's
            // id: a second one would only confuse.
            Session::Tcp { .. } if code == CLOSE_UNAUTHORIZED => {}
            Session::Tcp { .. } => {
                let (op, code) = match code {
                    CLOSE_GOING_AWAY => ("bye", "shutdown"),
                    CLOSE_SERVICE_RESTART => ("bye", "reload"),
                    1008 => ("error", "slow_consumer"),
                    1009 => ("error", "too_large"),
                    CLOSE_PONG_TIMEOUT => ("error", "pong_timeout"),
                    CLOSE_IDLE => ("error", "idle_timeout"),
                    CLOSE_DISCONNECTED => ("error", "disconnected"),
                    _ => ("error", "closing"),
                };
                let line = frames::notice(op, code, reason) + "\n";
                conn.t.out.push_unbounded(Bytes::from(line));
            }
            Session::Http { .. } => {}
        }
        self.dirty.push(key);
    }

    /// A fast retirement: every client is told why, as far as its socket
    /// takes the last frame right now; nothing waits.
    pub(super) fn say_goodbye_now(&mut self, why: Retire) {
        let (code, reason) = goodbye(why);
        let now = Instant::now();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_with(key, code, reason, now);
            if let Some(conn) = self.conns.get_mut(key) {
                let _ = conn.t.flush_out();
            }
        }
    }

    pub(super) fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.t.stream);
        let channels = self.subs.remove_conn(key);
        if let Some(user) = &conn.user {
            for channel in channels {
                self.count_presence(&channel, &user.uid, false);
            }
        }
        log::debug!("worker {}: connection {} closed", self.slot, conn.id);
    }
}

/// A close frame's reason may be at most 123 bytes (RFC 6455 5.5.1).
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
