//! One shard's SQLite file (`shard-NN.db`, WAL): its channels, their epochs and
//! last `seq`, and their retained messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

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
CREATE TABLE IF NOT EXISTS messages (
    channel    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    time       INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
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

/// One message to append; times are Unix milliseconds.
#[derive(Debug, Clone)]
/// `channel`, `data` and `epoch` are shared with the owner's copies
/// (`owner::seqs`, the message waiting for its commit), not copied per
/// message.
pub struct Append {
    pub channel: Arc<str>,
    pub seq: u64,
    pub time_ms: i64,
    pub expires_ms: i64,
    pub data: Arc<str>,
    /// Set on a channel's first message: the epoch to record for it.
    pub epoch: Arc<str>,
    /// The backend's key for this publish, remembered until `idempotent_until_ms`.
    pub idempotency: Option<(String, i64)>,
    /// A keyed-state change this message records: (key, value JSON or
    /// `None` when deleted, version), stored in the same transaction.
    pub state: Option<(String, Option<String>, u64)>,
    /// With `state`, to an engine that numbers messages: the version the
    /// writer expects, for the engine to compare and set (the version in
    /// `state` is then unknown until it answers).
    pub expected: Option<u64>,
    /// Another syncd's egress sent it (ingested with its `epoch` and
    /// `seq`): egress does not send it on.
    pub ingested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub expires_ms: i64,
    pub data: String,
}

/// A stored state key: (channel, key, value JSON or `None` if deleted, version).
pub type StateRow = (String, String, Option<String>, u64);

pub struct ShardDb {
    conn: Connection,
}

/// Deletes at most `limit` of a channel's oldest messages with `seq <= upto`.
/// A range from the oldest row (one probe of the key), with no list of
/// rows built first.
const TRIM_SQL: &str = "DELETE FROM messages WHERE channel = ?1 AND seq <= ?2
    AND seq < (SELECT min(seq) FROM messages WHERE channel = ?1) + ?3";

/// Old messages of one channel to delete with an append: those with
/// `seq <= upto`, at most `limit` of them.
#[derive(Debug, PartialEq)]
pub struct Trim<'a> {
    pub channel: &'a str,
    pub upto: u64,
    pub limit: usize,
}

/// Messages inserted by one statement when a batch has that many: fewer
/// statement steps, binds and resets per row (5 parameters a row).
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO messages … VALUES (…), (…)` with `rows` rows of parameters.
fn insert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO messages (channel, seq, time, expires_at, data) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        let p = row * 5;
        sql.push_str(&format!(
            "(?{},?{},?{},?{},?{})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
    }
    sql
}

/// Binds each message's five columns, in the order of `insert_sql`.
fn bind_rows(stmt: &mut rusqlite::CachedStatement<'_>, rows: &[Append]) -> rusqlite::Result<()> {
    for (row, m) in rows.iter().enumerate() {
        let p = row * 5;
        stmt.raw_bind_parameter(p + 1, &*m.channel)?;
        stmt.raw_bind_parameter(p + 2, m.seq as i64)?;
        stmt.raw_bind_parameter(p + 3, m.time_ms)?;
        stmt.raw_bind_parameter(p + 4, m.expires_ms)?;
        stmt.raw_bind_parameter(p + 5, &*m.data)?;
    }
    Ok(())
}

/// The last message of each channel in a batch (the batch is in seq order
/// per channel), in the order channels first appear: one `channels` row
/// update per channel.
fn last_of_each_channel(batch: &[Append]) -> Vec<&Append> {
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut last: Vec<&Append> = Vec::new();
    for m in batch {
        match index.get(&*m.channel) {
            Some(&i) => last[i] = m,
            None => {
                index.insert(&m.channel, last.len());
                last.push(m);
            }
        }
    }
    last
}

impl ShardDb {
    pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<ShardDb> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL survives a process crash; FULL also syncs each commit.
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Commit => "NORMAL",
            Durability::Memory => "OFF",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(SCHEMA)?;
        Ok(ShardDb { conn })
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

    /// Appends a batch in one transaction (group commit). Rows go in
    /// `ROWS_PER_INSERT` at a time, through cached statements: one statement
    /// step per chunk instead of per row. The same transaction deletes the
    /// rows each `Trim` names, so a channel's history stays at its size
    /// whatever the inflow. Returns how many rows were trimmed.
    pub fn append(&mut self, batch: &[Append], trims: &[Trim<'_>]) -> rusqlite::Result<u64> {
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let result = self.append_rows(batch).and_then(|()| {
            let trimmed = self.trim_rows(trims)?;
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(trimmed)
        });
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn append_rows(&self, batch: &[Append]) -> rusqlite::Result<()> {
        let mut chunks = batch.chunks_exact(ROWS_PER_INSERT);
        if batch.len() >= ROWS_PER_INSERT {
            let mut many = self.conn.prepare_cached(&insert_sql(ROWS_PER_INSERT))?;
            for chunk in &mut chunks {
                bind_rows(&mut many, chunk)?;
                many.raw_execute()?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut one = self.conn.prepare_cached(&insert_sql(1))?;
            for m in rest {
                bind_rows(&mut one, std::slice::from_ref(m))?;
                one.raw_execute()?;
            }
        }
        let mut keyed = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO state_keys (channel, key, value, version) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut remember = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (channel, key, seq, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut ingested = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO ingested (channel, seq, expires_at) VALUES (?1, ?2, ?3)",
        )?;
        for m in batch {
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
        for m in last_of_each_channel(batch) {
            channel.execute(params![&*m.channel, &*m.epoch, m.seq as i64])?;
        }
        Ok(())
    }

    fn trim_rows(&self, trims: &[Trim<'_>]) -> rusqlite::Result<u64> {
        if trims.is_empty() {
            return Ok(0);
        }
        let mut trim = self.conn.prepare_cached(TRIM_SQL)?;
        let mut trimmed = 0;
        for t in trims {
            trimmed += trim.execute(params![t.channel, t.upto as i64, t.limit as i64])? as u64;
        }
        Ok(trimmed)
    }

    /// Retained messages of `channel` with `after < seq <= upto`, oldest first,
    /// at most `limit`; and the oldest retained `seq` of the channel.
    pub fn read(
        &self,
        channel: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> rusqlite::Result<(Vec<Stored>, Option<u64>)> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, expires_at, data FROM messages WHERE channel = ?1 AND seq > ?2 AND seq <= ?3
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![channel, after as i64, upto as i64, limit as i64],
            |r| {
                Ok(Stored {
                    seq: r.get::<_, i64>(0)? as u64,
                    expires_ms: r.get(1)?,
                    data: r.get(2)?,
                })
            },
        )?;
        let messages = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let first: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(seq) FROM messages WHERE channel = ?1")?
            .query_row([channel], |r| r.get(0))
            .optional()?
            .flatten();
        Ok((messages, first.map(|s| s as u64)))
    }

    /// The oldest `seq > after` of `channel` that has not expired at `now_ms`.
    pub fn oldest(&self, channel: &str, after: u64, now_ms: i64) -> rusqlite::Result<Option<u64>> {
        let seq: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT seq FROM messages WHERE channel = ?1 AND seq > ?2 AND expires_at > ?3
                 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![channel, after as i64, now_ms], |r| r.get(0))
            .optional()?;
        Ok(seq.map(|s| s as u64))
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

    /// Deletes up to `limit` expired messages (and old idempotency keys);
    /// returns how many messages.
    pub fn delete_expired(&mut self, now_ms: i64, limit: usize) -> rusqlite::Result<u64> {
        self.conn.execute(
            "DELETE FROM idempotency WHERE (channel, key) IN
               (SELECT channel, key FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
            params![now_ms, limit as i64],
        )?;
        self.conn.execute(
            "DELETE FROM ingested WHERE (channel, seq) IN
               (SELECT channel, seq FROM ingested WHERE expires_at <= ?1 LIMIT ?2)",
            params![now_ms, limit as i64],
        )?;
        let n = self.conn.execute(
            "DELETE FROM messages WHERE (channel, seq) IN
               (SELECT channel, seq FROM messages WHERE expires_at <= ?1 LIMIT ?2)",
            params![now_ms, limit as i64],
        )?;
        Ok(n as u64)
    }

    /// Deletes up to `limit` messages of `channel` with `seq <= upto`.
    pub fn trim(&mut self, channel: &str, upto: u64, limit: usize) -> rusqlite::Result<u64> {
        let n = self.conn.prepare_cached(TRIM_SQL)?.execute(params![
            channel,
            upto as i64,
            limit as i64
        ])?;
        Ok(n as u64)
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

    /// A batch longer than one multi-row insert, over two channels: every
    /// row lands (whole chunks and the rest), and each channel's row has
    /// its last seq.
    #[test]
    fn a_batch_of_several_chunks_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let n = ROWS_PER_INSERT as u64 * 2 + 5;
        let batch: Vec<Append> = (1..=n)
            .flat_map(|s| [msg("a", s, i64::MAX), msg("b", s, i64::MAX)])
            .collect();
        db.append(&batch, &[]).unwrap();
        for channel in ["a", "b"] {
            let (got, first) = db.read(channel, 0, n, 1000).unwrap();
            assert_eq!(
                got.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=n).collect::<Vec<_>>()
            );
            assert_eq!(got[3].data, "{\"n\":4}");
            assert_eq!(first, Some(1));
        }
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
        db.append(&[msg("a", 1, i64::MAX)], &[]).unwrap();
        let twice: Vec<Append> = [2, 3, 1].iter().map(|&s| msg("a", s, i64::MAX)).collect();
        assert!(db.append(&twice, &[]).is_err(), "seq 1 is already stored");
        db.append(&[msg("a", 2, i64::MAX)], &[]).unwrap();
        let (got, _) = db.read("a", 0, 10, 10).unwrap();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn the_multi_row_insert_numbers_its_parameters_in_order() {
        assert_eq!(
            insert_sql(2),
            "INSERT INTO messages (channel, seq, time, expires_at, data) VALUES \
             (?1,?2,?3,?4,?5),(?6,?7,?8,?9,?10)"
        );
        let batch = [msg("a", 1, 0), msg("b", 1, 0), msg("a", 2, 0)];
        let last: Vec<(&str, u64)> = last_of_each_channel(&batch)
            .iter()
            .map(|m| (&*m.channel, m.seq))
            .collect();
        assert_eq!(last, vec![("a", 2), ("b", 1)]);
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
        let (got, first) = db.read("a", 2, 6, 100).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(first, Some(1));
        assert_eq!(db.delete_expired(100, 10).unwrap(), 1);
        assert_eq!(db.trim("a", 3, 2).unwrap(), 2);
        assert_eq!(db.trim("a", 3, 2).unwrap(), 1);
        let (got, first) = db.read("a", 0, 10, 100).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4, 6, 7, 8, 9, 10]
        );
        assert_eq!(first, Some(4));
        assert_eq!(db.oldest("a", 0, 0).unwrap(), Some(4));
        assert_eq!(db.oldest("a", 6, 0).unwrap(), Some(7));
        assert_eq!(db.oldest("a", 10, 0).unwrap(), None);
        db.renew_epochs(|| "e2".into()).unwrap();
        assert_eq!(db.channels().unwrap()[0].1, "e2");
    }
}
