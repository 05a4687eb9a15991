//! The messages a `sub` receives while it waits for its owner's answer, and
//! whether the answer plus these can still make a stream without a hole.

use bytes::Bytes;

#[derive(Default)]
pub struct SubBuffer {
    lines: Vec<(u64, Bytes)>,
    /// The highest `seq` seen while waiting, kept or not.
    last_seen: u64,
    /// Some messages were not kept (the buffer was full).
    dropped: bool,
    /// This wait only asks the owner for `oldest`: a gap is already known.
    gap: bool,
}

impl SubBuffer {
    /// A wait for the owner's `oldest` after a gap up to `last_seen`.
    pub fn after_gap(last_seen: u64) -> SubBuffer {
        SubBuffer {
            last_seen,
            gap: true,
            ..SubBuffer::default()
        }
    }

    /// Keeps a message unless `cap` are kept already (or a gap is known, when
    /// only the highest `seq` matters).
    pub fn push(&mut self, seq: u64, line: &Bytes, cap: usize) {
        self.last_seen = self.last_seen.max(seq);
        if self.gap || self.dropped {
            return;
        }
        if self.lines.len() >= cap {
            // Once one is dropped the rest cannot follow on: keep none.
            self.dropped = true;
            self.lines = Vec::new();
            return;
        }
        self.lines.push((seq, line.clone()));
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    pub fn is_gap(&self) -> bool {
        self.gap
    }

    /// What follows an answer that covers messages up to `seq`: the kept
    /// messages after it, or `None` when some of those were dropped.
    pub fn after(self, seq: u64) -> Option<Vec<Bytes>> {
        let kept = self.take_after(seq)?;
        Some(kept.into_iter().map(|(_, line)| line).collect())
    }

    /// `after`, with each message's `seq`.
    pub fn take_after(self, seq: u64) -> Option<Vec<(u64, Bytes)>> {
        if self.gap || (self.dropped && self.last_seen > seq) {
            return None;
        }
        Some(self.lines.into_iter().filter(|(s, _)| *s > seq).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(seqs: std::ops::RangeInclusive<u64>, cap: usize) -> SubBuffer {
        let mut b = SubBuffer::default();
        for seq in seqs {
            b.push(seq, &Bytes::from(seq.to_string()), cap);
        }
        b
    }

    #[test]
    fn what_follows_an_answer_is_whole_or_nothing() {
        let kept = fill(3..=6, 10).after(4).unwrap_or_default();
        assert_eq!(kept, vec![Bytes::from("5"), Bytes::from("6")]);
        // Full at 2: 5 and 6 were dropped, and the answer covers only up to 4.
        let b = fill(3..=6, 2);
        assert_eq!(b.last_seen(), 6);
        assert!(b.after(4).is_none(), "a gap is never silent");
        // Dropped, but only messages the answer already covers.
        assert_eq!(fill(3..=6, 2).after(6), Some(vec![]));
        let gap = SubBuffer::after_gap(9);
        assert!(gap.is_gap());
        assert!(gap.after(20).is_none());
    }
}
