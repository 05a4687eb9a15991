//! `RedisEngine`: the owner core's storage on Redis, run by one thread per
//! worker. What the core submits in a loop turn goes to the thread as one
//! batch on `flush`, and the thread sends the batch as one pipeline: each
//! append is one run of the publish script, each read one run of the range
//! script. Completions come back through a channel and wake the loop.
//!
//! When Redis cannot be reached, the batch fails at once (`Outcome::
//! Unavailable`, read errors), the thread reconnects with backoff, and the
//! next batch goes through when Redis is back: nothing waits on a dead
//! Redis longer than `IO_TIMEOUT`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

use super::keys::Keys;
use super::nodes::{self, Nodes};
use super::replies::{answers, Asked};
use super::scripts;
use crate::config::{Cluster, Storage};
use crate::proto::compact::{compact_text, has_line_break};
use crate::proto::frames;
use crate::store::message::Append;
use crate::store::open::now_ms;
use crate::store::{Completion, Engine, Gone, Request};
use crate::sync::channel::is_inbox;

/// Most requests in one pipeline.
const MAX_BATCH: usize = 4096;
/// Batches waiting for the thread before the worker stops reading clients.
const QUEUE: usize = 64;

pub struct RedisEngine {
    held: Vec<Request>,
    batches: Option<Sender<Vec<Request>>>,
    done: Receiver<Completion>,
    /// Requests the thread can no longer take, answered as failures.
    refused: Vec<Completion>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RedisEngine {
    pub fn spawn(
        cluster: &Cluster,
        storage: Storage,
        waker: Arc<Waker>,
    ) -> std::io::Result<RedisEngine> {
        let client = redis::Client::open(cluster.redis_url.as_str())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (batches, inbox) = crossbeam_channel::bounded(QUEUE);
        let (outbox, done) = crossbeam_channel::unbounded();
        let mut writer = Writer {
            client,
            con: None,
            next_try: Instant::now(),
            backoff: super::MIN_BACKOFF,
            keys: Keys::new(&cluster.prefix),
            storage,
            shas: Shas::default(),
            node: cluster.node.clone(),
            presence_ttl: cluster.presence_ttl,
            members: HashSet::new(),
            next_refresh: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("redis".into())
            .spawn(move || writer.run(inbox, outbox, waker))?;
        Ok(RedisEngine {
            held: Vec::new(),
            batches: Some(batches),
            done,
            refused: Vec::new(),
            thread: Some(thread),
        })
    }
}

impl Engine for RedisEngine {
    fn submit(&mut self, request: Request) -> Result<(), Gone> {
        if self.batches.is_none() {
            return Err(Gone(Box::new(request)));
        }
        self.held.push(request);
        Ok(())
    }

    fn flush(&mut self) {
        let Some(batches) = &self.batches else {
            return;
        };
        if self.held.is_empty() {
            return;
        }
        match batches.try_send(std::mem::take(&mut self.held)) {
            Ok(()) => {}
            // The thread is behind: keep them for the next turn (`is_busy`).
            Err(TrySendError::Full(batch)) => self.held = batch,
            Err(TrySendError::Disconnected(batch)) => {
                self.refused
                    .extend(batch.into_iter().filter_map(Request::gone));
            }
        }
    }

    fn is_busy(&self) -> bool {
        self.held.len() >= MAX_BATCH
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.refused);
        out.extend(self.done.try_iter());
    }

    fn close(&mut self) {
        self.flush();
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn numbers_messages(&self) -> bool {
        true
    }
}

struct Writer {
    client: redis::Client,
    con: Option<Nodes>,
    next_try: Instant,
    backoff: std::time::Duration,
    keys: Keys,
    storage: Storage,
    shas: Shas,
    /// This server's name in presence members.
    node: String,
    presence_ttl: Duration,
    /// (channel, uid) present here through this worker's owner core:
    /// refreshed every third of `presence_ttl` while this server lives.
    members: HashSet<(String, String)>,
    next_refresh: Instant,
}

/// SHA1s of the scripts, loaded at each connect.
#[derive(Default)]
struct Shas {
    publish: String,
    range: String,
    lookup: String,
    presence: String,
    ack: String,
    redeliver: String,
}

impl Writer {
    fn run(
        &mut self,
        inbox: Receiver<Vec<Request>>,
        outbox: Sender<Completion>,
        waker: Arc<Waker>,
    ) {
        loop {
            let wait = self.next_refresh.saturating_duration_since(Instant::now());
            let mut batch = match inbox.recv_timeout(wait) {
                Ok(batch) => batch,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.refresh_presence();
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            for completion in self.execute(batch) {
                let _ = outbox.send(completion);
            }
            let _ = waker.wake();
            // Under steady load a batch is always waiting, so the timeout
            // above never fires: refresh here too, or this node's members
            // would expire while they are connected.
            if Instant::now() >= self.next_refresh {
                self.refresh_presence();
            }
        }
    }

    /// The connection, made if there is none and the backoff allows.
    fn connection(&mut self) -> Result<&mut Nodes, String> {
        if self.con.is_none() {
            let now = Instant::now();
            if now < self.next_try {
                return Err("redis is unreachable (reconnecting)".into());
            }
            match self.open() {
                Ok(con) => {
                    log::info!("redis: connected");
                    self.backoff = super::MIN_BACKOFF;
                    self.con = Some(con);
                }
                Err(e) => {
                    // From now, not from before the attempt: a Redis that
                    // hangs spends IO_TIMEOUT in `open`, and the batches
                    // meanwhile must then fail at once, not each wait again.
                    self.next_try = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(super::MAX_BACKOFF);
                    return Err(format!("redis is unreachable: {e}"));
                }
            }
        }
        self.con.as_mut().ok_or_else(|| "no connection".into())
    }

    fn open(&mut self) -> redis::RedisResult<Nodes> {
        let mut con = Nodes::open(&self.client)?;
        self.shas = Shas {
            publish: con.load(&scripts::publish())?,
            range: con.load(&scripts::range())?,
            lookup: con.load(&scripts::lookup())?,
            presence: con.load(&scripts::presence())?,
            ack: con.load(scripts::ACK)?,
            redeliver: con.load(&scripts::redeliver())?,
        };
        Ok(con)
    }

    fn execute(&mut self, batch: Vec<Request>) -> Vec<Completion> {
        // Connected first: the commands name the scripts loaded at connect.
        let ready = self.connection().map(|_| ());
        let mut pipe: Vec<redis::Cmd> = Vec::new();
        let mut asked = Vec::new();
        let mut at_once = Vec::new();
        for request in batch {
            match request {
                Request::Append { ticket, msg, .. } => {
                    let state = msg.state.is_some();
                    pipe.push(self.publish(msg));
                    asked.push(Asked::Append { ticket, state });
                }
                Request::Range {
                    tag,
                    channel,
                    after,
                    limit,
                    from_ack,
                } => {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.shas.range).arg(4);
                    cmd.arg(self.keys.seq(&channel))
                        .arg(self.keys.epoch(&channel))
                        .arg(self.keys.log(&channel))
                        .arg(self.keys.ack(&channel));
                    cmd.arg(crate::store::open::fresh_epoch())
                        .arg(after)
                        .arg(limit)
                        .arg(if from_ack { 1 } else { 0 });
                    pipe.push(cmd);
                    asked.push(Asked::Range { tag });
                }
                Request::Lookup { tag, channel } => {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.shas.lookup).arg(4);
                    cmd.arg(self.keys.seq(&channel))
                        .arg(self.keys.epoch(&channel))
                        .arg(self.keys.state(&channel))
                        .arg(self.keys.presence(&channel));
                    cmd.arg(crate::store::open::fresh_epoch()).arg(now_ms());
                    pipe.push(cmd);
                    asked.push(Asked::Lookup { tag });
                }
                Request::Presence {
                    channel,
                    uid,
                    joined,
                } => {
                    pipe.push(self.presence(&channel, &uid, joined));
                    asked.push(Asked::Presence);
                    let member = (channel, uid);
                    match joined {
                        true => self.members.insert(member),
                        false => self.members.remove(&member),
                    };
                }
                Request::Redeliver {
                    channel,
                    seq,
                    line,
                    give_up,
                } => {
                    let mode = if give_up.is_some() { "check" } else { "send" };
                    // Inboxes have no stream at the edge: no epoch needed.
                    let payload = [format!("- {seq} ").as_bytes(), &line].concat();
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.shas.redeliver).arg(2);
                    cmd.arg(self.keys.ack(&channel))
                        .arg(self.keys.presence(&channel));
                    cmd.arg(seq)
                        .arg(channel.get(1..).unwrap_or(""))
                        .arg(now_ms())
                        .arg(self.keys.topic(&channel))
                        .arg(payload)
                        .arg(mode);
                    pipe.push(cmd);
                    asked.push(Asked::Redeliver {
                        channel,
                        seq,
                        give_up,
                    });
                }
                Request::Ack {
                    tag, channel, seq, ..
                } => {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.shas.ack).arg(1);
                    cmd.arg(self.keys.ack(&channel)).arg(seq);
                    pipe.push(cmd);
                    asked.push(Asked::Ack { tag });
                }
                // Retention is MAXLEN at each publish and expiry at reads;
                // dead letters are reported, not stored, on Redis.
                Request::Oldest { tag, .. } => at_once.push(Completion::Oldest {
                    tag,
                    result: Err("not asked of a shared engine".into()),
                }),
                Request::Read { tag, .. } => at_once.push(Completion::Read {
                    tag,
                    result: Err("not asked of a shared engine".into()),
                }),
                Request::Sweep { .. } | Request::DeadLetter { .. } | Request::Close => {}
            }
        }
        if asked.is_empty() {
            return at_once;
        }
        let (replies, broken) = match (ready, self.con.as_mut()) {
            (Ok(()), Some(con)) => con.run_each(pipe),
            (Err(e), _) => (Vec::new(), Some(e)),
            (Ok(()), None) => (Vec::new(), Some("no connection".into())),
        };
        if replies.iter().flatten().any(nodes::is_stale) {
            // Scripts flushed or slots moved: load the scripts and the slot
            // map again with a new connection.
            self.con = None;
        }
        let mut done = match broken {
            None => answers(asked, replies.into_iter()),
            Some(e) => {
                self.broke(&e);
                // What one primary answered stands; the rest failed.
                let failed = std::iter::repeat(Err(e));
                answers(asked, replies.into_iter().chain(failed))
            }
        };
        done.append(&mut at_once);
        done
    }

    fn presence(&self, channel: &str, uid: &str, joined: bool) -> redis::Cmd {
        let now = now_ms();
        let deadline = now + self.presence_ttl.as_millis() as i64;
        let event = |op| {
            let line = frames::event_line(op, channel, uid);
            [b"event ".as_slice(), &line].concat()
        };
        // An inbox's presence says who is online; it has no events.
        let topic = match is_inbox(channel) {
            true => String::new(),
            false => self.keys.topic(channel),
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas.presence).arg(1);
        cmd.arg(self.keys.presence(channel));
        cmd.arg(uid)
            .arg(&self.node)
            .arg(deadline)
            .arg(now)
            .arg(if joined { 1 } else { 0 })
            .arg(topic)
            .arg(event("join"))
            .arg(event("leave"));
        cmd
    }

    /// Pushes the deadline of this server's members forward; a server that
    /// stops doing so (killed) sees its members vanish after `presence_ttl`.
    fn refresh_presence(&mut self) {
        self.next_refresh = Instant::now() + self.presence_ttl / 3;
        if self.members.is_empty() || self.connection().is_err() {
            return;
        }
        let deadline = now_ms() + self.presence_ttl.as_millis() as i64;
        let mut pipe = Vec::with_capacity(self.members.len());
        for (channel, uid) in &self.members {
            let member = format!("{}\n{uid}", self.node);
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(self.keys.presence(channel))
                .arg(deadline)
                .arg(member);
            pipe.push(zadd);
        }
        if let Some(con) = self.con.as_mut() {
            if let Err(e) = con.run(pipe) {
                self.broke(&format!("refreshing presence: {e}"));
            }
        }
    }

    /// The connection broke or hung: dropped, and the next batches fail at
    /// once until the backoff allows a new one (a hung Redis would make
    /// each wait `IO_TIMEOUT` again).
    fn broke(&mut self, why: &str) {
        if self.con.take().is_some() {
            log::error!("redis: {why}; reconnecting");
            self.next_try = Instant::now() + self.backoff;
        }
    }

    fn publish(&self, msg: Append) -> redis::Cmd {
        let channel = &*msg.channel;
        let data = match has_line_break(&msg.data) {
            true => compact_text(&msg.data),
            false => std::borrow::Cow::Borrowed(&*msg.data),
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas.publish).arg(5);
        let idempotency = msg.idempotency.as_ref().map(|(key, _)| key.as_str());
        cmd.arg(self.keys.seq(channel))
            .arg(self.keys.epoch(channel))
            .arg(self.keys.log(channel))
            .arg(self.keys.state(channel))
            .arg(self.keys.idempotency(channel, idempotency.unwrap_or("")));
        // The key lives as long as the core asked: `idempotency_window`,
        // or a queue ingest's `dedupe_window`.
        let window = msg.idempotency.as_ref().map_or(0, |(_, until)| {
            (until.saturating_sub(msg.time_ms).max(1000) as u64).div_ceil(1000)
        });
        cmd.arg(crate::store::open::fresh_epoch())
            .arg(data)
            .arg(msg.expires_ms)
            .arg(self.storage.retention_for(channel).0)
            .arg(self.keys.topic(channel))
            .arg(serde_json::to_string(channel).unwrap_or_default())
            .arg(window);
        match (&msg.state, msg.expected) {
            (Some((key, value, _)), Some(expected)) => {
                let mode = if value.is_some() { "set" } else { "del" };
                cmd.arg(mode)
                    .arg(key)
                    .arg(serde_json::to_string(key).unwrap_or_default())
                    .arg(value.as_deref().unwrap_or("null"))
                    .arg(expected);
            }
            _ => {
                cmd.arg("").arg("").arg("").arg("").arg(0);
            }
        }
        cmd.arg(self.storage.retention_for(channel).1.as_millis() as u64);
        cmd
    }
}
