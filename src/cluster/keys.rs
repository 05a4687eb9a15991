//! Key and topic names. Every key of a channel carries the channel as its
//! hash tag (`syncd:{news}:seq`), so each script touches one slot and
//! Redis Cluster works; the prefix keeps deployments sharing one Redis apart.
//!
//! Inside the tag the channel name is escaped (`%` → `%25`, `{` → `%7B`,
//! `}` → `%7D`): a `}` in a name would otherwise end the tag early, and
//! channel `a}:idem:x` could then write channel `a`'s keys. The escape is
//! injective, so distinct channels always have distinct keys.

use std::borrow::Cow;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, channel: &str, what: &str) -> String {
        format!("{}{{{}}}:{what}", self.prefix, escape(channel))
    }

    /// The last seq given (INCR).
    pub fn seq(&self, channel: &str) -> String {
        self.key(channel, "seq")
    }

    /// The channel's epoch, made with SET NX at its first `sub` or publish.
    pub fn epoch(&self, channel: &str) -> String {
        self.key(channel, "epoch")
    }

    /// The retained messages: a stream whose entry ids are `seq-0`.
    pub fn log(&self, channel: &str) -> String {
        self.key(channel, "log")
    }

    /// Keyed state: `v:<key>` (version) and `d:<key>` (value JSON).
    pub fn state(&self, channel: &str) -> String {
        self.key(channel, "state")
    }

    /// An idempotency key: the seq of the first publish that used it.
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        self.key(channel, &format!("idem:{key}"))
    }

    /// An inbox's cumulative ack.
    pub fn ack(&self, channel: &str) -> String {
        self.key(channel, "ack")
    }

    /// Presence: members node + `\n` + `uid`, scored by their deadline (ms).
    pub fn presence(&self, channel: &str) -> String {
        self.key(channel, "presence")
    }

    /// The pub/sub topic of a channel's messages.
    pub fn topic(&self, channel: &str) -> String {
        self.key(channel, "msgs")
    }

    /// The channel a topic belongs to.
    pub fn channel_of<'a>(&self, topic: &'a str) -> Option<Cow<'a, str>> {
        let escaped = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix("}:msgs")?;
        unescape(escaped)
    }
}

/// The channel name as it appears inside a hash tag.
fn escape(channel: &str) -> Cow<'_, str> {
    if !channel.contains(['%', '{', '}']) {
        return Cow::Borrowed(channel);
    }
    let mut out = String::with_capacity(channel.len() + 8);
    for c in channel.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The inverse of `escape`; `None` for what `escape` never makes.
fn unescape(tagged: &str) -> Option<Cow<'_, str>> {
    if tagged.contains(['{', '}']) {
        return None;
    }
    if !tagged.contains('%') {
        return Some(Cow::Borrowed(tagged));
    }
    let mut out = String::with_capacity(tagged.len());
    let mut rest = tagged;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// A message as published on a topic: `epoch seq line`.
pub fn parse_payload(payload: &[u8]) -> Option<(&str, u64, &[u8])> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&payload[..space]).ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    Some((epoch, seq, &rest[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_channel_shares_its_hash_tag_and_topics_map_back() {
        let k = Keys::new("syncd:");
        assert_eq!(k.seq("news"), "syncd:{news}:seq");
        assert_eq!(k.idempotency("news", "a b"), "syncd:{news}:idem:a b");
        assert_eq!(k.topic("news"), "syncd:{news}:msgs");
        assert_eq!(k.channel_of("syncd:{news}:msgs").as_deref(), Some("news"));
        assert_eq!(k.channel_of("other:{news}:msgs"), None);
        assert_eq!(k.channel_of("syncd:{news}:seq"), None);
    }

    #[test]
    fn braces_in_a_channel_name_stay_inside_its_hash_tag() {
        let k = Keys::new("syncd:");
        // Without the escape, channel `a}:idem:x` would write channel `a`'s
        // idempotency key `x`.
        assert_eq!(k.seq("a}:idem:x"), "syncd:{a%7D:idem:x}:seq");
        assert_ne!(k.seq("a}:idem:x"), k.idempotency("a", "x}:seq"));
        assert_eq!(k.seq("%7D"), "syncd:{%257D}:seq");
        assert_ne!(k.seq("%7D"), k.seq("}"));
        for name in ["a}:b", "{x}", "%", "%7B", "50%", "#bob", "ünï{}"] {
            let topic = k.topic(name);
            assert_eq!(topic.matches('{').count(), 1, "{topic}");
            assert_eq!(k.channel_of(&topic).as_deref(), Some(name), "{topic}");
        }
        assert_eq!(k.channel_of("syncd:{a}:b}:msgs"), None, "never made");
        assert_eq!(k.channel_of("syncd:{a%7}:msgs"), None, "cut escape");
        assert_eq!(k.channel_of("syncd:{a%41}:msgs"), None, "unknown escape");
    }

    #[test]
    fn payloads_split_into_epoch_seq_and_line() {
        let (epoch, seq, line) = parse_payload(b"e1 42 {\"op\":\"msg\"}\n").unwrap();
        assert_eq!((epoch, seq, line), ("e1", 42, &b"{\"op\":\"msg\"}\n"[..]));
        assert!(parse_payload(b"e1 x {}").is_none());
        assert!(parse_payload(b"nospace").is_none());
    }
}
