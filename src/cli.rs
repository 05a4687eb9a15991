//! The `syncd` command line: `start`, `stop`, `restart`, `reload`, `status`,
//! `connections`. Each finds the master through the pid file or the control
//! socket, acts, and waits for the effect.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Config;
use crate::control::{CliRequest, ConnectionsReply, StatusReply};
use crate::master::{self, pidfile};

const DEFAULT_CONFIG: &str = "conf/syncd.toml";

#[derive(Parser)]
#[command(name = "syncd", version, about = "Real-time data-sync server")]
pub struct Cli {
    /// Configuration file [default: conf/syncd.toml, or the embedded default if absent]
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the master and its workers
    Start {
        /// Run in the background; output goes to log_file
        #[arg(short, long)]
        daemon: bool,
    },
    /// Stop syncd and wait until every process is gone
    Stop {
        /// Graceful: workers flush and close their clients first (SIGQUIT)
        #[arg(short, long)]
        graceful: bool,
    },
    /// Stop, then start
    Restart {
        #[arg(short, long)]
        daemon: bool,
    },
    /// Replace the workers one slot at a time and wait until done
    Reload {
        /// Graceful: old workers flush and close their clients first (SIGUSR2)
        #[arg(short, long)]
        graceful: bool,
    },
    /// Show the master and a row per worker
    Status {
        /// Print every counter as JSON instead of the table
        #[arg(long)]
        json: bool,
    },
    /// List every client connection
    Connections,
    /// Mint a client token (JWT, HS256) with the config's jwt_secret, for testing
    Token {
        /// The user id (`sub` claim)
        #[arg(long)]
        sub: String,
        /// Lifetime, like "1h" or "30m"
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A private channel (or prefix ending in *) the token grants; repeatable
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
    /// Write a consistent copy of the data directory into DIR (while running)
    Backup {
        /// Target folder; created if missing, and must not hold shard files yet
        dir: PathBuf,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("syncd: {e:#}");
            1
        }
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => Config::load(path, false)?,
        None => Config::load(DEFAULT_CONFIG.as_ref(), true)?,
    };
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = load(&cli.config)?;
    match cli.command {
        Command::Start { daemon } => start(config, daemon),
        Command::Stop { graceful } => stop(&config, graceful),
        Command::Restart { daemon } => {
            if pidfile::running_master(&config.paths.pid_file).is_some() {
                let code = stop(&config, false)?;
                if code != 0 {
                    return Ok(code);
                }
            }
            start(config, daemon)
        }
        Command::Reload { graceful } => reload(&config, graceful),
        Command::Status { json } => {
            let status: StatusReply = ask(&config, &CliRequest::Status)?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&status)?),
                false => print!("{}", format_status(&status)),
            }
            Ok(0)
        }
        Command::Token { sub, ttl, channels } => {
            println!(
                "{}",
                crate::auth::mint(&config.auth.jwt_secret, &sub, ttl, channels)?
            );
            Ok(0)
        }
        Command::Backup { dir } => {
            let files = crate::store::backup::backup(&config, &dir)?;
            println!("backed up {} shard files to {}", files, dir.display());
            Ok(0)
        }
        Command::Connections => {
            let reply: ConnectionsReply = ask(&config, &CliRequest::Connections)?;
            print!("{}", format_connections(&reply));
            Ok(0)
        }
    }
}

fn start(config: Config, daemon: bool) -> anyhow::Result<i32> {
    // The data directory is checked (and created) by the master, with a clear
    // message when it is unusable.
    for dir in [
        config.paths.pid_file.parent(),
        config.paths.log_file.parent(),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Some(pid) = pidfile::running_master(&config.paths.pid_file) {
        bail!(
            "syncd is already running (master pid {pid}, pid file {})",
            config.paths.pid_file.display()
        );
    }
    let report = if daemon {
        Some(master::daemon::daemonize(&config.paths.log_file)?)
    } else {
        None
    };
    crate::logging::init(&config.log.level);
    Ok(master::run(config, report))
}

fn running(config: &Config) -> anyhow::Result<i32> {
    pidfile::running_master(&config.paths.pid_file).with_context(|| {
        format!(
            "syncd is not running (no live master holds {})",
            config.paths.pid_file.display()
        )
    })
}

fn stop(config: &Config, graceful: bool) -> anyhow::Result<i32> {
    let pid = running(config)?;
    let signal = if graceful {
        Signal::SIGQUIT
    } else {
        Signal::SIGTERM
    };
    kill(Pid::from_raw(pid), signal).with_context(|| format!("cannot signal master pid {pid}"))?;
    println!(
        "syncd stopping{} (master pid {pid})...",
        if graceful { " gracefully" } else { "" }
    );
    let limit = config.limits.stop_timeout + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    // The master exits only after its workers, and its pid-file lock goes with it.
    while pidfile::running_master(&config.paths.pid_file).is_some() {
        if Instant::now() >= deadline {
            eprintln!("syncd did not stop within {}s", limit.as_secs());
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("syncd stopped");
    Ok(0)
}

fn reload(config: &Config, graceful: bool) -> anyhow::Result<i32> {
    let pid = running(config)?;
    let before: StatusReply = ask(config, &CliRequest::Status)?;
    let signal = if graceful {
        Signal::SIGUSR2
    } else {
        Signal::SIGUSR1
    };
    kill(Pid::from_raw(pid), signal)?;
    let per_slot = config.limits.stop_timeout + Duration::from_secs(10);
    let deadline = Instant::now() + per_slot * config.workers as u32;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now: StatusReply = ask(config, &CliRequest::Status)?;
        if now.reloads > before.reloads {
            let pids: Vec<String> = now
                .workers
                .iter()
                .map(|w| w.pid.map_or("-".into(), |p| p.to_string()))
                .collect();
            println!("syncd reloaded (worker pids {})", pids.join(" "));
            return Ok(0);
        }
        if Instant::now() >= deadline {
            eprintln!("syncd reload did not finish in time");
            return Ok(1);
        }
    }
}

/// One request on the control socket, one JSON line back.
fn ask<T: for<'de> serde::Deserialize<'de>>(
    config: &Config,
    request: &CliRequest,
) -> anyhow::Result<T> {
    let path = config.control_socket();
    let mut stream = UnixStream::connect(&path)
        .with_context(|| format!("syncd is not running (cannot reach {})", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).with_context(|| format!("bad reply from master: {reply:?}"))
}

fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn human_duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub fn format_status(s: &StatusReply) -> String {
    let started = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s.started));
    let mut out = format!(
        "syncd {}  master pid {}  {}\nstarted {}  uptime {}  reloads {}\n\n",
        s.version,
        s.pid,
        s.state,
        started,
        human_duration(s.uptime_secs),
        s.reloads
    );
    out += &format!(
        "{:<5} {:>8} {:>10} {:>6} {:>6} {:>6} {:>10} {:>10} {:>9} {:>8} {:>10} {:>8} {:>8}\n",
        "slot",
        "pid",
        "rss",
        "ws",
        "tcp",
        "subs",
        "msgs_in",
        "msgs_out",
        "send_fail",
        "restarts",
        "stored",
        "expired",
        "trimmed"
    );
    for w in &s.workers {
        let pid = w.pid.map_or("-".into(), |p| p.to_string());
        match &w.stats {
            Some(st) => {
                out += &format!(
                    "{:<5} {:>8} {:>10} {:>6} {:>6} {:>6} {:>10} {:>10} {:>9} {:>8} {:>10} {:>8} {:>8}\n",
                    w.slot,
                    pid,
                    human_bytes(st.rss_bytes),
                    st.ws,
                    st.tcp,
                    st.subscriptions,
                    st.msgs_in,
                    st.msgs_out,
                    st.send_failures,
                    w.restarts,
                    st.stored,
                    st.expired,
                    st.trimmed
                )
            }
            None => {
                out += &format!(
                    "{:<5} {:>8} {:>10} (not answering){:>50}\n",
                    w.slot, pid, "-", w.restarts
                )
            }
        }
    }
    out += &limits_hit(s);
    out += &crate::connectors::format_status(
        s.workers
            .iter()
            .filter_map(|w| w.stats.as_ref())
            .map(|w| w.connectors.as_slice()),
    );
    out
}

/// Each worker's limit and timeout counters that are not zero, so an
/// operator sees at once which limit clients run into.
fn limits_hit(s: &StatusReply) -> String {
    let mut lines = String::new();
    for w in &s.workers {
        let Some(st) = &w.stats else { continue };
        let counters = [
            ("refused", st.refused),
            ("rate_limited", st.rate_limited),
            ("pong_timeouts", st.pong_timeouts),
            ("idle_timeouts", st.idle_timeouts),
            ("late_replies", st.late_replies),
            ("subs_refused", st.subs_refused),
            ("channels_refused", st.channels_refused),
            ("conns_per_ip_refused", st.conns_per_ip_refused),
            ("inflight_pauses", st.inflight_pauses),
            ("store_full_pauses", st.store_full_pauses),
            ("pressure_holds", st.pressure_holds),
        ];
        let hit: Vec<String> = counters
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !hit.is_empty() {
            lines += &format!("  slot {}: {}\n", w.slot, hit.join(", "));
        }
    }
    match lines.is_empty() {
        true => "\nlimits hit: none\n".into(),
        false => format!("\nlimits hit (see docs/operations.md):\n{lines}"),
    }
}

pub fn format_connections(r: &ConnectionsReply) -> String {
    let mut out = format!(
        "{:<6} {:>8} {:<5} {:<22} {:>5} {:>10} {:>10} {:>8}\n",
        "worker", "id", "proto", "peer", "subs", "bytes_in", "bytes_out", "age"
    );
    for c in &r.connections {
        out += &format!(
            "{:<6} {:>8} {:<5} {:<22} {:>5} {:>10} {:>10} {:>8}\n",
            c.worker,
            c.id,
            c.protocol,
            c.peer,
            c.subscriptions,
            c.bytes_in,
            c.bytes_out,
            human_duration(c.age_secs)
        );
    }
    out += &format!("{} connections\n", r.connections.len());
    out
}
