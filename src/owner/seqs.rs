//! What the owner decides: each channel's `seq` (assigned,
//! then delivered once stored) and the epoch that names the channel's stream.

use std::collections::HashMap;
use std::sync::Arc;

pub struct ChannelState {
    /// The channel's name, shared with every message's `Append`.
    pub name: Arc<str>,
    /// Shared with every message's `Append`: no copy per publish.
    pub epoch: Arc<str>,
    /// Last `seq` given to a message (it may still be on its way to disk).
    pub assigned: u64,
    /// Last `seq` stored and sent to subscribers; what `sub` and resume use.
    pub delivered: u64,
}

/// A `seq` given to a message, with its channel's shared name and epoch.
#[derive(Debug, PartialEq)]
pub struct Assigned {
    pub seq: u64,
    pub name: Arc<str>,
    pub epoch: Arc<str>,
}

#[derive(Default)]
pub struct SeqTable {
    /// Keyed by the name each message's `Append` shares.
    channels: HashMap<Arc<str>, ChannelState>,
}

impl SeqTable {
    /// A channel as found on disk at start-up.
    pub fn load(&mut self, name: &str, epoch: String, last_seq: u64) {
        let name: Arc<str> = name.into();
        self.channels.insert(
            name.clone(),
            ChannelState {
                name,
                epoch: epoch.into(),
                assigned: last_seq,
                delivered: last_seq,
            },
        );
    }

    /// Assigns the next `seq` of `channel`: 1, 2, 3… with no hole. Returns it
    /// with the channel's epoch; a new channel takes `genesis`, the epoch its
    /// shard gives channels it has never seen (so a `sub` before the first
    /// message already names the right epoch).
    /// The channel's name and epoch come back shared, not copied.
    pub fn assign(&mut self, channel: &str, genesis: impl FnOnce() -> Arc<str>) -> Assigned {
        if let Some(state) = self.channels.get_mut(channel) {
            state.assigned += 1;
            return Assigned {
                seq: state.assigned,
                name: state.name.clone(),
                epoch: state.epoch.clone(),
            };
        }
        let name: Arc<str> = channel.into();
        let epoch = genesis();
        let state = ChannelState {
            name: name.clone(),
            epoch: epoch.clone(),
            assigned: 1,
            delivered: 0,
        };
        self.channels.insert(name.clone(), state);
        Assigned {
            seq: 1,
            name,
            epoch,
        }
    }

    /// Messages up to `seq` are stored and on their way to subscribers. An
    /// engine that numbers messages itself may have gone past what this core
    /// assigned (other servers publish too): the next number follows it.
    pub fn delivered(&mut self, channel: &str, seq: u64) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.delivered = state.delivered.max(seq);
            state.assigned = state.assigned.max(seq);
        }
    }

    /// The last delivered `seq` and the epoch of `channel`. Asking about a
    /// channel stores nothing, so subscribing to made-up names costs no memory.
    pub fn current(&self, channel: &str, genesis: &str) -> (u64, String) {
        match self.channels.get(channel) {
            Some(state) => (state.delivered, state.epoch.to_string()),
            None => (0, genesis.to_string()),
        }
    }

    /// Whether `channel` has had a message (or was found on disk).
    pub fn knows(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    pub fn channels(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_per_channel_contiguous_and_resumes_from_disk() {
        let mut o = SeqTable::default();
        o.load("a", "ea".into(), 7);
        let assigned = |seq, name: &str, epoch: &str| Assigned {
            seq,
            name: name.into(),
            epoch: epoch.into(),
        };
        assert_eq!(o.assign("a", || "g".into()), assigned(8, "a", "ea"));
        assert_eq!(o.current("a", "g"), (7, "ea".into()), "not delivered yet");
        o.delivered("a", 8);
        assert_eq!(o.current("a", "g").0, 8);
        assert_eq!(o.current("b", "g"), (0, "g".into()));
        assert_eq!(o.channels(), 1, "asking stores nothing");
        assert_eq!(o.assign("b", || "g".into()), assigned(1, "b", "g"));
    }
}
