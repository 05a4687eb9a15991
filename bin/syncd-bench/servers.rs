//! Fresh server processes for `compare`: syncd (the built binary, in a
//! temporary folder with a generated config on free loopback ports), the two
//! baselines under bench/ (Bun's uWebSockets, tokio-tungstenite) and the
//! floor (bench/floor: the least work a broadcast server can do), built or
//! installed on first use.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use syncd::control::{CliRequest, StatusReply};

use crate::client::Target;
use crate::stats::ServerProc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Syncd,
    Bun,
    Tokio,
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Syncd => "syncd",
            Kind::Bun => "bun",
            Kind::Tokio => "tokio",
            Kind::Floor => "floor",
        }
    }
}

/// What to put in syncd's generated config.
#[derive(Clone, Debug)]
pub struct SyncdConfig {
    pub workers: Option<usize>,
    pub durability: String,
    pub history_size: u64,
    /// `[delivery] write_delay` ("0ms": syncd's default, off).
    pub write_delay: String,
}

impl Default for SyncdConfig {
    fn default() -> Self {
        SyncdConfig {
            workers: None,
            durability: "commit".into(),
            history_size: 1000,
            write_delay: "0ms".into(),
        }
    }
}

pub struct Running {
    pub target: Target,
    child: Child,
    dir: Option<PathBuf>,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The repository the bench was built from: bench/ lives there.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `syncd` beside this binary (target/release/syncd for a release build).
pub fn default_syncd_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("syncd")))
        .unwrap_or_else(|| repo_dir().join("target/release/syncd"))
}

impl Running {
    pub fn proc(&self) -> ServerProc {
        ServerProc {
            pid: self.child.id(),
        }
    }

    pub fn start_syncd(bin: &Path, config: &SyncdConfig) -> anyhow::Result<Running> {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release), or give --syncd-bin",
                bin.display()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "syncd-bench-{}-{}",
            std::process::id(),
            crate::client::now_micros()
        ));
        std::fs::create_dir_all(&dir)?;
        let (ws, tcp) = (free_addr()?, free_addr()?);
        let workers = config
            .workers
            .map(|w| format!("workers = {w}\n"))
            .unwrap_or_default();
        let text = format!(
            "{workers}[listen]\nws = \"{ws}\"\ntcp = \"{tcp}\"\nbacklog = 4096\n\
             [paths]\ndata_dir = \"data\"\npid_file = \"syncd.pid\"\nlog_file = \"syncd.log\"\nrun_dir = \"run\"\n\
             [limits]\npublish_rate = 0\nmax_connections = 100000\n\
             [storage]\ndurability = \"{}\"\nhistory_size = {}\n\
             [auth]\njwt_secret = \"bench-only-secret\"\napi_keys = [\"bench-only-key\"]\n\
             [delivery]\nwrite_delay = \"{}\"\n\
             [log]\nlevel = \"warn\"\n",
            config.durability, config.history_size, config.write_delay
        );
        let conf = dir.join("syncd.toml");
        std::fs::write(&conf, text)?;
        let log = std::fs::File::create(dir.join("out.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut running = Running {
            target: Target {
                ws,
                ws_path: "/ws".into(),
                tcp: Some(tcp),
            },
            child,
            dir: Some(dir.clone()),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = running.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
                bail!("syncd exited at start ({status}):\n{log}");
            }
            if let Ok(s) = syncd_status(&dir.join("run/syncd.sock")) {
                if s.state == "running" && s.workers.iter().all(|w| w.pid.is_some()) {
                    return Ok(running);
                }
            }
            if Instant::now() > deadline {
                bail!("syncd did not report running within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start_bun() -> anyhow::Result<Running> {
        let dir = repo_dir().join("bench/bun");
        let bun = dir.join("node_modules/.bin/bun");
        if !bun.exists() {
            eprintln!("installing the Bun baseline: npm ci in {}", dir.display());
            let ok = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .status()
                .context("run npm (the Bun baseline is the npm package `bun`)")?;
            if !ok.success() || !bun.exists() {
                bail!(
                    "npm ci in {} failed; the Bun baseline needs the npm package `bun`",
                    dir.display()
                );
            }
        }
        let ws = free_addr()?;
        let mut cmd = Command::new(&bun);
        cmd.arg("server.js")
            .arg(ws.port().to_string())
            .current_dir(&dir);
        Running::start_baseline(Kind::Bun, cmd, ws)
    }

    /// A baseline that is a Rust crate under bench/ with its own workspace:
    /// cargo builds it on first use (and is quick when nothing changed).
    pub fn start_crate(kind: Kind, crate_name: &str) -> anyhow::Result<Running> {
        let crate_dir = repo_dir().join("bench").join(crate_name);
        let target_dir = repo_dir().join("target/bench-baseline");
        let bin = target_dir.join("release").join(crate_name);
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(crate_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status();
        if !bin.exists() {
            bail!(
                "the {} baseline is not built ({}): cargo build --release --manifest-path bench/{crate_name}/Cargo.toml --target-dir target/bench-baseline ({ok:?})",
                kind.name(),
                bin.display()
            );
        }
        let ws = free_addr()?;
        let mut cmd = Command::new(&bin);
        cmd.arg(ws.to_string());
        Running::start_baseline(kind, cmd, ws)
    }

    fn start_baseline(kind: Kind, mut cmd: Command, ws: SocketAddr) -> anyhow::Result<Running> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("start the {} baseline", kind.name()))?;
        let stdout = child.stdout.take().context("baseline stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let running = Running {
            target: Target {
                ws,
                ws_path: "/".into(),
                tcp: None,
            },
            child,
            dir: None,
        };
        if !line.starts_with("listening") {
            bail!("the {} baseline did not start: {line:?}", kind.name());
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(ws).is_err() {
            if Instant::now() > deadline {
                bail!("the {} baseline does not accept on {ws}", kind.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    pub fn start(kind: Kind, syncd_bin: &Path, config: &SyncdConfig) -> anyhow::Result<Running> {
        match kind {
            Kind::Syncd => Running::start_syncd(syncd_bin, config),
            Kind::Bun => Running::start_bun(),
            Kind::Tokio => Running::start_crate(kind, "tokio-baseline"),
            Kind::Floor => Running::start_crate(kind, "floor"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn syncd_status(socket: &Path) -> anyhow::Result<StatusReply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(&serde_json::to_vec(&CliRequest::Status)?)?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
