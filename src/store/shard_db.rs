//! One shard's SQLite file (`shard-NN.db`, WAL): its channels, their epochs and
//! last `seq`, and their retained messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::message::{Append, Stored};
use super::segments;
use crate::config::Durability;

pub fn shard_path(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard:02}.db"))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    name     TEXT PRIMARY KEY,
    epoch    TEXT NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    channel    TEXT NOT NULL,
    key        TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingested (
    channel    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_keys (
    channel TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT,
    version INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (channel TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    channel TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    time    INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
";

/// A stored state key: (channel, key, value JSON or `None` if deleted, version).
pub type StateRow = (String, String, Option<String>, u64);

pub struct ShardDb {
    conn: Connection,
    path: PathBuf,
}

/// Old messages of one channel to drop with an append: those with
/// `seq <= upto`, deleting at most `limit` of the segments that empties.
#[derive(Debug, PartialEq)]
pub struct Trim<'a> {
    pub channel: &'a str,
    pub upto: u64,
    pub limit: usize,
}

impl ShardDb {
    pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<ShardDb> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // One plan per statement, whatever is bound: otherwise SQLite
        // prepares a statement again whenever a new value is bound to a
        // `LIMIT ?` (the trims' deletes, each batch), or with STAT4 to a
        // parameter compared with an indexed column; that was half of the
        // trims' time (docs/benchmarks.md).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", Self::synchronous(durability))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(segments::SCHEMA)?;
        let tx = conn.unchecked_transaction()?;
        let moved = segments::migrate(&tx)?;
        tx.commit()?;
        if moved > 0 {
            log::info!("{}: {moved} messages moved into segments", path.display());
        }
        Ok(ShardDb {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// SQLite's `synchronous` for a durability: WAL + NORMAL survives a
    /// process crash; FULL also syncs each commit.
    pub fn synchronous(durability: Durability) -> &'static str {
        match durability {
            Durability::Fsync => "FULL",
            Durability::Commit => "NORMAL",
            Durability::Memory => "OFF",
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands each commit's WAL page count to `hook` (`checkpointer.rs`),
    /// which then decides the checkpoints: SQLite's own, every 1000 pages
    /// inside a COMMIT, stop.
    pub fn on_wal_pages<F>(&mut self, hook: F) -> rusqlite::Result<()>
    where
        F: FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()>
            + Send
            + 'static,
    {
        self.conn.wal_hook(Some(hook))
    }

    /// Every channel with its epoch and last stored `seq`.
    pub fn channels(&self) -> rusqlite::Result<Vec<(String, String, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, epoch, last_seq FROM channels")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        rows.collect()
    }

    /// For tests: `append_runs` of a batch not grouped yet.
    #[cfg(test)]
    pub fn append(&mut self, batch: &[Append], trims: &[Trim<'_>]) -> rusqlite::Result<u64> {
        self.append_runs(&segments::by_channel(batch), trims)
    }

    /// Appends a batch, grouped by channel (`segments::by_channel`, which
    /// the store thread also uses to choose its trims), in one transaction
    /// (group commit), each channel's messages as segments (`segments`).
    /// The same transaction trims what each `Trim` names, so a channel's
    /// history stays at its size whatever the inflow. Returns how many
    /// messages the trims dropped.
    pub fn append_runs(
        &mut self,
        runs: &[Vec<&Append>],
        trims: &[Trim<'_>],
    ) -> rusqlite::Result<u64> {
        self.in_transaction(|db| {
            db.append_rows(runs)?;
            db.trim_rows(trims)
        })
    }

    /// Runs `work` in one transaction: committed if it succeeds, rolled
    /// back if it fails. Statements cached, as this runs on every batch.
    fn in_transaction<T>(
        &self,
        work: impl FnOnce(&Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let result = work(self).and_then(|done| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(done)
        });
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn append_rows(&self, runs: &[Vec<&Append>]) -> rusqlite::Result<()> {
        segments::ensure_new(&self.conn, runs)?;
        segments::write(&self.conn, runs)?;
        let mut keyed = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO state_keys (channel, key, value, version) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut remember = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (channel, key, seq, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut ingested = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO ingested (channel, seq, expires_at) VALUES (?1, ?2, ?3)",
        )?;
        for m in runs.iter().flatten() {
            if m.ingested {
                ingested.execute(params![&*m.channel, m.seq as i64, m.expires_ms])?;
            }
            if let Some((key, until)) = &m.idempotency {
                remember.execute(params![&*m.channel, key, m.seq as i64, until])?;
            }
            if let Some((key, value, version)) = &m.state {
                keyed.execute(params![&*m.channel, key, value, *version as i64])?;
            }
        }
        let mut channel = self.conn.prepare_cached(
            "INSERT INTO channels (name, epoch, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
        )?;
        // One row update per channel, with its last message.
        for m in runs.iter().filter_map(|run| run.last()) {
            channel.execute(params![&*m.channel, &*m.epoch, m.seq as i64])?;
        }
        Ok(())
    }

    fn trim_rows(&self, trims: &[Trim<'_>]) -> rusqlite::Result<u64> {
        if trims.is_empty() {
            return Ok(0);
        }
        let mut trimmed = 0;
        for t in trims {
            trimmed += segments::trim(&self.conn, t.channel, t.upto, t.limit)?.messages;
        }
        Ok(trimmed)
    }

    /// Retained messages of `channel`, which keeps its last `keep`, with
    /// `after < seq <= upto`, oldest first, at most `limit`.
    pub fn read(
        &self,
        channel: &str,
        after: u64,
        upto: u64,
        limit: usize,
        keep: u64,
    ) -> rusqlite::Result<Vec<Stored>> {
        segments::read(&self.conn, channel, after, upto, limit, keep)
    }

    /// The oldest `seq > after` of `channel`, which keeps its last `keep`,
    /// that has not expired at `now_ms`.
    pub fn oldest(
        &self,
        channel: &str,
        after: u64,
        keep: u64,
        now_ms: i64,
    ) -> rusqlite::Result<Option<u64>> {
        segments::oldest(&self.conn, channel, after, keep, now_ms)
    }

    /// Idempotency keys still within their window: (channel, key, seq, until_ms).
    pub fn idempotency_keys(
        &self,
        now_ms: i64,
    ) -> rusqlite::Result<Vec<(String, String, u64, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT channel, key, seq, expires_at FROM idempotency WHERE expires_at > ?1",
        )?;
        let rows = stmt.query_map([now_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
        })?;
        rows.collect()
    }

    /// Deletes old idempotency keys and up to `limit` segments whose
    /// messages have all expired; returns how many messages they held. One
    /// transaction and cached statements: the sweep runs every second on
    /// every shard, mostly finding nothing, and three autocommit deletes
    /// prepared afresh each time were most of an idle server's CPU.
    pub fn delete_expired(&mut self, now_ms: i64, limit: usize) -> rusqlite::Result<u64> {
        self.in_transaction(|db| db.delete_expired_rows(now_ms, limit))
    }

    fn delete_expired_rows(&self, now_ms: i64, limit: usize) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(
                "DELETE FROM idempotency WHERE (channel, key) IN
                   (SELECT channel, key FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now_ms, limit as i64])?;
        self.conn
            .prepare_cached(
                "DELETE FROM ingested WHERE (channel, seq) IN
                   (SELECT channel, seq FROM ingested WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now_ms, limit as i64])?;
        segments::delete_expired(&self.conn, now_ms, limit)
    }

    /// Retains nothing of `channel` at or below `upto`, and deletes up to
    /// `limit` of the segments that leaves empty.
    pub fn trim(
        &mut self,
        channel: &str,
        upto: u64,
        limit: usize,
    ) -> rusqlite::Result<segments::Trimmed> {
        segments::trim(&self.conn, channel, upto, limit)
    }

    /// Every key of every channel's state: (channel, key, value, version).
    pub fn state_keys(&self) -> rusqlite::Result<Vec<StateRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT channel, key, value, version FROM state_keys")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
        })?;
        rows.collect()
    }

    /// Every inbox's cumulative ack.
    pub fn acks(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare("SELECT channel, seq FROM acks")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }

    /// Records inboxes' cumulative acks in one transaction; an ack never
    /// moves back.
    pub fn set_acks<'a>(
        &mut self,
        acks: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut set = tx.prepare_cached(
                "INSERT INTO acks (channel, seq) VALUES (?1, ?2)
                 ON CONFLICT (channel) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?;
            for (channel, seq) in acks {
                set.execute(params![channel, seq as i64])?;
            }
        }
        tx.commit()
    }

    pub fn add_dead_letter(
        &self,
        channel: &str,
        seq: u64,
        time_ms: i64,
        reason: &str,
        data: &str,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO dead_letters (channel, seq, time, reason, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![channel, seq as i64, time_ms, reason, data],
        )?;
        Ok(())
    }

    pub fn get_state(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
    }

    pub fn set_state(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The epoch this shard gives channels it has never seen; made once, kept
    /// until the shard's history is lost.
    pub fn genesis(&self, fresh: impl FnOnce() -> String) -> rusqlite::Result<String> {
        if let Some(genesis) = self.get_state("genesis")? {
            return Ok(genesis);
        }
        let genesis = fresh();
        self.set_state("genesis", &genesis)?;
        Ok(genesis)
    }

    /// Gives every channel, and the shard's genesis, a new epoch: its history
    /// may have lost messages that clients saw (after a crash in `memory`
    /// durability).
    pub fn renew_epochs(&self, mut fresh: impl FnMut() -> String) -> rusqlite::Result<()> {
        self.set_state("genesis", &fresh())?;
        let names: Vec<String> = self.channels()?.into_iter().map(|(n, _, _)| n).collect();
        for name in names {
            self.conn.execute(
                "UPDATE channels SET epoch = ?2 WHERE name = ?1",
                params![name, fresh()],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str, seq: u64, expires_ms: i64) -> Append {
        Append {
            channel: channel.into(),
            seq,
            time_ms: 0,
            expires_ms,
            data: format!("{{\"n\":{seq}}}").into(),
            epoch: "e1".into(),
            idempotency: None,
            state: None,
            expected: None,
            ingested: false,
        }
    }

    /// A batch longer than one segment, over two interleaved channels:
    /// every message lands (whole segments and the rest), reads start in
    /// the middle of a segment, and each channel's row has its last seq.
    #[test]
    fn a_batch_of_several_segments_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let n = 600;
        let batch: Vec<Append> = (1..=n)
            .flat_map(|s| [msg("a", s, i64::MAX), msg("b", s, i64::MAX)])
            .collect();
        db.append(&batch, &[]).unwrap();
        for channel in ["a", "b"] {
            let got = db.read(channel, 0, n, 1000, u64::MAX).unwrap();
            assert_eq!(
                got.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=n).collect::<Vec<_>>()
            );
            assert_eq!(got[3].data, "{\"n\":4}");
            assert_eq!(db.oldest(channel, 0, u64::MAX, 0).unwrap(), Some(1));
            let got = db.read(channel, 300, 520, 3, u64::MAX).unwrap();
            assert_eq!(
                got.iter().map(|m| m.seq).collect::<Vec<_>>(),
                [301, 302, 303]
            );
        }
        let segments: i64 = db
            .conn
            .query_row("SELECT count(*) FROM segments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(segments, 6, "600 messages a channel make 3 segments");
        let mut channels = db.channels().unwrap();
        channels.sort();
        assert_eq!(
            channels,
            vec![("a".into(), "e1".into(), n), ("b".into(), "e1".into(), n)]
        );
    }

    /// Messages from a queue ingest are marked in the same transaction, and
    /// the marks expire with the messages.
    #[test]
    fn ingested_messages_are_marked_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let ingested = Append {
            ingested: true,
            ..msg("a", 2, 100)
        };
        db.append(&[msg("a", 1, 100), ingested], &[]).unwrap();
        let marked = |db: &ShardDb| -> Vec<i64> {
            let mut stmt = db.conn.prepare("SELECT seq FROM ingested").unwrap();
            let rows = stmt.query_map([], |r| r.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        assert_eq!(marked(&db), vec![2]);
        db.delete_expired(100, 10).unwrap();
        assert!(marked(&db).is_empty());
    }

    /// A failed batch stores none of its rows and leaves the file usable.
    #[test]
    fn a_failed_batch_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let first: Vec<Append> = (1..=3).map(|s| msg("a", s, i64::MAX)).collect();
        db.append(&first, &[]).unwrap();
        // 2 is inside the segment 1-3, not its key: refused all the same.
        let again = [msg("b", 1, i64::MAX), msg("a", 2, i64::MAX)];
        assert!(
            db.append(&again, &[]).is_err(),
            "a's seq 2 is already stored"
        );
        assert!(db.read("b", 0, 10, 10, u64::MAX).unwrap().is_empty());
        db.append(&[msg("a", 4, i64::MAX)], &[]).unwrap();
        let got = db.read("a", 0, 10, 10, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn the_last_message_of_each_channel_updates_its_row() {
        let batch = [msg("a", 1, 0), msg("b", 1, 0), msg("a", 2, 0)];
        let last: Vec<(&str, u64)> = segments::by_channel(&batch)
            .iter()
            .filter_map(|run| run.last())
            .map(|m| (&*m.channel, m.seq))
            .collect();
        assert_eq!(last, vec![("a", 2), ("b", 1)]);
    }

    /// Trims come in steps, so the disk may still hold what a channel no
    /// longer keeps: reads never return it, from the last seq less `keep`.
    #[test]
    fn reads_keep_only_the_last_keep_messages_before_any_trim() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let batch: Vec<Append> = (1..=300).map(|s| msg("a", s, i64::MAX)).collect();
        db.append(&batch, &[]).unwrap();
        let got = db.read("a", 0, 300, 1000, 10).unwrap();
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (291..=300).collect::<Vec<_>>());
        assert_eq!(db.oldest("a", 0, 10, 0).unwrap(), Some(291));
        assert_eq!(db.read("a", 0, 300, 1000, u64::MAX).unwrap().len(), 300);
    }

    #[test]
    fn append_read_trim_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 3), Durability::Commit).unwrap();
        db.append(
            &(1..=10)
                .map(|s| msg("a", s, if s == 5 { 10 } else { i64::MAX }))
                .collect::<Vec<_>>(),
            &[],
        )
        .unwrap();
        assert_eq!(db.channels().unwrap(), vec![("a".into(), "e1".into(), 10)]);
        let got = db.read("a", 2, 6, 100, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), Some(1));
        // 5 expired, but its segment holds live messages: readers skip it.
        assert_eq!(db.delete_expired(100, 10).unwrap(), 0);
        assert_eq!(db.oldest("a", 4, u64::MAX, 100).unwrap(), Some(6));
        assert_eq!(
            db.trim("a", 3, 2).unwrap().messages,
            3,
            "1-3 are no longer read"
        );
        let got = db.read("a", 0, 10, 100, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8, 9, 10]
        );
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), Some(4));
        assert_eq!(db.oldest("a", 6, u64::MAX, 0).unwrap(), Some(7));
        assert_eq!(db.oldest("a", 10, u64::MAX, 0).unwrap(), None);
        db.append(&[msg("a", 11, 50)], &[]).unwrap();
        assert_eq!(
            db.delete_expired(100, 10).unwrap(),
            1,
            "11's segment expired whole"
        );
        let trimmed = db.trim("a", 10, 2).unwrap();
        assert_eq!(trimmed.messages, 7, "4-10 are no longer read");
        assert_eq!(db.read("a", 0, 20, 100, u64::MAX).unwrap(), vec![]);
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), None);
        db.renew_epochs(|| "e2".into()).unwrap();
        assert_eq!(db.channels().unwrap()[0].1, "e2");
    }

    /// The trims bind a new `LIMIT` each batch: SQLite must not prepare
    /// their statement again each time (the query planner stability
    /// guarantee is on).
    #[test]
    fn a_trim_with_a_new_limit_is_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        for seq in 1..=40 {
            db.append(&[msg("a", seq, i64::MAX)], &[]).unwrap();
        }
        for (upto, limit) in [(10, 1), (20, 2), (30, 3), (40, 7)] {
            db.trim("a", upto, limit).unwrap();
        }
        let stmt = db.conn.prepare_cached(segments::DELETE_BELOW).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
