//! The JSON frames of the protocol (docs/protocol.md): parsing requests and
//! building replies. A request is checked field by field so an error names
//! what was wrong and still echoes the request's `id` when it could be read.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

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
        data: &'a RawValue,
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
    /// A direct message to every connection of `uid`, kept until acked.
    Send {
        uid: Cow<'a, str>,
        data: &'a RawValue,
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
        value: Option<&'a RawValue>,
        version: u64,
    },
    Get {
        channel: Cow<'a, str>,
        key: Cow<'a, str>,
    },
    /// Every key of a channel, with the `seq` the snapshot is consistent with.
    State {
        channel: Cow<'a, str>,
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
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    since: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    ttl: Option<u64>,
    limit: Option<u64>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    version: Option<u64>,
}

/// Keeps an explicit `null` as a value (`Some("null")`) rather than "absent".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one request frame. On error, also returns the `id` if it could be read.
pub fn parse_request(text: &str) -> Result<Request<'_>, (Option<Box<RawValue>>, ErrorReply)> {
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
    let op = match op {
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
        "send" => Op::Send {
            uid: check_uid(fields.uid.clone()).map_err(fail)?,
            data: fields
                .data
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
        "set" => Op::Set {
            channel: channel().map_err(fail)?,
            key: check_key(fields.key.clone()).map_err(fail)?,
            value: Some(
                fields
                    .value
                    .ok_or_else(|| fail(ErrorReply::new("bad_request", "`set` needs `value`")))?,
            ),
            version: fields.version.ok_or_else(|| {
                fail(ErrorReply::new(
                    "bad_request",
                    "`set` needs `version` (0: must not exist)",
                ))
            })?,
        },
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
    const CODES: [&str; 6] = [
        "conflict",
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

/// `limit` of a history read: 1 to `MAX_HISTORY_LIMIT`, 100 when absent.
pub fn history_limit(limit: Option<u64>) -> Result<usize, ErrorReply> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(n) if (1..=MAX_HISTORY_LIMIT as u64).contains(&n) => Ok(n as usize),
        Some(_) => Err(ErrorReply::new(
            "bad_request",
            format!("`limit` must be 1 to {MAX_HISTORY_LIMIT}"),
        )),
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

#[derive(Serialize)]
struct Reply<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl<'a> Reply<'a> {
    fn new(op: &'static str, id: Option<&'a RawValue>) -> Self {
        Reply {
            op,
            id,
            channel: None,
            seq: None,
            epoch: None,
            recovered: None,
            oldest: None,
            code: None,
            message: None,
        }
    }

    fn text(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn ok(id: Option<&RawValue>) -> String {
    Reply::new("ok", id).text()
}

pub fn ok_auth(id: Option<&RawValue>, uid: &str) -> String {
    #[derive(Serialize)]
    struct Authed<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        uid: &'a str,
    }
    serde_json::to_string(&Authed { op: "ok", id, uid }).unwrap_or_default()
}

pub fn ok_presence(id: Option<&RawValue>, channel: &str, uids: &[String]) -> String {
    serde_json::json!({"op": "ok", "id": id, "channel": channel, "uids": uids}).to_string()
}

/// A server event line, such as `{"op":"join","channel":"room-1","uid":"alice"}`.
pub fn event_line(op: &str, channel: &str, uid: &str) -> Bytes {
    let mut line = serde_json::json!({"op": op, "channel": channel, "uid": uid}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `{"op":"broadcast","data":…}` for every connection.
pub fn broadcast_line(data: &str) -> Bytes {
    Bytes::from(format!("{{\"op\":\"broadcast\",\"data\":{data}}}\n"))
}

pub fn pong(id: Option<&RawValue>) -> String {
    Reply::new("pong", id).text()
}

pub fn ok_pub(id: Option<&RawValue>, seq: u64) -> String {
    Reply {
        seq: Some(seq),
        ..Reply::new("ok", id)
    }
    .text()
}

/// A resume that cannot be served in full: `recovered: false`, and the
/// oldest `seq` still retained (fetch the rest with `history`).
pub fn ok_sub_gap(
    id: Option<&RawValue>,
    channel: &str,
    seq: u64,
    epoch: &str,
    oldest: u64,
) -> String {
    Reply {
        channel: Some(channel),
        seq: Some(seq),
        epoch: Some(epoch),
        recovered: Some(false),
        oldest: Some(oldest),
        ..Reply::new("ok", id)
    }
    .text()
}

pub fn ok_sub(
    id: Option<&RawValue>,
    channel: &str,
    seq: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> String {
    Reply {
        channel: Some(channel),
        seq: Some(seq),
        epoch: Some(epoch),
        recovered,
        ..Reply::new("ok", id)
    }
    .text()
}

pub fn error(id: Option<&RawValue>, e: &ErrorReply) -> String {
    let text = Reply {
        code: Some(e.code),
        message: Some(&e.message),
        ..Reply::new("error", id)
    }
    .text();
    match &e.current {
        Some(current) => format!("{},\"current\":{current}}}", &text[..text.len() - 1]),
        None => text,
    }
}

/// The answer to a write: its `seq`, and for state writes the key's new version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acked {
    pub seq: u64,
    pub version: Option<u64>,
}

pub fn ok_acked(id: Option<&RawValue>, acked: Acked) -> String {
    match acked.version {
        None => ok_pub(id, acked.seq),
        Some(version) => {
            let text = ok_pub(id, acked.seq);
            format!("{},\"version\":{version}}}", &text[..text.len() - 1])
        }
    }
}

/// `{"op":"ok","id":…,` followed by the fields of `object` (a JSON object
/// built by a channel's owner).
pub fn ok_with(id: Option<&RawValue>, object: &str) -> String {
    let head = ok(id);
    let fields = object.trim().strip_prefix('{').unwrap_or("}");
    if fields.trim_start().starts_with('}') {
        return head;
    }
    format!("{},{fields}", &head[..head.len() - 1])
}

/// `{"op":"ok","id":..,"channel":..,"seq":..,"epoch":..,"messages":[msg, …]}`:
/// the history of a channel, each message as the `msg` frame it was sent as.
pub fn history_reply(
    id: Option<&RawValue>,
    channel: &str,
    seq: u64,
    epoch: &str,
    lines: &[Bytes],
) -> String {
    let head = ok_sub(id, channel, seq, epoch, None);
    let mut out =
        String::with_capacity(head.len() + 16 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"messages\":[");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Lines are our own JSON text, built by `msg_line`.
        out.push_str(std::str::from_utf8(line).unwrap_or("null").trim_end());
    }
    out.push_str("]}");
    out
}

/// A frame the server sends on its own (not a reply), such as a shutdown notice.
pub fn notice(op: &'static str, code: &str, message: &str) -> String {
    Reply {
        code: Some(code),
        message: Some(message),
        ..Reply::new(op, None)
    }
    .text()
}

/// `{"op":"msg",...}` followed by a newline: built once by the channel's owner and
/// shared, as is, by every subscriber on every worker (TCP sends it whole,
/// WebSocket sends it without the newline).
///
/// `data` must be valid JSON text (it comes from a parsed request's `RawValue`).
pub fn msg_line(channel: &str, seq: u64, data: &str) -> Bytes {
    let channel = serde_json::to_string(channel).unwrap_or_default();
    let mut out = Vec::with_capacity(40 + channel.len() + data.len());
    out.extend_from_slice(b"{\"op\":\"msg\",\"channel\":");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
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
                assert_eq!(data.get(), r#"{"a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        let r = parse_request(r#"{"op":"pub","channel":"n","data":null}"#).unwrap();
        assert!(matches!(r.op, Op::Pub { data, .. } if data.get() == "null"));
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
        assert_eq!(code(r#"[1,2]"#).1.code, "bad_request");
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
        assert_eq!(
            parse_request(r#"{"op":"history","channel":"a","limit":5000}"#)
                .unwrap_err()
                .1
                .code,
            "bad_request"
        );
        assert_eq!(
            parse_request(r#"{"op":"pub","channel":"a","data":1,"ttl":0}"#)
                .unwrap_err()
                .1
                .code,
            "bad_request"
        );
        let lines = [msg_line("a", 1, "1"), msg_line("a", 2, "[2]")];
        let reply: serde_json::Value =
            serde_json::from_str(&history_reply(None, "a", 2, "e", &lines)).unwrap();
        assert_eq!(reply["messages"][1]["data"][0], 2);
        assert_eq!(reply["seq"], 2);
    }

    #[test]
    fn msg_line_passes_data_through_untouched() {
        let data = RawValue::from_string(r#"{"b": 1.50, "a":"\u00e9"}"#.into()).unwrap();
        let line = msg_line("news", 42, data.get());
        assert_eq!(
            &line[..],
            br#"{"op":"msg","channel":"news","seq":42,"data":{"b": 1.50, "a":"\u00e9"}}
"#
        );
    }
}
