//! A worker process: one non-blocking `mio` loop that accepts, reads, parses,
//! routes and writes. Nothing in it blocks.

mod bus_events;
mod conn;
mod connections;
mod dirty;
mod dispatch;
mod http_api;
mod owner;
mod pending;
mod read;
mod report;
mod resume;
mod static_files;
mod timers;
mod users;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener as StdTcpListener;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::bus::{self, peers, BusEvent, LinkSecret, Peers};
use crate::config::Config;
use crate::config::Durability;
use crate::control::{FromWorker, LineChannel, Retire, WorkerStats};
use crate::signals::SignalSet;
use crate::store::cache::HistoryCache;
use crate::store::shard_db::{shard_path, ShardDb};
use crate::store::thread::{Request, StoreThread, SWEEP_EVERY};
use crate::sync::idempotency::Idempotency;
use crate::sync::inbox::Inboxes;
use crate::sync::owner::ChannelOwner;
use crate::sync::presence::Presence;
use crate::sync::state::{Entry, KeyedState};
use crate::sync::subscriptions::Subscriptions;
use conn::Conn;
use pending::Pending;

const WS_LISTENER: Token = Token(0);
const TCP_LISTENER: Token = Token(1);
const MASTER: Token = Token(2);
const SIGNALS: Token = Token(3);
/// The store thread has events for us.
const STORE: Token = Token(4);
const CONN_BASE: usize = 1 << 20;
const TICK: Duration = Duration::from_millis(100);
/// Longest a new worker waits for its peers to link back before serving anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// WebSocket close code for a missing, bad or expired token.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// WebSocket close code for `POST /api/disconnect`.
pub const CLOSE_DISCONNECTED: u16 = 4003;
/// How long a connection cut off for a reason gets to receive its last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the master hands a worker when it forks it.
pub struct WorkerContext {
    pub slot: usize,
    pub config: Config,
    pub ws_listener: StdTcpListener,
    pub tcp_listener: StdTcpListener,
    pub master: StdUnixStream,
    /// Proves to the other workers that we were forked by the same master.
    pub link_secret: LinkSecret,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    Ws,
    Tcp,
}

pub struct Worker {
    slot: usize,
    config: Config,
    poll: Poll,
    listeners: Vec<(Port, TcpListener)>,
    serving: bool,
    started: Instant,
    conns: Slab<Conn>,
    next_conn_id: u64,
    subs: Subscriptions,
    owner: ChannelOwner,
    peers: Peers,
    bus_events: Vec<BusEvent>,
    pending: HashMap<u64, Pending>,
    /// Tags of the `sub`s waiting for an owner, by channel.
    pending_subs: HashMap<Box<str>, Vec<u64>>,
    next_tag: u64,
    store: StoreThread,
    cache: HistoryCache,
    inflight: VecDeque<owner::Inflight>,
    next_ticket: u64,
    disk_reads: HashMap<u64, owner::DiskRead>,
    /// Storage failed: exit so the master restarts us from what the disk holds.
    fatal: bool,
    /// As owner: acks and redelivery of the inboxes in our shards.
    inboxes: Inboxes,
    /// As owner: who waits for each ack sent to the store, by store tag.
    ack_replies: HashMap<u64, owner::ReplyTo>,
    /// As owner: who is in our channels, per worker.
    presence: Presence,
    /// Our own connections per (channel, uid), as reported to owners.
    local_presence: HashMap<(String, String), usize>,
    webhook: Option<crossbeam_channel::Sender<String>>,
    /// As owner: idempotency keys of recent backend publishes.
    idempotency: Idempotency<dispatch::Origin>,
    /// As owner: the keyed state of our channels.
    keyed: KeyedState,
    /// As owner: each of our shards' epoch for channels it has not seen yet.
    genesis: HashMap<u32, String>,
    master: LineChannel,
    signals: SignalSet,
    /// Connections with new output to write at the end of this loop turn.
    dirty: dirty::Marks,
    /// Connections whose read budget ran out while input was still waiting.
    pending_reads: Vec<usize>,
    stopping: Option<Instant>,
    stats: WorkerStats,
}

/// Runs a worker until it is told to stop; returns the process exit code.
pub fn run(ctx: WorkerContext) -> i32 {
    match Worker::new(ctx) {
        Ok(mut worker) => worker.run(),
        Err(e) => {
            log::error!("worker failed to start: {e}");
            1
        }
    }
}

pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Worker {
    fn new(ctx: WorkerContext) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (port, listener) in [(Port::Ws, ctx.ws_listener), (Port::Tcp, ctx.tcp_listener)] {
            listener.set_nonblocking(true)?;
            listeners.push((port, TcpListener::from_std(listener)));
        }
        ctx.master.set_nonblocking(true)?;
        let mut master = LineChannel::new(UnixStream::from_std(ctx.master));
        poll.registry().register(
            &mut master.stream,
            MASTER,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut signals = SignalSet::new(&[libc::SIGTERM, libc::SIGQUIT])?;
        poll.registry()
            .register(&mut signals.reader, SIGNALS, Interest::READABLE)?;
        let instance = random_u64();
        let (owner, shards, inboxes, idempotency, keyed, genesis) =
            open_shards(&ctx.config, ctx.slot)?;
        let webhook = match ctx.config.delivery.webhook_url.as_str() {
            "" => None,
            url => Some(crate::webhook::spawn(url.to_string())?),
        };
        let waker = Arc::new(Waker::new(poll.registry(), STORE)?);
        let store = StoreThread::spawn(shards, ctx.config.storage.clone(), waker)?;
        let sockets = (0..ctx.config.workers)
            .map(|s| ctx.config.bus_socket(s))
            .collect();
        let me = peers::Me {
            slot: ctx.slot,
            instance,
            secret: ctx.link_secret,
        };
        let peers = Peers::start(me, sockets, MAX_BUS_FRAME, poll.registry())?;
        Ok(Worker {
            slot: ctx.slot,
            poll,
            listeners,
            serving: false,
            started: Instant::now(),
            conns: Slab::new(),
            next_conn_id: 1,
            subs: Subscriptions::default(),
            owner,
            peers,
            bus_events: Vec::new(),
            pending: HashMap::new(),
            pending_subs: HashMap::new(),
            next_tag: 1,
            store,
            cache: HistoryCache::new(
                ctx.config.storage.cache_bytes,
                ctx.config.storage.max_history_size(),
            ),
            inflight: VecDeque::new(),
            next_ticket: 0,
            disk_reads: HashMap::new(),
            fatal: false,
            inboxes,
            ack_replies: HashMap::new(),
            presence: Presence::default(),
            local_presence: HashMap::new(),
            webhook,
            idempotency,
            keyed,
            genesis,
            master,
            signals,
            dirty: dirty::Marks::default(),
            pending_reads: Vec::new(),
            stopping: None,
            stats: WorkerStats::default(),
            config: ctx.config,
        })
    }

    fn run(&mut self) -> i32 {
        let code = self.event_loop();
        // Whatever was queued for the disk is written before we go.
        self.store.close();
        code
    }

    fn event_loop(&mut self) -> i32 {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let timeout = if self.pending_reads.is_empty() && self.dirty.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    return 1;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WS_LISTENER => self.accept(Port::Ws),
                    TCP_LISTENER => self.accept(Port::Tcp),
                    MASTER => {
                        if let Some(code) = self.on_master() {
                            return code;
                        }
                    }
                    STORE => self.on_store_events(),
                    SIGNALS => {
                        for signal in self.signals.drain() {
                            if signal == libc::SIGTERM {
                                log::info!("worker {}: SIGTERM, exiting now", self.slot);
                                return 0;
                            }
                            self.begin_stop(Retire::Shutdown);
                        }
                    }
                    token if bus::peers::is_bus_token(token) => {
                        self.peers
                            .handle(token, self.poll.registry(), &mut self.bus_events)
                    }
                    token => {
                        let Some(key) = token.0.checked_sub(CONN_BASE) else {
                            continue;
                        };
                        if event.is_writable() {
                            self.dirty.push(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_conn(key);
                        }
                    }
                }
            }
            self.on_bus_events();
            for key in std::mem::take(&mut self.pending_reads) {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.read_pending = false;
                    self.read_conn(key);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP_EVERY;
                self.idempotency.purge(now);
                let _ = self.store.requests.send(Request::Sweep {
                    now_ms: owner::now_ms(),
                });
            }
            if self.fatal {
                self.flush_all();
                return 1;
            }
            if !self.serving && self.stopping.is_none() {
                self.maybe_start_serving(now);
            }
            self.flush_all();
            if self.stopping.is_some() && self.conns.is_empty() {
                log::info!("worker {}: stopped gracefully", self.slot);
                return 0;
            }
        }
    }

    /// Accepting starts only once the links to every live peer are up, so no
    /// client of this worker can miss a message an owner sends meanwhile.
    fn maybe_start_serving(&mut self, now: Instant) {
        let settled = self.peers.is_settled();
        if !settled && now < self.started + SETTLE_TIMEOUT {
            return;
        }
        if !settled {
            log::warn!(
                "worker {}: peers did not all link back; serving anyway",
                self.slot
            );
        }
        for (port, listener) in &mut self.listeners {
            let token = if *port == Port::Ws {
                WS_LISTENER
            } else {
                TCP_LISTENER
            };
            if let Err(e) = self
                .poll
                .registry()
                .register(listener, token, Interest::READABLE)
            {
                log::error!("worker {}: cannot watch listener: {e}", self.slot);
            }
        }
        self.serving = true;
        let _ = self.master.send(&FromWorker::Ready);
        log::info!("worker {} serving (pid {})", self.slot, std::process::id());
        // Connections that queued while this slot was being replaced.
        self.accept(Port::Ws);
        self.accept(Port::Tcp);
    }

    /// Graceful stop: accept no more, tell every client why, flush, then exit.
    fn begin_stop(&mut self, why: Retire) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("worker {}: stopping gracefully", self.slot);
        let deadline = Instant::now() + self.config.limits.stop_timeout;
        self.stopping = Some(deadline);
        for (_, listener) in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let (code, reason) = connections::goodbye(why);
        for key in keys {
            self.close_with(key, code, reason, deadline);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.peers.tick(self.poll.registry(), now);
        self.redeliver(now);
        self.sweep_conns(now);
    }

    /// Writes what is queued. Writing can make more output (a connection
    /// dropped as its last frame goes out sends `leave` to its neighbours, and
    /// to other workers), so this goes round until nothing new is marked. The
    /// rounds are bounded; what is left stays marked for the next turn, which
    /// then does not wait in `poll`.
    fn flush_all(&mut self) {
        for _ in 0..FLUSH_ROUNDS {
            self.peers.flush(self.poll.registry(), &mut self.bus_events);
            if !self.bus_events.is_empty() {
                self.on_bus_events();
            }
            if self.master.has_output() {
                let _ = self.master.flush();
            }
            if self.dirty.is_empty() {
                return;
            }
            let batch = self.dirty.take();
            for &key in &batch {
                self.flush_conn(key);
            }
            self.dirty.recycle(batch);
        }
    }

    /// The connection that made a request is still the one at `key` (keys are
    /// reused after a close).
    fn is_live(&self, key: usize, conn_id: u64) -> bool {
        self.conns.get(key).is_some_and(|c| c.id == conn_id)
    }

    fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    fn next_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

/// Most write rounds per loop turn (see `flush_all`).
const FLUSH_ROUNDS: usize = 4;

/// Largest frame between workers: a resume's replay travels as one frame.
const MAX_BUS_FRAME: usize = 256 << 20;

type Opened = (
    ChannelOwner,
    HashMap<u32, ShardDb>,
    Inboxes,
    Idempotency<dispatch::Origin>,
    KeyedState,
    HashMap<u32, String>,
);

/// Opens the shard files this slot owns (`shard % workers == slot`) and loads
/// their channels. In `memory` durability, a shard that was not closed cleanly
/// may have lost messages clients saw, so its channels get new epochs. Also
/// loads the inboxes' acks and unacked messages, and recent idempotency keys.
fn open_shards(config: &Config, slot: usize) -> io::Result<Opened> {
    let mut owner = ChannelOwner::default();
    let mut inboxes = Inboxes::new(config.delivery.ack_timeout, config.delivery.max_attempts);
    let now = Instant::now();
    let mut idempotency = Idempotency::new(config.delivery.idempotency_window);
    let mut keyed = KeyedState::default();
    let mut genesis = HashMap::new();
    let now_ms = owner::now_ms();
    let mut shards = HashMap::new();
    let storage = &config.storage;
    for shard in (0..storage.shards).filter(|&s| s as usize % config.workers == slot) {
        let path = shard_path(&config.paths.data_dir, shard);
        let fail = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = ShardDb::open(&path, storage.durability).map_err(fail)?;
        let clean = db.get_state("clean_shutdown").map_err(fail)?;
        if storage.durability == Durability::Memory && clean.as_deref() == Some("0") {
            log::warn!("shard {shard} was not closed cleanly: its channels start new epochs");
            db.renew_epochs(owner::fresh_epoch).map_err(fail)?;
        }
        for (channel, key, seq, until_ms) in db.idempotency_keys(now_ms).map_err(fail)? {
            let left = Duration::from_millis(until_ms.saturating_sub(now_ms).max(0) as u64);
            idempotency.load(&channel, &key, seq, now + left);
        }
        genesis.insert(shard, db.genesis(owner::fresh_epoch).map_err(fail)?);
        for (channel, key, value, version) in db.state_keys().map_err(fail)? {
            keyed.load(&channel, &key, Entry { value, version });
        }
        for (channel, seq) in db.acks().map_err(fail)? {
            inboxes.ack(&channel, seq);
        }
        for (name, epoch, last_seq) in db.channels().map_err(fail)? {
            if name.starts_with('#') {
                // Direct messages not acked yet wait for their user again.
                let after = inboxes.acked(&name);
                let (rows, _) = db
                    .read(&name, after, last_seq, usize::MAX >> 1)
                    .map_err(fail)?;
                for m in rows {
                    let line = crate::proto::frames::msg_line(&name, m.seq, &m.data);
                    inboxes.delivered(&name, m.seq, m.expires_ms, line, m.data, now);
                }
            }
            owner.load(&name, epoch, last_seq);
        }
        shards.insert(shard, db);
    }
    Ok((owner, shards, inboxes, idempotency, keyed, genesis))
}
