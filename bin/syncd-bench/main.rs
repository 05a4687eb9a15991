//! syncd-bench: a bounded load generator for syncd, over WebSocket or raw
//! TCP, with side-by-side baselines (`compare`).
//!
//! Scenarios (subcommands): `fanout`, `saturate`, `idle`, `durable`,
//! `resume` against a running server, and `compare`, which starts fresh
//! servers itself (syncd, the Bun and tokio-tungstenite baselines and the
//! floor under bench/) and prints one table of ratios. See
//! docs/benchmarks.md.

mod client;
mod compare;
mod durable;
mod idle;
mod load;
mod publisher;
mod resume;
mod servers;
mod stats;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use client::{now_micros, Target, Transport};
use stats::ServerProc;

#[derive(Parser, Debug)]
#[command(
    name = "syncd-bench",
    about = "Load generator and side-by-side benchmark for syncd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the server under test is (all but `compare`).
#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// The server's WebSocket address
    #[arg(long, default_value = "127.0.0.1:8000")]
    ws: SocketAddr,
    /// The WebSocket URL path
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// syncd's newline-delimited JSON TCP address
    #[arg(long, default_value = "127.0.0.1:2345")]
    tcp: SocketAddr,
    /// The server's (syncd's master's) pid: its process tree's CPU and RSS
    /// are reported
    #[arg(long)]
    server_pid: Option<u32>,
}

impl ServerArgs {
    fn target(&self) -> Target {
        Target {
            ws: self.ws,
            ws_path: self.ws_path.clone(),
            tcp: Some(self.tcp),
        }
    }

    fn proc(&self) -> Option<ServerProc> {
        self.server_pid.map(|pid| ServerProc { pid })
    }
}

/// The live load of `fanout` and `saturate`.
#[derive(Args, Debug, Clone)]
struct LoadArgs {
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Subscriber connections (fanout: 100, saturate: 1000)
    #[arg(long)]
    subscribers: Option<usize>,
    /// Publisher connections
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publishes per second offered, in all (fanout: 200, saturate: 5000)
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of publishing
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Bytes of padding in each message's data
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Threads reading the subscribers
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Channel (a fresh one per run by default)
    #[arg(long)]
    channel: Option<String>,
    /// Publishers connect to this WebSocket address instead: another node
    /// of a cluster, for a cross-node fanout
    #[arg(long)]
    publish_ws: Option<SocketAddr>,
    /// Publishers connect to this TCP address instead (with --transport tcp)
    #[arg(long)]
    publish_tcp: Option<SocketAddr>,
}

impl LoadArgs {
    fn spec(&self, subscribers: usize, rate: f64, window: u64) -> load::LoadSpec {
        load::LoadSpec {
            transport: self.transport,
            subscribers: self.subscribers.unwrap_or(subscribers),
            publishers: self.publishers,
            rate: self.rate.unwrap_or(rate),
            window,
            duration: Duration::from_secs_f64(self.duration),
            size: self.size,
            channel: self
                .channel
                .clone()
                .unwrap_or_else(|| format!("bench-{}", now_micros())),
            threads: self.threads,
            drain: Duration::from_secs(15),
            publish_to: self.publish_ws.map(|ws| Target {
                ws,
                ws_path: "/ws".into(),
                tcp: self.publish_tcp,
            }),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N subscribers on one channel, R publishes/s: deliveries, latency, CPU
    /// per delivery. Fails (exit 1) on a lost message, a seq gap or a cut-off
    Fanout {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Offered load past capacity: delivered/s, lost, cut off
    Saturate {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N idle connections: server RSS per connection, CPU per connect/close
    Idle {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Transport::Ws)]
        transport: Transport,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
    },
    /// Publishes/s as fast as windows allow (the server's durability mode),
    /// with publish->ack latency
    Durable {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        pubs: compare::DurableArgs,
    },
    /// Time to replay M missed messages to one resuming client
    Resume {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Transport::Tcp)]
        transport: Transport,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// Every scenario against fresh syncd, Bun, tokio and floor servers, one
    /// after the other; one table of ratios
    Compare(compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    client::raise_fd_limit();
    match cli.command {
        Command::Fanout { server, load } => {
            let spec = load.spec(100, 200.0, 100_000);
            let r = load::run(&server.target(), &spec, server.proc())?;
            r.print();
            if r.lost > 0 || r.late > 0 || r.gaps > 0 || r.cut_off > 0 || r.delivered == 0 {
                std::process::exit(1);
            }
        }
        Command::Saturate { server, load } => {
            let spec = load.spec(1000, 5000.0, 1_000_000);
            load::run(&server.target(), &spec, server.proc())?.print();
        }
        Command::Idle {
            server,
            transport,
            connections,
        } => idle::run(&server.target(), transport, connections, server.proc())?.print(),
        Command::Durable { server, pubs } => {
            let spec = pubs.spec(pubs.channels);
            durable::run(&server.target(), &spec, server.proc())?.print("durable");
        }
        Command::Resume {
            server,
            transport,
            messages,
            size,
        } => {
            let channel = format!("bench-resume-{}", now_micros());
            let r = resume::run(
                &server.target(),
                transport,
                &channel,
                messages,
                size,
                server.proc(),
            )?;
            r.print();
            if r.shortfall.is_some() {
                std::process::exit(1);
            }
        }
        Command::Compare(args) => compare::run(&args)?,
    }
    Ok(())
}
