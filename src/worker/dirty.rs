//! The connections with new output to write at the end of a loop turn.
//! Writing one can make output for others (a dropped connection's `leave`
//! for its neighbours), so marks made while a batch is flushed must survive.

#[derive(Default)]
pub struct Marks {
    keys: Vec<usize>,
    /// The last flushed batch's buffer, kept to avoid reallocating.
    spare: Vec<usize>,
}

impl Marks {
    pub fn push(&mut self, key: usize) {
        self.keys.push(key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The marks to flush now, each key once, in order; marks pushed from now
    /// on form the next batch.
    pub fn take(&mut self) -> Vec<usize> {
        let mut batch = std::mem::replace(&mut self.keys, std::mem::take(&mut self.spare));
        batch.sort_unstable();
        batch.dedup();
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
    }
}
