//! The set of links from this worker to every other worker slot.
//!
//! Each worker listens on its own socket (`syncd-bus-<slot>.sock`) and dials every
//! other slot. It sends on the link it dialed (`out`) and receives on the links
//! others dialed (`incoming`), so each direction is one FIFO stream: an owner's
//! messages reach a worker in the order the owner sent them.
//!
//! A dialer opens with `Hello{slot, instance}` and the acceptor answers `Welcome`.
//! When a Hello arrives from an instance our own out link does not lead to, that
//! peer was restarted: we dial it again at once, so a new worker is linked both
//! ways before it accepts clients (see `is_settled`).
//!
//! Trust: the sockets are private to our user (`crate::private_socket`), and
//! both Hello and Welcome must carry the master's per-start `LinkSecret`. A
//! link that fails either check is closed before any frame of it is used.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::frame::BusMsg;
use super::link::{Link, LinkError};
use super::secret::LinkSecret;
use crate::logging::LogLimit;
use crate::private_socket;

pub const LISTENER: Token = Token(10);
const OUT_BASE: usize = 1_000;
const IN_BASE: usize = 2_000;
const IN_MAX: usize = 1_000;
const REDIAL_AFTER: Duration = Duration::from_millis(100);

pub enum BusEvent {
    /// A frame from worker `from`.
    Msg {
        from: usize,
        msg: BusMsg,
        payload: Bytes,
    },
    /// A link to or from `slot` broke: requests waiting on it will get no answer.
    Down { slot: usize },
    /// Our link to `slot` reached a (new) process of that worker, or `slot`
    /// linked to us (anew): what it must know of us is told again.
    Up { slot: usize },
}

struct OutLink {
    link: Link,
    /// The peer process this link reaches, once it has answered with Welcome.
    peer_instance: Option<u64>,
}

struct InLink {
    link: Link,
    /// Learned from the Hello that opens the link.
    peer: Option<(usize, u64)>,
}

/// Who this worker is on the links.
pub struct Me {
    pub slot: usize,
    /// This process, so peers can tell a restarted worker from the old one.
    pub instance: u64,
    pub secret: LinkSecret,
}

pub struct Peers {
    slot: usize,
    instance: u64,
    secret: LinkSecret,
    /// Links refused for failing a trust check, logged within a budget.
    refusals: LogLimit,
    sockets: Vec<PathBuf>,
    listener: UnixListener,
    out: Vec<Option<OutLink>>,
    incoming: Slab<InLink>,
    next_dial: Vec<Option<Instant>>,
    max_frame: usize,
}

pub fn is_bus_token(token: Token) -> bool {
    token == LISTENER || (OUT_BASE..IN_BASE + IN_MAX).contains(&token.0)
}

impl Peers {
    /// Binds this slot's socket (replacing a stale one) and dials every other slot.
    pub fn start(
        me: Me,
        sockets: Vec<PathBuf>,
        max_frame: usize,
        registry: &Registry,
    ) -> io::Result<Peers> {
        let Me {
            slot,
            instance,
            secret,
        } = me;
        let mut listener = private_socket::bind(&sockets[slot])?;
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        let workers = sockets.len();
        let mut peers = Peers {
            slot,
            instance,
            secret,
            refusals: LogLimit::new(5),
            listener,
            out: (0..workers).map(|_| None).collect(),
            incoming: Slab::new(),
            next_dial: vec![None; workers],
            sockets,
            max_frame,
        };
        for peer in (0..workers).filter(|&p| p != slot) {
            peers.dial(peer, registry);
        }
        Ok(peers)
    }

    fn dial(&mut self, peer: usize, registry: &Registry) {
        if let Some(mut old) = self.out[peer].take() {
            let _ = registry.deregister(&mut old.link.stream);
        }
        let connected = StdUnixStream::connect(&self.sockets[peer]).and_then(|s| {
            private_socket::peer_is_us(&s).map_err(io::Error::other)?;
            s.set_nonblocking(true)?;
            let mut stream = UnixStream::from_std(s);
            registry.register(
                &mut stream,
                Token(OUT_BASE + peer),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => {
                let mut link = Link::new(stream, self.max_frame);
                let hello = BusMsg::Hello {
                    slot: self.slot,
                    instance: self.instance,
                    secret: self.secret.clone(),
                };
                if link.send(&hello, []).is_ok() {
                    self.out[peer] = Some(OutLink {
                        link,
                        peer_instance: None,
                    });
                    self.next_dial[peer] = None;
                    log::debug!("bus: dialed worker {peer}");
                }
            }
            Err(e) => {
                log::debug!("bus: worker {peer} not reachable yet: {e}");
                self.next_dial[peer] = Some(Instant::now() + REDIAL_AFTER);
            }
        }
    }

    /// A link is down and waits to be dialled again (on the tick).
    pub fn redialing(&self) -> bool {
        self.next_dial.iter().any(Option::is_some)
    }

    /// True when every other slot is either linked both ways with the same
    /// process or known to be down, so messages from any owner will reach us.
    pub fn is_settled(&self) -> bool {
        (0..self.out.len())
            .filter(|&p| p != self.slot)
            .all(|p| match &self.out[p] {
                None => self.next_dial[p].is_some(),
                Some(OutLink {
                    peer_instance: Some(instance),
                    ..
                }) => self
                    .incoming
                    .iter()
                    .any(|(_, l)| l.peer == Some((p, *instance))),
                Some(_) => false,
            })
    }

    pub fn is_up(&self, slot: usize) -> bool {
        slot == self.slot || self.out[slot].is_some()
    }

    /// Queues a frame to `slot` (`Link::send`: its payload in `parts`).
    pub fn send<P>(&mut self, slot: usize, msg: &BusMsg, parts: P) -> Result<(), LinkError>
    where
        P: AsRef<[Bytes]>,
    {
        match self.out[slot].as_mut() {
            Some(out) => out.link.send(msg, parts),
            None => Err(LinkError::Closed),
        }
    }

    /// Queues one frame to every other worker; the header and payload are shared.
    pub fn broadcast(&mut self, header: &Bytes, payload: &Bytes, events: &mut Vec<BusEvent>) {
        for slot in 0..self.out.len() {
            self.queue(slot, header, payload, events);
        }
    }

    /// Queues one frame to each of `slots` that is linked; returns to how many.
    pub fn multicast(
        &mut self,
        slots: impl Iterator<Item = usize>,
        header: &Bytes,
        payload: &Bytes,
        events: &mut Vec<BusEvent>,
    ) -> usize {
        let (mut sent, linked) = (0, self.out.len());
        for slot in slots.filter(|&slot| slot < linked) {
            sent += usize::from(self.queue(slot, header, payload, events));
        }
        sent
    }

    fn queue(
        &mut self,
        slot: usize,
        header: &Bytes,
        payload: &Bytes,
        ev: &mut Vec<BusEvent>,
    ) -> bool {
        let stuck = match self.out[slot].as_mut() {
            Some(out) => out.link.queue(header, payload).err(),
            None => return false,
        };
        let Some(e) = stuck else {
            return true;
        };
        log::error!("bus: dropping link to worker {slot}: {e}");
        self.out[slot] = None;
        self.next_dial[slot] = Some(Instant::now() + REDIAL_AFTER);
        ev.push(BusEvent::Down { slot });
        false
    }

    /// The most bytes any of our links has queued, not yet written.
    pub fn most_queued(&self) -> usize {
        let out = self.out.iter().flatten().map(|o| o.link.queued());
        out.max().unwrap_or(0)
    }

    /// Writes whatever the links have queued.
    pub fn flush(&mut self, registry: &Registry, events: &mut Vec<BusEvent>) {
        for slot in 0..self.out.len() {
            if let Some(out) = self.out[slot].as_mut().filter(|o| o.link.has_output()) {
                if let Err(e) = out.link.flush() {
                    self.drop_out(slot, e, registry, events);
                }
            }
        }
        let broken: Vec<(usize, LinkError)> = self
            .incoming
            .iter_mut()
            .filter(|(_, l)| l.link.has_output())
            .filter_map(|(k, l)| l.link.flush().err().map(|e| (k, e)))
            .collect();
        for (key, e) in broken {
            self.drop_incoming(key, e, registry, events);
        }
    }

    /// Redials slots that were down.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        for peer in 0..self.next_dial.len() {
            if self.next_dial[peer].is_some_and(|at| at <= now) {
                self.dial(peer, registry);
            }
        }
    }

    pub fn handle(&mut self, token: Token, registry: &Registry, events: &mut Vec<BusEvent>) {
        if token == LISTENER {
            self.accept(registry);
        } else if token.0 < IN_BASE {
            self.read_out(token.0 - OUT_BASE, registry, events);
        } else {
            self.read_incoming(token.0 - IN_BASE, registry, events);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if let Err(why) = private_socket::peer_is_us(&stream) {
                        self.refused(&why);
                        continue;
                    }
                    let entry = self.incoming.vacant_entry();
                    if entry.key() >= IN_MAX {
                        log::error!("bus: too many incoming links, refusing one");
                        continue;
                    }
                    let token = Token(IN_BASE + entry.key());
                    if let Err(e) = registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::error!("bus: cannot register link: {e}");
                        continue;
                    }
                    entry.insert(InLink {
                        link: Link::new(stream, self.max_frame),
                        peer: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::error!("bus: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_out(&mut self, slot: usize, registry: &Registry, events: &mut Vec<BusEvent>) {
        let Some(out) = self.out.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut frames = Vec::new();
        let mut result = out.link.receive(&mut frames);
        for (msg, _) in frames {
            match msg {
                BusMsg::Welcome {
                    instance, secret, ..
                } if secret.matches(&self.secret) => {
                    out.peer_instance = Some(instance);
                    events.push(BusEvent::Up { slot });
                }
                BusMsg::Welcome { .. } => {
                    result = Err(LinkError::Refused("Welcome without our secret"));
                    break;
                }
                _ => {}
            }
        }
        let result = result.and_then(|()| out.link.flush());
        if let Err(e) = result {
            self.drop_out(slot, e, registry, events);
        }
    }

    fn read_incoming(&mut self, key: usize, registry: &Registry, events: &mut Vec<BusEvent>) {
        let Some(inc) = self.incoming.get_mut(key) else {
            return;
        };
        let mut frames = Vec::new();
        let result = inc.link.receive(&mut frames);
        let mut redial = None;
        let mut result = result;
        for (msg, payload) in frames {
            match (msg, inc.peer) {
                (
                    BusMsg::Hello {
                        slot,
                        instance,
                        secret,
                    },
                    None,
                ) if slot < self.out.len() && secret.matches(&self.secret) => {
                    inc.peer = Some((slot, instance));
                    let welcome = BusMsg::Welcome {
                        slot: self.slot,
                        instance: self.instance,
                        secret: self.secret.clone(),
                    };
                    let _ = inc.link.send(&welcome, []);
                    let ours = self.out[slot].as_ref().map(|o| o.peer_instance);
                    if matches!(ours, None | Some(Some(_))) && ours != Some(Some(instance)) {
                        redial = Some(slot);
                    }
                    // It may have seen its link to us break (and dropped
                    // what we told it) without ours breaking: we say again.
                    events.push(BusEvent::Up { slot });
                    log::debug!("bus: worker {slot} linked to us");
                }
                (msg, Some((from, _))) => events.push(BusEvent::Msg { from, msg, payload }),
                // Nothing of a link is used before a Hello with our secret.
                (_, None) => {
                    result = Err(LinkError::Refused("no Hello with our secret"));
                    break;
                }
            }
        }
        let result = result.and_then(|()| inc.link.flush());
        if let Err(e) = result {
            self.drop_incoming(key, e, registry, events);
        }
        if let Some(slot) = redial {
            self.dial(slot, registry);
        }
    }

    fn drop_out(
        &mut self,
        slot: usize,
        e: LinkError,
        registry: &Registry,
        events: &mut Vec<BusEvent>,
    ) {
        if let Some(mut out) = self.out[slot].take() {
            log::info!("bus: link to worker {slot} closed: {e}");
            let _ = registry.deregister(&mut out.link.stream);
            self.next_dial[slot] = Some(Instant::now() + REDIAL_AFTER);
            events.push(BusEvent::Down { slot });
        }
    }

    fn drop_incoming(
        &mut self,
        key: usize,
        e: LinkError,
        registry: &Registry,
        events: &mut Vec<BusEvent>,
    ) {
        let mut inc = self.incoming.remove(key);
        let _ = registry.deregister(&mut inc.link.stream);
        match inc.peer {
            Some((slot, _)) => {
                log::info!("bus: link from worker {slot} closed: {e}");
                events.push(BusEvent::Down { slot });
            }
            // A peer that never proved itself: a forged Hello, or bytes
            // that are no frame of ours.
            None if matches!(e, LinkError::Refused(_) | LinkError::Frame(_)) => {
                self.refused(&e.to_string())
            }
            None => {}
        }
    }

    fn refused(&mut self, why: &str) {
        if let Some(left_out) = self.refusals.allow(Instant::now()) {
            log::warn!("bus: refused a link ({why}); {left_out} more refusals not logged");
        }
    }
}
