//! Figures: latency histograms (HDR), and a server's CPU time and memory read
//! from `/proc` over its whole process tree (master and workers, or a
//! baseline and whatever it started).

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs to 100 s, 3 significant digits.
#[derive(Clone)]
pub struct Latency(pub Histogram<u64>);

impl Latency {
    pub fn new() -> Latency {
        Latency(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `q` (0..=1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  (n={})",
            self.ms(0.50),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
            self.count()
        )
    }
}

/// A server's CPU seconds (user + system) and resident memory, summed over a
/// process and all its descendants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    /// User and system time in whole clock ticks (coarse), for the kernel's
    /// share of `cpu_secs`.
    pub user_ticks: u64,
    pub system_ticks: u64,
    pub rss_bytes: u64,
    pub processes: usize,
}

/// The server being measured: the root of its process tree.
#[derive(Clone, Copy, Debug)]
pub struct ServerProc {
    pub pid: u32,
}

impl ServerProc {
    pub fn usage(&self) -> Usage {
        tree_usage(self.pid)
    }
}

/// Reads every process's parent from /proc, then sums the tree under `root`.
/// Processes that exit between the reads are skipped.
pub fn tree_usage(root: u32) -> Usage {
    let ticks = clock_ticks();
    let page = page_size();
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut stat: HashMap<u32, (f64, u64, u64, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Usage::default();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'.
        let Some(close) = text.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
        // fields[0] = state (3rd field), so field N is fields[N - 3].
        let num = |n: usize| fields.get(n - 3).and_then(|s| s.parse::<u64>().ok());
        let (Some(ppid), Some(utime), Some(stime), Some(rss_pages)) =
            (num(4), num(14), num(15), num(24))
        else {
            continue;
        };
        parent.insert(pid, ppid as u32);
        let cpu = (utime + stime) as f64 / ticks;
        stat.insert(pid, (cpu, rss_pages * page, utime, stime));
    }
    let mut usage = Usage::default();
    for (&pid, &(cpu, rss, utime, stime)) in &stat {
        let mut p = pid;
        let mut depth = 0;
        while p != root && p > 1 && depth < 64 {
            p = parent.get(&p).copied().unwrap_or(0);
            depth += 1;
        }
        if p == root {
            usage.cpu_secs += exact_cpu_secs(pid).unwrap_or(cpu);
            usage.rss_bytes += rss;
            usage.user_ticks += utime;
            usage.system_ticks += stime;
            usage.processes += 1;
        }
    }
    usage
}

/// CPU time from the scheduler's own count (ns, summed over the process's
/// threads): exact, where /proc/PID/stat counts whole clock ticks, too coarse
/// for a thousand accepts. None where schedstat is not there.
fn exact_cpu_secs(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The server's usage over a stretch of time: CPU spent, memory at the end.
pub struct Window {
    server: Option<ServerProc>,
    start: Usage,
    started: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    pub cpu_secs: f64,
    /// The share of `cpu_secs` spent in the kernel (0..=1; from clock ticks).
    pub kernel_share: f64,
    pub rss_start: u64,
    pub rss_end: u64,
    pub wall_secs: f64,
    pub measured: bool,
}

impl Window {
    pub fn open(server: Option<ServerProc>) -> Window {
        Window {
            server,
            start: server.map(|s| s.usage()).unwrap_or_default(),
            started: Instant::now(),
        }
    }

    pub fn close(&self) -> Spent {
        let wall_secs = self.started.elapsed().as_secs_f64();
        let Some(server) = self.server else {
            return Spent {
                wall_secs,
                ..Spent::default()
            };
        };
        let end = server.usage();
        let user = end.user_ticks.saturating_sub(self.start.user_ticks);
        let system = end.system_ticks.saturating_sub(self.start.system_ticks);
        Spent {
            cpu_secs: (end.cpu_secs - self.start.cpu_secs).max(0.0),
            kernel_share: system as f64 / (user + system).max(1) as f64,
            rss_start: self.start.rss_bytes,
            rss_end: end.rss_bytes,
            wall_secs,
            measured: true,
        }
    }
}

impl fmt::Display for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.measured {
            return write!(f, "server figures: not measured (give --server-pid)");
        }
        write!(
            f,
            "server: {:.2} CPU s in {:.2} s ({:.0}% of a core, {:.0}% of it in the kernel), RSS {:.1} MiB -> {:.1} MiB",
            self.cpu_secs,
            self.wall_secs,
            100.0 * self.cpu_secs / self.wall_secs.max(1e-9),
            100.0 * self.kernel_share,
            self.rss_start as f64 / 1048576.0,
            self.rss_end as f64 / 1048576.0
        )
    }
}
