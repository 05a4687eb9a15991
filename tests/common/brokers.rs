//! Real brokers for the tests: Debian's `redis-server` and `rabbitmq-server`,
//! each started on a free port in its own temp folder and killed (the whole
//! process tree) when dropped. `scripts/setup-tests.sh` installs both.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One `redis-server` with no persistence (unless asked), on a free port.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        super::setup_test_tools();
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        redis.launch();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again on the same port and folder (after `kill`
    /// or `SHUTDOWN NOSAVE`).
    pub fn launch(&mut self) {
        let child = redis_server(self.port, self.dir.path())
            .spawn()
            .expect("redis-server (run scripts/setup-tests.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_cmd(&["PING"]).as_deref() == Some("+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// kill -9 of the server; nothing unsaved survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the server's process to end (after `SHUTDOWN NOSAVE`).
    pub fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// One command in RESP, answered as its first reply line (`+OK`,
    /// `:3`, `$5` followed by the bulk joined on `\n`, …). For checks, not
    /// for load.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis {:?} on port {} failed", args, self.port))
    }

    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(&resp_command(args)).ok()?;
        let mut reader = BufReader::new(s);
        read_reply(&mut reader)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP reply flattened to text: simple lines as they are, bulk strings
/// as their contents, arrays as their items joined by `\n`.
fn read_reply(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end().to_string();
    match line.as_bytes().first()? {
        b'$' => {
            let n: i64 = line[1..].parse().ok()?;
            if n < 0 {
                return Some("(nil)".into());
            }
            let mut buf = vec![0; n as usize + 2];
            reader.read_exact(&mut buf).ok()?;
            buf.truncate(n as usize);
            String::from_utf8(buf).ok()
        }
        b'*' => {
            let n: i64 = line[1..].parse().ok()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(reader)?);
            }
            Some(items.join("\n"))
        }
        _ => Some(line),
    }
}

/// Debian's `redis-server` on loopback `port`, without persistence, its
/// files in `dir`, in a process group of its own; add arguments, then spawn.
pub fn redis_server(port: u16, dir: &std::path::Path) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(["--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    command
}

/// One RabbitMQ node, through Debian's wrapper (which, run as root, switches
/// to the `rabbitmq` user: its folder is chowned to that user).
pub struct Rabbit {
    pub port: u16,
    name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Rabbit {
    pub fn start() -> Rabbit {
        super::setup_test_tools();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut rabbit = Rabbit {
            port,
            name: format!("syncd-test-{port}@localhost"),
            dir,
            child: None,
        };
        rabbit.launch();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Starts the node (again, after `kill`), and waits until the broker
    /// says it has started. A port picked free can be taken before the
    /// broker binds it (another test's connection, or after `kill` the old
    /// VM not yet gone): on `eaddrinuse` it is tried again, on a new AMQP
    /// port the first time (nobody knows the port yet), on the same one
    /// once it can be bound after a restart.
    pub fn launch(&mut self) {
        let fresh = self.child.is_none() && !self.dir.path().join("mnesia").exists();
        for attempt in 1..=3 {
            match self.boot() {
                Ok(()) => return,
                Err(log) if attempt < 3 && log.contains("eaddrinuse") => {
                    if fresh {
                        self.port = free_port();
                    } else {
                        wait_until_bindable(self.port);
                    }
                }
                Err(log) => panic!("rabbitmq-server did not start:\n{log}"),
            }
        }
    }

    /// One start; `Err` holds the log of a node that exited or never
    /// said it had started.
    fn boot(&mut self) -> Result<(), String> {
        let root = self.dir.path();
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(root)
            .status();
        let out = std::fs::File::create(self.log_file()).expect("log file");
        // Not the node's port: it is not bound yet either.
        let dist = loop {
            let port = free_port();
            if port != self.port {
                break port;
            }
        };
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .current_dir(root)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server (run scripts/setup-tests.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            if log.contains("Starting broker... completed") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.kill();
                    return Err(format!("exited with {status}:\n{log}"));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        Err(format!(
            "not started in 90 s:\n{}",
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        ))
    }

    /// kill -9 of the node and everything it started (the Erlang VM runs in
    /// its own session under `su`, so the tree is walked, not the group).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in descendants(child.id()) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (at most 30 s) until nothing holds `port`, e.g. a killed broker's
/// VM that is still exiting.
fn wait_until_bindable(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(("0.0.0.0", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The field after the command name (which may hold spaces).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}
