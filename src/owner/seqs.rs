//! What the owner decides: each channel's `seq` (assigned,
//! then delivered once stored) and the epoch that names the channel's stream.

use std::collections::HashMap;

pub struct ChannelState {
    pub epoch: String,
    /// Last `seq` given to a message (it may still be on its way to disk).
    pub assigned: u64,
    /// Last `seq` stored and sent to subscribers; what `sub` and resume use.
    pub delivered: u64,
}

#[derive(Default)]
pub struct SeqTable {
    channels: HashMap<Box<str>, ChannelState>,
}

impl SeqTable {
    /// A channel as found on disk at start-up.
    pub fn load(&mut self, name: &str, epoch: String, last_seq: u64) {
        self.channels.insert(
            name.into(),
            ChannelState {
                epoch,
                assigned: last_seq,
                delivered: last_seq,
            },
        );
    }

    /// Assigns the next `seq` of `channel`: 1, 2, 3… with no hole. Returns it
    /// with the channel's epoch; a new channel takes `genesis`, the epoch its
    /// shard gives channels it has never seen (so a `sub` before the first
    /// message already names the right epoch).
    pub fn assign(&mut self, channel: &str, genesis: &str) -> (u64, String) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.assigned += 1;
            return (state.assigned, state.epoch.clone());
        }
        let state = ChannelState {
            epoch: genesis.to_string(),
            assigned: 1,
            delivered: 0,
        };
        self.channels.insert(channel.into(), state);
        (1, genesis.to_string())
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
            Some(state) => (state.delivered, state.epoch.clone()),
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
        assert_eq!(o.assign("a", "g"), (8, "ea".into()));
        assert_eq!(o.current("a", "g"), (7, "ea".into()), "not delivered yet");
        o.delivered("a", 8);
        assert_eq!(o.current("a", "g").0, 8);
        assert_eq!(o.current("b", "g"), (0, "g".into()));
        assert_eq!(o.channels(), 1, "asking stores nothing");
        assert_eq!(o.assign("b", "g"), (1, "g".into()));
    }
}
