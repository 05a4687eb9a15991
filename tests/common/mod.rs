//! Test harness: starts the real `syncd` binary on free ports in a temp dir and
//! talks to it with real WebSocket, TCP and HTTP clients.
#![allow(dead_code)]

pub mod brokers;
mod clients;
pub mod redis_cluster;

pub use clients::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncd::control::{CliRequest, ConnectionsReply, StatusReply, WorkerStats};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` different free ports: each listener is held until all are bound, so
/// the kernel cannot hand the same port out twice (two `free_port` calls
/// in a row once gave a server the same port for ws and tcp).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("free port").port())
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub ws_port: u16,
    pub tcp_port: u16,
    pub config: PathBuf,
    pub child: Option<Child>,
}

pub fn syncd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_syncd")
}

impl Server {
    /// Starts syncd with `workers` workers; `extra` is appended to the config
    /// (TOML tables such as `[limits]`).
    pub fn start(workers: usize, extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("syncd.toml");
        let auth = if extra.contains("[auth]") {
            ""
        } else {
            "[auth]\njwt_secret = \"test-secret\"\napi_keys = [\"test-key\"]\n"
        };
        let mut server = Server {
            dir,
            ws_port: 0,
            tcp_port: 0,
            config,
            child: None,
        };
        // A port found free can still be taken (by another test's client
        // socket) before syncd binds it; then syncd exits saying so, and
        // it starts again on other free ports.
        for attempt in 1..=5 {
            [server.ws_port, server.tcp_port] = free_ports();
            let (ws_port, tcp_port) = (server.ws_port, server.tcp_port);
            let text = format!(
                "workers = {workers}\n[listen]\nws = \"127.0.0.1:{ws_port}\"\ntcp = \"127.0.0.1:{tcp_port}\"\n\
                 [paths]\ndata_dir = \"data\"\npid_file = \"syncd.pid\"\nlog_file = \"syncd.log\"\n{auth}{extra}\n"
            );
            std::fs::write(&server.config, text).expect("write config");
            let logged = server.log().len();
            server.spawn(&[]);
            if server.bound(logged) || attempt == 5 {
                break;
            }
        }
        server.wait_serving();
        server
    }

    /// Runs `syncd start` in the foreground (as a child of the test) and waits
    /// until every worker serves.
    pub fn launch(&mut self) {
        self.launch_with_env(&[]);
    }

    /// False when syncd exited because one of its ports was taken (its log
    /// past `logged` bytes says so); true once it serves, or when it failed
    /// otherwise (`wait_serving` says why).
    fn bound(&mut self, logged: usize) -> bool {
        let deadline = Instant::now() + 3 * TIMEOUT;
        while Instant::now() < deadline {
            let exited = self.child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(_))) = exited {
                self.child = None;
                let log = self.log();
                return !log[logged.min(log.len())..].contains("Address already in use");
            }
            if self.try_status().is_ok_and(|s| s.state == "running") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// As `launch`, with extra environment variables: the test-only knobs
    /// listed in docs/operations.md.
    pub fn launch_with_env(&mut self, env: &[(&str, &str)]) {
        // Launched again on the same ports: the workers of a server killed
        // with its master may hold its listening sockets a moment longer (a
        // CI run's relaunch died on "Address already in use").
        let (ws, tcp) = (self.ws_port, self.tcp_port);
        eventually("the last server's ports are free", || {
            [ws, tcp]
                .iter()
                .all(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        self.spawn(env);
        self.wait_serving();
    }

    /// Starts `syncd start` in the foreground, as a child of the test.
    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("out.log"))
            .expect("log");
        let child = Command::new(syncd_bin())
            .args(["-c", self.config.to_str().unwrap(), "start"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn syncd");
        self.child = Some(child);
    }

    pub fn wait_serving(&self) {
        // Generous: on a loaded machine forking, opening the shards and
        // linking the workers once took over 10 s. Nothing waits when it
        // is quick.
        let deadline = Instant::now() + 3 * TIMEOUT;
        loop {
            if let Ok(s) = self.try_status() {
                if s.state == "running" && s.workers.iter().all(|w| w.stats.is_some()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "syncd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The master's control socket: `run/` beside the pid file.
    pub fn control_socket(&self) -> PathBuf {
        self.path("run/syncd.sock")
    }

    /// Worker `slot`'s link socket, which the other workers dial.
    pub fn bus_socket(&self, slot: usize) -> PathBuf {
        self.path(&format!("run/syncd-bus-{slot}.sock"))
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(syncd_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run syncd cli")
    }

    fn ask<T: for<'de> serde::Deserialize<'de>>(&self, req: &CliRequest) -> std::io::Result<T> {
        let mut s = UnixStream::connect(self.control_socket())?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(&serde_json::to_vec(req)?)?;
        s.write_all(b"\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    pub fn try_status(&self) -> std::io::Result<StatusReply> {
        self.ask(&CliRequest::Status)
    }

    pub fn status(&self) -> StatusReply {
        self.try_status().expect("status")
    }

    pub fn connections(&self) -> ConnectionsReply {
        self.ask(&CliRequest::Connections).expect("connections")
    }

    /// Times the master replaced a worker that died, over all slots.
    pub fn restarts(&self) -> u32 {
        self.status().workers.iter().map(|w| w.restarts).sum()
    }

    /// A worker counter summed over the workers that answered.
    pub fn sum_stats(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.status()
            .workers
            .iter()
            .filter_map(|w| w.stats.as_ref())
            .map(f)
            .sum()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.status().workers.iter().filter_map(|w| w.pid).collect()
    }

    pub fn master_pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// Which worker serves the client whose local address is `local`.
    pub fn worker_of(&self, local: SocketAddr) -> usize {
        let peer = local.to_string();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(c) = self
                .connections()
                .connections
                .iter()
                .find(|c| c.peer == peer)
            {
                return c.worker;
            }
            assert!(Instant::now() < deadline, "connection {peer} not listed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ws(&self) -> WsClient {
        WsClient::connect(self.ws_port, "/ws")
    }

    pub fn tcp(&self) -> TcpClient {
        TcpClient::connect(self.tcp_port)
    }

    /// Opens clients until there is one on every worker; returns one per worker.
    pub fn clients_on_every_worker<C: Client>(
        &self,
        workers: usize,
        open: impl Fn() -> C,
    ) -> Vec<C> {
        let mut found: Vec<Option<C>> = (0..workers).map(|_| None).collect();
        for _ in 0..200 {
            let client = open();
            let w = self.worker_of(client.local_addr());
            if found[w].is_none() {
                found[w] = Some(client);
            }
            if found.iter().all(Option::is_some) {
                return found.into_iter().map(Option::unwrap).collect();
            }
        }
        panic!("could not reach every worker");
    }

    /// A WebSocket and a TCP client on each of `workers` workers.
    pub fn ws_and_tcp_on_every_worker(&self, workers: usize) -> Vec<Box<dyn Client>> {
        let mut all: Vec<Box<dyn Client>> = Vec::new();
        for c in self.clients_on_every_worker(workers, || self.ws()) {
            all.push(Box::new(c));
        }
        for c in self.clients_on_every_worker(workers, || self.tcp()) {
            all.push(Box::new(c));
        }
        all
    }

    /// A WebSocket and a TCP subscriber of `channel` on each of 2 workers.
    pub fn subscribers(&self, channel: &str) -> Vec<Box<dyn Client>> {
        let mut all = self.ws_and_tcp_on_every_worker(2);
        for c in all.iter_mut() {
            c.sub(channel);
        }
        all
    }

    /// `POST /api/publish` of `data` on `channel`, which must succeed; its seq.
    pub fn publish(&self, channel: &str, data: Value) -> u64 {
        let body = json!({"channel": channel, "data": data}).to_string();
        let (status, reply) = self.http("POST", "/api/publish", &body);
        assert_eq!(status, 200, "{reply}");
        let reply: Value = serde_json::from_str(&reply).expect("JSON");
        reply["seq"].as_u64().expect("a seq")
    }

    /// An HTTP request with the test API key.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.http_with(method, path, body, "Authorization: Bearer test-key\r\n")
    }

    /// An HTTP request with `headers` (each ending in CRLF).
    pub fn http_with(&self, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        http_raw(self.ws_port, raw.as_bytes())
    }

    pub fn stop_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }

    /// Waits for the foreground master to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A command's stdout and stderr, as text, for assertions and messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `scripts/setup-tests.sh`, the one idempotent step that installs what
/// the suite needs beyond cargo (chromium, playwright-core, wstest,
/// redis-server, rabbitmq-server), and fails
/// the test with the script's own words if it cannot.
pub fn setup_test_tools() {
    let script = repo_path("scripts/setup-tests.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{} failed; run it by hand to see why:\n{}",
        script.display(),
        output_text(&out)
    );
}

/// A token for `uid` signed with the test secret.
pub fn token(uid: &str, channels: &[&str]) -> String {
    let channels = channels.iter().map(|c| c.to_string()).collect();
    syncd::auth::mint("test-secret", uid, Duration::from_secs(3600), channels).expect("mint")
}

/// Waits until `f` is true or the timeout passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

impl Server {
    /// Restarts syncd (kill -9, then `start` again) with extra environment
    /// variables: the test-only knobs listed in docs/operations.md.
    pub fn relaunch_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop_now();
        self.launch_with_env(env);
    }
}
