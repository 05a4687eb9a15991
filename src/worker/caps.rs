//! The caps of `[limits]` that need several parts of the worker:
//! `max_subs_per_conn` (subscriptions here plus `sub`s waiting for an
//! owner), and the two reasons to stop reading a connection for a while,
//! backpressure rather than an error: `max_inflight_per_conn` requests of
//! its own unanswered, or this worker's store queue full (`store_queue`).
//! `max_channels` is the owner core's (src/owner/publish.rs) and
//! `max_conns_per_ip` the connection table's (accept).

use std::cell::RefCell;
use std::time::Instant;

use super::conn::Protocol;
use super::connections::Connections;
use super::Worker;
use crate::logging::LogLimit;
use crate::proto::frames::ErrorReply;

thread_local! {
    /// Cap hits are logged within this budget (one worker loop per process).
    static CAP_LOG: RefCell<LogLimit> = const { RefCell::new(LogLimit::new(5)) };
}

fn log_cap(line: impl FnOnce(u64) -> String) {
    if let Some(left_out) = CAP_LOG.with(|l| l.borrow_mut().allow(Instant::now())) {
        log::warn!("{}", line(left_out));
    }
}

impl Worker {
    /// `max_subs_per_conn`: may connection `key` start one more `sub`?
    pub(super) fn sub_cap(&mut self, key: usize, conn_id: u64) -> Result<(), ErrorReply> {
        let max = self.config.limits.max_subs_per_conn;
        let held = self.subs.count_of(key) + self.pending.waiting(conn_id).subs;
        if held < max {
            return Ok(());
        }
        self.conns.stats.subs_refused += 1;
        let slot = self.slot;
        log_cap(|n| {
            format!("worker {slot}: connection {conn_id} is at max_subs_per_conn ({max}); {n} more cap hits not logged")
        });
        Err(ErrorReply::new(
            "too_many_subs",
            format!(
                "this connection has {max} subscriptions (limits.max_subs_per_conn); unsub first"
            ),
        ))
    }

    /// How many more requests connection `key` may have waiting.
    pub(super) fn inflight_room(&self, key: usize) -> usize {
        let max = self.config.limits.max_inflight_per_conn;
        let waiting = self
            .conns
            .get(key)
            .map_or(0, |c| self.pending.waiting(c.id).requests);
        max.saturating_sub(waiting)
    }

    /// Whether reading `key` must wait: the store's queue is full (every
    /// client waits), or the connection has `max_inflight_per_conn` requests
    /// unanswered. Then it is paused, and `resume_paused` reads it again.
    /// A closing connection is always read (its close and linger go on).
    pub(super) fn read_must_wait(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if conn.closing.is_some() {
            return false;
        }
        let store_full = self.owner.is_busy();
        let counted = matches!(conn.session.protocol(), Protocol::Ws | Protocol::Tcp);
        let at_cap = counted && self.inflight_room(key) == 0;
        if !store_full && !at_cap {
            return false;
        }
        if !self.conns.pause_read(key) {
            return true;
        }
        let slot = self.slot;
        if store_full {
            self.conns.stats.store_full_pauses += 1;
            log_cap(|n| {
                format!("worker {slot}: the store queue is full (limits.store_queue); clients wait; {n} more cap hits not logged")
            });
        } else {
            self.conns.stats.inflight_pauses += 1;
            let max = self.config.limits.max_inflight_per_conn;
            log::debug!("worker {slot}: connection key {key} waits: {max} requests unanswered");
        }
        true
    }

    /// Reads again the paused connections whose reason cleared.
    pub(super) fn resume_paused(&mut self) {
        if !self.conns.has_paused() {
            return;
        }
        let store_full = self.owner.is_busy();
        for key in self.conns.take_paused() {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            let go = conn.closing.is_some() || (!store_full && self.inflight_room(key) > 0);
            if go {
                self.conns.unpause(key);
                self.conns.requeue_read(key);
            } else {
                self.conns.keep_paused(key);
            }
        }
    }
}

impl Connections {
    /// Marks `key` as paused; false if it already was.
    pub fn pause_read(&mut self, key: usize) -> bool {
        let Some(conn) = self.get_mut(key) else {
            return false;
        };
        if conn.read_paused {
            return false;
        }
        conn.read_paused = true;
        self.keep_paused(key);
        true
    }

    fn unpause(&mut self, key: usize) {
        if let Some(conn) = self.get_mut(key) {
            conn.read_paused = false;
        }
    }
}
