//! Key and topic names. Every key of a channel carries the channel as its
//! hash tag (`syncd:{news}:seq`), so each script touches one slot and
//! Redis Cluster works; the prefix keeps deployments sharing one Redis apart.

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
        format!("{}{{{channel}}}:{what}", self.prefix)
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

    /// Presence: members `uid` + NUL + node, scored by their deadline (ms).
    pub fn presence(&self, channel: &str) -> String {
        self.key(channel, "presence")
    }

    /// The pub/sub topic of a channel's messages.
    pub fn topic(&self, channel: &str) -> String {
        self.key(channel, "msgs")
    }

    /// The channel a topic belongs to.
    pub fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix("}:msgs")
    }
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
        assert_eq!(k.channel_of("syncd:{news}:msgs"), Some("news"));
        assert_eq!(k.channel_of("syncd:{a}:b}:msgs"), Some("a}:b"));
        assert_eq!(k.channel_of("other:{news}:msgs"), None);
        assert_eq!(k.channel_of("syncd:{news}:seq"), None);
    }

    #[test]
    fn payloads_split_into_epoch_seq_and_line() {
        let (epoch, seq, line) = parse_payload(b"e1 42 {\"op\":\"msg\"}\n").unwrap();
        assert_eq!((epoch, seq, line), ("e1", 42, &b"{\"op\":\"msg\"}\n"[..]));
        assert!(parse_payload(b"e1 x {}").is_none());
        assert!(parse_payload(b"nospace").is_none());
    }
}
