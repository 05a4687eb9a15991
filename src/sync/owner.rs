//! What the owner worker of a shard decides: each channel's next `seq`, and the
//! epoch that names this run of the channel's stream.

use std::collections::HashMap;

pub struct ChannelOwner {
    /// Changes whenever the owner's memory of its channels is lost (a new process).
    epoch: String,
    last_seq: HashMap<Box<str>, u64>,
}

impl ChannelOwner {
    pub fn new(epoch: String) -> Self {
        ChannelOwner {
            epoch,
            last_seq: HashMap::new(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Assigns the next sequence number of `channel`: 1, 2, 3… with no hole.
    pub fn next_seq(&mut self, channel: &str) -> u64 {
        if let Some(seq) = self.last_seq.get_mut(channel) {
            *seq += 1;
            return *seq;
        }
        self.last_seq.insert(channel.into(), 1);
        1
    }

    /// The last `seq` given out on `channel` (0 before the first message).
    pub fn current(&self, channel: &str) -> u64 {
        self.last_seq.get(channel).copied().unwrap_or(0)
    }

    pub fn channels(&self) -> usize {
        self.last_seq.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_per_channel_and_contiguous() {
        let mut o = ChannelOwner::new("e".into());
        assert_eq!(o.current("a"), 0);
        assert_eq!(
            (o.next_seq("a"), o.next_seq("a"), o.next_seq("b")),
            (1, 2, 1)
        );
        assert_eq!((o.current("a"), o.current("b")), (2, 1));
    }
}
