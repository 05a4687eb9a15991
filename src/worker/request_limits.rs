//! Per-connection abuse limits on requests: `[users] client_send` and
//! `[limits] publish_rate`. A refused request is answered (`forbidden`,
//! `rate_limited`) and logged within a budget; the connection stays open.

use std::cell::RefCell;
use std::time::Instant;

use super::conn::Conn;
use crate::config::{ClientSend, Config};
use crate::logging::LogLimit;
use crate::proto::frames::{ErrorReply, Op};
use crate::sync::rate::TokenBucket;

thread_local! {
    /// One worker loop per process, so one budget per worker.
    static RATE_LOG: RefCell<LogLimit> = const { RefCell::new(LogLimit::new(5)) };
}

/// Whether `conn` may make the request `op` now.
pub fn check(config: &Config, conn: &mut Conn, op: &Op, now: Instant) -> Result<(), ErrorReply> {
    if matches!(op, Op::Send { .. }) && config.users.client_send == ClientSend::None {
        return Err(ErrorReply::new(
            "forbidden",
            "direct messages come from the backend only here (users.client_send = \"none\")",
        ));
    }
    let (rate, burst) = (
        config.limits.publish_rate,
        config.limits.publish_burst.max(1),
    );
    if rate == 0 || !matches!(op, Op::Pub { .. } | Op::Send { .. } | Op::Set { .. }) {
        return Ok(());
    }
    let bucket = conn
        .publishes
        .get_or_insert_with(|| TokenBucket::new(burst, now));
    if bucket.take(rate, burst, now) {
        return Ok(());
    }
    if let Some(left_out) = RATE_LOG.with(|l| l.borrow_mut().allow(now)) {
        log::warn!(
            "{} is over publish_rate ({rate}/s); {left_out} more refusals not logged",
            conn.peer
        );
    }
    Err(ErrorReply::new(
        "rate_limited",
        format!("more than {rate} publishes a second (limits.publish_rate); slow down"),
    ))
}
