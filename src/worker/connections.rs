//! The connection table: this worker's client connections, the channels
//! each is subscribed to, which have output to write or input left to read,
//! and their lifecycle: accepting (or refusing over the limit), writing
//! queued output, cutting off slow consumers, the deadline sweep, closing
//! and lingering. It knows nothing of subscriptions, owners or links: the
//! connections it closes are handed back (`take_closed`) for the worker to
//! forget.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::Registry;
use slab::Slab;

use super::conn::{Conn, Session};
use super::dirty;
use super::timers::{self, CLOSE_IDLE, CLOSE_PONG_TIMEOUT, TCP_PING};
use super::{CLOSE_DISCONNECTED, CLOSE_GRACE, CLOSE_UNAUTHORIZED};
use crate::config::Limits;
use crate::control::{Retire, WorkerStats};
use crate::logging::LogLimit;
use crate::proto::{frames, ws_codec};
use crate::sync::caps::OpenPerKey;
use crate::sync::deadlines::{self, Due, Rules, View};
use crate::sync::pressure::Marks;
use crate::sync::rate::RatePerKey;
use crate::sync::write_delay::WriteDelay;

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

/// A connection closed by the table: its key (free for reuse once the
/// worker has forgotten it) and its user, if it had one.
pub struct Closed {
    pub key: usize,
    pub uid: Option<String>,
}

mod accept;

/// The worker's WebSocket read buffer (`Connections::scratch`).
const SCRATCH: usize = 64 * 1024;

pub struct Connections {
    slot: usize,
    limits: Limits,
    registry: Registry,
    pub(super) slab: Slab<Conn>,
    next_id: u64,
    /// Connections with new output to write at the end of this loop turn.
    pub(super) dirty: dirty::Marks,
    /// Connections holding live messages for `write_delay` (`live.rs`).
    pub(super) held: dirty::Marks,
    pub(super) write_delay: WriteDelay,
    /// Connections whose read budget ran out while input was still waiting.
    pending_reads: Vec<usize>,
    /// Connections not read for now (`inputs.rs`: a full store queue, or
    /// `max_inflight_per_conn`).
    paused: Vec<usize>,
    /// Connections closed since the worker last asked.
    closed: Vec<Closed>,
    /// A subscriber's queue's backpressure marks, from `send_buffer_soft`.
    pub(super) marks: Marks,
    /// Connections that started (`true`) or stopped holding back their
    /// channels' publishers since the worker last asked.
    hold_changes: Vec<(usize, bool)>,
    /// This worker's counters; the owner's are added in `Worker::snapshot`.
    pub stats: WorkerStats,
    /// `connect_rate_per_ip`: one bucket per recent client address.
    connect_rates: RatePerKey<IpAddr>,
    /// `max_conns_per_ip`: open connections per client address.
    open_per_ip: OpenPerKey<IpAddr>,
    /// Refusals at accept are logged within this budget.
    refusal_log: LogLimit,
    /// Every WebSocket read lands here first; a connection keeps only the
    /// bytes of a frame that has not fully arrived.
    pub(super) scratch: Box<[u8]>,
    /// `reply_with` writes a reply here before it is queued.
    reply_text: Vec<u8>,
}

impl Connections {
    pub fn new(slot: usize, limits: Limits, delay: Duration, registry: Registry) -> Connections {
        Connections {
            slot,
            registry,
            slab: Slab::new(),
            next_id: 1,
            dirty: dirty::Marks::default(),
            held: dirty::Marks::default(),
            write_delay: WriteDelay::new(delay),
            pending_reads: Vec::new(),
            paused: Vec::new(),
            closed: Vec::new(),
            marks: Marks::from_soft(limits.send_buffer_soft),
            hold_changes: Vec::new(),
            stats: WorkerStats::default(),
            connect_rates: RatePerKey::new(limits.connect_rate_per_ip, limits.connect_rate_per_ip),
            refusal_log: LogLimit::new(5),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            reply_text: Vec::new(),
            open_per_ip: OpenPerKey::new(limits.max_conns_per_ip),
            limits,
        }
    }

    /// This worker's slot, for log lines.
    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn get(&self, key: usize) -> Option<&Conn> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn iter(&self) -> slab::Iter<'_, Conn> {
        self.slab.iter()
    }

    /// The keys of the connections `keep` picks.
    pub fn keys_where(&self, keep: impl Fn(&Conn) -> bool) -> Vec<usize> {
        self.slab
            .iter()
            .filter(|(_, c)| keep(c))
            .map(|(k, _)| k)
            .collect()
    }

    /// The connection that made a request is still the one at `key` (keys are
    /// reused after a close).
    pub fn is_live(&self, key: usize, conn_id: u64) -> bool {
        self.slab.get(key).is_some_and(|c| c.id == conn_id)
    }

    pub fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    /// The poll said the peer is done sending (see `read::read_chunks`).
    pub fn note_read_closed(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.t.read_closed = true;
        }
    }

    /// Output to write or input to read right away: the loop must not wait.
    pub fn has_work(&self) -> bool {
        !self.pending_reads.is_empty() || !self.dirty.is_empty()
    }

    /// Reads (and serves) the connection again on this loop turn's pass over
    /// `pending_reads`, or the next one's.
    pub fn requeue_read(&mut self, key: usize) {
        if let Some(conn) = self.get_mut(key) {
            if !conn.read_pending {
                conn.read_pending = true;
                self.pending_reads.push(key);
            }
        }
    }

    /// The connections to read again this turn (their budget ran out);
    /// `resume_read` each before reading it.
    pub fn take_pending_reads(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.pending_reads)
    }

    /// A connection from `take_pending_reads` is read now: false if it is
    /// gone.
    pub fn resume_read(&mut self, key: usize) -> bool {
        let Some(conn) = self.slab.get_mut(key) else {
            return false;
        };
        conn.read_pending = false;
        true
    }

    pub fn has_paused(&self) -> bool {
        !self.paused.is_empty()
    }

    pub fn take_paused(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.paused)
    }

    pub fn keep_paused(&mut self, key: usize) {
        self.paused.push(key);
    }

    /// The marked connections to write now (see `dirty::Marks::take`).
    pub fn take_dirty(&mut self) -> Option<Vec<usize>> {
        (!self.dirty.is_empty()).then(|| self.dirty.take())
    }

    pub fn recycle_dirty(&mut self, batch: Vec<usize>) {
        self.dirty.recycle(batch);
    }

    /// The connections that started (`true`) or stopped holding back their
    /// channels' publishers since the last call (`Conn::note_queue`,
    /// `Conn::note_progress`).
    pub fn take_hold_changes(&mut self) -> Vec<(usize, bool)> {
        std::mem::take(&mut self.hold_changes)
    }

    /// The connections closed since the last call.
    pub fn take_closed(&mut self) -> Vec<Closed> {
        std::mem::take(&mut self.closed)
    }

    /// Queues one reply frame (a JSON text) to a WebSocket or TCP client.
    pub fn reply(&mut self, key: usize, text: String) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.send_reply(text.as_bytes());
            self.dirty.push(key);
        }
    }

    /// As `reply`, for a reply `put` writes (into a buffer the worker keeps
    /// for it: a publish's ack costs no allocation of its own).
    pub fn reply_with(&mut self, key: usize, put: impl FnOnce(&mut Vec<u8>)) {
        if let Some(conn) = self.slab.get_mut(key) {
            let text = &mut self.reply_text;
            text.clear();
            put(text);
            conn.send_reply(text);
            self.dirty.push(key);
        }
    }

    /// Queues a newline-terminated frame to a WebSocket or TCP client.
    pub fn send_line(&mut self, key: usize, line: &Bytes) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.send_line(line, None);
            self.dirty.push(key);
        }
    }

    /// A line for every WebSocket and TCP connection (`POST /api/broadcast`).
    pub fn broadcast_local(&mut self, line: &Bytes) {
        let keys = self.keys_where(|c| !matches!(c.session, Session::Http { .. }));
        let frame = crate::proto::ws::text_frame(line);
        for key in keys {
            self.send_live(key, line, &frame);
        }
    }

    /// Writes what `key` has queued; what its socket would not take waits
    /// for the poll to say it takes more.
    pub fn flush_conn(&mut self, key: usize) {
        self.write_conn(key);
        self.watch_output(key);
    }

    fn write_conn(&mut self, key: usize) {
        let Some(conn) = self.slab.get_mut(key) else {
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
            let soft_for = self.limits.send_buffer_soft_for;
            if conn.t.overflowed {
                self.cut_off_slow(key, "send_buffer_hard");
            } else if conn
                .timers
                .track_soft(conn.t.out.len(), conn.t.out_limit(), soft_for)
            {
                self.cut_off_slow(key, "send_buffer_soft");
            }
        }
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if let Some(holding) = conn.note_queue(self.marks) {
            self.hold_changes.push((key, holding));
        }
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
    pub fn cut_off_slow(&mut self, key: usize, limit: &str) {
        let Some(conn) = self.slab.get_mut(key) else {
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
        timers::log_cut_off(self.slot, conn.id, conn.peer, &why);
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
        let linger = self.limits.linger_timeout;
        let Some(conn) = self.slab.get_mut(key) else {
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
    pub fn close_with(&mut self, key: usize, code: u16, reason: &str, deadline: Instant) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        conn.closing = Some(deadline);
        match &mut conn.session {
            Session::Ws { .. } => {
                // Room for the close frame even when the queue was full.
                conn.t.overflowed = false;
                conn.t.queue(&[&ws_codec::close(code, reason)]);
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
    pub fn say_goodbye_now(&mut self, why: Retire) {
        let (code, reason) = goodbye(why);
        let now = Instant::now();
        for key in self.keys_where(|_| true) {
            self.close_with(key, code, reason, now);
            if let Some(conn) = self.slab.get_mut(key) {
                let _ = conn.t.flush_out();
            }
        }
    }

    /// Closes the socket at once; the worker forgets it (`take_closed`).
    pub fn drop_conn(&mut self, key: usize) {
        if !self.slab.contains(key) {
            return;
        }
        let conn = self.slab.remove(key);
        self.hold_changes.retain(|&(k, _)| k != key);
        // Closing the socket (dropping `conn`) takes it out of the poll: no
        // other process or descriptor shares it, so no EPOLL_CTL_DEL.
        self.open_per_ip.close(conn.peer.ip());
        let uid = conn.user.map(|user| user.uid);
        self.closed.push(Closed { key, uid });
        log::debug!("worker {}: connection {} closed", self.slot, conn.id);
    }

    /// Closes every connection with a last frame saying `why`, by `deadline`.
    pub fn close_all(&mut self, why: Retire, deadline: Instant) {
        let (code, reason) = goodbye(why);
        for key in self.keys_where(|_| true) {
            self.close_with(key, code, reason, deadline);
        }
    }

    /// Closes every connection of `uid` (`POST /api/disconnect`).
    pub fn disconnect_local(&mut self, uid: &str) {
        let keys = self.keys_where(|c| c.user.as_ref().is_some_and(|u| u.uid == uid));
        let deadline = Instant::now() + CLOSE_GRACE;
        for key in keys {
            let reason = "disconnected by the server";
            self.close_with(key, CLOSE_DISCONNECTED, reason, deadline);
        }
    }

    /// The tick's pass over every connection's deadlines: what is due, to
    /// `carry_out` one by one (a dropped one is forgotten in between).
    /// `jwt_leeway` is how long past its `exp` a token still holds.
    pub fn sweep(&mut self, now: Instant, jwt_leeway: Duration) -> Vec<(usize, Due)> {
        timers::maybe_trim(now);
        let rules = Rules::from_limits(&self.limits);
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut todo = Vec::new();
        let grace = rules.soft_for / 10;
        for (key, c) in &mut self.slab {
            if let Some(holding) = c.note_progress(now, grace) {
                self.hold_changes.push((key, holding));
            }
            let view = View {
                protocol: c.session.protocol(),
                closing: c.closing,
                http_busy: c.http_busy,
                active: c.active,
                paused: c.read_paused,
            };
            let mut what = deadlines::due(&rules, &c.timers, view, now);
            if let (Due::Nothing, Some(user), None) = (what, &c.user, c.closing) {
                let asked = c.timers.refresh_asked;
                what = deadlines::token_due(user.exp, jwt_leeway, asked, unix_now);
            }
            if what != Due::Nothing {
                todo.push((key, what));
            }
        }
        todo
    }

    /// Does what a connection's deadlines call for (see `sweep`).
    pub fn carry_out(&mut self, key: usize, what: Due, now: Instant) {
        let rules = Rules::from_limits(&self.limits);
        match what {
            Due::Nothing => {}
            Due::Drop => self.drop_conn(key),
            Due::SendPing => self.send_ping(key, now, &rules),
            Due::SlowConsumer => self.cut_off_slow(key, "send_buffer_soft"),
            Due::PongMissed => {
                self.stats.pong_timeouts += 1;
                let why = "no pong within pong_timeout";
                if let Some(c) = self.slab.get(key) {
                    timers::log_cut_off(self.slot, c.id, c.peer, why);
                }
                self.close_with(key, CLOSE_PONG_TIMEOUT, why, now + CLOSE_GRACE);
            }
            Due::RefreshNeeded => self.ask_refresh(key),
            Due::TokenExpired => {
                let e = frames::ErrorReply::new(
                    "token_expired",
                    "the token expired without a refresh; reconnect with a fresh one",
                );
                self.refuse_auth(key, None, &e);
            }
            Due::Idle => {
                self.stats.idle_timeouts += 1;
                if let Some(c) = self.slab.get(key) {
                    let (slot, id, peer) = (self.slot, c.id, c.peer);
                    log::debug!("worker {slot}: closing idle client {id} ({peer})");
                }
                self.close_with(key, CLOSE_IDLE, "idle_timeout", now + CLOSE_GRACE);
            }
        }
    }

    fn send_ping(&mut self, key: usize, now: Instant, rules: &Rules) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        conn.timers.next_ping = now + rules.ping_interval.unwrap_or(Duration::ZERO);
        conn.timers.pong_due = Some(now + rules.pong_timeout);
        match &mut conn.session {
            Session::Ws { .. } => conn.t.queue(&[&ws_codec::ping()]),
            Session::Tcp { .. } => conn.t.queue(&[&Bytes::from_static(TCP_PING)]),
            Session::Http { .. } => return,
        }
        self.dirty.push(key);
    }
}
