//! Each connector's state and counters, shared between its thread (which
//! writes them) and the worker (which reports them in `syncd status`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::logging::LogLimit;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectorStatus {
    /// `ingest` or `egress`.
    pub role: String,
    /// What it reads or writes (`amqp queue orders`, …).
    pub name: String,
    pub worker: usize,
    /// `connecting`, `connected`, `retrying` (the broker is down or
    /// refused us; the last error says why), or `stopped` (the worker is
    /// stopping gracefully).
    pub state: String,
    /// Messages taken from the broker.
    pub received: u64,
    /// Ingest: published (stored) messages. Egress: messages the broker
    /// confirmed.
    pub published: u64,
    /// Ingest: messages whose idempotency key was already stored (a
    /// redelivery); acknowledged, not published again.
    pub duplicates: u64,
    /// Ingest: unparsable or refused messages sent to the dead-letter
    /// target.
    pub dead_lettered: u64,
    /// Egress: messages not sent because they came from an ingest.
    pub skipped: u64,
    /// Times the connection was lost or could not be made.
    pub outages: u64,
    pub last_error: Option<String>,
}

pub struct Inner {
    pub status: ConnectorStatus,
    log: LogLimit,
}

pub type Shared = Arc<Mutex<Inner>>;

pub fn shared(role: &str, name: String, worker: usize) -> Shared {
    Arc::new(Mutex::new(Inner {
        status: ConnectorStatus {
            role: role.into(),
            name,
            worker,
            state: "connecting".into(),
            ..ConnectorStatus::default()
        },
        log: LogLimit::new(5),
    }))
}

pub fn update(shared: &Shared, f: impl FnOnce(&mut ConnectorStatus)) {
    f(&mut super::lock(shared).status);
}

pub fn read(shared: &Shared) -> ConnectorStatus {
    super::lock(shared).status.clone()
}

/// Logs a warning within the connector's budget: a broken broker or a
/// stream of bad messages cannot flood the log.
pub fn log_limited(shared: &Shared, message: &str) {
    let mut inner = super::lock(shared);
    if let Some(left_out) = inner.log.allow(Instant::now()) {
        let (role, name) = (&inner.status.role, &inner.status.name);
        log::warn!("{role} {name}: {message} ({left_out} more lines not logged)");
    }
}

/// The `syncd status` lines of every worker's connectors (none without any),
/// given each worker's list.
pub fn format_status<'a>(workers: impl Iterator<Item = &'a [ConnectorStatus]>) -> String {
    let mut out = String::new();
    for c in workers.flatten() {
        if out.is_empty() {
            out += "\nqueues:\n";
        }
        out += &format!(
            "  {} {} (worker {}): {}  received {}  published {}  duplicates {}  \
             dead_lettered {}  skipped {}  outages {}",
            c.role,
            c.name,
            c.worker,
            c.state,
            c.received,
            c.published,
            c.duplicates,
            c.dead_lettered,
            c.skipped,
            c.outages
        );
        if let Some(e) = &c.last_error {
            out += &format!("  last error: {e}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_each_connector_and_its_last_error() {
        let shared = shared("ingest", "amqp queue q".into(), 1);
        update(&shared, |s| {
            s.state = "retrying".into();
            s.received = 3;
            s.last_error = Some("amqp: refused".into());
        });
        let list = vec![read(&shared)];
        let text = format_status(std::iter::once(list.as_slice()));
        assert!(text.contains("ingest amqp queue q (worker 1): retrying  received 3"));
        assert!(text.ends_with("last error: amqp: refused\n"), "{text}");
        assert_eq!(format_status(std::iter::empty()), "");
    }
}
