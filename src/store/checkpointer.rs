//! WAL checkpoints off the store thread. SQLite copies a WAL back into its
//! database file once it holds 1000 pages, inside the COMMIT that crossed
//! the mark: on 8 channels that was ~28% of the store thread's commit time,
//! and every acknowledgement of the batch waited for it. Instead each
//! shard's writer tells this thread when its WAL passes `CHECKPOINT_PAGES`,
//! and the thread checkpoints it on a connection of its own (PASSIVE: it
//! never waits for the writer, which goes on committing meanwhile). Should
//! the WAL still reach `INLINE_PAGES` (this thread fell behind), the writer
//! checkpoints it itself, as SQLite would have.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use super::shard_db::ShardDb;
use crate::config::Durability;

/// WAL pages (of 4 KiB) that make a shard ask for a checkpoint: SQLite's
/// own default mark.
pub const CHECKPOINT_PAGES: i32 = 1000;

/// WAL pages past which the writer checkpoints inline (64 MiB).
pub const INLINE_PAGES: i32 = 16 * CHECKPOINT_PAGES;

/// A failing checkpoint (a full disk) is asked again on every commit:
/// logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Checkpointer {
    asks: Sender<Ask>,
    thread: Option<JoinHandle<()>>,
}

enum Ask {
    /// This shard's WAL passed `CHECKPOINT_PAGES`.
    Shard(u32),
    /// The writers' hooks hold senders too, so the thread stops on this,
    /// not when the channel closes.
    Stop,
}

impl Checkpointer {
    /// Starts the thread and hooks every shard's commits to it.
    pub fn start(
        shards: &mut HashMap<u32, ShardDb>,
        durability: Durability,
    ) -> std::io::Result<Checkpointer> {
        let (asks, inbox) = crossbeam_channel::unbounded::<Ask>();
        // Each shard's file and its "asked" flag (set by its hook).
        let mut known = HashMap::new();
        for (&shard, db) in shards.iter_mut() {
            let flag = Arc::new(AtomicBool::new(false));
            known.insert(shard, (db.path().to_path_buf(), flag.clone()));
            db.on_wal_pages(wal_hook(shard, asks.clone(), flag))
                .map_err(std::io::Error::other)?;
        }
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let mut conns: HashMap<u32, Connection> = HashMap::new();
                let mut logged: Option<Instant> = None;
                let mut warn = |shard: u32, e: rusqlite::Error| {
                    if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                        logged = Some(Instant::now());
                        log::warn!("store: checkpoint of shard {shard} failed: {e}");
                    }
                };
                for ask in inbox {
                    let Ask::Shard(shard) = ask else {
                        break;
                    };
                    let Some((path, flag)) = known.get(&shard) else {
                        continue;
                    };
                    // Cleared first: commits during this checkpoint ask again.
                    flag.store(false, Ordering::Release);
                    let conn = match conns.get(&shard) {
                        Some(conn) => conn,
                        None => match open(path, durability) {
                            Ok(conn) => conns.entry(shard).or_insert(conn),
                            Err(e) => {
                                warn(shard, e);
                                continue;
                            }
                        },
                    };
                    if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                        warn(shard, e);
                    }
                }
            })?;
        Ok(Checkpointer {
            asks,
            thread: Some(thread),
        })
    }
}

/// Closes the thread's connections before the writers close theirs, so the
/// last writer to close checkpoints and removes its WAL, as before.
impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.asks.send(Ask::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection for checkpoints, syncing as the writer's does: a
/// checkpoint's syncs follow its own connection's `synchronous`.
fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "synchronous", ShardDb::synchronous(durability))?;
    Ok(conn)
}

/// Called by SQLite after each commit of `shard` with the WAL's page count.
/// Never fails: an error would fail the statement whose commit is done.
fn wal_hook(
    shard: u32,
    asks: Sender<Ask>,
    asked: Arc<AtomicBool>,
) -> impl FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()> + Send + 'static
{
    move |wal, pages| {
        if pages >= INLINE_PAGES {
            let _ = wal.checkpoint();
        } else if pages >= CHECKPOINT_PAGES && !asked.swap(true, Ordering::AcqRel) {
            let _ = asks.send(Ask::Shard(shard));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::message::Append;
    use crate::store::shard_db::shard_path;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// A shard whose WAL passes the mark is checkpointed by the thread (its
    /// pages reach the database file) while the writer goes on; the WAL
    /// stays bounded; on stop the last writer removes it.
    #[test]
    fn the_thread_checkpoints_a_growing_wal_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = shard_path(dir.path(), 0);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let db = ShardDb::open(&path, Durability::Commit).unwrap();
        let mut shards = HashMap::from([(0, db)]);
        let checkpointer = Checkpointer::start(&mut shards, Durability::Commit).unwrap();
        let db = shards.get_mut(&0).unwrap();
        let empty = file_len(&path);
        // Batches of one 2 KiB message: a new page or two each.
        let data: std::sync::Arc<str> = "x".repeat(2048).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seq = 0;
        while file_len(&path) < empty + (1 << 20) {
            assert!(Instant::now() < deadline, "no checkpoint reached the file");
            seq += 1;
            let mut m = Append::of("c", seq);
            m.data = data.clone();
            db.append(&[m], &[]).unwrap();
            // Without the thread it would reach INLINE_PAGES (64 MiB) first.
            assert!(
                file_len(&wal) < 4 * CHECKPOINT_PAGES as u64 * 4200,
                "the WAL grew to {} bytes: nothing checkpointed it",
                file_len(&wal)
            );
        }
        eprintln!("checkpointed after {seq} commits");
        assert!(seq > 100, "the first pages were checkpointed early: {seq}");
        drop(checkpointer);
        drop(shards);
        assert!(
            !wal.exists(),
            "the last connection to close removes the WAL"
        );
    }
}
