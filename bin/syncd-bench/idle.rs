//! `idle`: opens N connections that then say nothing, and measures what they
//! cost the server: resident memory per connection, and CPU per accept +
//! handshake and per close.

use std::time::Duration;

use anyhow::Context;

use crate::client::{Conn, Target, Transport};
use crate::stats::{ServerProc, Window};

pub struct IdleResult {
    pub connections: usize,
    pub transport: Transport,
    pub rss_per_conn: f64,
    pub cpu_us_per_connect: f64,
    pub cpu_us_per_close: f64,
    /// The share of the connect CPU spent in the kernel (0..=1).
    pub connect_kernel_share: f64,
    pub measured: bool,
}

impl IdleResult {
    pub fn print(&self) {
        println!(
            "{} idle {} connections",
            self.connections,
            self.transport.name()
        );
        if !self.measured {
            println!("server figures: not measured (give --server-pid)");
            return;
        }
        println!(
            "server RSS per connection: {:.2} KiB; server CPU per connect (accept + handshake): {:.1} us ({:.0}% in the kernel), per close: {:.1} us",
            self.rss_per_conn / 1024.0,
            self.cpu_us_per_connect,
            100.0 * self.connect_kernel_share,
            self.cpu_us_per_close
        );
    }
}

/// Time for the server to take in what was just sent (accepts, closes)
/// before it is measured.
const SETTLE: Duration = Duration::from_millis(700);

pub fn run(
    target: &Target,
    transport: Transport,
    connections: usize,
    server: Option<ServerProc>,
) -> anyhow::Result<IdleResult> {
    // A few connections first, so one-time costs (first allocations, lazily
    // loaded code) are not counted per connection.
    for _ in 0..8 {
        drop(Conn::open(target, transport)?);
    }
    std::thread::sleep(SETTLE);
    let connecting = Window::open(server);
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let conn = Conn::open(target, transport).with_context(|| {
            format!(
                "idle connection {i} of {connections} (each needs one file descriptor here; raise `ulimit -n` or use fewer)"
            )
        })?;
        conns.push(conn);
    }
    std::thread::sleep(SETTLE);
    let connected = connecting.close();
    let closing = Window::open(server);
    drop(conns);
    std::thread::sleep(SETTLE);
    let closed = closing.close();
    let n = connections.max(1) as f64;
    Ok(IdleResult {
        connections,
        transport,
        rss_per_conn: (connected.rss_end as f64 - connected.rss_start as f64) / n,
        cpu_us_per_connect: connected.cpu_secs * 1e6 / n,
        cpu_us_per_close: closed.cpu_secs * 1e6 / n,
        connect_kernel_share: connected.kernel_share,
        measured: connected.measured,
    })
}
