//! The master process: owns the listening sockets and the pid file, forks one
//! worker per slot, restarts the ones that die, and turns signals and control
//! requests into actions. It never touches client traffic.
//!
//! | signal        | action                                              |
//! |---------------|-----------------------------------------------------|
//! | SIGINT, TERM  | fast stop                                           |
//! | SIGQUIT       | graceful stop (workers flush and close clients)     |
//! | SIGUSR1       | reload: replace workers one slot at a time          |
//! | SIGUSR2       | graceful reload                                     |
//! | SIGHUP        | re-read the config, then graceful reload            |
//! | SIGCHLD       | reap workers; respawn the ones that died            |

pub mod daemon;
pub mod listeners;
pub mod pidfile;
mod query;
mod rollout;
mod timing;

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use slab::Slab;

use crate::bus::LinkSecret;
use crate::config::Config;
use crate::control::{FromWorker, LineChannel, Retire, ToWorker};
use crate::private_socket;
use crate::signals::SignalSet;
use crate::worker::{self, WorkerContext};
use daemon::StartReport;
use listeners::SlotSockets;
use pidfile::PidFile;
use query::Query;
use rollout::Rollout;

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
const SLOT_BASE: usize = 100;
const CLIENT_BASE: usize = 10_000;
/// Longest wait for a fast-stopped worker before it is killed.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a new worker may take to report it is serving.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(10);

struct Slot {
    pid: Option<Pid>,
    link: Option<LineChannel>,
    ready: bool,
    spawned: Instant,
    restarts: u32,
    /// Consecutive deaths soon after start; drives the respawn back-off.
    crashes: u32,
    respawn_at: Option<Instant>,
}

enum Phase {
    /// Bringing workers up or replacing them, one slot at a time.
    Rolling(Rollout),
    Running,
    Stopping {
        deadline: Instant,
    },
}

pub struct Master {
    config: Config,
    /// Made once per start; every worker forked from here inherits it.
    link_secret: LinkSecret,
    sockets: Vec<SlotSockets>,
    slots: Vec<Slot>,
    poll: Poll,
    signals: SignalSet,
    control: UnixListener,
    clients: Slab<LineChannel>,
    queries: HashMap<u64, Query>,
    next_tag: u64,
    phase: Phase,
    started: SystemTime,
    reloads: u64,
    pidfile: Option<PidFile>,
    start_report: Option<StartReport>,
}

/// The checks a config passes before it serves, at start and on SIGHUP:
/// its token key is usable and protected mode allows it. Logs its warnings
/// (deprecated keys, a public server without an Origin list) on the way.
fn may_serve(config: &Config) -> Result<(), String> {
    for warning in &config.warnings {
        log::warn!("master: {warning}");
    }
    crate::auth::check_config(&config.auth)?;
    for warning in crate::exposure::check(config)? {
        log::warn!("master: {warning}");
    }
    Ok(())
}

/// Runs the master until it stops; returns the process exit code.
pub fn run(config: Config, report: Option<StartReport>) -> i32 {
    crate::logging::set_role("master");
    let mut master = match Master::new(config) {
        Ok(master) => master,
        Err(e) => {
            log::error!("{e:#}");
            if let Some(report) = report {
                report.send(&format!("{e:#}"));
            }
            return 1;
        }
    };
    master.start_report = report;
    master.run()
}

impl Master {
    fn new(mut config: Config) -> anyhow::Result<Master> {
        may_serve(&config).map_err(anyhow::Error::msg)?;
        let pidfile = PidFile::acquire(&config.paths.pid_file)?;
        // Checked here, before any fork, so a bad data directory is one clear
        // error rather than workers dying in a loop.
        config.storage.shards = crate::store::meta::prepare(&config)?;
        let sockets = listeners::bind_all(&config)?;
        let poll = Poll::new()?;
        let mut signals = SignalSet::new(&[
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGHUP,
            libc::SIGCHLD,
        ])?;
        poll.registry()
            .register(&mut signals.reader, SIGNALS, Interest::READABLE)?;
        let run_dir = config.run_dir();
        private_socket::prepare_dir(&run_dir)
            .map_err(|e| anyhow::anyhow!("run_dir {}: {e}", run_dir.display()))?;
        let path = config.control_socket();
        let mut control = private_socket::bind(&path)
            .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
        let link_secret = LinkSecret::generate()?;
        poll.registry()
            .register(&mut control, CONTROL, Interest::READABLE)?;
        let now = Instant::now();
        let slots = (0..config.workers)
            .map(|_| Slot {
                pid: None,
                link: None,
                ready: false,
                spawned: now,
                restarts: 0,
                crashes: 0,
                respawn_at: None,
            })
            .collect();
        log::info!(
            "syncd {} master starting: {} workers, ws {}, tcp {}",
            env!("CARGO_PKG_VERSION"),
            config.workers,
            config.listen.ws,
            config.listen.tcp
        );
        Ok(Master {
            link_secret,
            phase: Phase::Rolling(Rollout::start(config.workers)),
            config,
            sockets,
            slots,
            poll,
            signals,
            control,
            clients: Slab::new(),
            queries: HashMap::new(),
            next_tag: 0,
            started: SystemTime::now(),
            reloads: 0,
            pidfile: Some(pidfile),
            start_report: None,
        })
    }

    fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        self.advance_rollout();
        loop {
            // Asleep until something happens or a deadline comes: an idle
            // master does not wake at all.
            // (mio rounds up to whole milliseconds: no early wake-ups.)
            let timeout = self
                .next_wake()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    return 1;
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    CONTROL => self.accept_clients(),
                    Token(t) if t >= CLIENT_BASE => self.on_client(t - CLIENT_BASE),
                    Token(t) => self.on_worker_link(t - SLOT_BASE),
                }
            }
            self.tick(Instant::now());
            if let Phase::Stopping { .. } = self.phase {
                if self.slots.iter().all(|s| s.pid.is_none()) {
                    // Logged before the pid file goes: `syncd stop` returns
                    // as soon as it does, and may read the log at once.
                    log::info!("master stopped");
                    self.cleanup();
                    return 0;
                }
            }
        }
    }

    fn on_signals(&mut self) {
        for signal in self.signals.drain() {
            match signal {
                libc::SIGCHLD => self.reap(),
                libc::SIGINT | libc::SIGTERM => self.stop(false),
                libc::SIGQUIT => self.stop(true),
                libc::SIGUSR1 => self.reload(false),
                libc::SIGUSR2 => self.reload(true),
                libc::SIGHUP => self.reread_config(),
                _ => {}
            }
        }
    }

    fn stop(&mut self, graceful: bool) {
        let timeout = if graceful {
            self.config.limits.stop_timeout
        } else {
            FAST_STOP_TIMEOUT
        };
        log::info!(
            "master: {} stop",
            if graceful { "graceful" } else { "fast" }
        );
        for index in 0..self.slots.len() {
            self.slots[index].respawn_at = None;
            self.retire_worker(index, graceful, Retire::Shutdown);
        }
        self.phase = Phase::Stopping {
            deadline: Instant::now() + timeout,
        };
    }

    fn reload(&mut self, graceful: bool) {
        match self.phase {
            Phase::Running => {
                log::info!("master: {}reload", if graceful { "graceful " } else { "" });
                self.phase = Phase::Rolling(Rollout::reload(self.config.workers, graceful));
                self.advance_rollout();
            }
            Phase::Rolling(_) => log::warn!("master: a reload is already running; ignored"),
            Phase::Stopping { .. } => {}
        }
    }

    /// SIGHUP: a config that fails to parse keeps the running one. Keys that
    /// need new sockets or processes keep their old values until a restart.
    fn reread_config(&mut self) {
        let source = self.config.source.clone();
        let mut fresh = match Config::load(&source, true) {
            Ok(fresh) => fresh,
            Err(e) => {
                log::error!("master: config not reloaded, keeping the running one: {e}");
                return;
            }
        };
        let fixed = [
            ("workers", fresh.workers != self.config.workers),
            ("listen", fresh.listen != self.config.listen),
            ("paths", fresh.paths != self.config.paths),
            ("storage", fresh.storage != self.config.storage),
        ];
        for (key, changed) in fixed {
            if changed {
                log::warn!("master: `{key}` changes take effect after `syncd restart`");
            }
        }
        fresh.workers = self.config.workers;
        fresh.listen = self.config.listen.clone();
        fresh.paths = self.config.paths.clone();
        fresh.storage = self.config.storage.clone();
        if let Err(e) = may_serve(&fresh) {
            return log::error!("master: config not reloaded, keeping the running one: {e}");
        }
        log::info!("master: config re-read from {}", source.display());
        self.config = fresh;
        self.reload(true);
    }

    fn spawn(&mut self, index: usize) {
        let (ours, theirs) = match StdUnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("master: cannot make a worker link: {e}");
                self.slots[index].respawn_at = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        };
        // SAFETY: the master is single-threaded, so the child inherits no lock
        // held by another thread.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ours);
                self.become_worker(index, theirs);
            }
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                let slot = &mut self.slots[index];
                slot.pid = Some(child);
                slot.ready = false;
                slot.spawned = Instant::now();
                slot.respawn_at = None;
                let _ = ours.set_nonblocking(true);
                let mut link = LineChannel::new(UnixStream::from_std(ours));
                let token = Token(SLOT_BASE + index);
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut link.stream, token, Interest::READABLE)
                {
                    log::error!("master: cannot watch worker {index}: {e}");
                }
                slot.link = Some(link);
                log::info!("master: worker {index} started (pid {child})");
            }
            Err(e) => {
                log::error!("master: fork failed: {e}");
                self.slots[index].respawn_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// In the forked child: let go of everything that is the master's, then
    /// run the worker loop and exit without returning.
    fn become_worker(&mut self, index: usize, link: StdUnixStream) -> ! {
        crate::logging::set_role(format!("worker {index}"));
        self.signals.unregister_all();
        let mut fds = vec![
            self.poll.as_raw_fd(),
            self.control.as_raw_fd(),
            self.signals.reader.as_raw_fd(),
        ];
        fds.extend(self.pidfile.as_ref().map(PidFile::fd));
        fds.extend(self.start_report.as_ref().map(StartReport::fd));
        fds.extend(self.clients.iter().map(|(_, c)| c.stream.as_raw_fd()));
        for (i, slot) in self.slots.iter().enumerate() {
            fds.extend(slot.link.as_ref().map(|l| l.stream.as_raw_fd()));
            if i != index {
                fds.push(self.sockets[i].ws.as_raw_fd());
                fds.push(self.sockets[i].tcp.as_raw_fd());
            }
        }
        for fd in fds {
            // SAFETY: these descriptors belong to master objects that this
            // process never uses or drops again: it exits below.
            unsafe { libc::close(fd) };
        }
        let (Ok(ws_listener), Ok(tcp_listener)) = (
            self.sockets[index].ws.try_clone(),
            self.sockets[index].tcp.try_clone(),
        ) else {
            log::error!("worker {index}: cannot take over its listening sockets");
            std::process::exit(1);
        };
        let ctx = WorkerContext {
            slot: index,
            config: self.config.clone(),
            ws_listener,
            tcp_listener,
            master: link,
            link_secret: self.link_secret.clone(),
        };
        std::process::exit(worker::run(ctx))
    }

    fn reap(&mut self) {
        loop {
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exit code {code}")),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, format!("signal {signal}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(index) = self.slots.iter().position(|s| s.pid == Some(pid)) {
                self.on_worker_exit(index, &how);
            }
        }
    }

    fn on_worker_exit(&mut self, index: usize, how: &str) {
        let now = Instant::now();
        let slot = &mut self.slots[index];
        let pid = slot.pid.take().map_or(0, Pid::as_raw);
        slot.ready = false;
        if let Some(mut link) = slot.link.take() {
            let _ = self.poll.registry().deregister(&mut link.stream);
        }
        let retiring = matches!(&self.phase, Phase::Rolling(r) if r.retiring() == Some(index));
        if matches!(self.phase, Phase::Stopping { .. }) {
            log::info!("master: worker {index} (pid {pid}) exited: {how}");
        } else if retiring {
            log::info!("master: worker {index} (pid {pid}) retired: {how}");
            if let Phase::Rolling(rollout) = &mut self.phase {
                rollout.start_slot(index, now + START_TIMEOUT);
            }
            self.spawn(index);
        } else {
            slot.restarts += 1;
            slot.crashes = if now.duration_since(slot.spawned) < Duration::from_secs(1) {
                slot.crashes + 1
            } else {
                0
            };
            let delay = match slot.crashes {
                0 => Duration::ZERO,
                n => (Duration::from_millis(100) * 2u32.pow(n.min(10))).min(MAX_RESPAWN_DELAY),
            };
            log::error!(
                "master: worker {index} (pid {pid}) died: {how}; restarting in {}ms",
                delay.as_millis()
            );
            slot.respawn_at = Some(now + delay);
        }
    }

    fn on_worker_link(&mut self, index: usize) {
        let Some(link) = self.slots.get_mut(index).and_then(|s| s.link.as_mut()) else {
            return;
        };
        let mut msgs = Vec::new();
        if !link.receive::<FromWorker>(&mut msgs).unwrap_or(false) {
            // The worker is exiting; SIGCHLD will tell us how.
            let _ = self.poll.registry().deregister(&mut link.stream);
            self.slots[index].link = None;
        }
        for msg in msgs {
            match msg {
                FromWorker::Ready => {
                    self.slots[index].ready = true;
                    self.slots[index].crashes = 0;
                    if let Phase::Rolling(rollout) = &mut self.phase {
                        if rollout.started(index) {
                            self.advance_rollout();
                        }
                    }
                }
                FromWorker::Stats { tag, stats } => {
                    self.on_answer(tag, index, query::Answer::Stats(stats))
                }
                FromWorker::Connections { tag, list } => {
                    self.on_answer(tag, index, query::Answer::Connections(list))
                }
            }
        }
    }

    /// Takes the rollout one step further: retire the next slot's worker, or
    /// start a worker in an empty slot, or finish.
    fn advance_rollout(&mut self) {
        let Phase::Rolling(rollout) = &mut self.phase else {
            return;
        };
        let now = Instant::now();
        match rollout.next() {
            Some(index) => match self.slots[index].pid {
                Some(_) => {
                    let graceful = rollout.graceful();
                    let timeout = if graceful {
                        self.config.limits.stop_timeout
                    } else {
                        FAST_STOP_TIMEOUT
                    };
                    rollout.retire(index, now + timeout);
                    self.retire_worker(index, graceful, Retire::Reload);
                }
                None => {
                    rollout.start_slot(index, now + START_TIMEOUT);
                    self.spawn(index);
                }
            },
            None => {
                let was_reload = rollout.is_reload();
                self.phase = Phase::Running;
                if was_reload {
                    self.reloads += 1;
                    log::info!("master: reload complete");
                } else {
                    log::info!("master: all {} workers serving", self.slots.len());
                }
                if let Some(report) = self.start_report.take() {
                    report.send(&format!("ok {}", std::process::id()));
                }
            }
        }
    }

    /// Tells the worker in `index` to leave and why (so its clients hear
    /// "reload" or "shutdown"). Without a link to it, a signal does, minus the why.
    fn retire_worker(&mut self, index: usize, graceful: bool, why: Retire) {
        let slot = &mut self.slots[index];
        let Some(pid) = slot.pid else {
            return;
        };
        let told = slot
            .link
            .as_mut()
            .is_some_and(|link| link.send(&ToWorker::Retire { why, graceful }).is_ok());
        if !told {
            let signal = if graceful {
                Signal::SIGQUIT
            } else {
                Signal::SIGTERM
            };
            let _ = kill(pid, signal);
        }
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(self.config.control_socket());
        for slot in 0..self.config.workers {
            let _ = std::fs::remove_file(self.config.bus_socket(slot));
        }
        if let Some(pidfile) = self.pidfile.take() {
            pidfile.remove();
        }
    }
}
