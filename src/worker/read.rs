//! Reading from client connections: bytes into HTTP requests, WebSocket
//! messages or TCP lines, each under a budget so one busy client cannot hold
//! the loop (the rest waits in `pending_reads` for the next turn). These are
//! connection-table methods; the worker serves what they hand back
//! (`Worker::read_conn`).

use std::io::{self, Read};
use std::time::Instant;

use tungstenite::Message;

use super::conn::{Protocol, Session};
use super::connections::Connections;
use super::CLOSE_GRACE;
use crate::proto::{frames, http, tcp, ws};

/// Bytes read from one connection per loop turn.
const READ_BUDGET: usize = 256 * 1024;
/// WebSocket messages handled from one connection per loop turn.
pub const FRAME_BUDGET: usize = 256;

pub enum Filled {
    /// Read everything the socket had.
    Drained,
    /// Stopped at the budget; more may be waiting.
    Budget,
    /// The peer closed or the socket failed.
    Closed,
}

/// A TCP connection's lines, read for the worker to serve.
pub struct TcpRead {
    pub lines: Vec<Option<String>>,
    too_long: bool,
    filled: Filled,
    /// Stopped at `room` lines: complete ones may be left in the buffer.
    more: bool,
}

/// Takes complete lines from `buf[*start..]` into `read` until it holds
/// `room` (then `more` is set) or a line is over `max`.
fn parse_lines(
    buf: &[u8],
    start: &mut usize,
    max: usize,
    room: usize,
    read: &mut TcpRead,
    pong: &mut bool,
) {
    while read.lines.len() < room {
        match tcp::next_line(buf, start, max) {
            Ok(Some(tcp::Line::Text(text))) if text.trim().is_empty() => {}
            Ok(Some(tcp::Line::Text(text))) if tcp::is_pong(text) => *pong = true,
            Ok(Some(tcp::Line::Text(text))) => read.lines.push(Some(text.to_string())),
            Ok(Some(tcp::Line::NotUtf8)) => read.lines.push(None),
            Ok(None) => return,
            Err(tcp::TooLong) => {
                read.too_long = true;
                return;
            }
        }
    }
    read.more = true;
}

/// What one WebSocket read leaves for the worker.
pub enum WsRead {
    /// A request frame to serve.
    Text(String),
    /// Read the next message.
    Next,
    /// Nothing more to read now.
    Stop,
}

/// Appends what the socket has to `buf`, up to the budget.
fn fill(stream: &mut impl Read, buf: &mut Vec<u8>, counter: &mut u64) -> Filled {
    let mut chunk = [0u8; 16 * 1024];
    let mut got = 0;
    while got < READ_BUDGET {
        match stream.read(&mut chunk) {
            Ok(0) => return Filled::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                got += n;
                *counter += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Filled::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Filled::Closed,
        }
    }
    Filled::Budget
}

/// Reads and throws away what the socket has, up to the budget.
fn discard(stream: &mut impl Read, counter: &mut u64) -> Filled {
    let mut sink = [0u8; 16 * 1024];
    let mut got = 0;
    while got < READ_BUDGET {
        match stream.read(&mut sink) {
            Ok(0) => return Filled::Closed,
            Ok(n) => {
                got += n;
                *counter += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Filled::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Filled::Closed,
        }
    }
    Filled::Budget
}

impl Connections {
    /// Input of a connection on its way out: read and dropped, so that
    /// closing the socket never meets unread input (and sends a reset).
    pub fn discard_input(&mut self, key: usize) {
        let Some(conn) = self.get_mut(key) else {
            return;
        };
        match discard(&mut conn.t.stream, &mut conn.t.bytes_in) {
            Filled::Closed => {
                conn.input_done = true;
                if conn.timers.linger_until.is_some() {
                    self.drop_conn(key);
                } else {
                    // Drops it once its last frame is out.
                    self.mark_dirty(key);
                }
            }
            Filled::Budget => self.requeue_read(key),
            Filled::Drained => {}
        }
    }

    /// The peer answered a ping (a WebSocket pong, or `{"op":"pong"}`).
    pub fn on_pong(&mut self, key: usize) {
        if let Some(conn) = self.get_mut(key) {
            conn.timers.pong();
        }
    }

    pub fn echo(&mut self, key: usize, message: Message) {
        if let Some(conn) = self.get_mut(key) {
            if let Session::Ws { ctx, .. } = &mut conn.session {
                let _ = ctx.write(&mut conn.t, message);
                let _ = ctx.flush(&mut conn.t);
            }
        }
    }

    /// A connection to read: its protocol and how many bytes it had read,
    /// or nothing to serve (it is gone, or it is closing and its input was
    /// discarded here).
    pub fn start_read(&mut self, key: usize) -> Option<(Protocol, u64)> {
        let conn = self.get_mut(key)?;
        let before = conn.t.bytes_in;
        // A closing WebSocket whose input still parses is read for the
        // peer's close frame; any other closing connection's input is moot.
        let ws = matches!(conn.session, Session::Ws { .. });
        if conn.closing.is_some() && (conn.input_broken || !ws) {
            self.discard_input(key);
            self.note_input(key, before);
            return None;
        }
        Some((conn.session.protocol(), before))
    }

    /// Input arrived since `before` (bytes read): the idle clock restarts.
    pub fn note_input(&mut self, key: usize, before: u64) {
        if let Some(conn) = self.get_mut(key) {
            if conn.t.bytes_in != before {
                conn.timers.last_input = Instant::now();
            }
        }
    }

    /// Reads a TCP connection's complete lines, for the worker to serve in
    /// order (`None` for a line that is not UTF-8), at most `room` of them
    /// (`max_inflight_per_conn`): lines already buffered go first, and while
    /// they fill `room` the socket is left alone, so the buffer stays within
    /// `max_frame` plus one read. Blank lines and pongs are taken care of
    /// here. Hand the result back to `end_tcp_read` once the lines are served.
    pub fn read_tcp(&mut self, key: usize, room: usize) -> Option<TcpRead> {
        let max = self.limits().max_frame;
        let conn = self.get_mut(key)?;
        let Session::Tcp { buf, start } = &mut conn.session else {
            return None;
        };
        let mut read = TcpRead {
            lines: Vec::new(),
            too_long: false,
            filled: Filled::Drained,
            more: false,
        };
        let mut pong = false;
        let room = room.max(1);
        parse_lines(buf, start, max, room, &mut read, &mut pong);
        if !read.more && !read.too_long {
            read.filled = fill(&mut conn.t.stream, buf, &mut conn.t.bytes_in);
            parse_lines(buf, start, max, room, &mut read, &mut pong);
        }
        buf.drain(..*start);
        *start = 0;
        if pong {
            conn.timers.pong();
        }
        Some(read)
    }

    /// Answers a TCP line that is not UTF-8.
    pub fn not_utf8(&mut self, key: usize) {
        let e = frames::ErrorReply::new("not_utf8", "lines must be UTF-8 JSON");
        self.reply(key, frames::error(None, &e));
    }

    /// After the lines of `read_tcp` were served: a line over `max_frame`
    /// closes the connection, and what is left is read on the next pass.
    pub fn end_tcp_read(&mut self, key: usize, read: TcpRead) {
        if read.too_long {
            let max = self.limits().max_frame;
            log::info!("worker {}: TCP line over max_frame, closing", self.slot());
            let reason = format!("line over {max} bytes");
            if let Some(conn) = self.get_mut(key) {
                conn.input_broken = true;
            }
            self.close_with(key, 1009, &reason, Instant::now() + CLOSE_GRACE);
        }
        match read.filled {
            // Lines still buffered are served first; the next read finds the
            // end of input again.
            Filled::Closed if !read.more => self.drop_conn(key),
            _ if read.more => self.requeue_read(key),
            Filled::Budget => self.requeue_read(key),
            Filled::Closed | Filled::Drained => {}
        }
    }

    /// Reads one WebSocket message. Control frames, echo, binary messages
    /// and errors are handled here; a text frame goes to the worker.
    pub fn read_ws_message(&mut self, key: usize) -> WsRead {
        let Some(conn) = self.get_mut(key) else {
            return WsRead::Stop;
        };
        if conn.input_broken {
            self.discard_input(key);
            return WsRead::Stop;
        }
        // Our close frame is on its way: only the peer's matters now.
        let closing = conn.closing.is_some();
        let Session::Ws { ctx, echo } = &mut conn.session else {
            return WsRead::Stop;
        };
        let echo = *echo;
        let result = ctx.read(&mut conn.t);
        // Pongs and close replies tungstenite queued go out with our frames.
        let _ = ctx.flush(&mut conn.t);
        self.mark_dirty(key);
        match result {
            Ok(Message::Pong(_)) => self.on_pong(key),
            Ok(Message::Close(_)) => {
                // tungstenite queued the close reply (or this answers
                // ours): drop once it is sent, without lingering.
                if let Some(conn) = self.get_mut(key) {
                    conn.input_done = true;
                    if conn.timers.linger_until.is_some() {
                        self.drop_conn(key);
                    } else {
                        conn.closing.get_or_insert(Instant::now() + CLOSE_GRACE);
                    }
                }
                return WsRead::Stop;
            }
            Ok(_) if closing => {}
            Ok(Message::Text(text)) if echo => self.echo(key, Message::Text(text)),
            Ok(Message::Binary(data)) if echo => self.echo(key, Message::Binary(data)),
            Ok(Message::Text(text)) if tcp::is_pong(&text) => self.on_pong(key),
            Ok(Message::Text(text)) => return WsRead::Text(text.to_string()),
            Ok(Message::Binary(_)) => {
                let e = frames::ErrorReply::new(
                    "binary_unsupported",
                    "send JSON frames as WebSocket text messages",
                );
                self.reply(key, frames::error(None, &e));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return WsRead::Stop
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Io(_),
            ) => {
                self.drop_conn(key);
                return WsRead::Stop;
            }
            Err(e) => {
                // What follows cannot be parsed: it is discarded until
                // the peer closes or the linger time is up.
                if let Some(conn) = self.get_mut(key) {
                    conn.input_broken = true;
                }
                if !closing {
                    log::info!("worker {}: WebSocket error, closing: {e}", self.slot());
                    let code = u16::from(ws::close_code_for(&e));
                    let reason = e.to_string();
                    self.close_with(key, code, &reason, Instant::now() + CLOSE_GRACE);
                }
                self.discard_input(key);
                return WsRead::Stop;
            }
        }
        WsRead::Next
    }

    /// Reads what an HTTP connection sent into its buffer, or `None` when
    /// it is gone. Pipelined requests are read no faster than they are
    /// answered: while the buffer already holds the largest request there
    /// can be, the socket is left alone, so the client meets TCP
    /// backpressure instead of the worker buffering without bound.
    pub fn fill_http(&mut self, key: usize) -> Option<Filled> {
        let most = http::MAX_HEAD + self.limits().max_frame;
        let conn = self.get_mut(key)?;
        let Session::Http { buf } = &mut conn.session else {
            return None;
        };
        let filled = if buf.len() < most {
            fill(&mut conn.t.stream, buf, &mut conn.t.bytes_in)
        } else {
            Filled::Budget
        };
        if matches!(filled, Filled::Closed) {
            self.drop_conn(key);
            return None;
        }
        Some(filled)
    }

    /// After serving what `fill_http` read: a connection waiting for an
    /// owner or for its client to read is requeued by `answer_http` or
    /// `flush_conn` instead of spinning here; a closing one has nothing
    /// more to serve.
    pub fn end_http_read(&mut self, key: usize, filled: Filled) {
        let waiting = self
            .get(key)
            .is_none_or(|c| c.http_busy || c.http_stalled || c.closing.is_some());
        if matches!(filled, Filled::Budget) && !waiting {
            self.requeue_read(key);
        }
    }
}
