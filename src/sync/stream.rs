//! One channel's stream as this worker hands it to its local subscribers,
//! for a channel another worker owns: the last `seq` delivered and its
//! epoch. Messages arrive from the owner over a link; when one skips seqs
//! (the owner stored some it never released: it died or retired between
//! commit and release), or the link to the owner broke, the stream holds
//! what arrives and the worker asks the owner for what is missing (a resume
//! from `last`), then hands on the missing messages and the held ones, in
//! order, each once. What cannot be filled is announced (`Out::Resync`),
//! never skipped silently.

use bytes::Bytes;

use super::sub_buffer::SubBuffer;

/// A connection's key in the worker's connection table.
pub type ConnKey = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Messages follow on from `last`: each is handed on as it arrives.
    Live,
    /// Something may be missing (a skipped seq, a broken link, a failed
    /// fetch): arrivals are held, and the next one asks the owner.
    Stalled,
    /// The owner was asked (this round); arrivals are held.
    Fetching(u64),
}

/// What to do with a message that arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Hand it to the subscribers now.
    Deliver,
    /// Held (or a duplicate): nothing now.
    Skip,
    /// Held; ask the owner for what is missing (`start_fetch`).
    Fetch,
}

/// The owner's answer to a fetch: a resume from `last` in `epoch`.
pub struct Fetched {
    pub seq: u64,
    pub epoch: String,
    /// The replay is whole: every message after `last` up to `seq`.
    pub recovered: bool,
    pub oldest: Option<u64>,
    pub lines: Vec<Bytes>,
}

/// What a fetch's answer hands on, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    Msg(u64, Bytes),
    /// Messages after `after` up to `seq` cannot be delivered; the stream
    /// goes on after `seq` in `epoch`.
    Resync {
        after: u64,
        seq: u64,
        epoch: String,
        oldest: Option<u64>,
    },
}

pub struct Stream {
    last: u64,
    epoch: String,
    state: State,
    held: SubBuffer,
    /// Connections that joined further on than `last` (their `sub` answer
    /// came while the stream was held), with the last seq each has had.
    ahead: Vec<(ConnKey, u64)>,
}

impl Stream {
    pub fn new(last: u64, epoch: &str) -> Stream {
        Stream {
            last,
            epoch: epoch.to_string(),
            state: State::Live,
            held: SubBuffer::default(),
            ahead: Vec::new(),
        }
    }

    /// A connection subscribed with messages up to `seq` already handed to it.
    pub fn join(&mut self, conn: ConnKey, seq: u64) {
        if seq > self.last {
            self.ahead.push((conn, seq));
        }
    }

    pub fn leave(&mut self, conn: ConnKey) {
        self.ahead.retain(|&(c, _)| c != conn);
    }

    /// Whether `conn` already has the message `seq`.
    pub fn has(&self, conn: ConnKey, seq: u64) -> bool {
        self.ahead.iter().any(|&(c, s)| c == conn && s >= seq)
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Held, with no fetch asked (the last one failed).
    pub fn is_stalled(&self) -> bool {
        self.state == State::Stalled
    }

    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    /// A message from the owner; `cap` bounds what is held.
    pub fn arrive(&mut self, seq: u64, line: &Bytes, cap: usize) -> Arrival {
        let arrival = self.take(seq, line, cap);
        if arrival == Arrival::Deliver && !self.ahead.is_empty() {
            // Handed on now: whoever lacks it needs no exception any more.
            self.ahead.retain(|&(_, s)| s >= seq);
        }
        arrival
    }

    /// `arrive`, but everyone ahead stays noted: a fetch's answer hands on
    /// earlier messages after the held ones were taken, and those who have
    /// them must still be skipped then.
    fn take(&mut self, seq: u64, line: &Bytes, cap: usize) -> Arrival {
        match self.state {
            State::Live if seq == self.last + 1 => {
                self.last = seq;
                Arrival::Deliver
            }
            State::Live if seq <= self.last => Arrival::Skip,
            State::Live | State::Stalled => {
                self.held.push(seq, line, cap);
                self.state = State::Stalled;
                Arrival::Fetch
            }
            State::Fetching(_) => {
                self.held.push(seq, line, cap);
                Arrival::Skip
            }
        }
    }

    /// The link to the owner broke: until the owner has been asked again,
    /// nothing is handed on (a new owner process may have a new epoch).
    pub fn stall(&mut self) {
        self.state = State::Stalled;
    }

    /// Asks (round `round`) for what follows `last`: returns `last` and its
    /// epoch, for a resume. A fetch still waiting is forgotten.
    pub fn start_fetch(&mut self, round: u64) -> (u64, String) {
        self.state = State::Fetching(round);
        (self.last, self.epoch.clone())
    }

    /// The owner's answer to round `round` (`None`: no answer, the link
    /// broke or storage failed; the stream stays held until asked again).
    /// Returns what to hand on, and whether to fetch again (the held
    /// messages skip seqs once more).
    pub fn resolve(&mut self, round: u64, answer: Option<Fetched>, cap: usize) -> (Vec<Out>, bool) {
        if self.state != State::Fetching(round) {
            return (Vec::new(), false);
        }
        let Some(f) = answer else {
            self.state = State::Stalled;
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let same_epoch = f.epoch == self.epoch;
        let missing = f.seq.saturating_sub(self.last);
        if f.recovered && same_epoch && !f.lines.is_empty() && (f.lines.len() as u64) < missing {
            // One page of a longer fill: hand it on, keep holding, and fetch
            // what follows it.
            let from = self.last + 1;
            for (i, line) in f.lines.into_iter().enumerate() {
                out.push(Out::Msg(from + i as u64, line));
                self.last = from + i as u64;
            }
            self.state = State::Stalled;
            return (out, true);
        }
        let whole = f.recovered
            && same_epoch
            && f.seq >= self.last
            && f.lines.len() as u64 == f.seq - self.last;
        if whole {
            let from = self.last + 1;
            for (i, line) in f.lines.into_iter().enumerate() {
                out.push(Out::Msg(from + i as u64, line));
            }
        } else if f.seq != self.last || !same_epoch {
            out.push(Out::Resync {
                after: self.last,
                seq: f.seq,
                epoch: f.epoch.clone(),
                oldest: f.oldest,
            });
        }
        self.last = f.seq;
        self.epoch = f.epoch;
        self.state = State::Live;
        let held = std::mem::take(&mut self.held);
        let last_seen = held.last_seen();
        let mut fetch = false;
        match held.take_after(self.last) {
            Some(held) => {
                for (seq, line) in held {
                    match self.take(seq, &line, cap) {
                        Arrival::Deliver => out.push(Out::Msg(seq, line)),
                        Arrival::Skip => {}
                        Arrival::Fetch => fetch = true,
                    }
                }
            }
            // More arrived while fetching than can be held: those are lost
            // here, say so.
            None => {
                out.push(Out::Resync {
                    after: self.last,
                    seq: last_seen,
                    epoch: self.epoch.clone(),
                    oldest: None,
                });
                self.last = last_seen;
            }
        }
        (out, fetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> Bytes {
        Bytes::from(format!("{seq}\n"))
    }

    fn fetched(seq: u64, epoch: &str, lines: std::ops::RangeInclusive<u64>) -> Option<Fetched> {
        Some(Fetched {
            seq,
            epoch: epoch.into(),
            recovered: true,
            oldest: None,
            lines: lines.map(line).collect(),
        })
    }

    fn seqs(out: &[Out]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Out::Msg(s, _) => Some(*s),
                Out::Resync { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_skipped_seq_is_fetched_then_everything_follows_in_order_once() {
        let mut s = Stream::new(10, "e");
        assert_eq!(s.arrive(11, &line(11), 100), Arrival::Deliver);
        assert_eq!(s.arrive(11, &line(11), 100), Arrival::Skip, "a duplicate");
        // 12..=14 were stored but never released.
        assert_eq!(s.arrive(15, &line(15), 100), Arrival::Fetch);
        assert_eq!(s.start_fetch(1), (11, "e".to_string()));
        assert_eq!(s.arrive(16, &line(16), 100), Arrival::Skip);
        // A stale round changes nothing.
        assert_eq!(s.resolve(0, fetched(14, "e", 12..=14), 100).0, vec![]);
        // The owner's delivered seq is 15: 16 came after its answer.
        let (out, again) = s.resolve(1, fetched(15, "e", 12..=15), 100);
        assert_eq!(seqs(&out), vec![12, 13, 14, 15, 16]);
        assert!(!again && s.is_live());
        assert_eq!(s.arrive(17, &line(17), 100), Arrival::Deliver);
    }

    #[test]
    fn what_cannot_be_filled_is_announced() {
        // Another epoch (memory durability restart): no replay.
        let mut s = Stream::new(10, "e");
        s.stall();
        assert_eq!(s.arrive(3, &line(3), 100), Arrival::Fetch);
        s.start_fetch(1);
        assert_eq!(s.arrive(4, &line(4), 100), Arrival::Skip);
        let answer = Fetched {
            seq: 3,
            epoch: "f".into(),
            recovered: false,
            oldest: Some(1),
            lines: vec![],
        };
        let (out, _) = s.resolve(1, Some(answer), 100);
        let resync = Out::Resync {
            after: 10,
            seq: 3,
            epoch: "f".into(),
            oldest: Some(1),
        };
        assert_eq!(out, vec![resync, Out::Msg(4, line(4))]);
        // Too many held: the dropped ones are announced, then live again.
        let mut s = Stream::new(0, "e");
        s.arrive(2, &line(2), 2);
        s.start_fetch(2);
        for seq in 3..=6 {
            s.arrive(seq, &line(seq), 2);
        }
        let (out, _) = s.resolve(2, fetched(2, "e", 1..=2), 2);
        assert_eq!(seqs(&out), vec![1, 2]);
        assert!(matches!(
            out[2],
            Out::Resync {
                after: 2,
                seq: 6,
                ..
            }
        ));
        assert_eq!(s.arrive(7, &line(7), 2), Arrival::Deliver);
        // No answer: held until asked again.
        s.arrive(9, &line(9), 2);
        s.start_fetch(3);
        assert_eq!(s.resolve(3, None, 2), (vec![], false));
        assert_eq!(s.arrive(10, &line(10), 2), Arrival::Fetch);
        s.start_fetch(4);
        assert_eq!(
            seqs(&s.resolve(4, fetched(8, "e", 8..=8), 2).0),
            vec![8, 9, 10]
        );
    }

    #[test]
    fn a_fill_longer_than_a_page_goes_on_page_by_page() {
        let mut s = Stream::new(0, "e");
        assert_eq!(s.arrive(6, &line(6), 100), Arrival::Fetch);
        s.start_fetch(1);
        let (out, again) = s.resolve(1, fetched(6, "e", 1..=2), 100);
        assert_eq!((seqs(&out), again), (vec![1, 2], true));
        assert_eq!(
            s.start_fetch(2),
            (2, "e".to_string()),
            "from the page's end"
        );
        s.arrive(7, &line(7), 100);
        let (out, again) = s.resolve(2, fetched(6, "e", 3..=6), 100);
        assert_eq!((seqs(&out), again), (vec![3, 4, 5, 6, 7], false));
    }

    #[test]
    fn a_connection_ahead_keeps_its_place_while_held_messages_follow_a_fetch() {
        // Its `sub` was answered (up to 9091) while a fetch from 9090 was
        // out, and 9092, 9093 were held meanwhile: it has 9091 already.
        let mut s = Stream::new(9090, "e");
        s.stall();
        s.start_fetch(1);
        s.join(4, 9091);
        s.arrive(9092, &line(9092), 100);
        s.arrive(9093, &line(9093), 100);
        let (out, _) = s.resolve(1, fetched(9091, "e", 9091..=9091), 100);
        assert_eq!(seqs(&out), vec![9091, 9092, 9093]);
        let sent_to_4: Vec<u64> = seqs(&out).into_iter().filter(|&q| !s.has(4, q)).collect();
        assert_eq!(sent_to_4, vec![9092, 9093], "9091 twice");
        assert_eq!(s.arrive(9094, &line(9094), 100), Arrival::Deliver);
        assert!(!s.has(4, 9094));
    }

    #[test]
    fn a_connection_that_joined_ahead_gets_only_what_follows_its_answer() {
        let mut s = Stream::new(5, "e");
        s.arrive(7, &line(7), 100);
        s.start_fetch(1);
        s.join(42, 7);
        assert!(s.has(42, 7) && !s.has(42, 8) && !s.has(1, 6));
        let (out, _) = s.resolve(1, fetched(7, "e", 6..=7), 100);
        assert_eq!(seqs(&out), vec![6, 7]);
        assert_eq!(s.arrive(8, &line(8), 100), Arrival::Deliver);
        assert!(!s.has(42, 8));
    }
}
