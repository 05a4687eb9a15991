//! The tables of the configuration file, each with its defaults and the
//! rules that belong to it alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{duration, optional_duration, optional_duration_or_off, optional_size, size};

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
    /// Publishes (`pub`, `send`, `set`/`del`) per second per connection, a
    /// token bucket holding up to `publish_burst`; 0 turns it off.
    pub publish_rate: u32,
    pub publish_burst: u32,
    /// New connections a second from one client address (and as many at
    /// once); 0 turns it off.
    pub connect_rate_per_ip: u32,
    /// How long a graceful stop or reload may take before workers are killed.
    #[serde(deserialize_with = "duration")]
    pub stop_timeout: Duration,
    /// How long a connection may take to send its HTTP request or first line.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Longest a request waits for another worker (the channel's owner)
    /// before it is answered `unavailable`.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
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
    /// Channels one connection may be subscribed to (waiting `sub`s count).
    pub max_subs_per_conn: usize,
    /// Requests of one connection waiting for an owner's answer; past it,
    /// the connection is not read until answers drain (backpressure).
    pub max_inflight_per_conn: usize,
    /// Channels one worker owns; a `pub`/`set` that would create another
    /// is refused.
    pub max_channels: usize,
    /// Open connections from one client address, per worker; 0 turns it off.
    pub max_conns_per_ip: usize,
    /// Requests queued for the store thread; while it is full, client
    /// connections are not read (backpressure).
    pub store_queue: usize,
}

/// `send_buffer_hard` when neither it nor `max_send_buffer` is set.
pub const DEFAULT_SEND_BUFFER_HARD: usize = 32 << 20;
/// `send_buffer_soft` when it is not set (or the hard limit, if lower).
pub const DEFAULT_SEND_BUFFER_SOFT: usize = 4 << 20;

impl Limits {
    /// Settles the send-buffer limits from the keys as written, and says
    /// what deserves a warning. Fails when the soft limit passes the hard one.
    pub(super) fn resolve(&mut self, warnings: &mut Vec<String>) -> Result<(), String> {
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
        for (key, value) in [
            ("max_subs_per_conn", self.max_subs_per_conn),
            ("max_inflight_per_conn", self.max_inflight_per_conn),
            ("max_channels", self.max_channels),
            ("store_queue", self.store_queue),
        ] {
            if value == 0 {
                return Err(format!("limits.{key}: must be at least 1"));
            }
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
    /// Live messages may wait this long so that several go to a connection
    /// in one write (`sync::write_delay`); 0: written at once.
    #[serde(deserialize_with = "duration")]
    pub write_delay: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            ack_timeout: Duration::from_secs(10),
            max_attempts: 5,
            webhook_url: String::new(),
            idempotency_window: Duration::from_secs(300),
            write_delay: Duration::ZERO,
        }
    }
}

/// `[users]`: what users may do to each other.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Users {
    /// Whether clients may `send` direct messages, or only the backend API.
    pub client_send: ClientSend,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientSend {
    /// Any authenticated user may send to any uid.
    #[default]
    Any,
    /// Only `POST /api/send` (the backend) may.
    None,
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
            publish_rate: 10_000,
            publish_burst: 20_000,
            connect_rate_per_ip: 0,
            stop_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            tcp_ping: false,
            idle_timeout: None,
            linger_timeout: Duration::from_secs(2),
            max_subs_per_conn: 1000,
            max_inflight_per_conn: 1000,
            max_channels: 1_000_000,
            max_conns_per_ip: 0,
            store_queue: 65_536,
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
