//! The worker as a process: its listening sockets (watched only once it
//! serves), its link to the master, its signals, and whether it is stopping.

use std::io;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Interest, Registry};

use super::{Port, MASTER, SIGNALS, TCP_LISTENER, WS_LISTENER};
use crate::control::{FromWorker, LineChannel, ToWorker};
use crate::signals::SignalSet;

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
