//! Start-up: open the shard files a slot owns and read what its owner core
//! needs back, as plain data (`Loaded`), so the core itself never touches
//! the disk.

use std::collections::HashMap;
use std::io;

use super::message::Stored;
use super::shard_db::{shard_path, ShardDb, StateRow};
use crate::config::{Config, Durability};

/// What the shards of one slot hold, for `OwnerCore::new`.
#[derive(Default)]
pub struct Loaded {
    /// (channel, epoch, last seq).
    pub channels: Vec<(String, String, u64)>,
    /// Each shard's epoch for channels it has not seen yet.
    pub genesis: HashMap<u32, String>,
    /// (inbox, acked seq).
    pub acks: Vec<(String, u64)>,
    /// Inbox messages after the ack, oldest first per inbox.
    pub unacked: Vec<(String, Stored)>,
    /// (channel, key, seq, valid until ms).
    pub idempotency: Vec<(String, String, u64, i64)>,
    pub state: Vec<StateRow>,
}

/// A new random epoch name.
pub fn fresh_epoch() -> String {
    format!("{:016x}", crate::random_u64())
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Opens the shard files this slot owns (`shard % workers == slot`) and loads
/// their channels. In `memory` durability, a shard that was not closed cleanly
/// may have lost messages clients saw, so its channels get new epochs. Also
/// loads the inboxes' acks and unacked messages, and recent idempotency keys.
pub fn open_shards(config: &Config, slot: usize) -> io::Result<(HashMap<u32, ShardDb>, Loaded)> {
    let mut loaded = Loaded::default();
    let now_ms = now_ms();
    let mut shards = HashMap::new();
    let storage = &config.storage;
    for shard in (0..storage.shards).filter(|&s| s as usize % config.workers == slot) {
        let path = shard_path(&config.paths.data_dir, shard);
        let fail = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = ShardDb::open(&path, storage.durability).map_err(fail)?;
        let clean = db.get_state("clean_shutdown").map_err(fail)?;
        if storage.durability == Durability::Memory && clean.as_deref() == Some("0") {
            log::warn!("shard {shard} was not closed cleanly: its channels start new epochs");
            db.renew_epochs(fresh_epoch).map_err(fail)?;
        }
        loaded
            .idempotency
            .extend(db.idempotency_keys(now_ms).map_err(fail)?);
        loaded
            .genesis
            .insert(shard, db.genesis(fresh_epoch).map_err(fail)?);
        loaded.state.extend(db.state_keys().map_err(fail)?);
        let acks = db.acks().map_err(fail)?;
        let acked: HashMap<&str, u64> = acks.iter().map(|(c, s)| (c.as_str(), *s)).collect();
        for (name, epoch, last_seq) in db.channels().map_err(fail)? {
            if crate::sync::channel::is_inbox(&name) {
                // Direct messages not acked yet wait for their user again.
                let after = acked.get(name.as_str()).copied().unwrap_or(0);
                let keep = storage.retention_for(&name).0;
                let rows = db
                    .read(&name, after, last_seq, usize::MAX >> 1, keep)
                    .map_err(fail)?;
                loaded
                    .unacked
                    .extend(rows.into_iter().map(|m| (name.clone(), m)));
            }
            loaded.channels.push((name, epoch, last_seq));
        }
        loaded.acks.extend(acks);
        shards.insert(shard, db);
    }
    Ok((shards, loaded))
}
