//! A real Redis Cluster for the tests: three `redis-server` primaries
//! (cluster mode, no persistence) on free ports, each in its own temp
//! folder, joined by `redis-cli --cluster create`; killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_ports;

pub struct RedisCluster {
    pub ports: Vec<u16>,
    _dirs: Vec<tempfile::TempDir>,
    children: Vec<Child>,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        super::setup_test_tools();
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            _dirs: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..primaries {
            let [port, bus] = free_ports();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = super::brokers::redis_server(port, dir.path())
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .spawn()
                .expect("redis-server (run scripts/setup-tests.sh)");
            cluster.children.push(child);
            cluster.ports.push(port);
            cluster._dirs.push(dir);
        }
        for &port in &cluster.ports {
            cluster.wait_for(port, "PING", "PONG");
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli (run scripts/setup-tests.sh)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        for &port in &cluster.ports {
            cluster.wait_for(port, "CLUSTER INFO", "cluster_state:ok");
        }
        cluster
    }

    /// The URL syncd is given: any one node of the cluster.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.ports[0])
    }

    /// A command on the node at `port`, its reply as text (for checks).
    pub fn cmd(&self, port: u16, args: &[&str]) -> Option<String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let value: redis::Value = cmd.query(&mut con).ok()?;
        Some(match value {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::SimpleString(s) => s,
            redis::Value::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// The port of the primary that serves `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cmd(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT");
        let held = |port: u16| {
            let nodes = self.cmd(port, &["CLUSTER", "NODES"]).unwrap_or_default();
            nodes
                .lines()
                .find(|l| l.contains("myself"))
                .is_some_and(|me| {
                    me.split(' ').skip(8).any(|range| {
                        let mut ends = range.split('-');
                        let first = ends.next().and_then(|s| s.parse::<u16>().ok());
                        let last = ends.next().and_then(|s| s.parse::<u16>().ok()).or(first);
                        matches!((first, last), (Some(f), Some(l)) if f <= slot && slot <= l)
                    })
                })
        };
        *self
            .ports
            .iter()
            .find(|&&p| held(p))
            .expect("a primary holds every slot")
    }

    fn wait_for(&self, port: u16, command: &str, expect: &str) {
        let args: Vec<&str> = command.split(' ').collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.cmd(port, &args).is_some_and(|r| r.contains(expect)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis on port {port}: no {expect} for {command}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
