//! Publishers: each a thread with one connection that sends `pub` requests
//! on a schedule (R msg/s in all) or as fast as its window of unanswered
//! publishes allows, and times each one to its answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::client::{field_u64, now_micros, Conn, Target, Transport};
use crate::stats::Latency;

#[derive(Clone, Debug)]
pub struct PubSpec {
    pub transport: Transport,
    pub publishers: usize,
    /// Publishes per second in all; 0: as fast as `window` allows.
    pub rate: f64,
    pub window: u64,
    pub duration: Duration,
    /// Publishes in all (split over the publishers); 0: no limit.
    pub count: u64,
    pub size: usize,
    /// Publisher p sends its k-th message to channel (k + p) % len.
    pub channels: Vec<String>,
}

/// What the publishers did, summed.
#[derive(Clone)]
pub struct Published {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub ack: Latency,
}

pub struct Publishing {
    handles: Vec<JoinHandle<anyhow::Result<Published>>>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
}

impl Publishing {
    /// (sent, answered) so far, over every publisher.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
        )
    }

    pub fn join(self) -> anyhow::Result<Published> {
        let mut all = Published {
            sent: 0,
            acked: 0,
            errors: 0,
            first_error: None,
            ack: Latency::new(),
        };
        for h in self.handles {
            let p = h
                .join()
                .map_err(|_| anyhow::anyhow!("a publisher thread panicked"))??;
            all.sent += p.sent;
            all.acked += p.acked;
            all.errors += p.errors;
            all.first_error = all.first_error.or(p.first_error);
            all.ack.merge(&p.ack);
        }
        Ok(all)
    }
}

/// Connects the publishers and starts them; they keep reading answers
/// until `stop`.
pub fn start_spec(
    target: &Target,
    spec: &PubSpec,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Publishing> {
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for p in 0..spec.publishers.max(1) {
        let conn = Conn::open(target, spec.transport).with_context(|| format!("publisher {p}"))?;
        conn.set_nonblocking()?;
        let (spec, stop, sent, acked) = (spec.clone(), stop.clone(), sent.clone(), acked.clone());
        handles.push(std::thread::spawn(move || {
            publish(conn, p, &spec, &stop, &sent, &acked)
        }));
    }
    Ok(Publishing {
        handles,
        sent,
        acked,
    })
}

/// Send times of the publishes not answered yet, by id (ids count up from 0).
struct InFlight {
    base: u64,
    sent_at: VecDeque<Option<Instant>>,
    outstanding: u64,
}

impl InFlight {
    fn push(&mut self, at: Instant) {
        self.sent_at.push_back(Some(at));
        self.outstanding += 1;
    }

    /// The answer to `id`, or without an id the oldest unanswered publish
    /// (servers that answer in order and echo no id).
    fn answer(&mut self, id: Option<u64>) -> Option<Instant> {
        let at = match id {
            Some(id) if id >= self.base => self
                .sent_at
                .get_mut((id - self.base) as usize)
                .and_then(Option::take),
            Some(_) => None,
            None => self.sent_at.iter_mut().find_map(Option::take),
        };
        if at.is_some() {
            self.outstanding -= 1;
        }
        while let Some(None) = self.sent_at.front() {
            self.sent_at.pop_front();
            self.base += 1;
        }
        at
    }

    fn len(&self) -> u64 {
        self.outstanding
    }
}

fn publish(
    mut conn: Conn,
    p: usize,
    spec: &PubSpec,
    stop: &AtomicBool,
    total_sent: &AtomicU64,
    total_acked: &AtomicU64,
) -> anyhow::Result<Published> {
    let mut poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&conn.fd()),
        Token(0),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let mut events = Events::with_capacity(8);
    let publishers = spec.publishers.max(1) as u64;
    let rate = spec.rate / publishers as f64;
    let limit = match spec.count {
        0 => u64::MAX,
        n => n / publishers + u64::from((p as u64) < n % publishers),
    };
    let pad = "x".repeat(spec.size);
    let mut out = Published {
        sent: 0,
        acked: 0,
        errors: 0,
        first_error: None,
        ack: Latency::new(),
    };
    let mut in_flight = InFlight {
        base: 0,
        sent_at: VecDeque::new(),
        outstanding: 0,
    };
    let mut flushed = true;
    let started = Instant::now();
    let mut text = String::new();
    while !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        let offering = elapsed < spec.duration && out.sent < limit;
        if offering && flushed {
            let due = if rate > 0.0 {
                (elapsed.as_secs_f64() * rate) as u64 + 1
            } else {
                u64::MAX
            }
            .min(limit);
            // At most 256 a turn, so answers are read between batches. They
            // go out in one write, so one clock reading stamps them all (a
            // reading a message was a tenth of the bench's CPU, taken from
            // the server it shares the machine with).
            let mut batch = 0;
            let (at, micros) = (Instant::now(), now_micros());
            while out.sent < due && in_flight.len() < spec.window && batch < 256 {
                let channel = &spec.channels[(out.sent as usize + p) % spec.channels.len()];
                text.clear();
                use std::fmt::Write;
                let _ = write!(
                    text,
                    r#"{{"op":"pub","id":{},"channel":"{channel}","data":{{"t":{},"p":"{pad}"}}}}"#,
                    out.sent, micros
                );
                conn.queue(&text)?;
                in_flight.push(at);
                out.sent += 1;
                batch += 1;
            }
            total_sent.fetch_add(batch, Ordering::Relaxed);
        }
        flushed = conn.flush().context("publisher")?;
        let before = out.acked;
        let before_answered = out.acked + out.errors;
        // Answers read together arrived together: one clock reading.
        let mut arrived = None;
        let read = conn.read_ready(|frame| {
            if !frame.starts_with(br#"{"op":"ok""#) && !frame.starts_with(br#"{"op":"error""#) {
                return;
            }
            let at = in_flight.answer(field_u64(frame, br#""id":"#));
            if frame.starts_with(br#"{"op":"error""#) {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(String::from_utf8_lossy(frame).into_owned());
                }
            } else {
                out.acked += 1;
                if let Some(at) = at {
                    let now = *arrived.get_or_insert_with(Instant::now);
                    out.ack.record(now.duration_since(at).as_micros() as u64);
                }
            }
        });
        total_acked.fetch_add(out.acked - before, Ordering::Relaxed);
        if let Err(ended) = read {
            anyhow::bail!("publisher {p}: {}", ended.0);
        }
        let wait = if offering && rate <= 0.0 && out.acked + out.errors > before_answered {
            // Answers freed room in the window: refill it now, not at the
            // next wake-up (with edge-triggered readiness that can be the
            // 1 ms timeout, which left the server idle between waves).
            Duration::ZERO
        } else if !offering || rate <= 0.0 {
            Duration::from_millis(if offering { 1 } else { 20 })
        } else {
            // Until the next one is due.
            let next = (out.sent as f64 / rate).max(0.0);
            Duration::from_secs_f64(next)
                .saturating_sub(started.elapsed())
                .min(Duration::from_millis(5))
        };
        poll.poll(&mut events, Some(wait))?;
    }
    Ok(out)
}
