//! Resumes whose replay comes in pages. The `sub` reply names the `seq` the
//! replay ends at (`upto`); the replay's first page follows it, and each
//! further page is asked of the owner only when the client's send queue has
//! drained (the worker decides when; `ask`), so a replay of any length
//! never sits in memory whole. Live messages of the channel that arrive
//! meanwhile are held (`SubBuffer`) and go out after the last page, so the
//! client sees every message once, in order.

use std::collections::HashMap;

use bytes::Bytes;

use super::stream::ConnKey;
use super::sub_buffer::SubBuffer;

/// One connection's paged replay of one channel.
pub struct Replay {
    /// The connection it is for (keys are reused after a close).
    pub conn_id: u64,
    /// The last `seq` queued to the client.
    pub after: u64,
    /// The `seq` the `sub` reply named: the replay ends there.
    pub upto: u64,
    pub epoch: String,
    /// Live messages of the channel that arrived meanwhile.
    pub buffer: SubBuffer,
    /// A page has been asked for and not answered yet.
    asked: bool,
}

/// A page's fate, as `Replay::advance` judges it.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More pages follow.
    More,
    /// The replay reached `upto`: live messages follow.
    Done,
    /// The page does not follow on from `after`: the rest cannot be
    /// replayed.
    Broken,
}

impl Replay {
    pub fn new(conn_id: u64, after: u64, upto: u64, epoch: String, buffer: SubBuffer) -> Replay {
        Replay {
            conn_id,
            after,
            upto,
            epoch,
            buffer,
            asked: false,
        }
    }

    /// A page of `count` messages after `after` came, ending at `cursor`
    /// when more follow.
    pub fn advance(&mut self, count: usize, cursor: Option<u64>) -> Step {
        self.asked = false;
        let reached = self.after.saturating_add(count as u64);
        match cursor {
            Some(c) if c == reached && c > self.after && c < self.upto => {
                self.after = c;
                Step::More
            }
            None if reached == self.upto => {
                self.after = reached;
                Step::Done
            }
            _ => Step::Broken,
        }
    }
}

/// What to ask the owner for: the page after `after`, up to `upto`.
#[derive(Debug, PartialEq, Eq)]
pub struct PageAsk {
    pub channel: String,
    pub conn_id: u64,
    pub after: u64,
    pub upto: u64,
    pub epoch: String,
}

/// Every paged replay of this worker.
#[derive(Default)]
pub struct Replays {
    by_channel: HashMap<Box<str>, Vec<(ConnKey, Replay)>>,
    /// How many replays each connection has.
    per_conn: HashMap<ConnKey, usize>,
    /// Channels whose last replay ended since `take_emptied`.
    emptied: Vec<Box<str>>,
}

impl Replays {
    pub fn start(&mut self, conn: ConnKey, channel: &str, replay: Replay) {
        let list = self.by_channel.entry(channel.into()).or_default();
        list.push((conn, replay));
        *self.per_conn.entry(conn).or_default() += 1;
    }

    pub fn is_replaying(&self, conn: ConnKey, channel: &str) -> bool {
        self.by_channel
            .get(channel)
            .is_some_and(|list| list.iter().any(|(c, _)| *c == conn))
    }

    pub fn has_conn(&self, conn: ConnKey) -> bool {
        self.per_conn.contains_key(&conn)
    }

    /// A live message of `channel`: held by each of its replays.
    pub fn buffer(&mut self, channel: &str, seq: u64, line: &Bytes, cap: usize) {
        if let Some(list) = self.by_channel.get_mut(channel) {
            for (_, replay) in list {
                replay.buffer.push(seq, line, cap);
            }
        }
    }

    /// The pages to ask for now for `conn` (whose queue has room): one per
    /// replay that is not waiting for one already.
    pub fn ask(&mut self, conn: ConnKey) -> Vec<PageAsk> {
        if !self.has_conn(conn) {
            return Vec::new();
        }
        let mut asks = Vec::new();
        for (channel, list) in &mut self.by_channel {
            for (_, replay) in list.iter_mut().filter(|(c, r)| *c == conn && !r.asked) {
                replay.asked = true;
                asks.push(PageAsk {
                    channel: channel.to_string(),
                    conn_id: replay.conn_id,
                    after: replay.after,
                    upto: replay.upto,
                    epoch: replay.epoch.clone(),
                });
            }
        }
        asks
    }

    /// Takes out the replay a page answers (`None`: cancelled, or the
    /// connection closed; the page is dropped).
    pub fn take(&mut self, conn: ConnKey, channel: &str, conn_id: u64) -> Option<Replay> {
        let list = self.by_channel.get_mut(channel)?;
        let i = list
            .iter()
            .position(|(c, r)| *c == conn && r.conn_id == conn_id)?;
        let (_, replay) = list.swap_remove(i);
        if list.is_empty() {
            self.by_channel.remove(channel);
            self.emptied.push(channel.into());
        }
        if let Some(n) = self.per_conn.get_mut(&conn) {
            *n -= 1;
            if *n == 0 {
                self.per_conn.remove(&conn);
            }
        }
        Some(replay)
    }

    /// An `unsub` during the replay: it stops. Returns whether one ran.
    pub fn cancel(&mut self, conn: ConnKey, channel: &str) -> bool {
        let conn_id = self
            .by_channel
            .get(channel)
            .and_then(|list| list.iter().find(|(c, _)| *c == conn))
            .map(|(_, r)| r.conn_id);
        conn_id.is_some_and(|id| self.take(conn, channel, id).is_some())
    }

    /// The connection closed: its replays end.
    pub fn remove_conn(&mut self, conn: ConnKey) {
        if self.per_conn.remove(&conn).is_none() {
            return;
        }
        let emptied = &mut self.emptied;
        self.by_channel.retain(|channel, list| {
            list.retain(|(c, _)| *c != conn);
            if list.is_empty() {
                emptied.push(channel.clone());
            }
            !list.is_empty()
        });
    }

    /// Whether some connection replays `channel`.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.by_channel.contains_key(channel)
    }

    /// Channels whose last replay ended since the last call.
    pub fn take_emptied(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.emptied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> Bytes {
        Bytes::from(format!("{seq}\n"))
    }

    #[test]
    fn pages_follow_on_until_upto_then_the_held_live_messages() {
        let mut r = Replays::default();
        r.start(
            1,
            "a",
            Replay::new(7, 100, 250, "e".into(), SubBuffer::default()),
        );
        assert!(r.is_replaying(1, "a") && r.has_conn(1) && !r.is_replaying(2, "a"));
        let asks = r.ask(1);
        assert_eq!((asks.len(), asks[0].after, asks[0].upto), (1, 100, 250));
        assert!(r.ask(1).is_empty(), "one page at a time");
        r.buffer("a", 251, &line(251), 10);
        r.buffer("a", 252, &line(252), 10);
        let mut replay = r.take(1, "a", 7).unwrap_or_else(|| panic!("replaying"));
        assert_eq!(replay.advance(100, Some(200)), Step::More);
        r.start(1, "a", replay);
        assert_eq!(r.ask(1)[0].after, 200);
        let mut replay = r.take(1, "a", 7).unwrap_or_else(|| panic!("replaying"));
        assert_eq!(replay.advance(50, None), Step::Done);
        assert_eq!(
            replay.buffer.after(250),
            Some(vec![line(251), line(252)]),
            "live ones after the replay, once"
        );
        assert!(!r.has_conn(1));
    }

    #[test]
    fn a_page_that_does_not_follow_on_breaks_the_replay() {
        let mut replay = Replay::new(1, 10, 20, "e".into(), SubBuffer::default());
        assert_eq!(replay.advance(3, Some(14)), Step::Broken, "a hole");
        let mut replay = Replay::new(1, 10, 20, "e".into(), SubBuffer::default());
        assert_eq!(replay.advance(5, None), Step::Broken, "short of upto");
        let mut replay = Replay::new(1, 10, 20, "e".into(), SubBuffer::default());
        assert_eq!(replay.advance(0, Some(10)), Step::Broken, "no progress");
    }

    #[test]
    fn a_closed_or_reused_connection_gets_nothing() {
        let mut r = Replays::default();
        r.start(
            1,
            "a",
            Replay::new(7, 0, 9, "e".into(), SubBuffer::default()),
        );
        r.start(
            1,
            "b",
            Replay::new(7, 0, 9, "e".into(), SubBuffer::default()),
        );
        assert!(r.take(1, "a", 8).is_none(), "another connection on the key");
        assert!(r.cancel(1, "b") && !r.is_replaying(1, "b"));
        r.remove_conn(1);
        assert!(!r.has_conn(1) && !r.is_replaying(1, "a"));
        assert!(r.ask(1).is_empty());
    }
}
