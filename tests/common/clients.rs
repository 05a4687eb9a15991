//! The test clients: raw HTTP, newline-delimited JSON over TCP and
//! WebSocket (tungstenite), behind one `Client` trait, and hand-built
//! WebSocket frames and handshakes for the tests of bad input.

use super::*;

/// Sends raw bytes to the ws port and returns the status and body.
pub fn http_raw(port: u16, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// What every test client can do, WebSocket or TCP.
pub trait Client {
    fn send(&mut self, frame: &Value);
    fn send_raw(&mut self, text: &str);
    /// The next frame, or None on timeout or close.
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Value>;
    fn local_addr(&self) -> SocketAddr;

    fn recv(&mut self) -> Value {
        self.recv_timeout(TIMEOUT)
            .expect("a frame before the timeout")
    }

    /// Sends a request and returns the reply with the same id, keeping any
    /// `msg` frames that arrive first in `early`.
    fn request(&mut self, frame: Value, early: &mut Vec<Value>) -> Value {
        let id = frame["id"].clone();
        self.send(&frame);
        loop {
            let got = self.recv();
            if got["op"] == "msg" {
                early.push(got);
            } else {
                assert_eq!(got["id"], id, "reply out of order: {got}");
                return got;
            }
        }
    }

    fn sub(&mut self, channel: &str) -> Value {
        let reply = self.request(
            json!({"op":"sub","id":"s","channel":channel}),
            &mut Vec::new(),
        );
        assert_eq!(reply["op"], "ok", "{reply}");
        reply
    }
}

pub struct TcpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl TcpClient {
    pub fn connect(port: u16) -> TcpClient {
        TcpClient::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("tcp connect"))
    }

    pub fn from_stream(s: TcpStream) -> TcpClient {
        TcpClient {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes);
    }

    /// Reads the next line; None at EOF or timeout.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    /// True once the server has closed the connection (EOF within the timeout).
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.writer
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 65536];
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

impl Client for TcpClient {
    fn send(&mut self, frame: &Value) {
        self.send_raw(&frame.to_string());
    }
    fn send_raw(&mut self, text: &str) {
        self.send_bytes(format!("{text}\n").as_bytes());
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.read_line(timeout)?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
    }
    fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().unwrap()
    }
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

pub struct WsClient {
    pub ws: Ws,
}

impl WsClient {
    pub fn connect(port: u16, path: &str) -> WsClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("ws connect");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url, stream).expect("ws handshake");
        WsClient { ws }
    }

    /// The close frame's code once the server closes, or None.
    pub fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        self.ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| f.code.into()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Client for WsClient {
    fn send(&mut self, frame: &Value) {
        self.send_raw(&frame.to_string());
    }
    fn send_raw(&mut self, text: &str) {
        let _ = self.ws.send(tungstenite::Message::text(text));
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        self.ws.get_mut().set_read_timeout(Some(timeout)).unwrap();
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    return Some(
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad frame {t}: {e}")),
                    )
                }
                Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
    fn local_addr(&self) -> SocketAddr {
        self.ws.get_ref().local_addr().unwrap()
    }
}

/// Sends a WebSocket handshake for `path` with extra `headers` (each ending
/// in CRLF) and returns the HTTP status, without waiting for the connection
/// to end (after a 101 it stays open).
pub fn ws_handshake_status(port: u16, path: &str, headers: &str) -> u16 {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(raw.as_bytes()).expect("send");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a status line");
    String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0)
}

impl TcpClient {
    /// The raw socket, for a test that writes or reads it without framing
    /// (nothing must have been read through the client yet).
    pub fn into_stream(self) -> TcpStream {
        self.writer
    }
}

/// A client's WebSocket frame on the wire: `first` byte (FIN, RSV, opcode),
/// the length field `len` (which may lie about the payload), the masking
/// key if masked, then the payload (masked with it).
pub fn ws_client_frame(first: u8, mask: Option<[u8; 4]>, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
