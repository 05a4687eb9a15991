//! The frames the server builds: replies to requests, `msg` lines shared by
//! every subscriber, events and notices.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::compact::{compact_text, has_line_break};
use super::frames::ErrorReply;

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
    /// A repeated `idempotency_key`: this is the first publish's `seq`.
    pub duplicate: bool,
}

pub fn ok_acked(id: Option<&RawValue>, acked: Acked) -> String {
    let mut out = Vec::with_capacity(48);
    put_ok_acked(&mut out, id, acked);
    String::from_utf8(out).unwrap_or_default()
}

/// `ok_acked`'s text, appended to `out`: `{"op":"ok","id":…,"seq":…}`,
/// with `"version"` after a `set`. Written by hand, as it is written for
/// every publish (serde built it in a new `String` each time).
pub fn put_ok_acked(out: &mut Vec<u8>, id: Option<&RawValue>, acked: Acked) {
    use std::io::Write;
    out.extend_from_slice(br#"{"op":"ok""#);
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"seq\":{}", acked.seq);
    if let Some(version) = acked.version {
        let _ = write!(out, ",\"version\":{version}");
    }
    out.push(b'}');
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

/// `{"op":"ok","id":..,"channel":..,"seq":..,"epoch":..,"messages":[msg, …],
/// "more":…}`: a page of the history of a channel, each message as the
/// `msg` frame it was sent as; with `"cursor"` (the next `since`) when more
/// follows.
pub fn history_reply(
    id: Option<&RawValue>,
    channel: &str,
    seq: u64,
    epoch: &str,
    lines: &[Bytes],
    cursor: Option<u64>,
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
    match cursor {
        Some(cursor) => out.push_str(&format!("],\"more\":true,\"cursor\":{cursor}}}")),
        None => out.push_str("],\"more\":false}"),
    }
    out
}

/// `{"op":"resync",…}`: messages after `after` up to `seq` will not be
/// delivered; the stream goes on after `seq` in `epoch` (docs/protocol.md).
pub fn resync_line(channel: &str, after: u64, seq: u64, epoch: &str, oldest: Option<u64>) -> Bytes {
    let mut frame = serde_json::json!({
        "op": "resync", "channel": channel, "after": after, "seq": seq, "epoch": epoch,
    });
    if let Some(oldest) = oldest {
        frame["oldest"] = oldest.into();
    }
    Bytes::from(frame.to_string() + "\n")
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
/// `data` must be valid JSON text (it comes from a parsed request's `RawValue`),
/// compact since ingress. Rows stored before that may still hold line breaks:
/// those are compacted here, so the frame stays one line.
pub fn msg_line(channel: &str, seq: u64, data: &str) -> Bytes {
    use std::io::Write;
    let data = match has_line_break(data) {
        true => compact_text(data),
        false => data.into(),
    };
    const FIXED: usize = r#"{"op":"msg","channel":"","seq":,"data":}"#.len() + 1;
    // Sized for the whole line (a seq has at most 20 digits, a plain
    // channel name needs no escapes), so it is never copied to grow.
    let mut out = Vec::with_capacity(FIXED + channel.len() + 20 + data.len());
    out.extend_from_slice(b"{\"op\":\"msg\",\"channel\":");
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, channel);
    let _ = write!(out, ",\"seq\":{seq},\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_read_as_serde_would_write_them() {
        let id = RawValue::from_string(r#"{"k":[1,"x"]}"#.into()).unwrap();
        for (id, version) in [(None, None), (Some(&*id), None), (Some(&*id), Some(3))] {
            let acked = Acked {
                seq: 42,
                version,
                duplicate: false,
            };
            let text = ok_acked(id, acked);
            let mut want = serde_json::json!({"op": "ok", "seq": 42});
            if id.is_some() {
                want["id"] = serde_json::json!({"k": [1, "x"]});
            }
            if let Some(v) = version {
                want["version"] = v.into();
            }
            let got: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got, want, "{text}");
            assert!(text.starts_with(r#"{"op":"ok""#), "{text}");
        }
    }

    #[test]
    fn history_reply_holds_the_msg_frames() {
        let lines = [msg_line("a", 1, "1"), msg_line("a", 2, "[2]")];
        let reply: serde_json::Value =
            serde_json::from_str(&history_reply(None, "a", 2, "e", &lines, None)).unwrap();
        assert_eq!(reply["messages"][1]["data"][0], 2);
        assert_eq!((&reply["seq"], &reply["more"]), (&2.into(), &false.into()));
        let page: serde_json::Value =
            serde_json::from_str(&history_reply(None, "a", 9, "e", &lines, Some(2))).unwrap();
        assert_eq!((&page["more"], &page["cursor"]), (&true.into(), &2.into()));
    }

    #[test]
    fn msg_line_passes_data_through_and_stays_one_line() {
        let data = RawValue::from_string(r#"{"b":1.50,"a":"\u00e9 x"}"#.into()).unwrap();
        let line = msg_line("news", 42, data.get());
        assert_eq!(
            &line[..],
            br#"{"op":"msg","channel":"news","seq":42,"data":{"b":1.50,"a":"\u00e9 x"}}
"#
        );
        // A pretty row stored by an older version.
        let line = msg_line("news", 43, "{\n  \"b\": 1.50\n}");
        assert_eq!(
            &line[..],
            b"{\"op\":\"msg\",\"channel\":\"news\",\"seq\":43,\"data\":{\"b\":1.50}}\n"
        );
    }
}
