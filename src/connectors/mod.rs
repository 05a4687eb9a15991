//! Queues in and out (docs/queues.md): `[[ingest]]` threads read RabbitMQ
//! or Redis and hand each message to the worker loop, which publishes it
//! through the same path as `POST /api/publish`; the broker is acknowledged
//! only once the owner has answered it stored. `[[egress]]` threads send the
//! stored messages of the channels this worker's slot owns out to RabbitMQ
//! or a Redis stream, resuming from their last confirmed `seq`.
//!
//! No broker is ever talked to on the event loop: each connector is a
//! thread (AMQP ones run a current-thread tokio runtime for `lapin`), and
//! requests reach the loop through a channel and a `mio::Waker`.

pub mod body;
mod egress;
mod egress_sinks;
mod ingest_amqp;
mod ingest_redis;
mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::queues::{Ingest, IngestKind};
use crate::config::Config;
use crate::owner::PublishOptions;
use crate::proto::frames::{Acked, ErrorReply};
use status::Shared;
pub use status::{format_status, ConnectorStatus};

/// A message an ingest thread wants published.
pub struct IngestRequest {
    pub ingest: usize,
    pub id: u64,
    /// The thread's broker session (see `Connectors::fences`).
    pub session: u64,
    pub channel: String,
    pub data: String,
    pub options: PublishOptions,
}

/// The owner's answer to one `IngestRequest`.
pub struct Answer {
    pub id: u64,
    pub result: Result<Acked, ErrorReply>,
}

/// Whether a refused publish may succeed later (the owner was restarting,
/// storage failed) rather than never (the message itself is wrong).
pub fn is_transient(e: &ErrorReply) -> bool {
    matches!(e.code, "unavailable" | "storage_failed" | "internal")
}

/// Most ingest requests taken from the channel per loop turn, so a busy
/// queue cannot starve the clients.
const REQUESTS_PER_TURN: usize = 1024;

/// The worker's side: requests from the ingest threads, answers back to
/// them, stored messages to the egress threads, and everyone's status.
pub struct Connectors {
    /// The loop's waker (the store thread's too: mio allows one per poll).
    waker: Arc<Waker>,
    requests: Option<crossbeam_channel::Receiver<IngestRequest>>,
    answers: HashMap<usize, UnboundedSender<Answer>>,
    /// Per ingest, the session in which a publish was refused for now
    /// (`is_transient`): its later requests are refused too, unpublished,
    /// until the thread starts a new session and the broker redelivers
    /// from the refused one on. Otherwise a later message could be stored
    /// before the refused one comes again, out of the queue's order.
    fences: HashMap<usize, u64>,
    /// The ingests whose broker redelivers (all but `redis-pubsub`, which
    /// goes on in the same session after a refusal: no fence for it).
    fenced_kinds: std::collections::HashSet<usize>,
    statuses: Vec<Shared>,
    egress: Vec<egress::Handle>,
    /// Set when the worker begins a graceful stop: connectors take nothing
    /// more from their brokers.
    stop: Stop,
}

/// Set when the connectors should wind down.
pub type Stop = Arc<AtomicBool>;

pub fn stopping(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

impl Connectors {
    pub fn new(waker: Arc<Waker>) -> Connectors {
        Connectors {
            waker,
            requests: None,
            answers: HashMap::new(),
            fences: HashMap::new(),
            fenced_kinds: Default::default(),
            statuses: Vec::new(),
            egress: Vec::new(),
            stop: Stop::default(),
        }
    }

    /// A graceful stop: each connector finishes what it took (or leaves it
    /// unacknowledged, for the broker to redeliver) and takes no more.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in &self.egress {
            handle.wake();
        }
    }

    /// Starts this worker's connectors: ingest `i` when `i % workers ==
    /// slot`, and one thread per `[[egress]]` for this slot's channels.
    pub fn start(&mut self, config: &Config, slot: usize) {
        let mine: Vec<(usize, &Ingest)> = config
            .ingest
            .iter()
            .enumerate()
            .filter(|(i, _)| i % config.workers == slot)
            .collect();
        if !mine.is_empty() {
            let waker = self.waker.clone();
            let (tx, rx) = crossbeam_channel::unbounded();
            self.requests = Some(rx);
            for (index, ingest) in mine {
                let (answer_tx, answer_rx) = unbounded_channel();
                let status = status::shared("ingest", ingest.source(), slot);
                let link = Link {
                    ingest: index,
                    requests: tx.clone(),
                    waker: waker.clone(),
                    answers: answer_rx,
                    status: status.clone(),
                    next_id: 0,
                    session: 0,
                    dedupe_window: ingest.dedupe_window,
                    stop: self.stop.clone(),
                };
                self.answers.insert(index, answer_tx);
                if ingest.kind != IngestKind::RedisPubsub {
                    self.fenced_kinds.insert(index);
                }
                self.statuses.push(status);
                let (ingest, max_frame) = (ingest.clone(), config.limits.max_frame);
                let spawned = std::thread::Builder::new()
                    .name(format!("ingest-{index}"))
                    .spawn(move || match ingest.kind {
                        IngestKind::Amqp => ingest_amqp::run(ingest, max_frame, link),
                        _ => ingest_redis::run(ingest, max_frame, link),
                    });
                if let Err(e) = spawned {
                    log::error!("worker {slot}: cannot start ingest {index}: {e}");
                }
            }
        }
        for (index, section) in config.egress.iter().enumerate() {
            let status = status::shared("egress", section.target(), slot);
            self.statuses.push(status.clone());
            let stop = self.stop.clone();
            match egress::start(config, slot, index, section.clone(), status, stop) {
                Ok(handle) => self.egress.push(handle),
                Err(e) => log::error!("worker {slot}: cannot start egress {index}: {e}"),
            }
        }
    }

    /// What the ingest threads asked since the last turn (a bounded
    /// share); requests behind a fence are answered here, unpublished.
    pub fn take_requests(&mut self) -> Vec<IngestRequest> {
        let taken: Vec<IngestRequest> = match &self.requests {
            Some(rx) => rx.try_iter().take(REQUESTS_PER_TURN).collect(),
            None => return Vec::new(),
        };
        let mut go = Vec::with_capacity(taken.len());
        for request in taken {
            match self.fences.get(&request.ingest) {
                Some(&fenced) if fenced == request.session => {
                    let e = ErrorReply::new(
                        "unavailable",
                        "an earlier message of this ingest was refused for now; \
                         it is taken again in order",
                    );
                    self.reply(request.ingest, request.id, Err(e));
                }
                _ => go.push(request),
            }
        }
        go
    }

    /// Whether requests are left for the next turn.
    pub fn has_requests(&self) -> bool {
        self.requests.as_ref().is_some_and(|rx| !rx.is_empty())
    }

    pub fn answer(
        &mut self,
        ingest: usize,
        id: u64,
        session: u64,
        result: Result<Acked, ErrorReply>,
    ) {
        if result.as_ref().is_err_and(is_transient) && self.fenced_kinds.contains(&ingest) {
            self.fences.insert(ingest, session);
        }
        self.reply(ingest, id, result);
    }

    fn reply(&self, ingest: usize, id: u64, result: Result<Acked, ErrorReply>) {
        if let Some(tx) = self.answers.get(&ingest) {
            // A thread that is gone has nothing left to acknowledge.
            let _ = tx.send(Answer { id, result });
        }
    }

    /// A message of a channel this worker owns was stored and released:
    /// the egress threads that want it are woken.
    pub fn delivered(&self, channel: &str, seq: u64) {
        for handle in &self.egress {
            handle.notify(channel, seq);
        }
    }

    pub fn status(&self) -> Vec<ConnectorStatus> {
        self.statuses.iter().map(status::read).collect()
    }
}

/// An ingest thread's side of the worker: requests out, answers in.
pub struct Link {
    ingest: usize,
    requests: crossbeam_channel::Sender<IngestRequest>,
    waker: Arc<Waker>,
    pub answers: UnboundedReceiver<Answer>,
    pub status: Shared,
    next_id: u64,
    session: u64,
    dedupe_window: Duration,
    pub stop: Stop,
}

impl Link {
    /// The worker is stopping: take nothing more from the broker.
    pub fn stopping(&self) -> bool {
        stopping(&self.stop)
    }

    /// A new connection to the broker: what it redelivers is published
    /// again, past a fence the previous session left.
    pub fn begin_session(&mut self) {
        self.session += 1;
    }

    /// Hands a parsed message to the worker; returns its request id.
    pub fn submit(&mut self, parsed: body::Parsed) -> u64 {
        self.next_id += 1;
        let request = IngestRequest {
            ingest: self.ingest,
            id: self.next_id,
            session: self.session,
            channel: parsed.channel,
            data: parsed.data,
            options: PublishOptions {
                ttl: parsed.ttl,
                idempotency_key: parsed.idempotency_key,
                state: None,
                ingest: Some(self.dedupe_window),
                mirrored: parsed.mirrored,
            },
        };
        // The worker outlives its threads; a send fails only as it exits.
        let _ = self.requests.send(request);
        let _ = self.waker.wake();
        self.next_id
    }

    /// Counts an answer: published, or a duplicate of an earlier publish.
    pub fn count_stored(&self, acked: &Acked) {
        status::update(&self.status, |s| {
            if acked.duplicate {
                s.duplicates += 1;
            } else {
                s.published += 1;
            }
        });
    }

    pub fn count_received(&self, n: u64) {
        status::update(&self.status, |s| s.received += n);
    }

    /// A message that can never be published: counted and logged (within a
    /// budget), then dead-lettered by the caller.
    pub fn count_dead(&self, why: &str) {
        status::update(&self.status, |s| {
            s.dead_lettered += 1;
            s.last_error = Some(why.to_string());
        });
        status::log_limited(&self.status, &format!("dead-lettered a message: {why}"));
    }

    pub fn set_state(&self, state: &str) {
        status::update(&self.status, |s| s.state = state.to_string());
    }
}

/// Runs `session` again and again with a growing pause while it fails (the
/// broker is down, the answer was `unavailable`); the state shows
/// `retrying`, the error and the count of outages. Ends when the session
/// does (`Ok`: the worker is stopping) or once `stop` is set.
pub fn with_retries(
    status: &Shared,
    stop: &AtomicBool,
    mut session: impl FnMut() -> Result<(), String>,
) {
    let mut backoff = Duration::from_millis(100);
    while !stopping(stop) {
        let started = Instant::now();
        status::update(status, |s| s.state = "connecting".into());
        let error = match session() {
            Ok(()) => break,
            Err(e) => e,
        };
        status::update(status, |s| {
            s.state = "retrying".into();
            s.outages += 1;
            s.last_error = Some(error.clone());
        });
        status::log_limited(status, &format!("{error}; retrying in {backoff:?}"));
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    status::update(status, |s| s.state = "stopped".into());
}

/// A `Mutex` that a panicking holder poisoned is still used: what it guards
/// is counters and names of dirty channels.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, session: u64) -> IngestRequest {
        IngestRequest {
            ingest: 0,
            id,
            session,
            channel: "orders".into(),
            data: "1".into(),
            options: PublishOptions::default(),
        }
    }

    #[test]
    fn a_refusal_fences_the_rest_of_its_session_until_the_next() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut c = Connectors::new(waker);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (answer_tx, mut answers) = unbounded_channel();
        c.requests = Some(rx);
        c.answers.insert(0, answer_tx);
        c.fenced_kinds.insert(0);
        for id in [1, 2] {
            tx.send(request(id, 1)).unwrap();
        }
        assert_eq!(c.take_requests().len(), 2);
        let refused = ErrorReply::new("unavailable", "owner restarting");
        c.answer(0, 1, 1, Err(refused));
        let stored = Acked {
            seq: 1,
            version: None,
            duplicate: false,
        };
        c.answer(0, 2, 1, Ok(stored));
        // Taken after the refusal, in the same session: refused, unpublished.
        tx.send(request(3, 1)).unwrap();
        assert!(c.take_requests().is_empty());
        let ids: Vec<(u64, bool)> = std::iter::from_fn(|| answers.try_recv().ok())
            .map(|a| (a.id, a.result.is_ok()))
            .collect();
        assert_eq!(ids, [(1, false), (2, true), (3, false)]);
        // The next session (the broker redelivers from 1) goes through.
        tx.send(request(4, 2)).unwrap();
        assert_eq!(c.take_requests().len(), 1);
        // A message that is wrong for good fences nothing.
        c.answer(0, 4, 2, Err(ErrorReply::new("bad_request", "no")));
        tx.send(request(5, 2)).unwrap();
        assert_eq!(c.take_requests().len(), 1);
    }
}
