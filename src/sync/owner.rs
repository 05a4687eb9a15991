//! What the owner worker of a shard decides: each channel's `seq` (assigned,
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
pub struct ChannelOwner {
    channels: HashMap<Box<str>, ChannelState>,
}

impl ChannelOwner {
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

    fn state(&mut self, channel: &str, fresh_epoch: impl FnOnce() -> String) -> &mut ChannelState {
        if !self.channels.contains_key(channel) {
            self.channels.insert(
                channel.into(),
                ChannelState {
                    epoch: fresh_epoch(),
                    assigned: 0,
                    delivered: 0,
                },
            );
        }
        self.channels.get_mut(channel).expect("inserted above")
    }

    /// Assigns the next `seq` of `channel`: 1, 2, 3… with no hole. Returns it
    /// with the channel's epoch.
    pub fn assign(&mut self, channel: &str, fresh_epoch: impl FnOnce() -> String) -> (u64, String) {
        let state = self.state(channel, fresh_epoch);
        state.assigned += 1;
        (state.assigned, state.epoch.clone())
    }

    /// Messages up to `seq` are stored and on their way to subscribers.
    pub fn delivered(&mut self, channel: &str, seq: u64) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.delivered = state.delivered.max(seq);
        }
    }

    /// The last delivered `seq` and the epoch of `channel`, creating its state
    /// (and so fixing its epoch) if it is new.
    pub fn current(
        &mut self,
        channel: &str,
        fresh_epoch: impl FnOnce() -> String,
    ) -> (u64, String) {
        let state = self.state(channel, fresh_epoch);
        (state.delivered, state.epoch.clone())
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
        let mut o = ChannelOwner::default();
        o.load("a", "ea".into(), 7);
        assert_eq!(o.assign("a", || unreachable!()), (8, "ea".into()));
        assert_eq!(
            o.current("a", || unreachable!()),
            (7, "ea".into()),
            "not delivered yet"
        );
        o.delivered("a", 8);
        assert_eq!(o.current("a", || unreachable!()).0, 8);
        assert_eq!(o.current("b", || "eb".into()), (0, "eb".into()));
        assert_eq!(o.assign("b", || unreachable!()), (1, "eb".into()));
    }
}
