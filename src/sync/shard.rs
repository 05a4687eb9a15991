//! Channel → shard → worker slot. The hash is FNV-1a over the channel's bytes:
//! it must never change, because shard files on disk are named by its result.

use std::hash::Hasher;

pub fn shard_of(channel: &str, shards: u32) -> u32 {
    let mut h = fnv::FnvHasher::default();
    h.write(channel.as_bytes());
    (h.finish() % u64::from(shards)) as u32
}

pub fn owner_slot(shard: u32, workers: usize) -> usize {
    shard as usize % workers
}

/// The worker slot that numbers and stores `channel`.
pub fn owner_of(channel: &str, shards: u32, workers: usize) -> usize {
    owner_slot(shard_of(channel, shards), workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_spreads() {
        // Pinned: a change here would move every channel to another shard
        // file. 0xaf63dc4c8601ec8c is the published FNV-1a (64-bit) of "a".
        assert_eq!(
            shard_of("a", 1 << 31),
            (0xaf63_dc4c_8601_ec8c_u64 % (1 << 31)) as u32
        );
        assert_eq!(shard_of("news", 16), 6);
        assert_eq!(shard_of("#carol", 16), 15);
        assert_eq!(
            shard_of("", 1 << 31),
            (0xcbf2_9ce4_8422_2325u64 % (1 << 31)) as u32
        );
        let mut seen = [0u32; 4];
        for i in 0..400 {
            seen[owner_of(&format!("room-{i}"), 16, 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
