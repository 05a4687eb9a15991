//! Egress: one thread per `[[egress]]` in each worker, for the channels its
//! slot owns. It reads the stored messages of matching channels from the
//! slot's shard files (read-only SQLite connections beside the store
//! thread's), sends them with confirms (`egress_sinks`), and records each
//! channel's last confirmed `(epoch, seq)` in `egress-<index>-<slot>.json`
//! in the data dir. The worker only wakes it when a matching message is
//! released; every second it also looks for channels whose last `seq` is
//! past their cursor, which covers a restart and `memory` durability
//! (released before committed). Messages that came from an ingest are
//! skipped (the `ingested` table), so two servers mirroring each other do
//! not loop.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags};

use super::egress_sinks::{Out, Sink};
use super::status::{self, Shared};
use super::with_retries;
use crate::config::queues::{pattern_matches, Egress};
use crate::config::{Config, Storage};
use crate::store::segments;
use crate::store::shard_db::shard_path;
use crate::sync::shard;

/// Messages read and sent per round for one channel.
const BATCH: usize = 512;
/// How often every channel is checked, without a wake-up.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// The worker's handle: wakes the thread for a matching channel.
pub struct Handle {
    patterns: Vec<String>,
    dirty: Arc<Mutex<HashSet<String>>>,
    wake: Sender<()>,
}

impl Handle {
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    pub fn notify(&self, channel: &str, _seq: u64) {
        if !self.patterns.iter().any(|p| pattern_matches(p, channel)) {
            return;
        }
        super::lock(&self.dirty).insert(channel.to_string());
        // Full means a wake-up is already pending.
        let _ = self.wake.try_send(());
    }
}

pub fn start(
    config: &Config,
    slot: usize,
    index: usize,
    section: Egress,
    status: Shared,
    stop: super::Stop,
) -> std::io::Result<Handle> {
    let (wake, woken) = bounded(1);
    let dirty = Arc::new(Mutex::new(HashSet::new()));
    let handle = Handle {
        patterns: section.channels.clone(),
        dirty: dirty.clone(),
        wake,
    };
    let shards: Vec<(u32, PathBuf)> = (0..config.storage.shards)
        .filter(|&s| shard::owner_slot(s, config.workers) == slot)
        .map(|s| (s, shard_path(&config.paths.data_dir, s)))
        .collect();
    let mut egress = Thread {
        section,
        shard_count: config.storage.shards,
        storage: config.storage.clone(),
        shards,
        dbs: HashMap::new(),
        cursors: Cursors::load(
            config
                .paths
                .data_dir
                .join(format!("egress-{index}-{slot}.json")),
        ),
        status,
        dirty,
        woken,
        stop,
    };
    std::thread::Builder::new()
        .name(format!("egress-{index}"))
        .spawn(move || egress.run())?;
    Ok(handle)
}

struct Thread {
    section: Egress,
    shard_count: u32,
    /// Which `history_size` each channel keeps: what is past it is not sent.
    storage: Storage,
    shards: Vec<(u32, PathBuf)>,
    dbs: HashMap<u32, Connection>,
    cursors: Cursors,
    status: Shared,
    dirty: Arc<Mutex<HashSet<String>>>,
    woken: Receiver<()>,
    stop: super::Stop,
}

impl Thread {
    fn run(&mut self) {
        let status = self.status.clone();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return log::error!("egress: no tokio runtime: {e}"),
        };
        let stop = self.stop.clone();
        with_retries(&status, &stop, || {
            let mut sink = Sink::connect(&self.section, &runtime)?;
            status::update(&self.status, |s| s.state = "connected".into());
            // First round: every channel, to resume where the last run was;
            // then a scan every `SCAN_EVERY` even while wake-ups keep
            // coming (a message released before its commit, in `memory`
            // durability, is found by the scan, not by its wake-up).
            let mut scan = true;
            let mut scanned = std::time::Instant::now();
            while !super::stopping(&self.stop) {
                let channels = self.channels_to_send(scan)?;
                for (channel, epoch, last) in channels {
                    self.send_channel(&mut sink, &channel, &epoch, last)?;
                }
                if scan {
                    scanned = std::time::Instant::now();
                }
                let woken = self.wait(&runtime);
                scan = !woken || scanned.elapsed() >= SCAN_EVERY;
            }
            Ok(())
        });
    }

    /// Waits up to `SCAN_EVERY` for the worker's wake-up (`true`), driving
    /// the runtime meanwhile: lapin's heartbeats run on it, and an AMQP
    /// connection left undriven while idle would be dropped by the broker.
    fn wait(&self, runtime: &tokio::runtime::Runtime) -> bool {
        let started = std::time::Instant::now();
        runtime.block_on(async {
            while started.elapsed() < SCAN_EVERY {
                if self.woken.try_recv().is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        })
    }

    /// Matching channels with messages past their cursor: the ones the
    /// worker named, or every one when `scan`.
    fn channels_to_send(&mut self, scan: bool) -> Result<Vec<(String, String, u64)>, String> {
        let named: HashSet<String> = std::mem::take(&mut *super::lock(&self.dirty));
        let mut out = Vec::new();
        for (shard, _) in self.shards.clone() {
            let names: Vec<&String> = named.iter().filter(|c| self.shard_of(c) == shard).collect();
            let Some(db) = self.db(shard) else { continue };
            let rows: Vec<(String, String, u64)> = if scan {
                let mut stmt = db
                    .prepare_cached("SELECT name, epoch, last_seq FROM channels")
                    .map_err(sql)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                    })
                    .map_err(sql)?;
                rows.collect::<Result<_, _>>().map_err(sql)?
            } else {
                let mut found = Vec::new();
                for name in names {
                    let mut stmt = db
                        .prepare_cached("SELECT epoch, last_seq FROM channels WHERE name = ?1")
                        .map_err(sql)?;
                    let mut rows = stmt.query([name]).map_err(sql)?;
                    if let Some(r) = rows.next().map_err(sql)? {
                        let (epoch, last): (String, i64) =
                            (r.get(0).map_err(sql)?, r.get(1).map_err(sql)?);
                        found.push((name.clone(), epoch, last as u64));
                    }
                }
                found
            };
            for (name, epoch, last) in rows {
                let wanted = self
                    .section
                    .channels
                    .iter()
                    .any(|p| pattern_matches(p, &name));
                if wanted && last > self.cursors.after(&name, &epoch) {
                    out.push((name, epoch, last));
                }
            }
        }
        Ok(out)
    }

    fn shard_of(&self, channel: &str) -> u32 {
        shard::shard_of(channel, self.shard_count)
    }

    /// Opened on first use: the store thread creates the files.
    fn db(&mut self, shard: u32) -> Option<&Connection> {
        if !self.dbs.contains_key(&shard) {
            let path = self.shards.iter().find(|(s, _)| *s == shard)?.1.clone();
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&path, flags).ok()?;
            let _ = conn.busy_timeout(Duration::from_secs(5));
            self.dbs.insert(shard, conn);
        }
        self.dbs.get(&shard)
    }

    /// Sends what is stored after the cursor, a batch at a time; the cursor
    /// moves (and is written down) after each confirmed batch.
    fn send_channel(
        &mut self,
        sink: &mut Sink,
        channel: &str,
        epoch: &str,
        last: u64,
    ) -> Result<(), String> {
        loop {
            let after = self.cursors.after(channel, epoch);
            if after >= last {
                return Ok(());
            }
            let Some(rows) = self.read_after(channel, after)? else {
                return Ok(());
            };
            // Up to `last`, messages may be gone (expired, trimmed): skipped.
            let upto = rows.last().map_or(last, |r| r.0);
            let mut batch = Vec::new();
            let mut skipped = 0;
            for (seq, data, ingested) in rows {
                if ingested {
                    skipped += 1;
                    continue;
                }
                batch.push(Out {
                    channel: channel.to_string(),
                    seq,
                    epoch: epoch.to_string(),
                    data,
                });
            }
            status::update(&self.status, |s| {
                s.received += batch.len() as u64;
                s.skipped += skipped;
            });
            sink.send(&batch)?;
            status::update(&self.status, |s| s.published += batch.len() as u64);
            self.cursors.set(channel, epoch, upto);
        }
    }
}

impl Thread {
    /// Up to `BATCH` stored messages of `channel` after `after`: (seq,
    /// data, came from an ingest). `None` when the shard cannot be opened.
    #[allow(clippy::type_complexity)]
    fn read_after(
        &mut self,
        channel: &str,
        after: u64,
    ) -> Result<Option<Vec<(u64, String, bool)>>, String> {
        let shard = self.shard_of(channel);
        let keep = self.storage.retention_for(channel).0;
        let Some(db) = self.db(shard) else {
            return Ok(None);
        };
        let stored = segments::read(db, channel, after, u64::MAX, BATCH, keep).map_err(sql)?;
        let Some(last) = stored.last().map(|m| m.seq) else {
            return Ok(Some(Vec::new()));
        };
        let mut stmt = db
            .prepare_cached(
                "SELECT seq FROM ingested WHERE channel = ?1 AND seq > ?2 AND seq <= ?3",
            )
            .map_err(sql)?;
        let ingested = stmt
            .query_map(params![channel, after as i64, last as i64], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql)?
            .map(|seq| seq.map(|s| s as u64))
            .collect::<Result<HashSet<u64>, _>>()
            .map_err(sql)?;
        let rows = stored
            .into_iter()
            .map(|m| (m.seq, m.data, ingested.contains(&m.seq)))
            .collect();
        Ok(Some(rows))
    }
}

fn sql(e: rusqlite::Error) -> String {
    format!("reading the store: {e}")
}

/// Each channel's last confirmed `(epoch, seq)`, kept in a small JSON file
/// (written to a temporary name, then renamed over it).
struct Cursors {
    path: PathBuf,
    at: HashMap<String, (String, u64)>,
}

impl Cursors {
    fn load(path: PathBuf) -> Cursors {
        let at = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Cursors { path, at }
    }

    /// The last seq sent of this epoch (a new epoch starts from 0).
    fn after(&self, channel: &str, epoch: &str) -> u64 {
        match self.at.get(channel) {
            Some((e, seq)) if e == epoch => *seq,
            _ => 0,
        }
    }

    fn set(&mut self, channel: &str, epoch: &str, seq: u64) {
        self.at
            .insert(channel.to_string(), (epoch.to_string(), seq));
        let written = serde_json::to_vec(&self.at)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::store::meta::write_atomically(&self.path, bytes));
        if let Err(e) = written {
            log::error!("egress: cannot write {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_a_restart_and_restart_with_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress-0-0.json");
        let mut cursors = Cursors::load(path.clone());
        assert_eq!(cursors.after("orders", "e1"), 0);
        cursors.set("orders", "e1", 42);
        let again = Cursors::load(path);
        assert_eq!(again.after("orders", "e1"), 42);
        assert_eq!(again.after("orders", "e2"), 0, "a new epoch starts over");
        assert_eq!(again.after("other", "e1"), 0);
    }
}
