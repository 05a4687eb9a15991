//! The configuration file: TOML, checked in full before anything starts.
//!
//! Every table denies unknown keys so a typo stops the start with a message that
//! names the key. Relative paths resolve against the folder of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The default configuration, compiled in so `syncd start` works from any folder.
pub const EMBEDDED_DEFAULT: &str = include_str!("../conf/syncd.toml");

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
    pub log: Log,
    #[serde(default)]
    pub debug: Debug,
    /// The file this configuration came from (or `<embedded>`), for messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// Things worth a warning in the log (deprecated keys), found while parsing.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// WebSocket (`/ws`) and HTTP on one port.
    pub ws: SocketAddr,
    /// Newline-delimited JSON.
    pub tcp: SocketAddr,
    /// Accept queue length of each listening socket.
    pub backlog: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    /// The private folder (mode 0700) of the control socket and the worker
    /// links. Defaults to `run` beside the pid file.
    pub run_dir: Option<PathBuf>,
    /// The control socket `status`, `connections` and `reload` talk to.
    /// Defaults to `syncd.sock` in `run_dir`.
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket message, TCP line or HTTP body accepted.
    #[serde(deserialize_with = "size")]
    pub max_frame: usize,
    /// Bytes queued towards one client past which it is cut off at once
    /// (resolved from `send_buffer_hard`, or its deprecated alias
    /// `max_send_buffer`, when the file is parsed).
    #[serde(skip)]
    pub send_buffer_hard: usize,
    /// A client whose queue stays over this for `send_buffer_soft_for` is cut
    /// off (resolved when parsed: at most `send_buffer_hard` unless set).
    #[serde(skip)]
    pub send_buffer_soft: usize,
    #[serde(deserialize_with = "duration")]
    pub send_buffer_soft_for: Duration,
    /// As written in the file; `None` when absent.
    #[serde(rename = "send_buffer_hard", deserialize_with = "optional_size")]
    pub hard_as_written: Option<usize>,
    #[serde(rename = "send_buffer_soft", deserialize_with = "optional_size")]
    pub soft_as_written: Option<usize>,
    /// Deprecated alias of `send_buffer_hard`.
    #[serde(deserialize_with = "optional_size")]
    pub max_send_buffer: Option<usize>,
    /// Open client connections per worker process.
    pub max_connections: usize,
    /// How long a graceful stop or reload may take before workers are killed.
    #[serde(deserialize_with = "duration")]
    pub stop_timeout: Duration,
    /// How long a connection may take to send its HTTP request or first line.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// WebSocket pings (and TCP ones with `tcp_ping`) this often; `None`
    /// ("0s" or "off") sends none.
    #[serde(deserialize_with = "optional_duration_or_off")]
    pub ping_interval: Option<Duration>,
    /// A peer that has not answered a ping within this is closed.
    #[serde(deserialize_with = "duration")]
    pub pong_timeout: Duration,
    /// Send `{"op":"ping"}` lines to TCP clients too (they answer `{"op":"pong"}`).
    pub tcp_ping: bool,
    /// Close WebSocket and TCP connections that send nothing for this long.
    #[serde(deserialize_with = "optional_duration_or_off")]
    pub idle_timeout: Option<Duration>,
    /// After the last frame, how long input is read and discarded before the
    /// socket is closed, so the peer gets that frame instead of a reset.
    #[serde(deserialize_with = "duration")]
    pub linger_timeout: Duration,
}

/// `send_buffer_hard` when neither it nor `max_send_buffer` is set.
pub const DEFAULT_SEND_BUFFER_HARD: usize = 32 << 20;
/// `send_buffer_soft` when it is not set (or the hard limit, if lower).
pub const DEFAULT_SEND_BUFFER_SOFT: usize = 4 << 20;

impl Limits {
    /// Settles the send-buffer limits from the keys as written, and says
    /// what deserves a warning. Fails when the soft limit passes the hard one.
    fn resolve(&mut self, warnings: &mut Vec<String>) -> Result<(), String> {
        match (self.hard_as_written, self.max_send_buffer) {
            (Some(_), Some(_)) => warnings.push(
                "limits.max_send_buffer is deprecated and ignored: limits.send_buffer_hard \
                 is set too and wins (remove max_send_buffer)"
                    .into(),
            ),
            (None, Some(_)) => warnings.push(
                "limits.max_send_buffer is deprecated: rename it to limits.send_buffer_hard \
                 (see also limits.send_buffer_soft)"
                    .into(),
            ),
            _ => {}
        }
        self.send_buffer_hard = self
            .hard_as_written
            .or(self.max_send_buffer)
            .unwrap_or(DEFAULT_SEND_BUFFER_HARD);
        let hard_key = if self.hard_as_written.is_none() && self.max_send_buffer.is_some() {
            "limits.max_send_buffer (the deprecated name of limits.send_buffer_hard)"
        } else {
            "limits.send_buffer_hard"
        };
        if self.send_buffer_hard < 1024 {
            return Err(format!("{hard_key}: must be at least 1KiB"));
        }
        self.send_buffer_soft = match self.soft_as_written {
            Some(soft) if soft > self.send_buffer_hard => {
                return Err(format!(
                    "limits.send_buffer_soft ({}) must not be more than {hard_key} ({})",
                    bytesize::ByteSize(soft as u64),
                    bytesize::ByteSize(self.send_buffer_hard as u64)
                ))
            }
            Some(soft) => soft,
            None => DEFAULT_SEND_BUFFER_SOFT.min(self.send_buffer_hard),
        };
        if self.pong_timeout.is_zero() {
            return Err("limits.pong_timeout: must be more than 0s".into());
        }
        if self.send_buffer_soft_for.is_zero() {
            return Err("limits.send_buffer_soft_for: must be more than 0s".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Channels are hashed onto this many shards; shard `s` belongs to worker slot
    /// `s % workers`. Fixed when the data directory is created.
    pub shards: u32,
    /// When a publish is acknowledged and delivered: see `Durability`.
    pub durability: Durability,
    /// Messages kept per channel (older ones are trimmed).
    pub history_size: u64,
    /// Longest a message is kept; a `ttl` on `pub` can only shorten it.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// Memory for the recent tail of every channel, over all channels of a worker.
    #[serde(deserialize_with = "size")]
    pub cache_bytes: usize,
    /// Per-channel overrides of `history_size` / `history_ttl`, by name prefix
    /// (the longest matching prefix wins).
    pub retention: Vec<Retention>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub prefix: String,
    pub history_size: Option<u64>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub history_ttl: Option<Duration>,
}

impl Storage {
    /// `(history_size, history_ttl)` in force for `channel`.
    pub fn retention_for(&self, channel: &str) -> (u64, Duration) {
        let rule = self
            .retention
            .iter()
            .filter(|r| channel.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len());
        (
            rule.and_then(|r| r.history_size)
                .unwrap_or(self.history_size),
            rule.and_then(|r| r.history_ttl).unwrap_or(self.history_ttl),
        )
    }

    /// The largest `history_size` of any channel (sizes the cache).
    pub fn max_history_size(&self) -> u64 {
        self.retention
            .iter()
            .filter_map(|r| r.history_size)
            .fold(self.history_size, u64::max)
    }
}

/// What an acknowledged publish survives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged and delivered at once, written in the background: a crash
    /// loses the last moments (and starts new epochs for the affected shards).
    Memory,
    /// Acknowledged and delivered once the transaction commits: survives a
    /// crash of syncd (not of the machine).
    Commit,
    /// Acknowledged once the data is on disk (fsync): survives power loss.
    Fsync,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// HS256 secret for client tokens; empty: no HS256 token is accepted.
    pub jwt_secret: String,
    /// A PEM public key (RSA or P-256) for RS256 or ES256 client tokens, so
    /// the signing key can stay with the backend.
    pub jwt_public_key: Option<PathBuf>,
    /// The key's PEM text, read when the config is loaded.
    #[serde(skip)]
    pub jwt_public_pem: Vec<u8>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: String,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: String,
    /// Clock difference allowed when checking `exp` and `nbf`.
    #[serde(deserialize_with = "duration")]
    pub jwt_leeway: Duration,
    /// Keys for the backend HTTP API (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`); empty: the API refuses every call.
    pub api_keys: Vec<String>,
    /// Let connections without a token subscribe and publish to public channels.
    pub allow_anonymous: bool,
    /// Web origins allowed to open a WebSocket (`https://app.example.com`,
    /// `app.example.com` for any scheme, `*.example.com` for subdomains);
    /// empty: any. A handshake without an Origin header (not a browser) is
    /// always allowed.
    pub allowed_origins: Vec<String>,
    /// Serve on a non-loopback address even with empty or example
    /// credentials (see `crate::exposure`).
    pub insecure_allow_public: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// How long a direct message waits for its ack before it is sent again
    /// (then 2×, 4×, … while the user stays online).
    #[serde(deserialize_with = "duration")]
    pub ack_timeout: Duration,
    /// Sends to an online user before an unacked message becomes a dead letter.
    pub max_attempts: u32,
    /// Receives a POST for every dead letter (expired or out of attempts);
    /// empty: none.
    pub webhook_url: String,
    /// A publish or send repeated with the same `idempotency_key` within this
    /// window returns the first result.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            ack_timeout: Duration::from_secs(10),
            max_attempts: 5,
            webhook_url: String::new(),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Channel name prefixes with presence (join/leave events, `presence`).
    pub channels: Vec<String>,
}

impl PresenceConfig {
    pub fn enabled(&self, channel: &str) -> bool {
        self.channels
            .iter()
            .any(|p| channel.starts_with(p.as_str()))
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            jwt_secret: String::new(),
            jwt_public_key: None,
            jwt_public_pem: Vec::new(),
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            jwt_leeway: Duration::from_secs(5),
            api_keys: Vec::new(),
            allow_anonymous: true,
            allowed_origins: Vec::new(),
            insecure_allow_public: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// error, warn, info, debug or trace.
    pub level: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Debug {
    /// Serve a WebSocket echo endpoint at `/echo` (for conformance suites).
    pub echo: bool,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            ws: SocketAddr::from(([127, 0, 0, 1], 8000)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 2345)),
            backlog: 1024,
        }
    }
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            data_dir: "data".into(),
            pid_file: "syncd.pid".into(),
            log_file: "syncd.log".into(),
            run_dir: None,
            control_socket: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1 << 20,
            send_buffer_hard: DEFAULT_SEND_BUFFER_HARD,
            send_buffer_soft: DEFAULT_SEND_BUFFER_SOFT,
            send_buffer_soft_for: Duration::from_secs(10),
            hard_as_written: None,
            soft_as_written: None,
            max_send_buffer: None,
            max_connections: 10_000,
            stop_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            tcp_ping: false,
            idle_timeout: None,
            linger_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            shards: 16,
            durability: Durability::Commit,
            history_size: 1000,
            history_ttl: Duration::from_secs(24 * 3600),
            cache_bytes: 64 << 20,
            retention: Vec::new(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let text = String::deserialize(d)?;
    let parsed: bytesize::ByteSize = text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid size `{text}` (write it like \"64KiB\" or \"1MiB\")"
        ))
    })?;
    // bytesize saturates ("16EiB" is u64::MAX); anything near that would
    // overflow the sums made with these sizes (head + body, reservations).
    if parsed.as_u64() > MAX_SIZE {
        return Err(serde::de::Error::custom(format!(
            "size `{text}` too large (at most 1TiB)"
        )));
    }
    usize::try_from(parsed.as_u64()).map_err(|_| serde::de::Error::custom("size too large"))
}

/// Largest size a config value may name.
const MAX_SIZE: u64 = 1 << 40;

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    size(d).map(Some)
}

/// A duration, or "off" (also "0s") for none.
fn optional_duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(None);
    }
    let parsed = humantime::parse_duration(&text).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` (write it like \"500ms\", \"30s\" or \"1h\", or \"off\")"
        ))
    })?;
    Ok(Some(parsed).filter(|d| !d.is_zero()))
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` (write it like \"500ms\", \"30s\" or \"1h\")"
        ))
    })
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/syncd"),
            Path::new("/etc/syncd/syncd.toml"),
        )
    }

    #[test]
    fn paths_are_absolute_and_normalised() {
        let c = Config::parse(
            "[paths]\ndata_dir = \"../var/./data\"\npid_file = \"/../run/s.pid\"\n",
            Path::new("/etc/syncd/conf"),
            Path::new("/etc/syncd/conf/syncd.toml"),
        )
        .unwrap();
        assert_eq!(c.paths.data_dir, Path::new("/etc/syncd/var/data"));
        assert_eq!(c.paths.pid_file, Path::new("/run/s.pid"));
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = parse(EMBEDDED_DEFAULT).expect("embedded default parses");
        assert_eq!(config.limits.send_buffer_hard, 32 << 20);
        assert_eq!(config.limits.send_buffer_soft, 4 << 20);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn sizes_durations_and_relative_paths() {
        let c = parse(
            "workers = 2\n[limits]\nmax_frame = \"64KiB\"\nstop_timeout = \"500ms\"\n[paths]\npid_file = \"run/s.pid\"\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_frame, 65536);
        assert_eq!(c.limits.stop_timeout, Duration::from_millis(500));
        assert_eq!(c.paths.pid_file, PathBuf::from("/etc/syncd/run/s.pid"));
        assert_eq!(
            c.control_socket(),
            PathBuf::from("/etc/syncd/run/run/syncd.sock")
        );
        assert_eq!(
            c.bus_socket(1),
            PathBuf::from("/etc/syncd/run/run/syncd-bus-1.sock")
        );
    }

    #[test]
    fn retention_overrides_by_longest_prefix() {
        let c = parse(
            "[storage]\nhistory_size = 100\n[[storage.retention]]\nprefix = \"chat-\"\nhistory_size = 10\n\
             [[storage.retention]]\nprefix = \"chat-vip-\"\nhistory_ttl = \"7d\"\n",
        )
        .unwrap();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(c.storage.retention_for("news"), (100, day));
        assert_eq!(c.storage.retention_for("chat-1"), (10, day));
        assert_eq!(c.storage.retention_for("chat-vip-1"), (100, 7 * day));
        assert_eq!(c.storage.max_history_size(), 100);
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key() {
        let e = parse("[limits]\nmax_fram = \"1MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_fram"), "{e}");
        let e = parse("[limits]\nstop_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stop_timeout") && e.contains("soon"), "{e}");
        let e = parse("workers = 0\n").unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn send_buffer_limits_defaults_alias_and_order() {
        let c = parse("").unwrap();
        assert_eq!(c.limits.send_buffer_hard, 32 << 20);
        assert_eq!(c.limits.send_buffer_soft, 4 << 20);
        assert_eq!(c.limits.send_buffer_soft_for, Duration::from_secs(10));
        assert_eq!(c.limits.ping_interval, Some(Duration::from_secs(25)));
        assert_eq!(c.limits.pong_timeout, Duration::from_secs(10));
        assert!(!c.limits.tcp_ping);
        assert_eq!(c.limits.idle_timeout, None);
        assert_eq!(c.limits.linger_timeout, Duration::from_secs(2));
        assert!(c.warnings.is_empty());

        // The alias alone: it is the hard limit, with a warning; the soft
        // limit follows it down.
        let c = parse("[limits]\nmax_send_buffer = \"256KiB\"\n").unwrap();
        assert_eq!(c.limits.send_buffer_hard, 256 << 10);
        assert_eq!(c.limits.send_buffer_soft, 256 << 10);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("max_send_buffer is deprecated"));

        // Both: the new key wins and the warning names both.
        let c =
            parse("[limits]\nmax_send_buffer = \"1MiB\"\nsend_buffer_hard = \"8MiB\"\n").unwrap();
        assert_eq!(c.limits.send_buffer_hard, 8 << 20);
        let w = &c.warnings[0];
        assert!(
            w.contains("max_send_buffer") && w.contains("send_buffer_hard"),
            "{w}"
        );

        // Soft over hard is refused, naming both keys.
        let e = parse("[limits]\nsend_buffer_hard = \"1MiB\"\nsend_buffer_soft = \"2MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("send_buffer_soft") && e.contains("send_buffer_hard"),
            "{e}"
        );
        let e = parse("[limits]\nmax_send_buffer = \"1MiB\"\nsend_buffer_soft = \"2MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("send_buffer_soft") && e.contains("max_send_buffer"),
            "{e}"
        );

        let c = parse("[limits]\nping_interval = \"off\"\nidle_timeout = \"5m\"\n").unwrap();
        assert_eq!(c.limits.ping_interval, None);
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(300)));
        let e = parse("[limits]\nping_interval = \"often\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ping_interval"), "{e}");
    }
}
