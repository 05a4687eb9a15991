//! The data directory's record of itself (`syncd-meta.json`): the shard count,
//! fixed when the directory is created. Checked by the master before it forks,
//! so a missing, unwritable or corrupt data directory stops the start with a
//! clear message instead of a crash loop.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::shard_db::{shard_path, ShardDb};
use crate::config::Config;

pub const META_FILE: &str = "syncd-meta.json";

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    shards: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path}: {message}")]
    Unusable { path: String, message: String },
    #[error("shard file {path}: {source}")]
    Shard {
        path: String,
        source: rusqlite::Error,
    },
}

/// Creates or checks the data directory and returns the shard count in force.
pub fn prepare(config: &Config) -> Result<u32, DataDirError> {
    let dir = &config.paths.data_dir;
    let unusable = |message: String| DataDirError::Unusable {
        path: dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| unusable(e.to_string()))?;
    let meta_path = dir.join(META_FILE);
    let shards = match std::fs::read_to_string(&meta_path) {
        Ok(text) => {
            let meta: Meta = serde_json::from_str(&text)
                .map_err(|e| unusable(format!("{META_FILE} is corrupt: {e}")))?;
            if meta.shards != config.storage.shards {
                log::warn!(
                    "storage.shards = {} ignored: {} was created with {} shards",
                    config.storage.shards,
                    dir.display(),
                    meta.shards
                );
            }
            meta.shards
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let meta = Meta {
                format: 1,
                shards: config.storage.shards,
            };
            let text = serde_json::to_string(&meta).unwrap_or_default();
            write_atomically(&meta_path, &text)
                .map_err(|e| unusable(format!("cannot write {META_FILE}: {e}")))?;
            meta.shards
        }
        Err(e) => return Err(unusable(e.to_string())),
    };
    for shard in 0..shards {
        let path = shard_path(dir, shard);
        let shard_error = |source| DataDirError::Shard {
            path: path.display().to_string(),
            source,
        };
        let db = ShardDb::open(&path, config.storage.durability).map_err(shard_error)?;
        db.channels().map_err(shard_error)?;
    }
    Ok(shards)
}

/// The shard count a data directory was created with.
pub fn recorded_shards(dir: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(dir.join(META_FILE))?;
    let meta: Meta = serde_json::from_str(&text)?;
    Ok(meta.shards)
}

/// Writes a file whole or not at all (a crash leaves the old one): beside
/// it, then renamed over it.
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}
