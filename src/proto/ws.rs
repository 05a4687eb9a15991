//! WebSocket helpers around `tungstenite`: the upgrade response, shared frame
//! headers for broadcast, and which close code answers which error.

use bytes::Bytes;
use tungstenite::handshake::server::{create_response, write_response};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::WebSocketConfig;

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

pub fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
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

/// The close code that answers a read error, per RFC 6455 section 7.4.
pub fn close_code_for(error: &tungstenite::Error) -> CloseCode {
    use tungstenite::Error;
    match error {
        Error::Capacity(_) => CloseCode::Size,
        Error::Utf8(_) => CloseCode::Invalid,
        _ => CloseCode::Protocol,
    }
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
