//! WebSocket helpers around `tungstenite`: the upgrade response and shared
//! frame headers for broadcast (the framing rules are in `ws_codec`).

use bytes::Bytes;
use tungstenite::handshake::server::{create_response, write_response};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Builds the `101 Switching Protocols` answer to an upgrade request, or says
/// why the request is not a valid WebSocket upgrade.
pub fn upgrade_response(
    request: &tungstenite::handshake::server::Request,
) -> Result<Vec<u8>, String> {
    let response = create_response(request).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(160);
    write_response(&mut out, &response).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The header of an unmasked, final text frame carrying `len` bytes. Server
/// frames are never masked, so one header serves every subscriber.
pub fn text_frame_header(len: usize) -> Bytes {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(10);
    // Writing into a Vec cannot fail.
    let _ = header.format(len as u64, &mut out);
    Bytes::from(out)
}

/// A newline-terminated line as one complete WebSocket text frame (the line
/// without its newline), header and payload in one buffer: built once per
/// message and shared by every WebSocket subscriber as a single segment.
pub fn text_frame(line: &[u8]) -> Bytes {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let header = text_frame_header(body.len());
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_one_whole_frame() {
        assert_eq!(&text_frame(b"hey\n")[..], b"\x81\x03hey");
        assert_eq!(&text_frame(b"hey")[..], b"\x81\x03hey");
        let long = vec![b'x'; 300];
        let frame = text_frame(&long);
        assert_eq!((&frame[..4], frame.len()), (&[0x81, 126, 1, 44][..], 304));
    }

    #[test]
    fn header_lengths() {
        assert_eq!(&text_frame_header(5)[..], &[0x81, 5]);
        assert_eq!(&text_frame_header(300)[..], &[0x81, 126, 1, 44]);
        assert_eq!(text_frame_header(70_000).len(), 10);
    }
}
