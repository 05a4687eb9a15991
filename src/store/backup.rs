//! `syncd backup DIR`: a consistent copy of every shard, taken with SQLite's
//! `VACUUM INTO` through a read-only connection, so it runs beside a live
//! server (WAL readers never block the writer) and each file is a snapshot.

use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};

use super::meta;
use super::shard_db::shard_path;
use crate::config::Config;

/// Copies the data directory of `config` into `target`; returns the number of shard files.
pub fn backup(config: &Config, target: &Path) -> anyhow::Result<u32> {
    let source = &config.paths.data_dir;
    let shards = meta::recorded_shards(source)
        .with_context(|| format!("{} is not a syncd data directory", source.display()))?;
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    if shard_path(target, 0).exists() {
        bail!(
            "{} already holds a backup; choose an empty folder",
            target.display()
        );
    }
    for shard in 0..shards {
        let from = shard_path(source, shard);
        let to = shard_path(target, shard);
        let conn = Connection::open_with_flags(&from, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", from.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    std::fs::copy(source.join(meta::META_FILE), target.join(meta::META_FILE))?;
    Ok(shards)
}
