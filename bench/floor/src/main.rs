//! The floor: the least work a WebSocket broadcast server can do, to show
//! how much of a delivery's cost is the kernel's. One epoll thread; each
//! message is framed once and written to each subscriber with one `write`;
//! no parsing beyond the frame header, no store, no queues but the bytes a
//! socket would not take.
//!
//! It speaks the bench's baseline protocol: a text message that starts with
//! `{"op":"sub"` subscribes the connection; any other text is sent, as it
//! is, to every subscriber; each is answered `{"op":"ok"}`.
//!
//! Usage: `floor 127.0.0.1:PORT` (prints `listening` when ready).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(0);

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken: the request, then partial frames.
    input: Vec<u8>,
    /// Bytes the socket would not take yet.
    output: Vec<u8>,
    upgraded: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let (input, output) = (Vec::new(), Vec::new());
        let upgraded = false;
        Conn {
            stream,
            input,
            output,
            upgraded,
        }
    }

    /// Writes `bytes` after whatever is already waiting; keeps what the
    /// socket does not take. Returns false if the connection is dead.
    fn send(&mut self, bytes: &[u8]) -> bool {
        if !self.output.is_empty() {
            self.output.extend_from_slice(bytes);
            return true;
        }
        match self.stream.write(bytes) {
            Ok(n) => {
                self.output.extend_from_slice(&bytes[n..]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.output.extend_from_slice(bytes);
                true
            }
            Err(_) => false,
        }
    }

    fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// An unmasked server text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The 101 answer to a complete request head, or None if the head is not
/// all there yet. Takes the head out of `input`.
fn upgrade(input: &mut Vec<u8>) -> Option<String> {
    let end = input.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&input[..end]).into_owned();
    input.drain(..end + 4);
    let key = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// The next complete client frame in `input`, unmasked and taken out:
/// (opcode, payload). None until a whole frame is there.
fn next_frame(input: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (&first, &second) = (input.first()?, input.get(1)?);
    let (mut len, mut at) = ((second & 0x7f) as usize, 2);
    if len == 126 {
        len = u16::from_be_bytes([*input.get(2)?, *input.get(3)?]) as usize;
        at = 4;
    } else if len == 127 {
        len = u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize;
        at = 10;
    }
    let mask: Option<[u8; 4]> = match second & 0x80 {
        0 => None,
        _ => {
            let mask = input.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(mask)
        }
    };
    let mut payload = input.get(at..at + len)?.to_vec();
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    input.drain(..at + len);
    Some((first & 0x0f, payload))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_string());
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {addr}");
    let ok = text_frame(br#"{"op":"ok"}"#);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut subscribers: Vec<usize> = Vec::new();
    let mut next_token = 1;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            let token = event.token().0;
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    poll.registry()
                        .register(&mut stream, Token(next_token), interest)?;
                    conns.insert(next_token, Conn::new(stream));
                    next_token += 1;
                }
                continue;
            }
            let mut alive = true;
            let mut published = Vec::new();
            if let Some(conn) = conns.get_mut(&token) {
                alive = conn.flush();
                loop {
                    match conn.stream.read(&mut scratch) {
                        Ok(0) => alive = false,
                        Ok(n) => {
                            conn.input.extend_from_slice(&scratch[..n]);
                            continue;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => alive = false,
                    }
                    break;
                }
                if !conn.upgraded {
                    if let Some(answer) = upgrade(&mut conn.input) {
                        conn.upgraded = true;
                        alive &= conn.send(answer.as_bytes());
                    }
                }
                while conn.upgraded && alive {
                    let Some((opcode, payload)) = next_frame(&mut conn.input) else {
                        break;
                    };
                    match opcode {
                        1 if payload.starts_with(br#"{"op":"sub""#) => subscribers.push(token),
                        1 => published.push(text_frame(&payload)),
                        8 => alive = false,
                        _ => continue,
                    }
                    alive &= conn.send(&ok);
                }
            }
            for frame in &published {
                for sub in &subscribers {
                    if let Some(conn) = conns.get_mut(sub) {
                        conn.send(frame);
                    }
                }
            }
            if !alive {
                if let Some(mut conn) = conns.remove(&token) {
                    poll.registry().deregister(&mut conn.stream)?;
                }
                subscribers.retain(|&s| s != token);
            }
        }
    }
}
