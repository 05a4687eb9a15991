//! WAL checkpoints off the store thread. SQLite's own (`wal_autocheckpoint`)
//! runs inside the commit that fills the WAL past 1000 pages: it copies them
//! into the database file and, in `commit` and `fsync` durability, waits for
//! two `fsync`s, all while the worker's appends wait. Here the store thread's
//! connections only say when a shard's WAL has grown, and a thread of its own
//! checkpoints that shard through a second connection, which SQLite lets run
//! beside the writer. Without checkpoints at all the durable bench ran about
//! 15% faster on 8 channels, with a third lower p99 (docs/benchmarks.md).
//!
//! A checkpoint that runs beside the writer cannot always catch up with it,
//! and the WAL starts over only once it has: so when a WAL passes
//! `FORCE_PAGES` the store thread checkpoints it itself, as SQLite would
//! have, and the WAL stays bounded under any load.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags};

use super::shard_db::ShardDb;

/// A shard's WAL this long (in pages) is due for a checkpoint: SQLite's
/// own default.
const DUE_PAGES: i32 = 1000;
/// Past this the store thread checkpoints the shard itself (40 MiB of 4 KiB
/// pages).
const FORCE_PAGES: i32 = 10_000;

/// The checkpoint thread of one worker's shards; it ends once every
/// connection that could call for it is closed.
pub struct Checkpoints {
    handle: JoinHandle<()>,
}

impl Checkpoints {
    /// Moves the checkpoints of `shards` to a new thread.
    pub fn start(shards: &mut [(u32, &mut ShardDb)]) -> std::io::Result<Checkpoints> {
        let (due, wanted) = crossbeam_channel::unbounded();
        let mut paths = Vec::new();
        for (shard, db) in shards.iter_mut() {
            if let Some(path) = db.conn.path().filter(|p| !p.is_empty()) {
                paths.push((*shard, PathBuf::from(path)));
            }
            call_when_due(db, *shard, due.clone()).map_err(std::io::Error::other)?;
        }
        let handle = std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || run(paths, wanted))?;
        Ok(Checkpoints { handle })
    }

    /// Waits for the thread, once the shards' connections are closed: its
    /// own are then the last, and closing them checkpoints what is left.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// After each commit SQLite tells the writer how long the WAL is.
fn call_when_due(db: &mut ShardDb, shard: u32, due: Sender<u32>) -> rusqlite::Result<()> {
    db.conn
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages >= FORCE_PAGES {
                // The commit is done whatever this returns; a failed or busy
                // checkpoint is tried again at the next commit.
                if let Err(e) = wal.checkpoint() {
                    log::debug!("store: checkpoint of shard {shard} put off: {e}");
                }
            } else if pages >= DUE_PAGES {
                let _ = due.send(shard);
            }
            Ok(())
        }))
}

fn run(paths: Vec<(u32, PathBuf)>, wanted: Receiver<u32>) {
    let mut conns = Vec::new();
    for (shard, path) in paths {
        match open(&path) {
            Ok(conn) => conns.push((shard, conn)),
            Err(e) => log::warn!(
                "store: {} cannot be checkpointed in the background ({e}); its writer will",
                path.display()
            ),
        }
    }
    // A shard asks after each commit while it is due; one checkpoint
    // answers all the asks that came meanwhile.
    while let Ok(first) = wanted.recv() {
        let due: BTreeSet<u32> = std::iter::once(first).chain(wanted.try_iter()).collect();
        for (shard, conn) in conns.iter().filter(|(s, _)| due.contains(s)) {
            let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            if let Err(e) = result {
                log::warn!("store: checkpoint of shard {shard} failed: {e}");
            }
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // A checkpoint copies WAL frames straight to the file; pages cached here
    // would only be memory held for nothing (SQLite's default is 2 MiB).
    conn.pragma_update(None, "cache_size", -64)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::shard_db::{shard_path, Append};

    fn rows(from: u64, n: u64) -> Vec<Append> {
        (from..from + n)
            .map(|seq| Append {
                channel: "a".into(),
                seq,
                time_ms: 0,
                expires_ms: i64::MAX,
                data: format!("\"{}\"", "x".repeat(1000)).into(),
                epoch: "e".into(),
                idempotency: None,
                state: None,
                expected: None,
                ingested: false,
            })
            .collect()
    }

    /// About 1500 pages of WAL, past `DUE_PAGES` and under `FORCE_PAGES`
    /// (where the writer would checkpoint itself), reach the database file;
    /// and once the writer's connection is closed the thread ends.
    #[test]
    fn a_grown_wal_reaches_the_database_file_and_the_thread_ends_with_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = shard_path(dir.path(), 0);
        let mut db = ShardDb::open(&path, Durability::Commit).unwrap();
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let before = size();
        let checkpoints = Checkpoints::start(&mut [(0, &mut db)]).unwrap();
        for batch in 0..30 {
            db.append(&rows(batch * 200 + 1, 200), &[]).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while size() < before + (4 << 20) {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes",
                size()
            );
            std::thread::yield_now();
        }
        let (got, _) = db.read("a", 0, 6000, 10_000).unwrap();
        assert_eq!(got.len(), 6000);
        drop(db);
        checkpoints.join();
    }
}
