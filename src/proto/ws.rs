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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(&text_frame_header(5)[..], &[0x81, 5]);
        assert_eq!(&text_frame_header(300)[..], &[0x81, 126, 1, 44]);
        assert_eq!(text_frame_header(70_000).len(), 10);
    }
}
