//! The server side of RFC 6455 framing, sans-IO, on our own buffers: the
//! worker reads sockets into one scratch buffer it owns, and a connection
//! keeps bytes only for a frame that has not fully arrived (sized to what
//! came, freed when it completes) and for a fragmented message being
//! assembled. An idle connection therefore holds no buffer at all, where
//! tungstenite's `WebSocket` keeps a 128 KiB read buffer per connection.
//! Headers are parsed by tungstenite's `FrameHeader`; the rules (masking,
//! control frames, fragments, UTF-8, close codes, sizes) are checked here.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// One thing the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// Answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    Pong,
    /// The peer's close, with its code when it gave one.
    Close(Option<u16>),
}

/// The input broke the protocol: close with `code` (1002 protocol, 1007 not
/// UTF-8, 1009 too large) and stop parsing.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// A fragmented message, between its first frame and its final one.
#[derive(Debug, Default)]
struct Fragments {
    text: bool,
    payload: Vec<u8>,
    /// `payload[..checked]` is known to be valid UTF-8.
    checked: usize,
}

/// One connection's decoding state. Empty (no allocation) between frames.
#[derive(Debug, Default)]
pub struct Decoder {
    /// A frame's bytes that have arrived so far, header included.
    partial: Vec<u8>,
    message: Option<Box<Fragments>>,
}

impl Decoder {
    /// A decoder that starts with bytes read before the upgrade was done.
    pub fn with_early(early: Vec<u8>) -> Decoder {
        Decoder {
            partial: early,
            message: None,
        }
    }

    /// Bytes held for unfinished frames and messages.
    pub fn held(&self) -> usize {
        self.partial.capacity() + self.message.as_ref().map_or(0, |m| m.payload.capacity())
    }

    /// Decodes `input` (newly read bytes) into `out`, keeping what does not
    /// complete a frame. Frames and messages over `max` bytes are refused.
    pub fn feed(
        &mut self,
        input: &[u8],
        max: usize,
        out: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        self.feed_upto(input, max, out, usize::MAX)
    }

    /// `feed`, stopping once `out` holds `room` events: the frames after
    /// them stay held for a later call, so a client
    /// that must wait (`max_inflight_per_conn`) is not decoded ahead.
    pub fn feed_upto(
        &mut self,
        input: &[u8],
        max: usize,
        out: &mut Vec<Event>,
        room: usize,
    ) -> Result<(), Violation> {
        if self.partial.is_empty() {
            let used = self.decode(input, max, out, room)?;
            self.partial.extend_from_slice(&input[used..]);
            return Ok(());
        }
        self.partial.extend_from_slice(input);
        let partial = std::mem::take(&mut self.partial);
        let used = self.decode(&partial, max, out, room);
        let used = used?;
        if used < partial.len() {
            self.partial = partial;
            self.partial.drain(..used);
            // What is left is a frame's beginning: hold no more than it.
            if self.partial.capacity() > 2 * self.partial.len() + 64 {
                self.partial.shrink_to_fit();
            }
        }
        Ok(())
    }

    /// Decodes every complete frame at the start of `bytes`; returns how
    /// many bytes they took.
    fn decode(
        &mut self,
        bytes: &[u8],
        max: usize,
        out: &mut Vec<Event>,
        room: usize,
    ) -> Result<usize, Violation> {
        let mut at = 0;
        while out.len() < room {
            let mut cursor = Cursor::new(&bytes[at..]);
            let parsed =
                FrameHeader::parse(&mut cursor).map_err(|_| violation(1002, "bad frame header"))?;
            let Some((header, len)) = parsed else {
                return Ok(at);
            };
            check_header(&header, len, max)?;
            let start = at + cursor.position() as usize;
            let len = len as usize;
            if bytes.len() - start < len {
                return Ok(at);
            }
            let mut payload = bytes[start..start + len].to_vec();
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            at = start + len;
            self.frame(&header, payload, max, out)?;
        }
        Ok(at)
    }

    fn frame(
        &mut self,
        header: &FrameHeader,
        payload: Vec<u8>,
        max: usize,
        out: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        match header.opcode {
            OpCode::Control(Control::Ping) => out.push(Event::Ping(payload)),
            OpCode::Control(Control::Pong) => out.push(Event::Pong),
            OpCode::Control(Control::Close) => out.push(Event::Close(close_code(&payload)?)),
            OpCode::Data(Data::Text | Data::Binary) if self.message.is_some() => {
                return Err(violation(1002, "a new message inside a fragmented one"))
            }
            OpCode::Data(Data::Text) if header.is_final => match String::from_utf8(payload) {
                Ok(text) => out.push(Event::Text(text)),
                Err(_) => return Err(violation(1007, "text is not UTF-8")),
            },
            OpCode::Data(Data::Binary) if header.is_final => out.push(Event::Binary(payload)),
            OpCode::Data(data) => {
                let started = data != Data::Continue;
                let text = data == Data::Text;
                let fragments = match (&mut self.message, started) {
                    (Some(f), false) => f,
                    (None, true) => self.message.insert(Box::new(Fragments {
                        text,
                        ..Fragments::default()
                    })),
                    _ => return Err(violation(1002, "a continuation with no message")),
                };
                if fragments.payload.len() + payload.len() > max {
                    return Err(violation(1009, "message over max_frame"));
                }
                fragments.payload.extend_from_slice(&payload);
                if fragments.text {
                    check_utf8_prefix(fragments, header.is_final)?;
                }
                if header.is_final {
                    if let Some(f) = self.message.take() {
                        let Fragments { text, payload, .. } = *f;
                        out.push(match text {
                            true => Event::Text(
                                String::from_utf8(payload)
                                    .map_err(|_| violation(1007, "text is not UTF-8"))?,
                            ),
                            false => Event::Binary(payload),
                        });
                    }
                }
            }
            OpCode::Control(Control::Reserved(_)) => {
                return Err(violation(1002, "reserved opcode"))
            }
        }
        Ok(())
    }
}

/// The rules a header must follow before its payload is even read.
fn check_header(header: &FrameHeader, len: u64, max: usize) -> Result<(), Violation> {
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(violation(1002, "reserved bits set (no extension agreed)"));
    }
    if header.mask.is_none() {
        return Err(violation(1002, "client frames must be masked"));
    }
    match header.opcode {
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            Err(violation(1002, "reserved opcode"))
        }
        OpCode::Control(_) if !header.is_final => Err(violation(1002, "fragmented control frame")),
        OpCode::Control(_) if len > 125 => Err(violation(1002, "control frame over 125 bytes")),
        _ if len > max as u64 => Err(violation(1009, "frame over max_frame")),
        _ => Ok(()),
    }
}

/// Checks a text message's fragments as they come, so invalid UTF-8 fails
/// at once; an incomplete character at the end may wait for the next one.
fn check_utf8_prefix(f: &mut Fragments, last: bool) -> Result<(), Violation> {
    match std::str::from_utf8(&f.payload[f.checked..]) {
        Ok(_) => f.checked = f.payload.len(),
        Err(e) if e.error_len().is_none() && !last => f.checked += e.valid_up_to(),
        Err(_) => return Err(violation(1007, "text is not UTF-8")),
    }
    Ok(())
}

/// A close frame's code: none, or one a peer may send, with UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(1002, "a close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(violation(1002, "a close code peers may not send"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(1007, "close reason is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let x = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A server frame (unmasked, final) of `opcode` with `payload`. Sized
/// exactly: `Bytes` takes a `Vec` as long as its room without allocating
/// the shared box a longer one needs (a live message's frame is built
/// once per message and worker).
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header_len = FrameHeader::default().len(payload.len() as u64);
    let mut out = Vec::with_capacity(header_len + payload.len());
    put_server_frame(&mut out, opcode, payload);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

/// Appends one whole unmasked frame to `out` (frames back to back in one
/// buffer: a replay's chunk).
pub fn put_server_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

pub fn ping() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

pub fn pong(payload: &[u8]) -> Bytes {
    server_frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame with `code` and a reason cut to fit 125 bytes.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
#[path = "ws_codec_tests.rs"]
mod tests;
