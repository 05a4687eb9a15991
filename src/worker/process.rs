//! The worker as a process: start-up, its listening sockets (watched only
//! once it serves), its link to the master, its signals, and whether it is
//! stopping.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, UnixStream};
use mio::{Interest, Poll, Registry, Waker};

use super::connections::Connections;
use super::links::Links;
use super::owner_side::{self, OwnerSide};
use super::pending::PendingTable;
use super::users::LocalPresence;
use super::{Port, Worker, WorkerContext, MASTER, SIGNALS, STORE, TCP_LISTENER, WS_LISTENER};
use crate::bus::{peers, Peers};
use crate::cluster::{ClusterEdge, RedisEngine};
use crate::control::{FromWorker, LineChannel, ToWorker};
use crate::owner::{OwnerConfig, OwnerCore};
use crate::signals::SignalSet;
use crate::store::open::{open_shards, Loaded};
use crate::store::thread::StoreThread;
use crate::store::Engine;
use crate::sync::subscriptions::Subscriptions;

/// Largest frame between workers: a resume's replay travels as one frame.
const MAX_BUS_FRAME: usize = 256 << 20;

/// Sets up a worker: its sockets, its owner core and store, and its links.
pub fn start(ctx: WorkerContext) -> io::Result<Worker> {
    let poll = Poll::new()?;
    let mut listeners = Vec::new();
    for (port, listener) in [(Port::Ws, ctx.ws_listener), (Port::Tcp, ctx.tcp_listener)] {
        listener.set_nonblocking(true)?;
        listeners.push((port, TcpListener::from_std(listener)));
    }
    ctx.master.set_nonblocking(true)?;
    let master = LineChannel::new(UnixStream::from_std(ctx.master));
    let process = Process::new(listeners, master, poll.registry())?;
    let instance = crate::random_u64();
    let webhook = match ctx.config.delivery.webhook_url.as_str() {
        "" => None,
        url => Some(crate::webhook::spawn(url.to_string())?),
    };
    let waker = Arc::new(Waker::new(poll.registry(), STORE)?);
    let waker_for_connectors = waker.clone();
    let (engine, loaded, cluster): (Box<dyn Engine>, _, _) = if ctx.config.cluster.is_redis() {
        let c = &ctx.config;
        let edge = ClusterEdge::start(&c.cluster, waker.clone())?;
        let engine = RedisEngine::spawn(&c.cluster, c.storage.clone(), waker)?;
        (Box::new(engine), Loaded::default(), Some(edge))
    } else {
        let (shards, loaded) = open_shards(&ctx.config, ctx.slot)?;
        let queue = ctx.config.limits.store_queue;
        let engine = StoreThread::spawn(shards, ctx.config.storage.clone(), waker, queue)?;
        (Box::new(engine), loaded, None)
    };
    let owner_config = OwnerConfig {
        numbered_by_engine: engine.numbers_messages(),
        ..OwnerConfig::new(&ctx.config, ctx.slot)
    };
    let core = OwnerCore::new(owner_config, loaded, owner_side::now());
    let owner = OwnerSide::new(core, engine);
    let sockets = (0..ctx.config.workers)
        .map(|s| ctx.config.bus_socket(s))
        .collect();
    let me = peers::Me {
        slot: ctx.slot,
        instance,
        secret: ctx.link_secret,
    };
    let peers = Peers::start(me, sockets, MAX_BUS_FRAME, poll.registry())?;
    let links = Links::new(peers, poll.registry().try_clone()?);
    let registry = poll.registry().try_clone()?;
    let limits = ctx.config.limits.clone();
    let conns = Connections::new(ctx.slot, limits, ctx.config.delivery.write_delay, registry);
    Ok(Worker {
        slot: ctx.slot,
        poll,
        process,
        conns,
        subs: Subscriptions::default(),
        interest: Default::default(),
        pressure: Default::default(),
        owner,
        links,
        pending: PendingTable::default(),
        local_presence: LocalPresence::default(),
        webhook,
        cluster,
        connectors: crate::connectors::Connectors::new(waker_for_connectors),
        config: ctx.config,
    })
}

pub struct Process {
    listeners: Vec<(Port, TcpListener)>,
    serving: bool,
    started: Instant,
    /// Set by a graceful stop: connections must be gone by then.
    pub stopping: Option<Instant>,
    pub master: LineChannel,
    pub signals: SignalSet,
}

impl Process {
    /// Registers the master link and the signals with the loop; the
    /// listeners wait for `start_serving`.
    pub fn new(
        listeners: Vec<(Port, TcpListener)>,
        mut master: LineChannel,
        registry: &Registry,
    ) -> io::Result<Process> {
        registry.register(
            &mut master.stream,
            MASTER,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut signals = SignalSet::new(&[libc::SIGTERM, libc::SIGQUIT])?;
        registry.register(&mut signals.reader, SIGNALS, Interest::READABLE)?;
        Ok(Process {
            listeners,
            serving: false,
            started: Instant::now(),
            stopping: None,
            master,
            signals,
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Neither serving yet nor stopping.
    pub fn waiting_to_serve(&self) -> bool {
        !self.serving && self.stopping.is_none()
    }

    /// The listener of `port`, while new connections are welcome.
    pub fn listener(&mut self, port: Port) -> Option<&mut TcpListener> {
        if !self.serving || self.stopping.is_some() {
            return None;
        }
        let found = self.listeners.iter_mut().find(|(p, _)| *p == port);
        found.map(|(_, listener)| listener)
    }

    /// Watches the listeners and tells the master we are ready.
    pub fn start_serving(&mut self, registry: &Registry, slot: usize) {
        for (port, listener) in &mut self.listeners {
            let token = if *port == Port::Ws {
                WS_LISTENER
            } else {
                TCP_LISTENER
            };
            if let Err(e) = registry.register(listener, token, Interest::READABLE) {
                log::error!("worker {slot}: cannot watch listener: {e}");
            }
        }
        self.serving = true;
        let _ = self.master.send(&FromWorker::Ready);
    }

    /// A graceful stop begins: no more accepting. False if it had already.
    pub fn begin_stop(&mut self, registry: &Registry, deadline: Instant) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        self.stopping = Some(deadline);
        for (_, listener) in &mut self.listeners {
            let _ = registry.deregister(listener);
        }
        true
    }

    /// The master's orders that arrived, and whether its link is still open.
    pub fn orders(&mut self, slot: usize) -> (Vec<ToWorker>, bool) {
        let mut msgs = Vec::new();
        let open = match self.master.receive::<ToWorker>(&mut msgs) {
            Ok(open) => open,
            Err(e) => {
                log::error!("worker {slot}: master link failed: {e}");
                false
            }
        };
        (msgs, open)
    }
}
