//! WebSocket helpers around `tungstenite`: the upgrade response and the
//! shared text frame of a broadcast line (the framing rules are in
//! `ws_codec`).

use bytes::Bytes;
use tungstenite::handshake::derive_accept_key;

use super::http::Request;
use super::ws_codec::{put_server_frame, server_frame};
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Builds the `101 Switching Protocols` answer to an upgrade request, or says
/// why the request is not a valid WebSocket upgrade (RFC 6455 4.2.1, the
/// checks tungstenite's server handshake makes, without building an
/// `http::Request` and its header map for every connection).
pub fn upgrade_response(request: &Request) -> Result<Vec<u8>, String> {
    if request.method != "GET" {
        return Err("a WebSocket upgrade must be a GET".into());
    }
    if request.minor < 1 {
        return Err("a WebSocket upgrade needs HTTP/1.1".into());
    }
    let has_token = |name: &str, token: &str| {
        request.header(name).is_some_and(|v| {
            v.split(|b| *b == b',' || *b == b' ')
                .any(|part| part.eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("connection", "upgrade") {
        return Err("missing `Connection: Upgrade`".into());
    }
    if !request.wants_upgrade() {
        return Err("missing `Upgrade: websocket`".into());
    }
    if request.header("sec-websocket-version") != Some(b"13") {
        return Err("missing `Sec-WebSocket-Version: 13`".into());
    }
    let Some(key) = request.header("sec-websocket-key") else {
        return Err("missing `Sec-WebSocket-Key`".into());
    };
    if !is_valid_key(key) {
        return Err("`Sec-WebSocket-Key` is not 16 bytes in base64".into());
    }
    let accept = derive_accept_key(key);
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

/// 16 bytes in canonical base64: 22 characters, the last with its low four
/// bits zero, then `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// A newline-terminated line as one complete WebSocket text frame (the line
/// without its newline), header and payload in one buffer: built once per
/// message and shared by every WebSocket subscriber as a single segment.
/// Server frames are never masked, so one frame serves every subscriber.
pub fn text_frame(line: &[u8]) -> Bytes {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    server_frame(OpCode::Data(Data::Text), body)
}

/// Appends `line` as one text frame (as `text_frame`) to `out`.
pub fn put_text_frame(out: &mut Vec<u8>, line: &[u8]) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    put_server_frame(out, OpCode::Data(Data::Text), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Request {
        match crate::proto::http::parse(head.as_bytes(), 0) {
            crate::proto::http::Parsed::Complete(r, _) => *r,
            other => panic!("{other:?}"),
        }
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn the_upgrade_answers_with_the_rfc_accept_key() {
        let response = String::from_utf8(upgrade_response(&request(UPGRADE)).unwrap()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        // RFC 6455 section 1.3's example.
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upgrades_missing_a_part_are_refused() {
        let cases = [
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
            UPGRADE.replace("keep-alive, Upgrade", "keep-alive"),
            UPGRADE.replace("Version: 13", "Version: 8"),
            UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
            UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        ];
        for head in cases {
            assert!(upgrade_response(&request(&head)).is_err(), "{head}");
        }
    }

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
        assert_eq!(&text_frame(&[b'x'; 5])[..2], &[0x81, 5]);
        assert_eq!(&text_frame(&[b'x'; 300])[..4], &[0x81, 126, 1, 44]);
        assert_eq!(text_frame(&vec![b'x'; 70_000]).len() - 70_000, 10);
    }
}
