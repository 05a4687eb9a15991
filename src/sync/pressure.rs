//! Backpressure on publishers: over capacity, syncd slows the publishers
//! down instead of letting subscriber queues grow until readers are cut off.
//!
//! A channel is congested while a subscriber of it (on any worker) that
//! keeps reading has more than the high mark queued after a write, until
//! that queue is back under the low mark (one that reads nothing for a
//! while stops counting: the worker's sweep decides); and every channel is
//! while a worker's link queue to another worker is over its bound. A
//! connection that publishes on a congested channel is held: it is not read
//! again (TCP flow control then stops the client) until the channel clears. Each worker tells the others what is
//! congested on its side (`News`), so a publisher on one worker is held for
//! subscribers on another.
//!
//! Plain state, no sockets: the worker feeds it the subscribers that start
//! or stop holding (their queue passed the mark or fell back under it),
//! its link queue sizes and the other workers' news, and asks whether to
//! hold a connection.

use std::collections::HashMap;

pub type ConnKey = usize;

/// A queue is over from when it passes `high` until it is back to `low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    pub high: usize,
    pub low: usize,
}

impl Marks {
    /// A subscriber's marks: well under `send_buffer_soft`, so that what is
    /// already on its way when the publishers are held still fits under it.
    pub fn from_soft(soft: usize) -> Marks {
        let high = (soft / 16).max(1);
        Marks {
            high,
            low: high / 2,
        }
    }

    /// Whether a queue of `queued` bytes is over, given whether it `was`.
    pub fn over(&self, was: bool, queued: usize) -> bool {
        match was {
            true => queued > self.low,
            false => queued > self.high,
        }
    }
}

/// The marks of a link's queue to another worker (bytes not yet written).
pub const LINK_MARKS: Marks = Marks {
    high: 4 << 20,
    low: 1 << 20,
};

/// What a worker tells the others: `channel` is congested on its side (or,
/// with `None`, its links are), or no longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct News {
    pub channel: Option<Box<str>>,
    pub on: bool,
}

#[derive(Default)]
pub struct Pressure {
    /// Subscribers here over their high mark, with their channels then.
    over: HashMap<ConnKey, Vec<Box<str>>>,
    /// Per channel: how many of `over` are in it.
    local: HashMap<Box<str>, usize>,
    /// Per channel: the other workers that say it is congested there.
    remote: HashMap<Box<str>, Vec<usize>>,
    /// Our links' queues are over their bound.
    links_busy: bool,
    /// Other workers whose links' queues are over their bound.
    remote_links: Vec<usize>,
    /// Connections held, with the channel they wait for.
    held: HashMap<ConnKey, Box<str>>,
    /// What the other workers have not been told yet.
    news: Vec<News>,
    /// Something cleared since the last `take_cleared`: held connections
    /// may go on.
    cleared: bool,
}

impl Pressure {
    /// Some subscriber here is over its high mark: its progress is watched
    /// on every tick (see `ConnTimers::note_progress`).
    pub fn has_conns_over(&self) -> bool {
        !self.over.is_empty()
    }

    /// Subscriber `key`, in `channels`, passed its high mark.
    pub fn conn_over(&mut self, key: ConnKey, channels: Vec<Box<str>>) {
        if self.over.contains_key(&key) {
            return;
        }
        for channel in &channels {
            let count = self.local.entry(channel.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.tell(Some(channel.clone()), true);
            }
        }
        self.over.insert(key, channels);
    }

    /// Subscriber `key` is back under its low mark (or gone).
    pub fn conn_under(&mut self, key: ConnKey) {
        let Some(channels) = self.over.remove(&key) else {
            return;
        };
        for channel in channels {
            let Some(count) = self.local.get_mut(&channel) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.local.remove(&channel);
                self.tell(Some(channel), false);
            }
        }
    }

    /// The largest of our link queues after a write.
    pub fn links_queued(&mut self, most: usize) {
        let busy = LINK_MARKS.over(self.links_busy, most);
        if busy != self.links_busy {
            self.links_busy = busy;
            self.tell(None, busy);
        }
    }

    fn tell(&mut self, channel: Option<Box<str>>, on: bool) {
        self.cleared |= !on;
        self.news.push(News { channel, on });
    }

    /// Whether something cleared since the last call.
    pub fn take_cleared(&mut self) -> bool {
        std::mem::take(&mut self.cleared)
    }

    /// Worker `slot` told us its news.
    pub fn heard(&mut self, slot: usize, news: News) {
        let slots = match &news.channel {
            None => &mut self.remote_links,
            Some(channel) => self.remote.entry(channel.clone()).or_default(),
        };
        slots.retain(|&s| s != slot);
        if news.on {
            slots.push(slot);
        }
        self.cleared |= !news.on;
        if let Some(channel) = news.channel {
            if self.remote.get(&channel).is_some_and(Vec::is_empty) {
                self.remote.remove(&channel);
            }
        }
    }

    /// The link with `slot` broke: what it said no longer holds (a new
    /// process says it again when it links).
    pub fn slot_down(&mut self, slot: usize) {
        self.cleared = true;
        self.remote_links.retain(|&s| s != slot);
        self.remote.retain(|_, slots| {
            slots.retain(|&s| s != slot);
            !slots.is_empty()
        });
    }

    /// Everything congested on our side, for a worker that linked anew.
    pub fn state(&self) -> Vec<News> {
        let mut all: Vec<News> = self
            .local
            .keys()
            .map(|c| News {
                channel: Some(c.clone()),
                on: true,
            })
            .collect();
        if self.links_busy {
            all.push(News {
                channel: None,
                on: true,
            });
        }
        all
    }

    /// What the other workers must be told, since the last call.
    pub fn take_news(&mut self) -> Vec<News> {
        std::mem::take(&mut self.news)
    }

    /// Nothing is congested anywhere (the common case, checked first).
    fn is_calm(&self) -> bool {
        !self.links_busy
            && self.remote_links.is_empty()
            && self.local.is_empty()
            && self.remote.is_empty()
    }

    pub fn congested(&self, channel: &str) -> bool {
        !self.is_calm()
            && (self.links_busy
                || !self.remote_links.is_empty()
                || self.local.contains_key(channel)
                || self.remote.contains_key(channel))
    }

    /// Connection `key` just published on `channel`: it is held if the
    /// channel is congested. True when it is.
    pub fn hold(&mut self, key: ConnKey, channel: &str) -> bool {
        if !self.congested(channel) {
            return false;
        }
        self.held.insert(key, channel.into());
        true
    }

    /// Whether `key` must still wait; a hold whose channel cleared ends.
    pub fn holds(&mut self, key: ConnKey) -> bool {
        let Some(channel) = self.held.get(&key) else {
            return false;
        };
        if self.congested(channel) {
            return true;
        }
        self.held.remove(&key);
        false
    }

    /// Connection `key` closed (its key may be reused).
    pub fn forget(&mut self, key: ConnKey) {
        self.held.remove(&key);
        self.conn_under(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(channel: Option<&str>, on: bool) -> News {
        News {
            channel: channel.map(Into::into),
            on,
        }
    }

    #[test]
    fn marks_have_hysteresis() {
        let m = Marks::from_soft(4 << 20);
        assert_eq!((m.high, m.low), (256 << 10, 128 << 10));
        assert!(!m.over(false, m.high));
        assert!(m.over(false, m.high + 1));
        assert!(m.over(true, m.low + 1), "stays over above the low mark");
        assert!(!m.over(true, m.low));
    }

    #[test]
    fn a_subscriber_over_its_mark_holds_publishers_of_its_channels_only() {
        let mut p = Pressure::default();
        assert!(!p.hold(1, "a"), "calm: nobody is held");
        p.conn_over(10, vec!["a".into(), "b".into()]);
        p.conn_over(11, vec!["a".into()]);
        assert_eq!(
            p.take_news(),
            vec![news(Some("a"), true), news(Some("b"), true)]
        );
        assert!(p.hold(1, "a"));
        assert!(!p.hold(2, "c"), "another channel goes on");
        assert!(p.holds(1));
        p.conn_under(10);
        assert_eq!(p.take_news(), vec![news(Some("b"), false)]);
        assert!(p.holds(1), "11 is still over in a");
        p.forget(11);
        assert_eq!(p.take_news(), vec![news(Some("a"), false)]);
        assert!(p.take_cleared());
        assert!(!p.holds(1), "released");
        assert!(!p.holds(1));
    }

    #[test]
    fn other_workers_news_holds_until_they_clear_or_their_link_breaks() {
        let mut p = Pressure::default();
        p.heard(2, news(Some("a"), true));
        p.heard(3, news(Some("a"), true));
        assert!(p.hold(1, "a"));
        p.heard(2, news(Some("a"), false));
        assert!(p.holds(1), "worker 3 still says so");
        p.slot_down(3);
        assert!(!p.holds(1));
        assert!(p.take_news().is_empty(), "nothing of ours to tell");
    }

    #[test]
    fn busy_links_hold_every_channel() {
        let mut p = Pressure::default();
        p.links_queued(LINK_MARKS.high + 1);
        assert_eq!(p.take_news(), vec![news(None, true)]);
        assert_eq!(p.state(), vec![news(None, true)]);
        assert!(p.hold(1, "any"));
        p.links_queued(LINK_MARKS.low + 1);
        assert!(p.holds(1));
        p.links_queued(0);
        assert_eq!(p.take_news(), vec![news(None, false)]);
        assert!(!p.holds(1));
        p.heard(4, news(None, true));
        assert!(p.hold(2, "other"));
        p.heard(4, news(None, false));
        assert!(!p.holds(2));
    }

    #[test]
    fn a_linked_worker_hears_the_whole_state() {
        let mut p = Pressure::default();
        p.conn_over(1, vec!["a".into()]);
        assert_eq!(p.state(), vec![news(Some("a"), true)]);
        p.conn_over(1, vec!["b".into()]);
        assert_eq!(p.state().len(), 1, "counted once until it is under");
    }
}
