//! A channel's retained messages on disk, as segments: each row holds a run
//! of up to `MAX_MESSAGES` consecutive messages of one channel, written by
//! one group commit. A row per message cost SQLite two B-tree inserts (the
//! key and the expiry index) and two deletes (trimming) per message, about
//! 3 µs of the store thread's time; a row per run costs them once per run.
//!
//! What a read returns is exact: it starts above the channel's floor, the
//! higher of the seq in `floors` (the last trim) and its last seq less the
//! `keep` (`history_size`) it is given, so the store thread may trim in
//! steps; whole segments below the stored floor are then deleted. A
//! segment is deleted as expired once its last message to expire has;
//! until then, readers skip expired messages by their `expires_ms` (they
//! always did: the sweep runs late).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::message::{Append, Stored};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS segments (
    channel    TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    body       BLOB NOT NULL,
    PRIMARY KEY (channel, first_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segments_by_expiry ON segments (expires_at);
CREATE TABLE IF NOT EXISTS floors (channel TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
";

/// Messages in one segment at most: a read of a few messages decodes at
/// most this many, and trimming frees space in steps of this size.
const MAX_MESSAGES: usize = 256;
/// A segment closes once its body is this large, whatever its count.
const MAX_BYTES: usize = 64 * 1024;
/// Each message's fixed part in a body: seq, time, expiry, data length.
const HEADER: usize = 8 + 8 + 8 + 4;

/// `body` of a run of messages: per message, little-endian seq (u64), time
/// and expiry (i64, Unix ms), the data's length (u32), then the data.
pub fn encode(run: &[&Append], out: &mut Vec<u8>) {
    out.clear();
    // Its exact size, not doubling past it: bodies reach 64 KiB.
    out.reserve_exact(run.iter().map(|m| HEADER + m.data.len()).sum());
    for m in run {
        out.extend_from_slice(&m.seq.to_le_bytes());
        out.extend_from_slice(&m.time_ms.to_le_bytes());
        out.extend_from_slice(&m.expires_ms.to_le_bytes());
        out.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        out.extend_from_slice(m.data.as_bytes());
    }
}

/// The messages of a `body`, in order, to `each` until it says stop
/// (`false`). A body that does not parse is an error, never a panic.
pub fn decode(body: &[u8], mut each: impl FnMut(Stored) -> bool) -> rusqlite::Result<()> {
    let mut rest = body;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(HEADER).ok_or_else(corrupt)?;
        let word = |i: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            w.copy_from_slice(&head[i * 8..i * 8 + 8]);
            w
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[24..28]);
        let (data, tail) = tail
            .split_at_checked(u32::from_le_bytes(len) as usize)
            .ok_or_else(corrupt)?;
        let data = std::str::from_utf8(data).map_err(|_| corrupt())?;
        let stored = Stored {
            seq: u64::from_le_bytes(word(0)),
            expires_ms: i64::from_le_bytes(word(2)),
            data: data.to_string(),
        };
        if !each(stored) {
            return Ok(());
        }
        rest = tail;
    }
    Ok(())
}

fn corrupt() -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        "a stored segment does not parse".into(),
    )
}

/// Each channel's messages of a batch, in order, in the order channels
/// first appear: the one grouping a batch gets, for its segments, its
/// seq check, its `channels` rows and its trims.
pub fn by_channel(batch: &[Append]) -> Vec<Vec<&Append>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut runs: Vec<Vec<&Append>> = Vec::new();
    for m in batch {
        let i = *index.entry(&m.channel).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        runs[i].push(m);
    }
    runs
}

/// Fails, as a duplicate key would, if a batch holds a message at or below
/// its channel's last stored seq, or its messages of a channel are not in
/// increasing seq order: a row per message had that check from its key, a
/// segment's key (its first seq) does not.
pub fn ensure_new(conn: &Connection, runs: &[Vec<&Append>]) -> rusqlite::Result<()> {
    for run in runs {
        let mut after = last_seq(conn, &run[0].channel)?;
        for m in run {
            if m.seq <= after {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
                    Some(format!("{}: seq {} is not after {after}", m.channel, m.seq)),
                ));
            }
            after = m.seq;
        }
    }
    Ok(())
}

/// Writes a batch, grouped by `by_channel` (each channel's messages in seq
/// order), as segments.
pub fn write(conn: &Connection, runs: &[Vec<&Append>]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO segments (channel, first_seq, last_seq, expires_at, count, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut body = Vec::new();
    for run in runs {
        let mut start = 0;
        while start < run.len() {
            let (mut end, mut bytes) = (start, 0);
            while end < run.len()
                && end - start < MAX_MESSAGES
                && (end == start || bytes < MAX_BYTES)
            {
                bytes += HEADER + run[end].data.len();
                end += 1;
            }
            let segment = &run[start..end];
            encode(segment, &mut body);
            let expires = segment.iter().map(|m| m.expires_ms).max().unwrap_or(0);
            insert.execute(params![
                &*segment[0].channel,
                segment[0].seq as i64,
                segment[segment.len() - 1].seq as i64,
                expires,
                segment.len() as i64,
                &body,
            ])?;
            start = end;
        }
    }
    Ok(())
}

/// The seq at and below which `channel` retains nothing as of its last
/// trim (0: no floor).
fn stored_floor(conn: &Connection, channel: &str) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM floors WHERE channel = ?1")?
        .query_row([channel], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// The last seq stored of `channel` (its `channels` row; 0: none yet).
fn last_seq(conn: &Connection, channel: &str) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT last_seq FROM channels WHERE name = ?1")?
        .query_row([channel], |r| r.get(0))
        .optional()?;
    Ok(seq.map_or(0, |s| s as u64))
}

/// The seq at and below which a reader sees nothing of `channel` when it
/// keeps its last `keep` messages: trims may not have reached it yet.
fn floor(conn: &Connection, channel: &str, keep: u64) -> rusqlite::Result<u64> {
    let kept_from = last_seq(conn, channel)?.saturating_sub(keep);
    Ok(stored_floor(conn, channel)?.max(kept_from))
}

/// Retained messages of `channel` (which keeps its last `keep`) with
/// `after < seq <= upto`, oldest first, at most `limit`.
pub fn read(
    conn: &Connection,
    channel: &str,
    after: u64,
    upto: u64,
    limit: usize,
    keep: u64,
) -> rusqlite::Result<Vec<Stored>> {
    let floor = floor(conn, channel, keep)?;
    let mut found = Vec::new();
    if limit > 0 {
        scan(conn, channel, after.max(floor), upto, |m| {
            found.push(m);
            found.len() < limit
        })?;
    }
    Ok(found)
}

/// The oldest retained `seq > after` of `channel` (which keeps its last
/// `keep`) not expired at `now_ms`.
pub fn oldest(
    conn: &Connection,
    channel: &str,
    after: u64,
    keep: u64,
    now_ms: i64,
) -> rusqlite::Result<Option<u64>> {
    let mut found = None;
    scan(
        conn,
        channel,
        after.max(floor(conn, channel, keep)?),
        u64::MAX,
        |m| {
            if m.expires_ms > now_ms {
                found = Some(m.seq);
            }
            found.is_none()
        },
    )?;
    Ok(found)
}

/// Hands `each` the stored messages of `channel` with `after < seq <=
/// upto`, in order, until it says stop. Starts at the segment holding
/// `after + 1`: the last one to begin at or before it.
fn scan(
    conn: &Connection,
    channel: &str,
    after: u64,
    upto: u64,
    mut each: impl FnMut(Stored) -> bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM segments WHERE channel = ?1 AND first_seq <= ?3 AND first_seq >=
           coalesce((SELECT max(first_seq) FROM segments WHERE channel = ?1 AND first_seq <= ?2), 0)
         ORDER BY first_seq",
    )?;
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    let mut rows = stmt.query(params![
        channel,
        clamp(after.saturating_add(1)),
        clamp(upto)
    ])?;
    let mut going = true;
    while going {
        let Some(row) = rows.next()? else {
            break;
        };
        let body = row.get_ref(0)?.as_blob()?;
        decode(body, |m| {
            if m.seq > upto {
                going = false;
            } else if m.seq > after {
                going = each(m);
            }
            going
        })?;
    }
    Ok(())
}

/// What a trim did: messages no longer retained (those newly at or below
/// the floor), and whether segments below the floor are left to delete.
#[derive(Debug, PartialEq)]
pub struct Trimmed {
    pub messages: u64,
    pub more: bool,
}

/// Retains nothing of `channel` at or below `upto` from now on, and deletes
/// up to `limit` of its segments wholly below that. (`first_seq <= upto`
/// bounds the search to the channel's head: `last_seq` has no index.)
pub fn trim(
    conn: &Connection,
    channel: &str,
    upto: u64,
    limit: usize,
) -> rusqlite::Result<Trimmed> {
    let was = stored_floor(conn, channel)?;
    if upto <= was {
        return delete_below(conn, channel, was, limit).map(|more| Trimmed { messages: 0, more });
    }
    let (first, last) = bounds(conn, channel)?;
    // Seqs of a channel are consecutive: those retained in (was, upto].
    let messages = match (first, last) {
        (Some(first), Some(last)) => upto
            .min(last)
            .saturating_sub(was.max(first.saturating_sub(1))),
        _ => 0,
    };
    conn.prepare_cached(
        "INSERT INTO floors (channel, seq) VALUES (?1, ?2)
         ON CONFLICT (channel) DO UPDATE SET seq = max(seq, excluded.seq)",
    )?
    .execute(params![channel, upto as i64])?;
    let more = delete_below(conn, channel, upto, limit)?;
    Ok(Trimmed { messages, more })
}

/// `delete_below`'s statement (a test counts how often it is prepared).
pub(super) const DELETE_BELOW: &str = "DELETE FROM segments WHERE channel = ?1 AND first_seq IN
   (SELECT first_seq FROM segments WHERE channel = ?1 AND first_seq <= ?2
      AND last_seq <= ?2 ORDER BY first_seq LIMIT ?3)";

/// Deletes up to `limit` segments of `channel` wholly at or below `floor`;
/// true when that many went (more may be left).
fn delete_below(
    conn: &Connection,
    channel: &str,
    floor: u64,
    limit: usize,
) -> rusqlite::Result<bool> {
    let deleted =
        conn.prepare_cached(DELETE_BELOW)?
            .execute(params![channel, floor as i64, limit as i64])?;
    Ok(deleted >= limit)
}

/// The first seq of `channel`'s first segment and the last of its last.
fn bounds(conn: &Connection, channel: &str) -> rusqlite::Result<(Option<u64>, Option<u64>)> {
    let (first, last): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT min(first_seq), (SELECT last_seq FROM segments WHERE channel = ?1
                                     ORDER BY first_seq DESC LIMIT 1)
             FROM segments WHERE channel = ?1",
        )?
        .query_row([channel], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((first.map(|s| s as u64), last.map(|s| s as u64)))
}

/// Deletes up to `limit` segments whose every message has expired at
/// `now_ms`; returns how many messages they held.
pub fn delete_expired(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<u64> {
    let mut delete = conn.prepare_cached(
        "DELETE FROM segments WHERE (channel, first_seq) IN
           (SELECT channel, first_seq FROM segments WHERE expires_at <= ?1 LIMIT ?2)
         RETURNING count",
    )?;
    let counts = delete.query_map(params![now_ms, limit as i64], |r| r.get::<_, i64>(0))?;
    counts.sum::<rusqlite::Result<i64>>().map(|n| n as u64)
}

/// Moves the rows of the table of one row per message (syncd before
/// segments) into segments, in the caller's transaction, and drops it.
/// Returns how many messages moved.
pub fn migrate(conn: &Connection) -> rusqlite::Result<u64> {
    let old: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_none() {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let mut stmt = conn.prepare(
            "SELECT channel, seq, time, expires_at, data FROM messages ORDER BY channel, seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut run: Vec<Append> = Vec::new();
        while let Some(row) = rows.next()? {
            let channel: String = row.get(0)?;
            if run.len() >= MAX_MESSAGES || run.first().is_some_and(|m| *m.channel != *channel) {
                write(conn, &by_channel(&run))?;
                run.clear();
            }
            run.push(Append {
                channel: channel.into(),
                seq: row.get::<_, i64>(1)? as u64,
                time_ms: row.get(2)?,
                expires_ms: row.get(3)?,
                data: row.get::<_, String>(4)?.into(),
                epoch: "".into(),
                idempotency: None,
                state: None,
                expected: None,
                ingested: false,
            });
            moved += 1;
        }
        write(conn, &by_channel(&run))?;
    }
    conn.execute_batch("DROP TABLE messages;")?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::shard_db::{shard_path, ShardDb};

    fn msg(channel: &str, seq: u64, data: &str) -> Append {
        Append {
            channel: channel.into(),
            seq,
            time_ms: 7,
            expires_ms: i64::MAX,
            data: data.into(),
            epoch: "e".into(),
            idempotency: None,
            state: None,
            expected: None,
            ingested: false,
        }
    }

    fn seqs(found: &[Stored]) -> Vec<u64> {
        found.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_body_round_trips_and_a_damaged_one_is_an_error() {
        let run = [msg("a", 1, "{}"), msg("a", 2, "\"é\"")];
        let mut body = Vec::new();
        encode(&run.iter().collect::<Vec<_>>(), &mut body);
        let mut got = Vec::new();
        decode(&body, |m| {
            got.push(m);
            true
        })
        .unwrap();
        assert_eq!(seqs(&got), [1, 2]);
        assert_eq!(got[1].data, "\"é\"");
        for cut in [1, HEADER + 1, body.len() - 1] {
            assert!(decode(&body[..cut], |_| true).is_err(), "cut at {cut}");
        }
        let mut bad = body.clone();
        bad[HEADER] = 0xff;
        assert!(decode(&bad, |_| true).is_err(), "not UTF-8");
    }

    /// Large messages close a segment by size; reads cross segments, and
    /// a trim to the middle of one hides exactly what it should.
    #[test]
    fn segments_close_by_size_and_trims_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let big = "x".repeat(40 * 1024);
        let batch: Vec<Append> = (1..=5).map(|s| msg("a", s, &big)).collect();
        db.append(&batch, &[]).unwrap();
        let got = db.read("a", 1, 5, 10, u64::MAX).unwrap();
        assert_eq!(seqs(&got), vec![2, 3, 4, 5]);
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), Some(1));
        let trimmed = db.trim("a", 3, 10).unwrap();
        assert_eq!(
            trimmed,
            Trimmed {
                messages: 3,
                more: false
            }
        );
        let got = db.read("a", 0, 5, 10, u64::MAX).unwrap();
        assert_eq!(seqs(&got), vec![4, 5]);
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), Some(4));
        let again = db.trim("a", 5, 1).unwrap();
        assert_eq!(
            again,
            Trimmed {
                messages: 2,
                more: true
            },
            "3-4 went"
        );
        assert_eq!(
            db.oldest("a", 0, u64::MAX, 0).unwrap(),
            None,
            "nothing is retained"
        );
        let rest = db.trim("a", 5, 1).unwrap();
        assert_eq!(
            rest,
            Trimmed {
                messages: 0,
                more: true
            },
            "5's segment went"
        );
        assert_eq!(
            db.trim("a", 5, 1).unwrap(),
            Trimmed {
                messages: 0,
                more: false
            }
        );
    }

    /// Every read of every range, against the messages written, over
    /// segments of many sizes (batches of 1 to 300) and a moving floor.
    #[test]
    fn reads_match_a_model_of_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let mut next = 1;
        for size in [1, 3, 300, 1, 2, 256, 7, 40] {
            let batch: Vec<Append> = (next..next + size).map(|s| msg("a", s, "d")).collect();
            db.append(&batch, &[]).unwrap();
            next += size;
        }
        let last = next - 1;
        for floor in [0, 2, 4, 300, 500] {
            if floor > 0 {
                db.trim("a", floor, 1000).unwrap();
            }
            for after in (0..=last + 1).step_by(7).chain([3, 4, 5, 304, 305, 306]) {
                for upto in [after, after + 1, after + 5, after + 300, last, u64::MAX] {
                    for limit in [0, 1, 2, 10, 1000] {
                        let got = db.read("a", after, upto, limit, u64::MAX).unwrap();
                        let want: Vec<u64> = (after.max(floor) + 1..=upto.min(last))
                            .take(limit)
                            .collect();
                        assert_eq!(seqs(&got), want, "after {after} upto {upto} limit {limit}");
                    }
                }
                let oldest = db.oldest("a", after, u64::MAX, 0).unwrap();
                assert_eq!(
                    oldest,
                    (after.max(floor) < last).then_some(after.max(floor) + 1)
                );
            }
        }
    }

    /// A data folder written before segments: its rows move at open.
    #[test]
    fn a_shard_of_one_row_per_message_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = shard_path(dir.path(), 0);
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE messages (channel TEXT NOT NULL, seq INTEGER NOT NULL,
                   time INTEGER NOT NULL, expires_at INTEGER NOT NULL, data TEXT NOT NULL,
                   PRIMARY KEY (channel, seq)) WITHOUT ROWID;
                 CREATE INDEX messages_by_expiry ON messages (expires_at);",
            )
            .unwrap();
            for seq in 1..=300 {
                for channel in ["a", "b"] {
                    old.execute(
                        "INSERT INTO messages VALUES (?1, ?2, 0, ?3, ?4)",
                        params![channel, seq, i64::MAX, format!("{seq}")],
                    )
                    .unwrap();
                }
            }
        }
        let db = ShardDb::open(&path, Durability::Commit).unwrap();
        for channel in ["a", "b"] {
            let got = db.read(channel, 250, 300, 100, u64::MAX).unwrap();
            assert_eq!(seqs(&got), (251..=300).collect::<Vec<_>>());
            assert_eq!(db.oldest(channel, 0, u64::MAX, 0).unwrap(), Some(1));
            assert_eq!(got[0].data, "251");
        }
        drop(db);
        let conn = Connection::open(&path).unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'messages%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "the old table and its index are gone");
    }
}
