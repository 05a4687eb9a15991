//! What the connection table's deadlines and cut-offs need besides the
//! rules (`sync::deadlines`): the close codes and the TCP ping they send,
//! a rate-limited log of cut-offs, and returning freed memory to the system
//! after a slow consumer's queue went away.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::logging::LogLimit;

/// WebSocket close code for a peer that missed its pong (RFC 6455 7.4.1:
/// "internal error" is the closest; clients reconnect).
pub const CLOSE_PONG_TIMEOUT: u16 = 1011;
/// WebSocket close code for `idle_timeout` (a normal closure).
pub const CLOSE_IDLE: u16 = 1000;

/// The line a TCP client gets as a heartbeat; it answers `{"op":"pong"}`.
pub const TCP_PING: &[u8] = b"{\"op\":\"ping\"}\n";

thread_local! {
    /// One per worker process (the worker loop is single-threaded).
    static CUT_OFF_LOG: RefCell<LogLimit> = const { RefCell::new(LogLimit::new(10)) };
}

thread_local! {
    /// Until when the allocator is asked, once a second, to give freed
    /// memory back to the system (after a slow consumer's queue went away).
    static TRIM_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
    static LAST_TRIM: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Bytes written to clients since the last trim.
    static WRITTEN: Cell<u64> = const { Cell::new(0) };
    /// The last trim gave memory back: the tail of a burst is still being
    /// freed (readers catching up, the store thread's batch), so trim again
    /// next second, until a trim finds nothing to give back.
    static LAST_RELEASED: Cell<bool> = const { Cell::new(false) };
    /// A large queue was just freed: the next trim does not wait out the
    /// once-a-second pace (one that ran just before would leave the queue's
    /// memory held for up to a second more, per round of freeing).
    static TRIM_NOW: Cell<bool> = const { Cell::new(false) };
}

/// How long after a cut-off the worker keeps returning freed memory: the
/// messages its queue shared are freed as the other readers catch up.
const TRIM_FOR: Duration = Duration::from_secs(5);
/// Writing this much since the last trim (queues that grew and drained)
/// calls for one too.
const TRIM_AFTER_WRITING: u64 = 16 << 20;

/// A large queue was (or is about to be) freed.
pub fn trim_soon(now: Instant) {
    TRIM_UNTIL.with(|t| t.set(Some(now + TRIM_FOR)));
    TRIM_NOW.with(|t| t.set(true));
}

/// Counts bytes written to clients (their queues' memory is freed).
pub fn note_written(bytes: usize) {
    WRITTEN.with(|w| w.set(w.get() + bytes as u64));
}

/// Returns freed heap pages to the system, at most once a second, after a
/// cut-off or a lot of traffic. glibc keeps freed memory otherwise, and RSS
/// stays at the peak of the last burst.
pub fn maybe_trim(now: Instant) {
    let written = WRITTEN.with(|w| w.get());
    // A time window alone misses a burst whose memory is freed after it, on
    // a loaded machine: so go on while trims still give memory back.
    let wanted = TRIM_UNTIL
        .with(|t| t.get())
        .is_some_and(|until| now < until)
        || written >= TRIM_AFTER_WRITING
        || LAST_RELEASED.with(|r| r.get());
    let recent = LAST_TRIM
        .with(|t| t.get())
        .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1));
    let now_wanted = TRIM_NOW.with(|t| t.replace(false));
    if !wanted || (recent && !now_wanted) {
        return;
    }
    LAST_TRIM.with(|t| t.set(Some(now)));
    WRITTEN.with(|w| w.set(0));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let released = false;
    LAST_RELEASED.with(|r| r.set(released));
}

/// Logs a connection closed by a limit, rate limited per worker.
pub fn log_cut_off(slot: usize, id: u64, peer: SocketAddr, why: &str) {
    let allowed = CUT_OFF_LOG.with(|l| l.borrow_mut().allow(Instant::now()));
    if let Some(suppressed) = allowed {
        let more = if suppressed > 0 {
            format!(" ({suppressed} similar lines suppressed)")
        } else {
            String::new()
        };
        log::warn!("worker {slot}: closing client {id} ({peer}): {why}{more}");
    }
}
