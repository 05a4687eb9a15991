//! The connections with new output to write at the end of a loop turn.
//! Writing one can make output for others (a dropped connection's `leave`
//! for its neighbours), so marks made while a batch is flushed must survive.

#[derive(Default)]
pub struct Marks {
    /// Each key once, in the order marked.
    keys: Vec<usize>,
    /// Which keys are in `keys`, a bit per key. Under load a connection is
    /// marked once per message, and sorting away the repeats (a thousand
    /// subscribers times the turn's messages) was 5% of a saturated
    /// worker (docs/benchmarks.md).
    marked: Vec<u64>,
    /// The last flushed batch's buffer, kept to avoid reallocating.
    spare: Vec<usize>,
}

impl Marks {
    pub fn push(&mut self, key: usize) {
        let (word, bit) = (key / 64, 1u64 << (key % 64));
        if word >= self.marked.len() {
            self.marked.resize(word + 1, 0);
        }
        if self.marked[word] & bit == 0 {
            self.marked[word] |= bit;
            self.keys.push(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The marks to flush now, each key once, in order; marks pushed from now
    /// on form the next batch.
    pub fn take(&mut self) -> Vec<usize> {
        let mut batch = std::mem::replace(&mut self.keys, std::mem::take(&mut self.spare));
        for &key in &batch {
            self.marked[key / 64] &= !(1u64 << (key % 64));
        }
        batch.sort_unstable();
        batch
    }

    /// Hands back a flushed batch's buffer. Never replaces marks pushed since
    /// `take`.
    pub fn recycle(&mut self, mut spent: Vec<usize>) {
        spent.clear();
        if spent.capacity() > self.spare.capacity() {
            self.spare = spent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_pushed_while_a_batch_is_flushed_are_kept() {
        let mut marks = Marks::default();
        marks.push(7);
        marks.push(3);
        marks.push(7);
        let batch = marks.take();
        assert_eq!(batch, vec![3, 7]);
        assert!(marks.is_empty());
        // Flushing 3 dropped it, and its `leave` went to 5.
        marks.push(5);
        marks.recycle(batch);
        assert!(!marks.is_empty(), "the mark made during the flush survives");
        assert_eq!(marks.take(), vec![5]);
        assert!(marks.is_empty());
        marks.push(5);
        marks.push(200);
        marks.push(5);
        assert_eq!(marks.take(), vec![5, 200], "marked again once taken");
    }
}
