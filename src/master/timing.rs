//! The master's deadlines: what is due at each wake-up, and when the next
//! one is. Nothing else wakes the master, so a master with nothing pending
//! sleeps until a signal, a worker or a control client says something.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use super::{rollout, Master, Phase};

impl Master {
    /// The earliest deadline anything waits on: a respawn, the stop's kill,
    /// a rollout step, a status query. None: nothing is waiting.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let respawns = self.slots.iter().filter(|_| !stopping);
        let phase = match &self.phase {
            Phase::Stopping { deadline } => Some(*deadline),
            Phase::Rolling(rollout) => rollout.deadline(),
            Phase::Running => None,
        };
        respawns
            .filter_map(|slot| slot.respawn_at)
            .chain(phase)
            .chain(self.next_query_deadline())
            .min()
    }

    /// Does what is due at `now`.
    pub(super) fn tick(&mut self, now: Instant) {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        for index in 0..self.slots.len() {
            if !stopping && self.slots[index].respawn_at.is_some_and(|at| at <= now) {
                self.spawn(index);
            }
        }
        match &mut self.phase {
            Phase::Stopping { deadline } if now >= *deadline => {
                for slot in &self.slots {
                    if let Some(pid) = slot.pid {
                        log::warn!("master: worker pid {pid} did not stop in time; killing it");
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
                *deadline = now + Duration::from_secs(5);
            }
            Phase::Rolling(rollout) => match rollout.overdue(now) {
                Some(rollout::Overdue::Retiring(index)) => {
                    if let Some(pid) = self.slots[index].pid {
                        log::warn!("master: worker {index} did not retire in time; killing it");
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
                Some(rollout::Overdue::Starting(index)) => {
                    log::warn!("master: worker {index} is not serving yet; moving on");
                    rollout.started(index);
                    self.advance_rollout();
                }
                None => {}
            },
            _ => {}
        }
        self.expire_queries(now);
    }
}
