//! A worker process: one non-blocking `mio` loop that accepts, reads, parses,
//! routes and writes. Nothing in it blocks.

mod answers;
mod cluster_inputs;
mod conn;
mod connections;
mod dirty;
mod dispatch;
mod http_api;
mod inputs;
mod links;
mod live;
mod owner_side;
mod pending;
mod process;
mod read;
mod report;
mod request_limits;
mod static_files;
mod timers;
mod users;

use std::io;
use std::net::TcpListener as StdTcpListener;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::bus::{self, LinkSecret};
use crate::config::Config;
use crate::control::{FromWorker, Retire, ToWorker};
use crate::owner::{Command, Reply};
use crate::sync::deadlines::Rules;
use crate::sync::interest::Interest;
use crate::sync::pressure::Pressure;
use crate::sync::subscriptions::Subscriptions;
use connections::Connections;
use http_api::{Call, Next, OK_BODY};
use links::Links;
use owner_side::OwnerSide;
use pending::PendingTable;
use process::Process;
use users::LocalPresence;

const WS_LISTENER: Token = Token(0);
const TCP_LISTENER: Token = Token(1);
const MASTER: Token = Token(2);
const SIGNALS: Token = Token(3);
/// The store thread (or, on Redis, the subscriber thread) has events for
/// us: one `Waker` per `Poll` is all mio allows.
const STORE: Token = Token(4);
const CONN_BASE: usize = 1 << 20;
/// The tick while something waits on one: a link to dial again, a
/// question to another worker that may time out, requests the store's
/// queue could not take yet, a start, a stop, a cluster. Otherwise the
/// loop sleeps until the owner core's next deadline, the next connection
/// sweep (`Rules::sweep_every`), or `QUIET_TICK`.
const TICK: Duration = Duration::from_millis(100);
const QUIET_TICK: Duration = Duration::from_secs(1);
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

/// The edge: the loop and the parts it routes between. Each part is a type
/// with its own methods; what needs several parts is a method here.
pub struct Worker {
    slot: usize,
    config: Config,
    poll: Poll,
    /// Listeners, the master link, signals, and the stop.
    process: Process,
    /// Client connections, their output and read queues.
    conns: Connections,
    /// Which connection here hears which channel.
    subs: Subscriptions,
    /// The owner of this worker's shards (numbering, storing, resume, users)
    /// and its storage engine (the SQLite store thread).
    owner: OwnerSide,
    /// The links to the other workers, and what they brought.
    links: Links,
    /// Requests waiting for an owner's answer.
    pending: PendingTable,
    /// Which other workers want our channels, and which of theirs we want.
    interest: Interest,
    /// Congested channels here and elsewhere, and the publishers held.
    pressure: Pressure,
    /// Our own connections per (channel, uid), as reported to owners.
    local_presence: LocalPresence,
    webhook: Option<crossbeam_channel::Sender<String>>,
    /// With `[cluster] engine = "redis"`: the topics heard from Redis.
    cluster: Option<crate::cluster::ClusterEdge>,
    /// Queue ingest and egress threads (started once serving).
    connectors: crate::connectors::Connectors,
}

/// Runs a worker until it is told to stop; returns the process exit code.
pub fn run(ctx: WorkerContext) -> i32 {
    match process::start(ctx) {
        Ok(mut worker) => worker.run(),
        Err(e) => {
            log::error!("worker failed to start: {e}");
            1
        }
    }
}

impl Worker {
    fn run(&mut self) -> i32 {
        let code = self.event_loop();
        // Whatever was queued for the disk is written before we go.
        self.owner.close();
        code
    }

    fn event_loop(&mut self) -> i32 {
        let mut events = Events::with_capacity(1024);
        let sweep_every = Rules::from_limits(&self.config.limits).sweep_every(TICK, QUIET_TICK);
        let (mut last_tick, mut last_sweep) = (Instant::now(), Instant::now());
        loop {
            let sweep_period = match self.pressure.has_conns_over() {
                true => TICK,
                false => sweep_every,
            };
            let next_sweep = last_sweep + sweep_period;
            let next_tick = self.next_tick(last_tick).min(next_sweep);
            let timeout = if self.conns.has_work() {
                Duration::ZERO
            } else {
                let wake = self.conns.held_due().unwrap_or(next_tick);
                // mio rounds up to whole milliseconds: no early wake-ups.
                wake.min(next_tick)
                    .saturating_duration_since(Instant::now())
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
                    STORE => {
                        self.on_store_events();
                        self.on_cluster_events();
                    }
                    SIGNALS => {
                        for signal in self.process.signals.drain() {
                            if signal == libc::SIGTERM {
                                log::info!("worker {}: SIGTERM, exiting now", self.slot);
                                return 0;
                            }
                            self.begin_stop(Retire::Shutdown);
                        }
                    }
                    token if bus::peers::is_bus_token(token) => self.links.handle(token),
                    token => {
                        let Some(key) = token.0.checked_sub(CONN_BASE) else {
                            continue;
                        };
                        if event.is_writable() {
                            self.conns.mark_dirty(key);
                        }
                        if event.is_read_closed() || event.is_error() {
                            self.conns.note_read_closed(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_conn(key);
                        }
                    }
                }
            }
            self.on_bus_events();
            // Ingest threads wake the loop with the store's waker (mio
            // allows one per poll).
            if self.connectors.has_requests() {
                self.on_ingest();
            }
            self.resume_paused();
            for key in self.conns.take_pending_reads() {
                if self.conns.resume_read(key) {
                    self.read_conn(key);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                // A sweep due within half a period goes with this tick, so
                // the owner's deadlines and the sweeps fall into step and
                // an idle worker wakes once for both.
                let sweep = now + sweep_period / 2 >= next_sweep;
                last_tick = now;
                if sweep {
                    last_sweep = now;
                }
                self.tick(now, sweep);
            }
            if self.owner.is_fatal() {
                self.flush_all();
                return 1;
            }
            if self.process.waiting_to_serve() {
                self.maybe_start_serving(now);
            }
            self.flush_all();
            // After everything the turn did (flushing can publish too).
            self.owner.flush_storage();
            if self.process.stopping.is_some() && self.conns.is_empty() {
                log::info!("worker {}: stopped gracefully", self.slot);
                return 0;
            }
        }
    }

    /// Accepting starts only once the links to every live peer are up, so no
    /// client of this worker can miss a message an owner sends meanwhile.
    fn maybe_start_serving(&mut self, now: Instant) {
        let settled = self.links.is_settled();
        if !settled && now < self.process.started() + SETTLE_TIMEOUT {
            return;
        }
        if !settled {
            log::warn!(
                "worker {}: peers did not all link back; serving anyway",
                self.slot
            );
        }
        self.process.start_serving(self.poll.registry(), self.slot);
        log::info!("worker {} serving (pid {})", self.slot, std::process::id());
        self.connectors.start(&self.config, self.slot);
        // Connections that queued while this slot was being replaced.
        self.accept(Port::Ws);
        self.accept(Port::Tcp);
    }

    /// Graceful stop: accept no more, tell every client why, flush, then exit.
    fn begin_stop(&mut self, why: Retire) {
        let deadline = Instant::now() + self.config.limits.stop_timeout;
        if !self.process.begin_stop(self.poll.registry(), deadline) {
            return;
        }
        log::info!("worker {}: stopping gracefully", self.slot);
        self.connectors.stop();
        self.conns.close_all(why, deadline);
    }

    /// A ws port connection's request came with it (TCP_DEFER_ACCEPT), so
    /// it is read here, before the poll watches the socket: that saves the
    /// turn in which the poll would only have reported it.
    fn accept(&mut self, port: Port) {
        let Some(listener) = self.process.listener(port) else {
            return;
        };
        for key in self.conns.accept(port, listener) {
            self.read_conn(key);
            self.conns.watch(key);
        }
        self.forget_closed();
    }

    /// When the tick after one at `last` is due: `TICK` later while
    /// anything waits on it, else at the owner core's next deadline or
    /// `QUIET_TICK` later, whichever is first.
    fn next_tick(&self, last: Instant) -> Instant {
        let waiting = self.cluster.is_some()
            || self.links.redialing()
            || !self.pending.is_empty()
            || self.owner.is_busy()
            || self.process.waiting_to_serve()
            || self.process.stopping.is_some();
        match waiting {
            true => last + TICK,
            false => (last + QUIET_TICK).min(self.owner.next_tick(owner_side::now())),
        }
    }

    /// Timeouts, redials, the owner's redeliveries and sweeps; with
    /// `sweep`, every connection's deadlines too.
    fn tick(&mut self, now: Instant, sweep: bool) {
        // Requests the store's queue could not take move on here as well,
        // should no batch wake the loop for them (a quiet sweep does not).
        if self.owner.is_busy() {
            self.on_store_events();
        }
        self.links.tick(now);
        self.tell_owner(Command::Tick);
        self.retry_stalled_streams(now);
        let timeout = self.config.limits.request_timeout;
        for tag in self.pending.overdue(self.slot, now, timeout) {
            self.finish(tag, Reply::Answer(Err(pending::timed_out(timeout))));
        }
        if !sweep {
            return;
        }
        for (key, what) in self.conns.sweep(now, self.config.auth.jwt_leeway) {
            self.conns.carry_out(key, what, now);
            self.forget_closed();
        }
    }

    /// Connections close inside the connection table; here, right after,
    /// they leave their channels (before their keys can be reused), and
    /// their users are counted out of presence.
    fn forget_closed(&mut self) {
        for closed in self.conns.take_closed() {
            self.pending.replays.remove_conn(closed.key);
            self.pressure.forget(closed.key);
            let channels = self.subs.remove_conn(closed.key);
            if let Some(uid) = &closed.uid {
                for channel in channels {
                    self.count_presence(&channel, uid, false);
                }
            }
        }
    }

    fn on_master(&mut self) -> Option<i32> {
        let (orders, open) = self.process.orders(self.slot);
        for order in orders {
            let reply = match order {
                ToWorker::Retire {
                    why,
                    graceful: true,
                } => {
                    self.begin_stop(why);
                    continue;
                }
                ToWorker::Retire {
                    why,
                    graceful: false,
                } => {
                    log::info!(
                        "worker {}: told to retire ({why:?}), exiting now",
                        self.slot
                    );
                    self.conns.say_goodbye_now(why);
                    return Some(0);
                }
                ToWorker::Stats { tag } => FromWorker::Stats {
                    tag,
                    stats: Box::new(self.stats()),
                },
                ToWorker::Connections { tag } => FromWorker::Connections {
                    tag,
                    list: self.conns.connection_list(self.slot, &self.subs),
                },
            };
            let _ = self.process.master.send(&reply);
        }
        if !open {
            log::error!("worker {}: master is gone, exiting", self.slot);
            return Some(1);
        }
        let _ = self.process.master.flush();
        None
    }

    /// The counters for `status` and `/api/stats`: the edge's, the
    /// owner's, and the queue connectors'.
    fn stats(&self) -> crate::control::WorkerStats {
        let mut stats = self.conns.snapshot(&self.subs, &self.owner);
        stats.connectors = self.connectors.status();
        stats
    }

    /// Writes what is queued. Writing can make more output (a connection
    /// dropped as its last frame goes out sends `leave` to its neighbours, and
    /// to other workers), so this goes round until nothing new is marked. The
    /// rounds are bounded; what is left stays marked for the next turn, which
    /// then does not wait in `poll`.
    fn flush_all(&mut self) {
        if self.conns.held_due().is_some() {
            self.conns.release_held(Instant::now());
        }
        for _ in 0..FLUSH_ROUNDS {
            self.settle_interest();
            self.settle_pressure();
            self.links.flush();
            if self.links.has_events() {
                self.on_bus_events();
            }
            if self.process.master.has_output() {
                let _ = self.process.master.flush();
            }
            let Some(batch) = self.conns.take_dirty() else {
                return;
            };
            for &key in &batch {
                self.conns.flush_conn(key);
                self.forget_closed();
                self.feed_replays(key);
            }
            self.conns.recycle_dirty(batch);
        }
        // What the last round's writes changed reaches the other workers now.
        self.settle_pressure();
        self.links.flush();
    }
}

/// HTTP: the connection table parses and answers what it can; the rest is
/// routed here.
impl Worker {
    /// Serves the complete requests in the connection's buffer, up to
    /// `MAX_PIPELINED` this turn. Iterative: an answer never serves the next
    /// request from inside itself, so pipelining cannot deepen the stack.
    fn serve_http(&mut self, key: usize) {
        for _ in 0..http_api::MAX_PIPELINED {
            match self.conns.next_http(key, &self.config) {
                Next::Wait => return,
                Next::Done => {}
                Next::Call(call) => self.http_call(key, *call),
            }
        }
        // The cap for this turn: the rest of the buffer waits for the next.
        self.conns.requeue_read(key);
    }

    fn http_call(&mut self, key: usize, call: Call) {
        match call {
            Call::Publish {
                origin,
                channel,
                data,
                options,
            } => self.publish(origin, &channel, &data, options),
            Call::SetState {
                origin,
                channel,
                key: state_key,
                value,
                version,
            } => self.set_state(origin, &channel, &state_key, Some(value), version),
            Call::History {
                channel,
                since,
                limit,
                reply,
            } => self.history(key, &channel, since, limit, reply),
            Call::Json {
                channel,
                query,
                reply,
            } => self.json_query(key, &channel, query, reply),
            Call::Presence { channel, reply } => self.presence_query(key, &channel, reply),
            Call::Broadcast { data, keep_alive } => {
                self.broadcast_all(&data);
                self.conns
                    .respond_json(key, 200, OK_BODY.into(), keep_alive);
            }
            Call::Disconnect { uid, keep_alive } => {
                self.disconnect_everywhere(&uid);
                self.conns
                    .respond_json(key, 200, OK_BODY.into(), keep_alive);
            }
            Call::Stats { keep_alive } => {
                let mut stats = serde_json::to_value(self.stats()).unwrap_or_default();
                stats["worker"] = self.slot.into();
                self.conns
                    .respond_json(key, 200, stats.to_string(), keep_alive);
            }
            Call::Upgraded { user, pipelined } => {
                if let Some(user) = user {
                    self.bind_user(key, user);
                }
                // Frames sent with the request are buffered; without them
                // the socket was read empty (a short read): another read
                // would only say `WouldBlock`.
                if pipelined {
                    self.read_conn(key);
                }
            }
        }
    }
}

/// Most write rounds per loop turn (see `flush_all`).
const FLUSH_ROUNDS: usize = 4;
