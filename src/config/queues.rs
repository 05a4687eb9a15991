//! `[[ingest]]` and `[[egress]]`: the queue connectors (docs/queues.md).
//!
//! Which worker runs what: ingest `i` (its place in the file, from 0) runs
//! on worker `i % workers`; every worker runs one thread per `[[egress]]`
//! for the channels its own slot owns, since that is where their messages
//! are stored.

use std::time::Duration;

use serde::Deserialize;

use super::units::duration;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum IngestKind {
    #[serde(rename = "amqp")]
    Amqp,
    #[serde(rename = "redis-list")]
    RedisList,
    #[serde(rename = "redis-stream")]
    RedisStream,
    #[serde(rename = "redis-pubsub")]
    RedisPubsub,
}

impl IngestKind {
    pub fn name(self) -> &'static str {
        match self {
            IngestKind::Amqp => "amqp",
            IngestKind::RedisList => "redis-list",
            IngestKind::RedisStream => "redis-stream",
            IngestKind::RedisPubsub => "redis-pubsub",
        }
    }
}

/// How a message body is read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum IngestFormat {
    /// The body of `POST /api/publish` or `/api/send`.
    #[default]
    #[serde(rename = "json")]
    Json,
    /// Laravel's Redis broadcaster: `{"event","data","socket"}` on the
    /// broadcast channel's name (`redis-pubsub` only).
    #[serde(rename = "laravel")]
    Laravel,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    pub kind: IngestKind,
    /// `amqp://…` or `redis://…`.
    pub url: String,
    /// AMQP: the queue to consume (declared durable when missing).
    #[serde(default)]
    pub queue: Option<String>,
    /// `redis-list`: the list producers `LPUSH` to.
    #[serde(default)]
    pub key: Option<String>,
    /// `redis-stream`: the stream and its consumer group.
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// `redis-pubsub`: channel names or patterns (`PSUBSCRIBE`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Only `"body"`: the body's `channel` (or `uid`) field names it.
    #[serde(default)]
    pub channel_from: Option<String>,
    /// Every message goes to this channel.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub format: IngestFormat,
    /// Stripped from a pub/sub channel's name (Laravel's Redis prefix).
    #[serde(default)]
    pub prefix: String,
    /// How long an ingested message's idempotency key is remembered.
    #[serde(default = "default_dedupe_window", deserialize_with = "duration")]
    pub dedupe_window: Duration,
    /// Most messages taken from the broker and not yet acknowledged.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// `redis-stream`: entries another consumer of the group read and left
    /// unacknowledged this long (a server that died, or came back under
    /// another hostname) are taken over (`XAUTOCLAIM`).
    #[serde(default = "default_claim_after", deserialize_with = "duration")]
    pub claim_after: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum EgressKind {
    #[serde(rename = "amqp")]
    Amqp,
    #[serde(rename = "redis-stream")]
    RedisStream,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    pub kind: EgressKind,
    pub url: String,
    /// AMQP: the exchange (declared a durable topic exchange when missing).
    #[serde(default)]
    pub exchange: Option<String>,
    /// AMQP: `{channel}` is replaced by the message's channel.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// `redis-stream`: the stream's key, a template like `routing_key`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Channel names or patterns (`*` any run of characters, `?` one).
    pub channels: Vec<String>,
}

fn default_dedupe_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_prefetch() -> u16 {
    256
}

fn default_claim_after() -> Duration {
    Duration::from_secs(60)
}

fn default_routing_key() -> String {
    "syncd.{channel}".into()
}

impl Ingest {
    /// What it reads, for logs and `status`.
    pub fn source(&self) -> String {
        let kind = self.kind.name();
        match self.kind {
            IngestKind::Amqp => format!("{kind} queue {}", self.queue.as_deref().unwrap_or("")),
            IngestKind::RedisList => format!("{kind} {}", self.key.as_deref().unwrap_or("")),
            IngestKind::RedisStream => format!(
                "{kind} {} group {}",
                self.stream.as_deref().unwrap_or(""),
                self.group.as_deref().unwrap_or("")
            ),
            IngestKind::RedisPubsub => format!("{kind} {}", self.channels.join(",")),
        }
    }

    fn check(&self, at: &str) -> Result<(), String> {
        let need = |what: &Option<String>, name: &str| match what {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(format!(
                "{at}: kind = \"{}\" needs `{name}`",
                self.kind.name()
            )),
        };
        match self.kind {
            IngestKind::Amqp => need(&self.queue, "queue")?,
            IngestKind::RedisList => need(&self.key, "key")?,
            IngestKind::RedisStream => {
                need(&self.stream, "stream")?;
                need(&self.group, "group")?;
            }
            IngestKind::RedisPubsub if self.channels.is_empty() => {
                return Err(format!("{at}: kind = \"redis-pubsub\" needs `channels`"))
            }
            IngestKind::RedisPubsub => {}
        }
        check_url(at, &self.url, self.kind == IngestKind::Amqp)?;
        if let Some(from) = &self.channel_from {
            if from != "body" {
                return Err(format!("{at}: channel_from must be \"body\", got `{from}`"));
            }
            if self.channel.is_some() {
                return Err(format!("{at}: set `channel` or `channel_from`, not both"));
            }
        }
        if self.channel.as_deref().is_some_and(str::is_empty) {
            return Err(format!("{at}: `channel` must not be empty"));
        }
        if let Some(channel) = &self.channel {
            // Caught here, not as every message dead-lettered at run time.
            crate::proto::frames::check_channel(channel)
                .map_err(|e| format!("{at}: channel: {}", e.message))?;
        }
        if self.format == IngestFormat::Laravel && self.kind != IngestKind::RedisPubsub {
            return Err(format!("{at}: format = \"laravel\" is for redis-pubsub"));
        }
        if self.prefetch == 0 {
            return Err(format!("{at}: prefetch must be at least 1"));
        }
        if self.dedupe_window.is_zero() {
            return Err(format!("{at}: dedupe_window must be more than 0s"));
        }
        if self.claim_after.is_zero() {
            return Err(format!("{at}: claim_after must be more than 0s"));
        }
        Ok(())
    }
}

impl Egress {
    /// What it writes to, for logs and `status`.
    pub fn target(&self) -> String {
        match self.kind {
            EgressKind::Amqp => format!("amqp exchange {}", self.exchange.as_deref().unwrap_or("")),
            EgressKind::RedisStream => {
                format!("redis-stream {}", self.stream.as_deref().unwrap_or(""))
            }
        }
    }

    fn check(&self, at: &str) -> Result<(), String> {
        match self.kind {
            EgressKind::Amqp if self.exchange.as_deref().unwrap_or("").is_empty() => {
                return Err(format!("{at}: kind = \"amqp\" needs `exchange`"))
            }
            EgressKind::RedisStream if self.stream.as_deref().unwrap_or("").is_empty() => {
                return Err(format!("{at}: kind = \"redis-stream\" needs `stream`"))
            }
            _ => {}
        }
        if self.channels.is_empty() || self.channels.iter().any(String::is_empty) {
            return Err(format!("{at}: `channels` needs at least one pattern"));
        }
        check_url(at, &self.url, self.kind == EgressKind::Amqp)
    }
}

fn check_url(at: &str, url: &str, amqp: bool) -> Result<(), String> {
    let schemes: &[&str] = if amqp {
        &["amqp://", "amqps://"]
    } else {
        &["redis://", "rediss://", "redis+unix://", "unix://"]
    };
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(())
    } else {
        Err(format!(
            "{at}: url must start with {}",
            schemes.join(" or ")
        ))
    }
}

/// Checks every connector section (called from `Config::check`).
pub fn check(ingest: &[Ingest], egress: &[Egress]) -> Result<(), String> {
    for (i, section) in ingest.iter().enumerate() {
        section.check(&format!("ingest[{i}]"))?;
    }
    for (i, section) in egress.iter().enumerate() {
        section.check(&format!("egress[{i}]"))?;
    }
    Ok(())
}

/// `*` matches any run of characters, `?` one; the rest must be equal.
/// Called for every stored message while egress is on, so it allocates
/// nothing: it walks the bytes, and `?` takes a whole UTF-8 character.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let char_len = |at: usize| {
        1 + n[at + 1..]
            .iter()
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count()
    };
    // Two pointers with one backtrack point, the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ni += char_len(ni);
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            text,
            std::path::Path::new("/etc/syncd"),
            std::path::Path::new("/etc/syncd/syncd.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_kinds() {
        let c = parse(
            "[[ingest]]\nkind = \"amqp\"\nurl = \"amqp://localhost\"\nqueue = \"q\"\n\
             [[ingest]]\nkind = \"redis-pubsub\"\nurl = \"redis://x\"\nchannels = [\"a*\"]\n\
             format = \"laravel\"\nprefix = \"laravel_database_\"\n\
             [[egress]]\nkind = \"amqp\"\nurl = \"amqp://x\"\nexchange = \"e\"\nchannels = [\"o*\"]\n",
        )
        .unwrap();
        assert_eq!(c.ingest[0].prefetch, 256);
        assert_eq!(c.ingest[0].dedupe_window, Duration::from_secs(86400));
        assert_eq!(c.ingest[0].format, IngestFormat::Json);
        assert_eq!(c.ingest[1].format, IngestFormat::Laravel);
        assert_eq!(c.egress[0].routing_key, "syncd.{channel}");
    }

    #[test]
    fn refusals_name_the_key() {
        let amqp = "[[ingest]]\nkind = \"amqp\"\nurl = \"amqp://h\"\n";
        assert!(parse(amqp).unwrap_err().contains("needs `queue`"));
        let typo = format!("{amqp}queue = \"q\"\nprefech = 3\n");
        assert!(parse(&typo).unwrap_err().contains("prefech"));
        let both = format!("{amqp}queue = \"q\"\nchannel = \"a\"\nchannel_from = \"body\"\n");
        assert!(parse(&both).unwrap_err().contains("not both"));
        let spaced = format!("{amqp}queue = \"q\"\nchannel = \"orders new\"\n");
        assert!(parse(&spaced).unwrap_err().contains("channel"));
        let bad_url = "[[ingest]]\nkind = \"redis-list\"\nurl = \"amqp://h\"\nkey = \"k\"\n";
        assert!(parse(bad_url).unwrap_err().contains("redis://"));
        let bad_kind = "[[ingest]]\nkind = \"kafka\"\nurl = \"x\"\n";
        assert!(parse(bad_kind).unwrap_err().contains("kafka"));
        let laravel = "[[ingest]]\nkind = \"redis-list\"\nurl = \"redis://h\"\nkey = \"k\"\nformat = \"laravel\"\n";
        assert!(parse(laravel).unwrap_err().contains("laravel"));
        let egress = "[[egress]]\nkind = \"amqp\"\nurl = \"amqp://h\"\nchannels = [\"a\"]\n";
        assert!(parse(egress).unwrap_err().contains("exchange"));
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("orders*", "orders"));
        assert!(pattern_matches("orders*", "orders.981"));
        assert!(!pattern_matches("orders*", "order"));
        assert!(pattern_matches("*", "x"));
        assert!(pattern_matches("a?c*z", "abcxyz"));
        assert!(!pattern_matches("a?c", "ac"));
        assert!(pattern_matches("exact", "exact"));
        assert!(pattern_matches("caf?", "café"));
        assert!(pattern_matches("*é", "café"));
    }
}
