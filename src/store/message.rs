//! A message on its way to storage (`Append`) and as storage gives it back
//! (`Stored`): what the owner core, the engines and the SQLite layout
//! (`shard_db`, `segments`) share.

use std::sync::Arc;

/// One message to append; times are Unix milliseconds.
/// `channel`, `data` and `epoch` are shared with the owner's copies
/// (`owner::seqs`, the message waiting for its commit), not copied per
/// message.
#[derive(Debug, Clone)]
pub struct Append {
    pub channel: Arc<str>,
    pub seq: u64,
    pub time_ms: i64,
    pub expires_ms: i64,
    pub data: Arc<str>,
    /// Set on a channel's first message: the epoch to record for it.
    pub epoch: Arc<str>,
    /// The backend's key for this publish, remembered until `idempotent_until_ms`.
    pub idempotency: Option<(String, i64)>,
    /// A keyed-state change this message records: (key, value JSON or
    /// `None` when deleted, version), stored in the same transaction.
    pub state: Option<(String, Option<String>, u64)>,
    /// With `state`, to an engine that numbers messages: the version the
    /// writer expects, for the engine to compare and set (the version in
    /// `state` is then unknown until it answers).
    pub expected: Option<u64>,
    /// Another syncd's egress sent it (ingested with its `epoch` and
    /// `seq`): egress does not send it on.
    pub ingested: bool,
}

#[cfg(test)]
impl Append {
    /// For tests: message `seq` of `channel`, never expiring, its data the
    /// seq.
    pub fn of(channel: &str, seq: u64) -> Append {
        Append {
            channel: channel.into(),
            seq,
            time_ms: 0,
            expires_ms: i64::MAX,
            data: seq.to_string().into(),
            epoch: "e".into(),
            idempotency: None,
            state: None,
            expected: None,
            ingested: false,
        }
    }
}

/// A message as storage gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub expires_ms: i64,
    pub data: String,
}
