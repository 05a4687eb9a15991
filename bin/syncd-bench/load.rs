//! The live load behind `fanout` and `saturate`: N subscribers on one
//! channel, publishers offering R msg/s (open loop, with a cap on
//! unanswered publishes), every delivery timed from the send time in its data
//! and every publish timed to its `ok`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::client::{field_u64, now_micros, Conn, Target, Transport};
use crate::publisher::{self, PubSpec, Published};
use crate::stats::{Latency, ServerProc, Spent, Window};

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub transport: Transport,
    pub subscribers: usize,
    pub publishers: usize,
    /// Publishes per second offered in all; 0: as fast as `window` allows.
    pub rate: f64,
    /// Unanswered publishes a publisher may have before it waits.
    pub window: u64,
    pub duration: Duration,
    /// Bytes of padding in each message's data.
    pub size: usize,
    pub channel: String,
    /// Threads reading the subscribers.
    pub threads: usize,
    /// Longest wait for deliveries and answers after publishing stops.
    pub drain: Duration,
    /// Where the publishers connect, when not where the subscribers do
    /// (another node of a cluster: docs/cluster.md).
    pub publish_to: Option<Target>,
}

impl From<&LoadSpec> for PubSpec {
    fn from(s: &LoadSpec) -> PubSpec {
        PubSpec {
            transport: s.transport,
            publishers: s.publishers,
            rate: s.rate,
            window: s.window,
            duration: s.duration,
            count: 0,
            size: s.size,
            channels: vec![s.channel.clone()],
        }
    }
}

pub struct LoadResult {
    pub published: Published,
    pub subscribers: usize,
    pub delivered: u64,
    /// Acknowledged publishes a subscriber that was not cut off never got,
    /// once deliveries had stopped.
    pub lost: u64,
    /// The same, when the drain limit came while deliveries were still
    /// arriving: queued somewhere, not known to be lost.
    pub late: u64,
    pub cut_off: usize,
    pub cut_reasons: Vec<String>,
    /// `seq` that did not follow the previous one (syncd only).
    pub gaps: u64,
    pub e2e: Latency,
    pub publish_secs: f64,
    pub deliver_secs: f64,
    pub spent: Spent,
}

impl LoadResult {
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.deliver_secs.max(1e-9)
    }

    /// Server CPU µs per delivery.
    pub fn cpu_us_per_delivery(&self) -> f64 {
        if self.delivered == 0 {
            return 0.0;
        }
        self.spent.cpu_secs * 1e6 / self.delivered as f64
    }

    pub fn print(&self) {
        let p = &self.published;
        println!(
            "published {} ({:.0}/s offered over {:.2} s), acknowledged {} ({:.1}%), errors {}",
            p.sent,
            p.sent as f64 / self.publish_secs.max(1e-9),
            self.publish_secs,
            p.acked,
            100.0 * p.acked as f64 / (p.sent.max(1)) as f64,
            p.errors
        );
        if let Some(e) = &p.first_error {
            println!("  first error answer: {e}");
        }
        println!(
            "delivered {} to {} subscribers in {:.2} s: {:.0}/s; lost {}, still arriving at the drain limit {}, cut off {}, seq gaps {}",
            self.delivered,
            self.subscribers,
            self.deliver_secs,
            self.delivered_per_sec(),
            self.lost,
            self.late,
            self.cut_off,
            self.gaps
        );
        for r in &self.cut_reasons {
            println!("  cut off: {r}");
        }
        println!("publish->delivery: {}", self.e2e);
        println!("publish->ack:      {}", p.ack);
        println!("{}", self.spent);
        if self.spent.measured {
            println!(
                "server CPU per delivery: {:.2} us",
                self.cpu_us_per_delivery()
            );
        }
    }
}

/// What one subscriber-reading thread saw.
struct ReaderOut {
    received: Vec<u64>,
    ended: Vec<Option<String>>,
    gaps: u64,
    e2e: Latency,
}

pub fn run(
    target: &Target,
    spec: &LoadSpec,
    server: Option<ServerProc>,
) -> anyhow::Result<LoadResult> {
    let sub_text = format!(r#"{{"op":"sub","id":0,"channel":"{}"}}"#, spec.channel);
    let threads = spec.threads.clamp(1, spec.subscribers.max(1));
    let mut groups: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..spec.subscribers {
        let mut conn = Conn::open(target, spec.transport)
            .with_context(|| format!("subscriber {i} of {}", spec.subscribers))?;
        conn.request(&sub_text)
            .with_context(|| format!("subscriber {i}: sub"))?;
        conn.set_nonblocking()?;
        groups[i % threads].push(conn);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for group in groups {
        let (stop, delivered) = (stop.clone(), delivered.clone());
        readers.push(std::thread::spawn(move || {
            read_subscribers(group, &stop, &delivered)
        }));
    }

    let window = Window::open(server);
    let started = Instant::now();
    let publish_to = spec.publish_to.as_ref().unwrap_or(target);
    let publishing = publisher::start_spec(publish_to, &PubSpec::from(spec), stop.clone())?;
    // Publishers stop offering after `duration`, then wait for answers until
    // `stop`.
    std::thread::sleep(spec.duration);
    let publish_secs = started.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + spec.drain;
    let (mut last, mut last_change) = ((0, 0), Instant::now());
    let mut still_arriving = false;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let (sent, acked) = publishing.progress();
        let now = (delivered.load(Ordering::Relaxed), acked);
        let all_in =
            acked == sent && now.0 >= acked.saturating_mul(spec.subscribers as u64) && sent > 0;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if all_in || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        if Instant::now() > drain_deadline {
            still_arriving = true;
            break;
        }
    }
    let deliver_secs = started.elapsed().as_secs_f64();
    let spent = window.close();
    stop.store(true, Ordering::Relaxed);
    let published = publishing.join()?;

    let mut result = LoadResult {
        subscribers: spec.subscribers,
        delivered: 0,
        lost: 0,
        late: 0,
        cut_off: 0,
        cut_reasons: Vec::new(),
        gaps: 0,
        e2e: Latency::new(),
        publish_secs,
        deliver_secs,
        spent,
        published,
    };
    for reader in readers {
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("a subscriber thread panicked"))??;
        result.e2e.merge(&out.e2e);
        result.gaps += out.gaps;
        for (got, ended) in out.received.iter().zip(&out.ended) {
            result.delivered += got;
            match ended {
                Some(reason) => {
                    result.cut_off += 1;
                    if result.cut_reasons.len() < 3 && !result.cut_reasons.contains(reason) {
                        result.cut_reasons.push(reason.clone());
                    }
                }
                None if still_arriving => {
                    result.late += result.published.acked.saturating_sub(*got)
                }
                None => result.lost += result.published.acked.saturating_sub(*got),
            }
        }
    }
    Ok(result)
}

fn read_subscribers(
    mut conns: Vec<Conn>,
    stop: &AtomicBool,
    delivered: &AtomicU64,
) -> anyhow::Result<ReaderOut> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter().enumerate() {
        poll.registry()
            .register(&mut SourceFd(&c.fd()), Token(i), Interest::READABLE)?;
    }
    let mut out = ReaderOut {
        received: vec![0; conns.len()],
        ended: vec![None; conns.len()],
        gaps: 0,
        e2e: Latency::new(),
    };
    let mut last_seq = vec![0u64; conns.len()];
    let mut events = Events::with_capacity(1024);
    // Read everything once at the start: frames may have arrived before the
    // registration.
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    while !stop.load(Ordering::Relaxed) {
        for i in ready.drain(..) {
            if out.ended[i].is_some() {
                continue;
            }
            let mut count = 0u64;
            let now = now_micros();
            let (e2e, gaps, last) = (&mut out.e2e, &mut out.gaps, &mut last_seq[i]);
            let result = conns[i].read_ready(|frame| {
                let Some(t) = field_u64(frame, br#""t":"#) else {
                    return;
                };
                count += 1;
                e2e.record(now.saturating_sub(t));
                if !frame.starts_with(br#"{"op":"msg""#) {
                    return;
                }
                if let Some(seq) = field_u64(frame, br#""seq":"#) {
                    if *last != 0 && seq != *last + 1 {
                        *gaps += 1;
                    }
                    *last = seq;
                }
            });
            out.received[i] += count;
            delivered.fetch_add(count, Ordering::Relaxed);
            if let Err(ended) = result {
                out.ended[i] = Some(ended.0);
                let _ = poll.registry().deregister(&mut SourceFd(&conns[i].fd()));
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        ready.extend(events.iter().map(|e| e.token().0));
    }
    Ok(out)
}
