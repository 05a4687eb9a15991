//! The configuration file: TOML, checked in full before anything starts.
//!
//! Every table denies unknown keys so a typo stops the start with a message that
//! names the key. Relative paths resolve against the folder of the config file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
pub mod queues;
mod sections;
mod units;

pub use cluster::{Cluster, ClusterEngine};
pub use sections::*;

/// The default configuration, compiled in so `syncd start` works from any folder.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/syncd.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker processes; defaults to the number of CPUs.
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub users: Users,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub debug: Debug,
    #[serde(default)]
    pub cluster: Cluster,
    /// `[[ingest]]` and `[[egress]]`: queue connectors (config/queues.rs).
    #[serde(default)]
    pub ingest: Vec<queues::Ingest>,
    #[serde(default)]
    pub egress: Vec<queues::Egress>,
    /// The file this configuration came from (or `<embedded>`), for messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// Things worth a warning in the log (deprecated keys), found while parsing.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Reads and checks `path`. When `path` is the default one and does not exist,
    /// the embedded default is used with paths relative to `./conf`.
    pub fn load(path: &Path, allow_embedded: bool) -> Result<Config, ConfigError> {
        let (text, base) = match std::fs::read_to_string(path) {
            // A bare name (`-c myconf.toml`) has an empty parent: the current folder.
            Ok(text) => (
                text,
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ),
            Err(e) if allow_embedded && e.kind() == std::io::ErrorKind::NotFound => {
                (EMBEDDED_DEFAULT.to_string(), PathBuf::from("conf"))
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Config::parse(&text, &base, path)
    }

    pub fn parse(text: &str, base: &Path, source: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: source.to_path_buf(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.source = source.to_path_buf();
        let mut warnings = Vec::new();
        config.limits.resolve(&mut warnings).map_err(invalid)?;
        config.warnings = warnings;
        let base = std::path::absolute(base).map_err(|e| invalid(e.to_string()))?;
        config.paths.resolve(&base);
        config.cluster.resolve(config.listen.ws.port());
        if let Some(key) = config.auth.jwt_public_key.as_mut() {
            *key = normalize(&base.join(&*key));
            config.auth.jwt_public_pem = std::fs::read(&*key)
                .map_err(|e| invalid(format!("auth.jwt_public_key {}: {e}", key.display())))?;
        }
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.workers == 0 || self.workers > 256 {
            return Err(format!("workers: must be 1..=256, got {}", self.workers));
        }
        if self.storage.shards == 0 || self.storage.shards > 4096 {
            return Err("storage.shards: must be 1..=4096".into());
        }
        if self.delivery.max_attempts == 0 {
            return Err("delivery.max_attempts: must be at least 1".into());
        }
        if self.delivery.ack_timeout.is_zero() {
            return Err("delivery.ack_timeout: must be more than 0s".into());
        }
        if self.delivery.write_delay > std::time::Duration::from_secs(1) {
            return Err("delivery.write_delay: at most 1s (it delays every live message)".into());
        }
        if self.storage.history_size == 0 {
            return Err("storage.history_size: must be at least 1".into());
        }
        for rule in &self.storage.retention {
            if rule.history_size == Some(0) || rule.history_ttl.is_some_and(|t| t.is_zero()) {
                return Err(format!(
                    "storage.retention `{}`: sizes and ttls must be more than 0",
                    rule.prefix
                ));
            }
        }
        if self.storage.history_ttl.is_zero() {
            return Err("storage.history_ttl: must be more than 0s".into());
        }
        if self.limits.max_frame < 128 {
            return Err("limits.max_frame: must be at least 128B".into());
        }
        // tungstenite reserves a frame's claimed length (up to this) at once.
        if self.limits.max_frame > 1 << 30 {
            return Err("limits.max_frame: must be at most 1GiB".into());
        }
        if self.limits.max_connections == 0 {
            return Err("limits.max_connections: must be at least 1".into());
        }
        if self.listen.ws == self.listen.tcp {
            return Err("listen.ws and listen.tcp must differ".into());
        }
        self.cluster.check()?;
        queues::check(&self.ingest, &self.egress)?;
        if self.cluster.is_redis() && !self.egress.is_empty() {
            // Egress reads the local SQLite shards; on Redis there are none.
            return Err(
                "[[egress]] needs [cluster] engine = \"local\" (it reads the local store)".into(),
            );
        }
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            return Err(format!(
                "log.level: unknown level `{}` (use error, warn, info, debug or trace)",
                self.log.level
            ));
        }
        Ok(())
    }

    /// The folder only syncd's own user may enter: the control socket and the
    /// worker links live here (see `crate::private_socket`).
    pub fn run_dir(&self) -> PathBuf {
        self.paths.run_dir.clone().unwrap_or_else(|| {
            self.paths
                .pid_file
                .parent()
                .unwrap_or(Path::new("."))
                .join("run")
        })
    }

    pub fn control_socket(&self) -> PathBuf {
        self.paths
            .control_socket
            .clone()
            .unwrap_or_else(|| self.run_dir().join("syncd.sock"))
    }

    /// Where worker `slot` listens for links from the other workers.
    pub fn bus_socket(&self, slot: usize) -> PathBuf {
        self.run_dir().join(format!("syncd-bus-{slot}.sock"))
    }
}

impl Paths {
    /// Makes every path absolute against `base` and normalised (`conf/../var`
    /// becomes `var`), so messages and `status` show the path a user would type.
    fn resolve(&mut self, base: &Path) {
        let paths = [&mut self.data_dir, &mut self.pid_file, &mut self.log_file];
        let optional = [self.run_dir.as_mut(), self.control_socket.as_mut()];
        for path in paths.into_iter().chain(optional.into_iter().flatten()) {
            *path = normalize(&base.join(&*path));
        }
    }
}

/// Removes `.` and `..` components of an absolute path without touching the
/// file system (the paths may not exist yet). `..` at the root stays there.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests;
