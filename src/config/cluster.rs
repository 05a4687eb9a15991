//! `[cluster]`: which engine stores and numbers messages. "local" (the
//! default) is the embedded SQLite shards of one machine; "redis" shares
//! channels, state, presence and inboxes between servers through one Redis
//! (docs/cluster.md).

use std::time::Duration;

use serde::Deserialize;

use super::units::duration;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterEngine {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    pub engine: ClusterEngine,
    pub redis_url: String,
    /// Every key and pub/sub topic starts with it, so deployments sharing
    /// one Redis do not collide.
    pub prefix: String,
    /// This server's name in presence; empty: `hostname:ws-port`.
    pub node: String,
    /// A dead node's presence members vanish after this.
    #[serde(deserialize_with = "duration")]
    pub presence_ttl: Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            engine: ClusterEngine::Local,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            prefix: "syncd:".into(),
            node: String::new(),
            presence_ttl: Duration::from_secs(30),
        }
    }
}

impl Cluster {
    pub fn is_redis(&self) -> bool {
        self.engine == ClusterEngine::Redis
    }

    /// Fills the defaults that depend on the rest of the config.
    pub(super) fn resolve(&mut self, ws_port: u16) {
        if self.node.is_empty() {
            self.node = format!("{}:{ws_port}", hostname());
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if !self.is_redis() {
            return Ok(());
        }
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            return Err(format!("cluster.redis_url: {e}"));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return Err("cluster.presence_ttl: must be at least 1s".into());
        }
        if self.prefix.contains(['{', '}']) {
            return Err("cluster.prefix: must not contain `{` or `}` (hash tags)".into());
        }
        Ok(())
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::{ClusterEngine, Config};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/tmp"), Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn local_is_the_default_and_redis_takes_the_issue_keys() {
        let c = parse("").unwrap();
        assert_eq!(c.cluster.engine, ClusterEngine::Local);
        assert_eq!(c.cluster.prefix, "syncd:");
        assert_eq!(c.cluster.presence_ttl, Duration::from_secs(30));
        assert!(c
            .cluster
            .node
            .ends_with(&format!(":{}", c.listen.ws.port())));
        let c = parse(
            "[cluster]\nengine = \"redis\"\nredis_url = \"redis://127.0.0.1:7000/0\"\n\
             prefix = \"app:\"\nnode = \"web-1\"\npresence_ttl = \"5s\"\n",
        )
        .unwrap();
        assert!(c.cluster.is_redis());
        assert_eq!(c.cluster.node, "web-1");
        assert_eq!(c.cluster.prefix, "app:");
        assert_eq!(c.cluster.presence_ttl, Duration::from_secs(5));
    }

    #[test]
    fn bad_cluster_values_name_the_key() {
        let e = parse("[cluster]\nengine = \"etcd\"\n").unwrap_err();
        assert!(e.contains("engine"), "{e}");
        let e = parse("[cluster]\nengine = \"redis\"\nredis_url = \"http://x\"\n").unwrap_err();
        assert!(e.contains("cluster.redis_url"), "{e}");
        let e = parse("[cluster]\nengine = \"redis\"\npresence_ttl = \"0s\"\n").unwrap_err();
        assert!(e.contains("presence_ttl"), "{e}");
        let e = parse("[cluster]\nnodes = 2\n").unwrap_err();
        assert!(e.contains("nodes"), "{e}");
    }
}
