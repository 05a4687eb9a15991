//! The links to the other workers (`bus::Peers`: dialing, handshakes,
//! framing) and the events they brought, waiting for the worker to handle
//! them (`on_bus_events`).

use std::time::Instant;

use bytes::Bytes;
use mio::{Registry, Token};

use crate::bus::link::LinkError;
use crate::bus::{BusEvent, BusMsg, Peers};

pub struct Links {
    peers: Peers,
    registry: Registry,
    /// Frames, links up and links down, in the order they happened.
    events: Vec<BusEvent>,
}

impl Links {
    pub fn new(peers: Peers, registry: Registry) -> Links {
        Links {
            peers,
            registry,
            events: Vec::new(),
        }
    }

    /// Sends `msg` on the link to `slot`, its payload in `parts`
    /// (`Link::send`).
    pub fn send<P>(&mut self, slot: usize, msg: &BusMsg, parts: P) -> Result<(), LinkError>
    where
        P: AsRef<[Bytes]>,
    {
        self.peers.send(slot, msg, parts)
    }

    /// Sends one encoded frame on every link.
    pub fn broadcast(&mut self, header: &Bytes, payload: &Bytes) {
        self.peers.broadcast(header, payload, &mut self.events);
    }

    /// Sends one encoded frame on the links to `slots`; returns to how many.
    pub fn multicast(
        &mut self,
        slots: impl Iterator<Item = usize>,
        header: &Bytes,
        payload: &Bytes,
    ) -> usize {
        self.peers
            .multicast(slots, header, payload, &mut self.events)
    }

    /// A link's socket is ready.
    pub fn handle(&mut self, token: Token) {
        self.peers.handle(token, &self.registry, &mut self.events);
    }

    /// Writes what is queued on every link.
    pub fn flush(&mut self) {
        self.peers.flush(&self.registry, &mut self.events);
    }

    /// The most bytes one of our links has queued (backpressure).
    pub fn most_queued(&self) -> usize {
        self.peers.most_queued()
    }

    /// Redials links that are down, on the worker's tick.
    pub fn tick(&mut self, now: Instant) {
        self.peers.tick(&self.registry, now);
    }

    /// A link is down and waits for the tick to dial it again.
    pub fn redialing(&self) -> bool {
        self.peers.redialing()
    }

    /// Linked both ways with every live peer.
    pub fn is_settled(&self) -> bool {
        self.peers.is_settled()
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The events so far; new ones (from handling these) come in the next batch.
    pub fn take_events(&mut self) -> Vec<BusEvent> {
        std::mem::take(&mut self.events)
    }
}
