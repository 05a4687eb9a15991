//! Keyed state of channels, decided by the channel's owner: each key has a
//! value and a version, and a write names the version it expects
//! (compare-and-set), so of racing writers exactly one wins.
//!
//! `decided` is what the owner has granted (writes may still be on their way
//! to disk); `committed` is what is stored and may be read.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// JSON text; `None` once deleted (the version lives on).
    pub value: Option<String>,
    pub version: u64,
}

#[derive(Default)]
pub struct KeyedState {
    decided: HashMap<String, HashMap<String, Entry>>,
    committed: HashMap<String, BTreeMap<String, Entry>>,
}

impl KeyedState {
    /// A key as found on disk at start-up.
    pub fn load(&mut self, channel: &str, key: &str, entry: Entry) {
        self.decided
            .entry(channel.to_string())
            .or_default()
            .insert(key.to_string(), entry.clone());
        self.committed
            .entry(channel.to_string())
            .or_default()
            .insert(key.to_string(), entry);
    }

    /// Compare-and-set: succeeds when `expected` is the key's current version
    /// (`0`, or the last version of a deleted key, when it does not exist).
    /// Returns the new version, or the current entry on a conflict.
    pub fn cas(
        &mut self,
        channel: &str,
        key: &str,
        expected: u64,
        value: Option<String>,
    ) -> Result<u64, Entry> {
        let keys = self.decided.entry(channel.to_string()).or_default();
        let current = keys.get(key).cloned().unwrap_or(Entry {
            value: None,
            version: 0,
        });
        let absent = current.value.is_none();
        let matches = expected == current.version || (absent && expected == 0);
        if !matches || (absent && value.is_none()) {
            return Err(current);
        }
        let version = current.version + 1;
        keys.insert(key.to_string(), Entry { value, version });
        Ok(version)
    }

    /// The write that got `version` is stored: readers may see it now.
    pub fn commit(&mut self, channel: &str, key: &str, value: Option<String>, version: u64) {
        let keys = self.committed.entry(channel.to_string()).or_default();
        if keys.get(key).is_none_or(|e| e.version < version) {
            keys.insert(key.to_string(), Entry { value, version });
        }
    }

    pub fn get(&self, channel: &str, key: &str) -> Entry {
        self.committed
            .get(channel)
            .and_then(|k| k.get(key))
            .cloned()
            .unwrap_or(Entry {
                value: None,
                version: 0,
            })
    }

    /// The existing keys of `channel` after `after`, in key order: a page
    /// of `state` starts there.
    pub fn keys_after<'a>(
        &'a self,
        channel: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        self.committed
            .get(channel)
            .into_iter()
            .flat_map(move |keys| keys.range((from.clone(), Unbounded)))
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, e)| (k.as_str(), e))
    }

    /// Every existing key of `channel`, in key order.
    pub fn all(&self, channel: &str) -> Vec<(&str, &Entry)> {
        self.committed
            .get(channel)
            .map(|keys| {
                keys.iter()
                    .filter(|(_, e)| e.value.is_some())
                    .map(|(k, e)| (k.as_str(), e))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_set() {
        let mut s = KeyedState::default();
        assert_eq!(s.cas("seats", "F7", 0, Some("\"alice\"".into())), Ok(1));
        let lost = s.cas("seats", "F7", 0, Some("\"bob\"".into())).unwrap_err();
        assert_eq!(
            lost,
            Entry {
                value: Some("\"alice\"".into()),
                version: 1
            }
        );
        assert_eq!(s.get("seats", "F7").version, 0, "not committed yet");
        s.commit("seats", "F7", Some("\"alice\"".into()), 1);
        assert_eq!(s.get("seats", "F7").version, 1);
        assert_eq!(s.cas("seats", "F7", 1, None), Ok(2), "delete");
        assert!(s.cas("seats", "F7", 2, None).is_err(), "already deleted");
        assert_eq!(
            s.cas("seats", "F7", 0, Some("1".into())),
            Ok(3),
            "0 creates a deleted key"
        );
        s.commit("seats", "F7", None, 2);
        assert!(s.all("seats").is_empty());
        s.commit("seats", "F7", Some("1".into()), 3);
        assert_eq!(s.all("seats").len(), 1);
    }
}
