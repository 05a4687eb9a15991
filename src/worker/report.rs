//! What the master's `status` and `connections` show of the connection
//! table: counters, connections per protocol, and the list.

use super::conn::Protocol;
use super::connections::Connections;
use super::owner_side::OwnerSide;
use crate::control::{ConnInfo, WorkerStats};
use crate::sync::subscriptions::Subscriptions;

impl Connections {
    /// The counters for `status` and `/api/stats`: the edge's, and the
    /// owner's.
    pub fn snapshot(&self, subs: &Subscriptions, owner: &OwnerSide) -> WorkerStats {
        let mut stats = self.stats.clone();
        stats.subscriptions = subs.total();
        stats.channels_owned = owner.channels();
        let owned = owner.stats();
        stats.stored = owned.stored;
        stats.expired = owned.expired;
        stats.trimmed = owned.trimmed;
        stats.disk_reads = owned.disk_reads;
        stats.channels_refused = owned.channels_refused;
        stats.rss_bytes = rss_bytes();
        for (_, conn) in self.iter() {
            match conn.session.protocol() {
                Protocol::Ws => stats.ws += 1,
                Protocol::Tcp => stats.tcp += 1,
                Protocol::Http => stats.http += 1,
            }
        }
        stats
    }

    pub fn connection_list(&self, slot: usize, subs: &Subscriptions) -> Vec<ConnInfo> {
        self.iter()
            .map(|(key, conn)| ConnInfo {
                worker: slot,
                id: conn.id,
                protocol: conn.session.protocol().name().into(),
                peer: conn.peer.to_string(),
                subscriptions: subs.count_of(key),
                bytes_in: conn.t.bytes_in,
                bytes_out: conn.t.bytes_out,
                age_secs: conn.opened.elapsed().as_secs(),
            })
            .collect()
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}
