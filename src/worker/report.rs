//! Answers to the master: readiness, `status` counters and the
//! `connections` list; and its order to retire.

use super::conn::Protocol;
use super::Worker;
use crate::control::{ConnInfo, FromWorker, ToWorker, WorkerStats};

impl Worker {
    pub(super) fn on_master(&mut self) -> Option<i32> {
        let mut msgs = Vec::new();
        let open = match self.master.receive::<ToWorker>(&mut msgs) {
            Ok(open) => open,
            Err(e) => {
                log::error!("worker {}: master link failed: {e}", self.slot);
                false
            }
        };
        for msg in msgs {
            let reply = match msg {
                ToWorker::Retire {
                    why,
                    graceful: true,
                } => {
                    self.begin_stop(why);
                    continue;
                }
                ToWorker::Retire {
                    why,
                    graceful: false,
                } => {
                    log::info!(
                        "worker {}: told to retire ({why:?}), exiting now",
                        self.slot
                    );
                    self.say_goodbye_now(why);
                    return Some(0);
                }
                ToWorker::Stats { tag } => FromWorker::Stats {
                    tag,
                    stats: self.snapshot(),
                },
                ToWorker::Connections { tag } => FromWorker::Connections {
                    tag,
                    list: self.connection_list(),
                },
            };
            let _ = self.master.send(&reply);
        }
        if !open {
            log::error!("worker {}: master is gone, exiting", self.slot);
            return Some(1);
        }
        let _ = self.master.flush();
        None
    }

    pub(super) fn snapshot(&self) -> WorkerStats {
        let mut stats = self.stats.clone();
        stats.rss_bytes = rss_bytes();
        stats.subscriptions = self.subs.total();
        stats.channels_owned = self.owner.channels();
        let owned = self.owner.stats();
        stats.stored = owned.stored;
        stats.expired = owned.expired;
        stats.trimmed = owned.trimmed;
        stats.disk_reads = owned.disk_reads;
        for (_, conn) in &self.conns {
            match conn.session.protocol() {
                Protocol::Ws => stats.ws += 1,
                Protocol::Tcp => stats.tcp += 1,
                Protocol::Http => stats.http += 1,
            }
        }
        stats
    }

    pub(super) fn connection_list(&self) -> Vec<ConnInfo> {
        self.conns
            .iter()
            .map(|(key, conn)| ConnInfo {
                worker: self.slot,
                id: conn.id,
                protocol: conn.session.protocol().name().into(),
                peer: conn.peer.to_string(),
                subscriptions: self.subs.count_of(key),
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
