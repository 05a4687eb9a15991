//! Frames between workers: `u32 length | u32 meta length | meta | payload`.
//! The meta is the `BusMsg` in postcard's compact binary form (both ends are
//! forks of one binary, so there is no other version to talk to); JSON here
//! cost a publish that crossed a link about a sixth of its loop CPU
//! (docs/benchmarks.md). The payload is raw bytes (a message line, or a
//! publish's `data`) so the owner's serialized message crosses the link
//! without being parsed or copied again.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::secret::LinkSecret;

/// Every field is always written: postcard, like any format that is not
/// self-describing, cannot skip one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum BusMsg {
    /// First frame on a new link, from the dialing worker, with the proof
    /// that it was forked by our master.
    Hello {
        slot: usize,
        instance: u64,
        secret: LinkSecret,
    },
    /// The accepting worker's answer on the same link, with the same proof.
    Welcome {
        slot: usize,
        instance: u64,
        secret: LinkSecret,
    },
    /// Publish `payload` (the `data` JSON) on `channel`; sent to the owner.
    Publish {
        tag: u64,
        channel: String,
        ttl: Option<u64>,
        idempotency_key: Option<String>,
        /// From a queue ingest: its `dedupe_window`, in ms.
        ingest_window_ms: Option<u64>,
        /// From another syncd's egress (`PublishOptions::mirrored`).
        mirrored: bool,
    },
    /// The owner's answer to `Publish`: the `seq`, or an error message.
    Published {
        tag: u64,
        seq: Option<u64>,
        /// For state writes: the key's new version.
        version: Option<u64>,
        /// A repeated `idempotency_key` (the first publish's `seq`).
        duplicate: bool,
        /// `(code, message, current)` of an error reply.
        error: Option<(String, String, Option<String>)>,
    },
    /// `set`/`del`: compare-and-set of `key`; `payload` is the new value's
    /// JSON (empty to delete).
    StateSet {
        tag: u64,
        channel: String,
        key: String,
        version: u64,
        delete: bool,
    },
    /// `get` (with `key`) or a page of `state` (without): answered with a
    /// JSON object.
    StateQuery {
        tag: u64,
        channel: String,
        key: Option<String>,
        after: Option<String>,
        limit: Option<usize>,
    },
    /// A numbered message: `payload` is its `msg` line, ready for subscribers.
    /// Sent only to the workers that want the channel (`sync::interest`).
    Deliver { channel: String, seq: u64 },
    /// To a channel's owner: the sender wants its messages again (`on`,
    /// after its link came back), or no longer does (its last subscriber,
    /// waiting `sub` and replay of it ended). A `SubQuery` also means `on`.
    Watch { channel: String, on: bool },
    /// `sub` (with `since` to resume): asks the owner for the channel's state.
    SubQuery {
        tag: u64,
        channel: String,
        since: Option<u64>,
        epoch: Option<String>,
        /// A user's inbox: replay everything after its ack instead.
        inbox: bool,
        /// The next page of a replay up to this `seq`.
        upto: Option<u64>,
    },
    /// `history`: asks the owner for retained messages.
    HistoryQuery {
        tag: u64,
        channel: String,
        since: u64,
        limit: usize,
    },
    /// Cumulative ack of an inbox, sent to its owner; answered with a
    /// `QueryAnswer` once it is stored.
    Ack { tag: u64, channel: String, seq: u64 },
    /// The sender has `count` connections of `uid` in `channel` (to the owner).
    Presence {
        channel: String,
        uid: String,
        count: usize,
    },
    /// `presence`: who is in a channel (answer: a JSON array of uids).
    PresenceQuery { tag: u64, channel: String },
    /// Is `uid` online (answer: a JSON object).
    UserQuery { tag: u64, uid: String },
    /// A line for every subscriber of `channel` without a `seq` (join/leave).
    Event { channel: String },
    /// Backpressure news (`sync::pressure`): `channel`'s subscribers on
    /// the sender are over their mark (`on`), or no longer; without a
    /// channel, the sender's link queues are over their bound.
    Pressure { channel: Option<String>, on: bool },
    /// A line for every connection (`POST /api/broadcast`).
    Broadcast,
    /// Close every connection of `uid` (`POST /api/disconnect`).
    Disconnect { uid: String },
    /// The owner's answer to either query. `payload` holds the replayed or
    /// requested `msg` lines, one after the other.
    QueryAnswer {
        tag: u64,
        seq: u64,
        epoch: String,
        recovered: Option<bool>,
        error: Option<String>,
        /// With `recovered: false`: the oldest `seq` still retained.
        oldest: Option<u64>,
        /// A page stopped short: the `seq` to go on after.
        cursor: Option<u64>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bus frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("bad bus frame: {0}")]
    Bad(String),
}

/// The header of a frame (lengths and meta), for a payload shared by
/// several links (`Link::queue`).
pub fn encode_header(msg: &BusMsg, payload_len: usize) -> Bytes {
    let mut out = Vec::with_capacity(64);
    put_header(&mut out, msg, payload_len);
    Bytes::from(out)
}

/// Appends a frame's header (lengths and meta) to `out`; the payload's
/// `payload_len` bytes must follow it.
pub fn put_header(out: &mut Vec<u8>, msg: &BusMsg, payload_len: usize) {
    /// postcard writes to an `Extend<u8>`, which `&mut Vec` is not.
    struct Behind<'a>(&'a mut Vec<u8>);
    impl Extend<u8> for Behind<'_> {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
            self.0.extend(bytes);
        }
    }
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    // Only sequences of unknown length fail, and a `BusMsg` has none; an
    // empty meta would make the peer drop the link, never a wrong message.
    if postcard::to_extend(msg, Behind(out)).is_err() {
        out.truncate(start + 8);
    }
    let meta_len = out.len() - start - 8;
    let frame_len = (4 + meta_len + payload_len) as u32;
    out[start..start + 4].copy_from_slice(&frame_len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&(meta_len as u32).to_be_bytes());
}

/// Takes one whole frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<(BusMsg, Bytes)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    if len < 4 {
        return Err(FrameError::Bad("short frame".into()));
    }
    let mut frame = buf.split_to(4 + len).freeze();
    let meta_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    if meta_len > len - 4 {
        return Err(FrameError::Bad("meta longer than frame".into()));
    }
    let msg = postcard::from_bytes(&frame[8..8 + meta_len])
        .map_err(|e| FrameError::Bad(e.to_string()))?;
    Ok(Some((msg, frame.split_off(8 + meta_len))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let msg = BusMsg::Deliver {
            channel: "news".into(),
            seq: 9,
        };
        let payload = Bytes::from_static(b"{\"op\":\"msg\"}\n");
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&encode_header(&msg, payload.len()));
        wire.extend_from_slice(&payload);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[..5]);
        assert!(decode(&mut buf, 1 << 20).unwrap().is_none());
        buf.extend_from_slice(&wire[5..]);
        let (got, body) = decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((got, body), (msg, payload));
        assert!(buf.is_empty());
        buf.extend_from_slice(&wire);
        assert!(matches!(decode(&mut buf, 8), Err(FrameError::TooLarge(_))));
    }
}
