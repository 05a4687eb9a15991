//! The thread that hears pub/sub: it holds one Redis connection in
//! subscribe mode, SUBSCRIBEs to the topics the worker asks for, and hands
//! each message to the worker loop (a channel, then a `Waker`). Pub/sub is
//! at most once, so the worker repairs gaps (`sync::stream`); this thread
//! tells it when a topic is (re)subscribed, after which anything published
//! before may have been missed and is fetched. A dropped connection is
//! redialed with backoff and every topic subscribed again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::keys::{parse_payload, Keys};

/// How often a subscribed connection looks at new orders.
const ORDERS_EVERY: Duration = Duration::from_millis(20);
/// How often members past their deadline are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the thread hears, for the worker loop.
#[derive(Debug)]
pub enum Heard {
    /// A message of `channel` (its `msg` line), as published.
    Msg {
        channel: String,
        epoch: String,
        seq: u64,
        line: Bytes,
    },
    /// A presence join or leave line of `channel`, from any server.
    Event { channel: String, line: Bytes },
    /// These channels' topics are subscribed (again): from now on nothing
    /// published is missed, but something before may have been.
    Subscribed(Vec<String>),
    /// The connection dropped: messages may be missed until `Subscribed`.
    Down,
    /// Connected (again).
    Up,
}

enum Order {
    Subscribe(String),
    Unsubscribe(String),
}

pub struct Subscriber {
    orders: Option<Sender<Order>>,
    heard: Receiver<Heard>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn spawn(url: &str, keys: Keys, waker: Arc<Waker>) -> std::io::Result<Subscriber> {
        let client = redis::Client::open(url).map_err(|e| std::io::Error::other(e.to_string()))?;
        let (orders, inbox) = crossbeam_channel::unbounded();
        let (outbox, heard) = crossbeam_channel::unbounded();
        let mut listener = Listener {
            client,
            sweeper: None,
            next_sweep: Instant::now(),
            bad_log: crate::logging::LogLimit::new(2),
            keys,
            topics: HashSet::new(),
            inbox,
            outbox,
            waker,
        };
        let thread = std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn(move || listener.run())?;
        Ok(Subscriber {
            orders: Some(orders),
            heard,
            thread: Some(thread),
        })
    }

    pub fn subscribe(&self, channel: &str) {
        if let Some(orders) = &self.orders {
            let _ = orders.send(Order::Subscribe(channel.to_string()));
        }
    }

    pub fn unsubscribe(&self, channel: &str) {
        if let Some(orders) = &self.orders {
            let _ = orders.send(Order::Unsubscribe(channel.to_string()));
        }
    }

    pub fn heard(&self) -> impl Iterator<Item = Heard> + '_ {
        self.heard.try_iter()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The thread sees its orders channel close within `ORDERS_EVERY`.
        self.orders = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Listener {
    client: redis::Client,
    /// A second connection, for the sweeps (the first one is in subscribe
    /// mode), with the SHA1s of the trim and presence sweep scripts.
    sweeper: Option<Sweeper>,
    next_sweep: Instant,
    /// Malformed messages (another program on our prefix) are logged
    /// within this.
    bad_log: crate::logging::LogLimit,
    keys: Keys,
    /// Every channel the worker wants, subscribed or not yet.
    topics: HashSet<String>,
    inbox: Receiver<Order>,
    outbox: Sender<Heard>,
    waker: Arc<Waker>,
}

struct Sweeper {
    con: super::nodes::Nodes,
    trim: String,
    sweep: String,
}

/// Why a subscribed session ended.
enum End {
    Stopped,
    Dropped(String),
}

impl Listener {
    fn run(&mut self) {
        let mut backoff = super::MIN_BACKOFF;
        loop {
            let session = super::connect(&self.client).map_err(|e| e.to_string());
            let end = match session {
                Ok(mut con) => {
                    backoff = super::MIN_BACKOFF;
                    self.session(&mut con)
                }
                Err(e) => End::Dropped(e),
            };
            match end {
                End::Stopped => return,
                End::Dropped(e) => {
                    log::warn!("redis pub/sub: {e}; reconnecting");
                    self.tell(Heard::Down);
                }
            }
            // Waits out the backoff, still taking orders.
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(super::MAX_BACKOFF);
            while Instant::now() < until {
                match self.inbox.recv_timeout(ORDERS_EVERY) {
                    Ok(order) => {
                        self.note(order);
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    fn note(&mut self, order: Order) -> Option<(bool, String)> {
        match order {
            Order::Subscribe(c) => self.topics.insert(c.clone()).then_some((true, c)),
            Order::Unsubscribe(c) => self.topics.remove(&c).then_some((false, c)),
        }
    }

    fn tell(&self, heard: Heard) {
        let _ = self.outbox.send(heard);
        let _ = self.waker.wake();
    }

    /// Expired messages of the channels heard here are deleted. And members
    /// of a server that stopped refreshing them (killed) are
    /// removed from the presence of every channel heard here, and their
    /// leave is published once, by whichever server removed them.
    fn sweep_presence(&mut self) {
        self.next_sweep = Instant::now() + SWEEP_EVERY;
        if self.topics.is_empty() {
            return;
        }
        if self.sweeper.is_none() {
            self.sweeper = self.open_sweeper().ok();
        }
        let Some(Sweeper { con, trim, sweep }) = self.sweeper.as_mut() else {
            return;
        };
        // One pipeline for every channel heard here: trim, then sweep.
        let now = crate::store::open::now_ms();
        let channels: Vec<&String> = self.topics.iter().collect();
        let mut pipe = Vec::with_capacity(channels.len() * 2);
        for channel in &channels {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(trim.as_str())
                .arg(1)
                .arg(self.keys.log(channel))
                .arg(now);
            pipe.push(cmd);
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sweep.as_str())
                .arg(1)
                .arg(self.keys.presence(channel))
                .arg(now);
            pipe.push(cmd);
        }
        let replies = match con.run(pipe) {
            Ok(replies) => replies,
            Err(e) => {
                log::warn!("redis sweep: {e}");
                self.sweeper = None;
                return;
            }
        };
        // Scripts flushed or slots moved: a new connection next time, but
        // the leaves of the sweeps that did run still go out first.
        let stale = replies.iter().any(super::nodes::is_stale);
        let mut leaves = Vec::new();
        // Each channel's second reply: the uids its sweep removed.
        for (channel, left) in channels.iter().zip(replies.chunks(2)) {
            let uids: Vec<String> = left
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            for uid in uids {
                let line = crate::proto::frames::event_line("leave", channel, &uid);
                let payload = [b"event ".as_slice(), &line].concat();
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(self.keys.topic(channel)).arg(payload);
                leaves.push(cmd);
            }
        }
        let sent = leaves.is_empty() || con.run(leaves).is_ok();
        if stale || !sent {
            self.sweeper = None;
        }
    }

    /// The sweeps' connection, with their scripts loaded.
    fn open_sweeper(&self) -> redis::RedisResult<Sweeper> {
        let mut con = super::nodes::Nodes::open(&self.client)?;
        let trim = con.load(super::scripts::TRIM)?;
        let sweep = con.load(&super::scripts::sweep())?;
        Ok(Sweeper { con, trim, sweep })
    }

    fn session(&mut self, con: &mut redis::Connection) -> End {
        let mut pubsub = con.as_pubsub();
        if let Err(e) = pubsub.set_read_timeout(Some(ORDERS_EVERY)) {
            return End::Dropped(e.to_string());
        }
        self.tell(Heard::Up);
        let all: Vec<String> = self.topics.iter().cloned().collect();
        // In chunks: one SUBSCRIBE of every topic (each user's inbox is one)
        // could take longer than a reply may.
        for chunk in all.chunks(RESUBSCRIBE_CHUNK) {
            let topics: Vec<String> = chunk.iter().map(|c| self.keys.topic(c)).collect();
            if let Err(e) = patiently(&mut pubsub, |p| p.subscribe(&topics)) {
                return End::Dropped(e.to_string());
            }
            self.tell(Heard::Subscribed(chunk.to_vec()));
        }
        loop {
            loop {
                let order = match self.inbox.try_recv() {
                    Ok(order) => order,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return End::Stopped,
                };
                let result = match self.note(order) {
                    Some((true, channel)) => {
                        let topic = self.keys.topic(&channel);
                        let done = patiently(&mut pubsub, |p| p.subscribe(&topic));
                        if done.is_ok() {
                            self.tell(Heard::Subscribed(vec![channel]));
                        }
                        done
                    }
                    Some((false, channel)) => {
                        let topic = self.keys.topic(&channel);
                        patiently(&mut pubsub, |p| p.unsubscribe(&topic))
                    }
                    None => Ok(()),
                };
                if let Err(e) = result {
                    return End::Dropped(e.to_string());
                }
            }
            if Instant::now() >= self.next_sweep {
                self.sweep_presence();
            }
            match pubsub.get_message() {
                Ok(_) if self.outbox.len() >= HEARD_BOUND => {
                    // The worker fans out slower than Redis brings: hear
                    // again from scratch; the streams fetch what is missed
                    // once resubscribed, as after any reconnect.
                    return End::Dropped(format!(
                        "the worker is {HEARD_BOUND} messages behind; resubscribing"
                    ));
                }
                Ok(msg) => {
                    let topic = msg.get_channel_name();
                    let Some(channel) = self.keys.channel_of(topic) else {
                        continue;
                    };
                    if let Some(line) = msg.get_payload_bytes().strip_prefix(b"event ") {
                        let line = Bytes::copy_from_slice(line);
                        let channel = channel.to_string();
                        self.tell(Heard::Event { channel, line });
                        continue;
                    }
                    let Some((epoch, seq, line)) = parse_payload(msg.get_payload_bytes()) else {
                        let now = Instant::now();
                        if let Some(left_out) = self.bad_log.allow(now) {
                            log::warn!(
                                "redis pub/sub: a malformed message on {topic}; \
                                 {left_out} more not logged"
                            );
                        }
                        continue;
                    };
                    self.tell(Heard::Msg {
                        channel: channel.to_string(),
                        epoch: epoch.to_string(),
                        seq,
                        line: Bytes::copy_from_slice(line),
                    });
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return End::Dropped(e.to_string()),
            }
        }
    }
}

/// Most messages heard and not yet taken by the worker: past it the session
/// is dropped (and made again) instead of growing memory without bound.
const HEARD_BOUND: usize = 65_536;

/// Topics per SUBSCRIBE when a session (re)subscribes everything.
const RESUBSCRIBE_CHUNK: usize = 1000;

/// A SUBSCRIBE or UNSUBSCRIBE waits for its reply on the pub/sub socket,
/// whose read timeout is the short `ORDERS_EVERY` between messages: Redis
/// gets `IO_TIMEOUT` to answer it (an fsync or a fork may stall it), not
/// the 20 ms that would drop the session.
fn patiently<T>(
    pubsub: &mut redis::PubSub<'_>,
    order: impl FnOnce(&mut redis::PubSub<'_>) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    pubsub.set_read_timeout(Some(super::IO_TIMEOUT))?;
    let result = order(pubsub);
    pubsub.set_read_timeout(Some(ORDERS_EVERY))?;
    result
}
