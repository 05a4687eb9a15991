//! Interest between workers: a stored message crosses a worker link only to
//! the workers that want its channel (subscribers, `sub`s waiting or
//! replaying), not to every worker.
//!
//! Both ends of the rule live here, as plain logic:
//!
//! - `Watchers`, at the owner: which slots want each of its channels. A slot
//!   is added when its `sub` query (a resume, an inbox, a page, a gap repair)
//!   for the channel reaches the owner, or when it says so again after its
//!   link came back (`BusMsg::Watch { on: true }`). Links are FIFO, so every
//!   message the owner releases after that point goes to the slot, and the
//!   ones before are covered by the query's answer. A slot leaves when it
//!   says its last local interest is gone (`Watch { on: false }`) or when
//!   its link breaks (`slot_down`: it says everything again on `Up`).
//! - `Watching`, at the edge: the channels owned by other workers that this
//!   worker told their owner it wants. Whatever may end a channel's local
//!   interest (the last subscriber left, the last waiting `sub` or replay
//!   ended) makes it a candidate; once per write round the worker asks
//!   whether each candidate is still wanted and tells the owner when not.

use std::collections::{HashMap, HashSet};

/// Most workers a config allows (`config::Config::check`).
pub const MAX_SLOTS: usize = 256;

/// A set of worker slots (0..MAX_SLOTS), as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotSet([u64; MAX_SLOTS / 64]);

impl SlotSet {
    pub fn insert(&mut self, slot: usize) {
        if slot < MAX_SLOTS {
            self.0[slot / 64] |= 1 << (slot % 64);
        }
    }

    pub fn remove(&mut self, slot: usize) {
        if slot < MAX_SLOTS {
            self.0[slot / 64] &= !(1 << (slot % 64));
        }
    }

    pub fn contains(&self, slot: usize) -> bool {
        slot < MAX_SLOTS && self.0[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The slots, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// Both ends, as a worker holds them.
#[derive(Default)]
pub struct Interest {
    /// Of the channels this worker owns.
    pub watchers: Watchers,
    /// Of the channels other workers own.
    pub watching: Watching,
}

/// At the owner: which other workers want each channel's messages.
#[derive(Default)]
pub struct Watchers {
    by_channel: HashMap<Box<str>, SlotSet>,
}

impl Watchers {
    pub fn watch(&mut self, channel: &str, slot: usize) {
        match self.by_channel.get_mut(channel) {
            Some(set) => set.insert(slot),
            None => {
                let mut set = SlotSet::default();
                set.insert(slot);
                self.by_channel.insert(channel.into(), set);
            }
        }
    }

    pub fn unwatch(&mut self, channel: &str, slot: usize) {
        if let Some(set) = self.by_channel.get_mut(channel) {
            set.remove(slot);
            if set.is_empty() {
                self.by_channel.remove(channel);
            }
        }
    }

    /// The link to `slot` broke: it says again what it wants once linked.
    pub fn slot_down(&mut self, slot: usize) {
        self.by_channel.retain(|_, set| {
            set.remove(slot);
            !set.is_empty()
        });
    }

    /// The slots that want `channel` (none: an empty set).
    pub fn of(&self, channel: &str) -> SlotSet {
        self.by_channel.get(channel).copied().unwrap_or_default()
    }

    /// Channels some other worker wants.
    pub fn len(&self) -> usize {
        self.by_channel.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_channel.is_empty()
    }
}

/// At the edge: the channels owned elsewhere that this worker told their
/// owner it wants, and the ones that may no longer be wanted.
#[derive(Default)]
pub struct Watching {
    channels: HashSet<Box<str>>,
    candidates: Vec<Box<str>>,
}

impl Watching {
    /// A `sub` query for `channel` goes to its owner: the owner now sends
    /// its messages here.
    pub fn note(&mut self, channel: &str) {
        if !self.channels.contains(channel) {
            self.channels.insert(channel.into());
        }
    }

    pub fn is_watching(&self, channel: &str) -> bool {
        self.channels.contains(channel)
    }

    /// Channels whose local interest may have ended.
    pub fn maybe_unwanted(&mut self, channels: impl IntoIterator<Item = Box<str>>) {
        for channel in channels {
            if self.channels.contains(&channel) {
                self.candidates.push(channel);
            }
        }
    }

    pub fn has_candidates(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// The candidates no longer `wanted`: forgotten here, and to be told to
    /// their owners.
    pub fn settle(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        let mut gone = Vec::new();
        for channel in std::mem::take(&mut self.candidates) {
            if !wanted(&channel) && self.channels.remove(&channel) {
                gone.push(channel);
            }
        }
        gone
    }

    /// The watched channels `of` picks (those of an owner whose link came
    /// back: it is told again).
    pub fn picked(&self, of: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        self.channels.iter().filter(|c| of(c)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_set_holds_every_slot_in_order() {
        let mut s = SlotSet::default();
        assert!(s.is_empty() && s.iter().next().is_none());
        for slot in [255, 0, 64, 63, 130, 300] {
            s.insert(slot);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 130, 255]);
        assert!(s.contains(64) && !s.contains(65) && !s.contains(300));
        s.remove(64);
        s.remove(0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![63, 130, 255]);
    }

    #[test]
    fn an_owner_sends_only_to_slots_that_watch_until_they_leave_or_go_down() {
        let mut w = Watchers::default();
        assert!(w.of("a").is_empty());
        w.watch("a", 1);
        w.watch("a", 2);
        w.watch("a", 2);
        w.watch("b", 2);
        assert_eq!(w.of("a").iter().collect::<Vec<_>>(), vec![1, 2]);
        w.unwatch("a", 1);
        assert_eq!(w.of("a").iter().collect::<Vec<_>>(), vec![2]);
        w.unwatch("a", 3);
        w.slot_down(2);
        assert!(w.of("a").is_empty() && w.of("b").is_empty() && w.is_empty());
        w.watch("a", 1);
        w.unwatch("a", 1);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_edge_says_unwatch_once_when_interest_ends() {
        let mut w = Watching::default();
        w.note("a");
        w.note("b");
        w.maybe_unwanted(["a".into(), "c".into()]);
        // Still wanted (a `sub` came meanwhile): nothing to say.
        assert!(w.settle(|_| true).is_empty());
        assert!(!w.has_candidates() && w.is_watching("a"));
        w.maybe_unwanted(["a".into(), "a".into(), "b".into()]);
        let gone = w.settle(|c| c == "b");
        assert_eq!(gone, vec![Box::from("a")]);
        assert!(!w.is_watching("a") && w.is_watching("b"));
        // A candidate that is not watched (owned here, or said already) is ignored.
        w.maybe_unwanted(["a".into()]);
        assert!(!w.has_candidates());
        assert_eq!(w.picked(|c| c == "b"), vec![Box::from("b")]);
        assert_eq!(w.len(), 1);
    }
}
