//! A rollout replaces (or first starts) the workers one slot at a time: retire
//! the slot's old worker, start its successor, wait until that one is serving,
//! then move to the next slot. Used for the first start and for every reload.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug)]
enum Step {
    Retiring { slot: usize, deadline: Instant },
    Starting { slot: usize, deadline: Instant },
}

#[derive(Debug)]
pub struct Rollout {
    queue: VecDeque<usize>,
    graceful: bool,
    reload: bool,
    step: Option<Step>,
}

#[derive(Debug, PartialEq)]
pub enum Overdue {
    Retiring(usize),
    Starting(usize),
}

impl Rollout {
    pub fn start(workers: usize) -> Rollout {
        Rollout {
            queue: (0..workers).collect(),
            graceful: false,
            reload: false,
            step: None,
        }
    }

    pub fn reload(workers: usize, graceful: bool) -> Rollout {
        Rollout {
            graceful,
            reload: true,
            ..Rollout::start(workers)
        }
    }

    pub fn graceful(&self) -> bool {
        self.graceful
    }

    pub fn is_reload(&self) -> bool {
        self.reload
    }

    /// The next slot to replace, when no step is in progress.
    pub fn next(&mut self) -> Option<usize> {
        if self.step.is_some() {
            return None;
        }
        self.queue.pop_front()
    }

    pub fn retire(&mut self, slot: usize, deadline: Instant) {
        self.step = Some(Step::Retiring { slot, deadline });
    }

    pub fn retiring(&self) -> Option<usize> {
        match self.step {
            Some(Step::Retiring { slot, .. }) => Some(slot),
            _ => None,
        }
    }

    pub fn start_slot(&mut self, slot: usize, deadline: Instant) {
        self.step = Some(Step::Starting { slot, deadline });
    }

    /// The slot's successor reported it is serving (or ran out of time).
    /// Returns true when that finished the current step.
    pub fn started(&mut self, slot: usize) -> bool {
        match self.step {
            Some(Step::Starting { slot: s, .. }) if s == slot => {
                self.step = None;
                true
            }
            _ => false,
        }
    }

    /// When the step under way is overdue.
    pub fn deadline(&self) -> Option<Instant> {
        match self.step {
            Some(Step::Retiring { deadline, .. } | Step::Starting { deadline, .. }) => {
                Some(deadline)
            }
            None => None,
        }
    }

    pub fn overdue(&self, now: Instant) -> Option<Overdue> {
        match self.step {
            Some(Step::Retiring { slot, deadline }) if now >= deadline => {
                Some(Overdue::Retiring(slot))
            }
            Some(Step::Starting { slot, deadline }) if now >= deadline => {
                Some(Overdue::Starting(slot))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_slot_at_a_time() {
        let now = Instant::now();
        let mut r = Rollout::reload(2, true);
        assert_eq!(r.next(), Some(0));
        r.retire(0, now + Duration::from_secs(1));
        assert_eq!(r.next(), None, "slot 0 still in progress");
        assert_eq!(r.retiring(), Some(0));
        assert_eq!(r.deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(
            r.overdue(now + Duration::from_secs(2)),
            Some(Overdue::Retiring(0))
        );
        r.start_slot(0, now + Duration::from_secs(1));
        assert!(!r.started(1));
        assert!(r.started(0));
        assert_eq!(r.next(), Some(1));
    }
}
