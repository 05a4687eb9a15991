//! One client connection: its socket, its outbound queue and which protocol it
//! speaks (HTTP until upgraded, WebSocket, or newline-delimited JSON).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mio::net::TcpStream;
use tungstenite::protocol::WebSocketContext;

use crate::outbound::OutboundQueue;

/// The socket and the bytes waiting for it. tungstenite reads and writes through
/// this too, so its control frames and our shared message frames share one queue.
pub struct Transport {
    pub stream: TcpStream,
    pub out: OutboundQueue,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set when a write would have passed `max_send_buffer`.
    pub overflowed: bool,
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.bytes_in += n as u64;
        Ok(n)
    }
}

impl Write for Transport {
    /// Never blocks: the bytes join the outbound queue, or the connection is
    /// marked as overflowed and will be cut off.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.push(&[&Bytes::copy_from_slice(buf)]).is_err() {
            self.overflowed = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport {
    pub fn new(stream: TcpStream, limit: usize) -> Self {
        Transport {
            stream,
            out: OutboundQueue::new(limit),
            bytes_in: 0,
            bytes_out: 0,
            overflowed: false,
        }
    }

    /// Queues `parts` as one unit, or marks the connection overflowed.
    pub fn queue(&mut self, parts: &[&Bytes]) {
        if self.out.push(parts).is_err() {
            self.overflowed = true;
        }
    }

    pub fn flush_out(&mut self) -> io::Result<()> {
        let n = self.out.write_to(&mut self.stream)?;
        self.bytes_out += n as u64;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http,
    Ws,
    Tcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Ws => "ws",
            Protocol::Tcp => "tcp",
        }
    }
}

pub enum Session {
    /// HTTP requests on the ws port, until one upgrades to WebSocket.
    Http { buf: Vec<u8> },
    Ws {
        ctx: Box<WebSocketContext>,
        /// `/echo`: messages come back unchanged (conformance testing only).
        echo: bool,
    },
    /// One JSON object per line; `buf[start..]` is not yet parsed.
    Tcp { buf: Vec<u8>, start: usize },
}

impl Session {
    pub fn protocol(&self) -> Protocol {
        match self {
            Session::Http { .. } => Protocol::Http,
            Session::Ws { .. } => Protocol::Ws,
            Session::Tcp { .. } => Protocol::Tcp,
        }
    }
}

pub struct Conn {
    /// Unique within this worker's life; shown by `syncd connections`.
    pub id: u64,
    pub peer: SocketAddr,
    pub t: Transport,
    pub session: Session,
    pub opened: Instant,
    /// Last time a request arrived (for the HTTP idle timeout).
    pub active: Instant,
    /// Set once the connection is on its way out: drop the socket when the
    /// queue has drained, or at this deadline.
    pub closing: Option<Instant>,
    /// An HTTP request is waiting for an owner's answer; later requests wait.
    pub http_busy: bool,
    /// Queued in `pending_reads` because its read budget ran out.
    pub read_pending: bool,
}
