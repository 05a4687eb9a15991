//! `durable`: publishes as fast as the publishers' windows allow, for a
//! while, and reports publishes acknowledged per second and the
//! publish→ack latency. The durability mode is the server's (`compare`
//! starts one syncd per mode).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Target;
use crate::publisher::{self, PubSpec, Published};
use crate::stats::{ServerProc, Spent, Window};

pub struct DurableResult {
    pub channels: usize,
    pub published: Published,
    pub secs: f64,
    pub spent: Spent,
}

impl DurableResult {
    pub fn per_sec(&self) -> f64 {
        self.published.acked as f64 / self.secs.max(1e-9)
    }

    pub fn print(&self, label: &str) {
        let p = &self.published;
        println!(
            "{label}: {} channel(s): {} publishes acknowledged in {:.2} s: {:.0}/s; errors {}",
            self.channels,
            p.acked,
            self.secs,
            self.per_sec(),
            p.errors
        );
        if let Some(e) = &p.first_error {
            println!("  first error answer: {e}");
        }
        println!("  publish->ack: {}", p.ack);
        println!("  {}", self.spent);
    }
}

pub fn run(
    target: &Target,
    spec: &PubSpec,
    server: Option<ServerProc>,
) -> anyhow::Result<DurableResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let window = Window::open(server);
    let started = Instant::now();
    let publishing = publisher::start_spec(target, spec, stop.clone())?;
    std::thread::sleep(spec.duration);
    // Answers still due for what was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sent, acked) = publishing.progress();
        if acked >= sent || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    let spent = window.close();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publishing.join()?;
    Ok(DurableResult {
        channels: spec.channels.len(),
        published,
        secs,
        spent,
    })
}
