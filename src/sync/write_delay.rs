//! `[delivery] write_delay`: live messages may wait this long before they
//! are written, so that a connection gets the messages of several publishes
//! in one write. With many subscribers nearly all of a server's CPU goes
//! to the kernel, one send per subscriber per message
//! (docs/benchmarks.md, fan-out); a delay trades that much latency for
//! fewer sends. Off (0) by default: every message goes out in the loop turn
//! it is released.
//!
//! The delay is one for the whole worker: the first live message after a
//! write starts it, and when it is up every connection that got messages
//! meanwhile is written together. Replies, replays and anything else that
//! is not a live message are written at once (and take the waiting
//! messages of their connection with them, in order); so does a queue that
//! has passed its backpressure mark.

use std::time::{Duration, Instant};

pub struct WriteDelay {
    delay: Duration,
    /// When the connections holding live messages are written; `None`: none
    /// holds any.
    due: Option<Instant>,
}

impl WriteDelay {
    pub fn new(delay: Duration) -> WriteDelay {
        WriteDelay { delay, due: None }
    }

    /// Whether live messages wait at all.
    pub fn is_on(&self) -> bool {
        !self.delay.is_zero()
    }

    /// A live message waits: whether this one starts the delay (the caller
    /// then reads the clock for `start`). Cheap, called per subscriber.
    pub fn starts(&self) -> bool {
        self.due.is_none()
    }

    pub fn start(&mut self, now: Instant) {
        self.due.get_or_insert(now + self.delay);
    }

    /// When the loop must wake to write what waits.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether what waits is to be written now; if so the next live
    /// message starts a new delay.
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.due {
            Some(due) if due <= now => {
                self.due = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_message_after_a_write_starts_the_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = WriteDelay::new(ms(10));
        assert!(d.is_on() && d.starts());
        d.start(t0);
        assert!(!d.starts(), "later messages join the running delay");
        d.start(t0 + ms(4));
        assert_eq!(d.due(), Some(t0 + ms(10)), "not pushed back");
        assert!(!d.take_due(t0 + ms(9)));
        assert!(d.take_due(t0 + ms(10)));
        assert_eq!(d.due(), None);
        assert!(!d.take_due(t0 + ms(30)), "nothing waits");
        assert!(d.starts());
        d.start(t0 + ms(30));
        assert_eq!(d.due(), Some(t0 + ms(40)));
        assert!(!WriteDelay::new(Duration::ZERO).is_on());
    }
}
