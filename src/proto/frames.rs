//! The JSON frames of the protocol (docs/protocol.md): parsing requests (the
//! replies are built in `replies`). A request is checked field by field so an
//! error names what was wrong and still echoes the request's `id` when it
//! could be read. `data` and state values come out compact (`compact`), so a
//! pretty-printed request never puts a newline into what is stored or sent.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::compact::compact;
pub use super::replies::{
    broadcast_line, error, event_line, history_reply, msg_line, notice, ok, ok_acked, ok_auth,
    ok_presence, ok_sub, ok_sub_gap, ok_with, pong, put_ok_acked, resync_line, Acked,
};

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<&'a RawValue>,
    pub op: Op<'a>,
}

#[derive(Debug)]
pub enum Op<'a> {
    Sub {
        channel: Cow<'a, str>,
        since: Option<u64>,
        epoch: Option<Cow<'a, str>>,
    },
    Unsub {
        channel: Cow<'a, str>,
    },
    Pub {
        channel: Cow<'a, str>,
        /// Compact JSON text.
        data: Cow<'a, str>,
        /// Seconds to keep the message (capped by `history_ttl`).
        ttl: Option<u64>,
    },
    History {
        channel: Cow<'a, str>,
        since: u64,
        limit: usize,
    },
    /// Authenticate with a JWT (the connection's first frame, when used).
    Auth {
        token: Cow<'a, str>,
    },
    /// Replace the connection's token, for the same user, before it expires.
    Refresh {
        token: Cow<'a, str>,
    },
    /// A direct message to every connection of `uid`, kept until acked.
    Send {
        uid: Cow<'a, str>,
        /// Compact JSON text.
        data: Cow<'a, str>,
        ttl: Option<u64>,
    },
    /// Cumulative ack of an inbox (`#uid`) up to `seq`.
    Ack {
        channel: Cow<'a, str>,
        seq: u64,
    },
    /// Who is in a presence channel.
    Presence {
        channel: Cow<'a, str>,
    },
    /// Compare-and-set of a key (`value: None` deletes it).
    Set {
        channel: Cow<'a, str>,
        key: Cow<'a, str>,
        /// Compact JSON text.
        value: Option<Cow<'a, str>>,
        version: u64,
    },
    Get {
        channel: Cow<'a, str>,
        key: Cow<'a, str>,
    },
    /// A page of a channel's keys (after `after`, in key order), with the
    /// `seq` the page is consistent with.
    State {
        channel: Cow<'a, str>,
        after: Option<Cow<'a, str>>,
        limit: usize,
    },
    Ping,
}

/// Most messages one `history` request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// An error reply: a stable `code` for programs and a `message` for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub code: &'static str,
    pub message: String,
    /// For `conflict`: the key's current state, a JSON object
    /// `{"key":…,"value":…,"version":…}`.
    pub current: Option<String>,
}

impl ErrorReply {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            current: None,
        }
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "text")]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    since: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    epoch: Option<Cow<'a, str>>,
    ttl: Option<u64>,
    limit: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    uid: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    version: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    after: Option<Cow<'a, str>>,
}

/// A string field, borrowed from the frame unless it holds escapes. serde
/// borrows a `Cow<str>` only when that is the field's whole type: an
/// `Option<Cow<str>>`, even marked `borrow`, was copied each time (the
/// `op` and the `channel` of every request, two allocations).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// Keeps an explicit `null` as a value (`Some("null")`) rather than "absent".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one request frame. On error, also returns the `id` if it could be read.
pub fn parse_request(text: &str) -> Result<Request<'_>, (Option<Box<RawValue>>, ErrorReply)> {
    if !text.trim_start().starts_with('{') {
        return Err((None, not_an_object(text)));
    }
    let fields: Fields = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            (
                None,
                ErrorReply::new("bad_json", format!("malformed JSON: {e}")),
            )
        } else {
            (
                id_of(text),
                ErrorReply::new("bad_request", format!("bad field: {e}")),
            )
        }
    })?;
    let id = fields.id;
    let fail = |e: ErrorReply| (id.map(RawValue::to_owned), e);
    let Some(op) = fields.op.as_deref() else {
        return Err(fail(ErrorReply::new("bad_request", "missing field `op`")));
    };
    let channel = || channel_field(op, &fields.channel);
    let op =
        match op {
            "sub" => Op::Sub {
                channel: channel().map_err(fail)?,
                since: fields.since,
                epoch: fields.epoch.clone(),
            },
            "unsub" => Op::Unsub {
                channel: channel().map_err(fail)?,
            },
            "pub" => Op::Pub {
                channel: channel().map_err(fail)?,
                data: fields
                    .data
                    .map(compact)
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`pub` needs `data`")))?,
                ttl: ttl_field(fields.ttl).map_err(fail)?,
            },
            "history" => Op::History {
                channel: channel().map_err(fail)?,
                since: fields.since.unwrap_or(0),
                limit: history_limit(fields.limit).map_err(fail)?,
            },
            "auth" => Op::Auth {
                token: fields
                    .token
                    .clone()
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`auth` needs `token`")))?,
            },
            "refresh" => Op::Refresh {
                token: fields.token.clone().ok_or_else(|| {
                    fail(ErrorReply::new("bad_request", "`refresh` needs `token`"))
                })?,
            },
            "send" => Op::Send {
                uid: check_uid(fields.uid.clone()).map_err(fail)?,
                data: fields
                    .data
                    .map(compact)
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`send` needs `data`")))?,
                ttl: ttl_field(fields.ttl).map_err(fail)?,
            },
            "ack" => Op::Ack {
                channel: channel().map_err(fail)?,
                seq: fields
                    .seq
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`ack` needs `seq`")))?,
            },
            "presence" => Op::Presence {
                channel: channel().map_err(fail)?,
            },
            "set" => {
                Op::Set {
                    channel: channel().map_err(fail)?,
                    key: check_key(fields.key.clone()).map_err(fail)?,
                    value: Some(fields.value.map(compact).ok_or_else(|| {
                        fail(ErrorReply::new("bad_request", "`set` needs `value`"))
                    })?),
                    version: fields.version.ok_or_else(|| {
                        fail(ErrorReply::new(
                            "bad_request",
                            "`set` needs `version` (0: must not exist)",
                        ))
                    })?,
                }
            }
            "del" => Op::Set {
                channel: channel().map_err(fail)?,
                key: check_key(fields.key.clone()).map_err(fail)?,
                value: None,
                version: fields
                    .version
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`del` needs `version`")))?,
            },
            "get" => Op::Get {
                channel: channel().map_err(fail)?,
                key: check_key(fields.key.clone()).map_err(fail)?,
            },
            "state" => Op::State {
                channel: channel().map_err(fail)?,
                after: fields.after.clone(),
                limit: history_limit(fields.limit).map_err(fail)?,
            },
            "ping" => Op::Ping,
            other => {
                return Err(fail(ErrorReply::new(
                    "unknown_op",
                    format!("unknown op `{}`", truncate(other, 40)),
                )))
            }
        };
    Ok(Request { id, op })
}

/// `ttl` in seconds: absent, or at least 1.
fn ttl_field(ttl: Option<u64>) -> Result<Option<u64>, ErrorReply> {
    match ttl {
        Some(0) => Err(ErrorReply::new(
            "bad_request",
            "`ttl` must be at least 1 second",
        )),
        ttl => Ok(ttl),
    }
}

/// The error codes a worker may pass on from another (unknown ones become
/// `internal`).
pub fn known_code(code: &str) -> &'static str {
    const CODES: [&str; 7] = [
        "conflict",
        "too_many_channels",
        "unavailable",
        "storage_failed",
        "forbidden",
        "bad_request",
        "internal",
    ];
    CODES.into_iter().find(|c| *c == code).unwrap_or("internal")
}

/// A state key: 1 to 200 bytes of UTF-8.
pub fn check_key(key: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ErrorReply> {
    let key = key.ok_or_else(|| ErrorReply::new("bad_request", "`key` is required"))?;
    if key.is_empty() || key.len() > MAX_CHANNEL_LEN {
        return Err(ErrorReply::new(
            "bad_request",
            "`key` must be 1 to 200 bytes",
        ));
    }
    Ok(key)
}

/// Longest `idempotency_key`: it is stored beside every message that has one.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// An idempotency key, when given: 1 to 256 bytes. The same rule for the
/// HTTP API and queue ingest.
pub fn check_idempotency_key(key: Option<&str>) -> Result<(), ErrorReply> {
    match key {
        Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN => Err(ErrorReply::new(
            "bad_request",
            format!("`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}

/// A user id: 1 to 128 bytes, no whitespace or control characters.
pub fn check_uid(uid: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ErrorReply> {
    let uid = uid.ok_or_else(|| ErrorReply::new("bad_request", "`uid` is required"))?;
    if uid.is_empty() || uid.len() > 128 || uid.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ErrorReply::new(
            "bad_request",
            "`uid` must be 1 to 128 bytes without whitespace",
        ));
    }
    Ok(uid)
}

/// `limit` of a `history` or `state` page: 100 when absent, at least 1,
/// and above `MAX_HISTORY_LIMIT` clamped to it (never refused).
pub fn history_limit(limit: Option<u64>) -> Result<usize, ErrorReply> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(0) => Err(ErrorReply::new("bad_request", "`limit` must be at least 1")),
        Some(n) => Ok(n.min(MAX_HISTORY_LIMIT as u64) as usize),
    }
}

fn channel_field<'a>(op: &str, field: &Option<Cow<'a, str>>) -> Result<Cow<'a, str>, ErrorReply> {
    let name = field
        .clone()
        .ok_or_else(|| ErrorReply::new("bad_request", format!("`{op}` needs `channel`")))?;
    check_channel(&name)?;
    Ok(name)
}

fn id_of(text: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: Option<Box<RawValue>>,
    }
    serde_json::from_str::<OnlyId>(text).ok().and_then(|o| o.id)
}

/// Channel names: 1 to 200 bytes, no whitespace or control characters.
pub fn check_channel(name: &str) -> Result<(), ErrorReply> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ErrorReply::new(
            "bad_channel",
            format!("channel names are 1 to {MAX_CHANNEL_LEN} bytes"),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ErrorReply::new(
            "bad_channel",
            "channel names may not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A frame that does not start as an object: valid JSON of another kind
/// (`[1,2]`, `"x"`, `5`) is a `bad_request`; anything else `bad_json`.
fn not_an_object(text: &str) -> ErrorReply {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(_) => ErrorReply::new("bad_request", "expected a JSON object with an op"),
        Err(e) => ErrorReply::new("bad_json", format!("malformed JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_ops() {
        let r =
            parse_request(r#"{"op":"pub","id":4,"channel":"news","data":{"a":[1,2]}}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "4");
        match r.op {
            Op::Pub { channel, data, .. } => {
                assert_eq!(channel, "news");
                assert_eq!(data, r#"{"a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        let r = parse_request(r#"{"op":"pub","channel":"n","data":null}"#).unwrap();
        assert!(matches!(r.op, Op::Pub { data, .. } if data == "null"));
        // Pretty-printed data comes out compact, strings untouched.
        let r = parse_request("{\"op\":\"set\",\"channel\":\"n\",\"key\":\"k\",\"version\":0,\n \"value\": [\n  \"a b\",\n  1.50\n ]}").unwrap();
        assert!(matches!(r.op, Op::Set { value: Some(v), .. } if v == r#"["a b",1.50]"#));
    }

    #[test]
    fn errors_have_codes_and_keep_the_id() {
        let code = |t: &str| parse_request(t).unwrap_err();
        assert_eq!(code("{nope").1.code, "bad_json");
        let (id, e) = code(r#"{"op":"dance","id":"x"}"#);
        assert_eq!((id.unwrap().get(), e.code), (r#""x""#, "unknown_op"));
        let (id, e) = code(r#"{"op":"sub","id":7,"channel":5}"#);
        assert_eq!((id.unwrap().get(), e.code), ("7", "bad_request"));
        assert_eq!(code(r#"{"op":"pub","channel":"a"}"#).1.code, "bad_request");
        assert_eq!(code(r#"{"op":"sub","channel":""}"#).1.code, "bad_channel");
        for not_an_object in ["[1,2]", " \"x\"", "5", "null"] {
            let e = code(not_an_object).1;
            assert_eq!(e.code, "bad_request", "{not_an_object}");
            assert_eq!(e.message, "expected a JSON object with an op");
        }
        assert_eq!(code("[1,").1.code, "bad_json");
    }

    #[test]
    fn string_fields_are_borrowed_unless_escaped() {
        let r = parse_request(r#"{"op":"pub","channel":"news","data":1}"#).unwrap();
        assert!(matches!(
            r.op,
            Op::Pub {
                channel: Cow::Borrowed("news"),
                ..
            }
        ));
        let r = parse_request(r#"{"op":"sub","channel":"caf\u00e9","epoch":null}"#).unwrap();
        assert!(
            matches!(r.op, Op::Sub { channel: Cow::Owned(ref c), epoch: None, .. } if c == "café")
        );
        let (_, e) = parse_request(r#"{"op":"sub","channel":5}"#).unwrap_err();
        assert_eq!(
            e.message,
            "bad field: invalid type: integer `5`, expected a string at line 1 column 23"
        );
    }

    #[test]
    fn history_and_ttl() {
        let r = parse_request(r#"{"op":"history","channel":"a","since":3,"limit":2}"#).unwrap();
        assert!(matches!(
            r.op,
            Op::History {
                since: 3,
                limit: 2,
                ..
            }
        ));
        let clamped = parse_request(r#"{"op":"history","channel":"a","limit":5000}"#).unwrap();
        assert!(matches!(clamped.op, Op::History { limit: 1000, .. }));
        let state = parse_request(r#"{"op":"state","channel":"a","after":"k","limit":9999}"#);
        assert!(matches!(
            state.unwrap().op,
            Op::State { after: Some(ref k), limit: 1000, .. } if k == "k"
        ));
        assert_eq!(
            parse_request(r#"{"op":"pub","channel":"a","data":1,"ttl":0}"#)
                .unwrap_err()
                .1
                .code,
            "bad_request"
        );
    }
}
