//! The owner side of a worker: its `OwnerCore` and the storage `Engine` the
//! core's requests go to. The worker sees only the effects that concern the
//! edge (deliveries, events, replies, dead letters); storage requests are
//! submitted here, in order, and a request the engine can no longer take
//! comes straight back to the core as its failure.

use crate::owner::{Command, Effect, Now, OwnerCore, OwnerStats};
use crate::store::{Completion, Engine, Gone};

/// Reads both clocks for the core, which never reads them itself.
pub fn now() -> Now {
    Now {
        at: std::time::Instant::now(),
        ms: crate::store::open::now_ms(),
    }
}

pub struct OwnerSide {
    core: OwnerCore,
    engine: Box<dyn Engine>,
}

impl OwnerSide {
    pub fn new(core: OwnerCore, engine: Box<dyn Engine>) -> OwnerSide {
        OwnerSide { core, engine }
    }

    pub fn handle(&mut self, command: Command, now: Now) {
        self.core.handle(command, now);
    }

    /// The next effect for the edge, after submitting the storage requests
    /// queued before it.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        while let Some(effect) = self.core.poll_effect() {
            let Effect::Store(request) = effect else {
                return Some(effect);
            };
            if let Err(Gone(request)) = self.engine.submit(request) {
                log::error!("the store thread is gone");
                if let Some(completion) = (*request).gone() {
                    self.core.handle(Command::Completed(completion), now());
                }
            }
        }
        None
    }

    /// The end of a loop turn: the storage requests of the turn go to the
    /// engine together.
    pub fn flush_storage(&mut self) {
        self.engine.flush();
    }

    /// What storage has finished, to hand back as `Command::Completed`.
    pub fn completions(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        self.engine.completions(&mut done);
        done
    }

    /// Writes what was queued for the disk, then stops storage.
    pub fn close(&mut self) {
        self.engine.close();
    }

    /// Storage's queue is full: clients are not read until it drains.
    pub fn is_busy(&self) -> bool {
        self.engine.is_busy()
    }

    pub fn is_fatal(&self) -> bool {
        self.core.is_fatal()
    }

    /// When the core's tick next has work (`OwnerCore::next_tick`).
    pub fn next_tick(&self, now: Now) -> std::time::Instant {
        self.core.next_tick(now)
    }

    pub fn stats(&self) -> &OwnerStats {
        self.core.stats()
    }

    pub fn channels(&self) -> usize {
        self.core.channels()
    }
}
