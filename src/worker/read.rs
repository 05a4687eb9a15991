//! Reading from client connections: bytes into HTTP requests, WebSocket
//! messages or TCP lines, each under a budget so one busy client cannot hold
//! the loop (the rest waits in `pending_reads` for the next turn).

use std::io::{self, Read};
use std::time::Instant;

use tungstenite::Message;

use super::conn::Session;
use super::connections::Connections;
use super::{Worker, CLOSE_GRACE};
use crate::proto::{frames, http, tcp, ws};

/// Bytes read from one connection per loop turn.
const READ_BUDGET: usize = 256 * 1024;
/// WebSocket messages handled from one connection per loop turn.
const FRAME_BUDGET: usize = 256;

enum Filled {
    /// Read everything the socket had.
    Drained,
    /// Stopped at the budget; more may be waiting.
    Budget,
    /// The peer closed or the socket failed.
    Closed,
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
}

impl Worker {
    pub(super) fn read_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let before = conn.t.bytes_in;
        // A closing WebSocket whose input still parses is read for the
        // peer's close frame; any other closing connection's input is moot.
        let ws = matches!(conn.session, Session::Ws { .. });
        if conn.closing.is_some() && (conn.input_broken || !ws) {
            self.conns.discard_input(key);
        } else {
            match conn.session {
                Session::Http { .. } => self.read_http(key),
                Session::Ws { .. } => self.read_ws(key),
                Session::Tcp { .. } => self.read_tcp(key),
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.t.bytes_in != before {
                conn.timers.last_input = Instant::now();
            }
        }
        self.forget_closed();
    }

    fn read_tcp(&mut self, key: usize) {
        let max = self.config.limits.max_frame;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Session::Tcp { buf, start } = &mut conn.session else {
            return;
        };
        let filled = fill(&mut conn.t.stream, buf, &mut conn.t.bytes_in);
        let mut lines = Vec::new();
        let mut too_long = false;
        loop {
            match tcp::next_line(buf, start, max) {
                Ok(Some(tcp::Line::Text(text))) => lines.push(Ok(text.to_string())),
                Ok(Some(tcp::Line::NotUtf8)) => lines.push(Err(())),
                Ok(None) => break,
                Err(tcp::TooLong) => {
                    too_long = true;
                    break;
                }
            }
        }
        buf.drain(..*start);
        *start = 0;
        for line in lines {
            match line {
                Ok(text) if text.trim().is_empty() => {}
                Ok(text) if tcp::is_pong(&text) => self.conns.on_pong(key),
                Ok(text) => self.on_frame(key, &text),
                Err(()) => {
                    let e = frames::ErrorReply::new("not_utf8", "lines must be UTF-8 JSON");
                    self.conns.reply(key, frames::error(None, &e));
                }
            }
        }
        if too_long {
            log::info!("worker {}: TCP line over max_frame, closing", self.slot);
            let reason = format!("line over {max} bytes");
            if let Some(conn) = self.conns.get_mut(key) {
                conn.input_broken = true;
            }
            self.conns
                .close_with(key, 1009, &reason, Instant::now() + CLOSE_GRACE);
        }
        match filled {
            Filled::Closed => self.drop_conn(key),
            Filled::Budget => self.conns.requeue_read(key),
            Filled::Drained => {}
        }
    }

    fn read_ws(&mut self, key: usize) {
        for _ in 0..FRAME_BUDGET {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.input_broken {
                return self.conns.discard_input(key);
            }
            // Our close frame is on its way: only the peer's matters now.
            let closing = conn.closing.is_some();
            let Session::Ws { ctx, echo } = &mut conn.session else {
                return;
            };
            let echo = *echo;
            let result = ctx.read(&mut conn.t);
            // Pongs and close replies tungstenite queued go out with our frames.
            let _ = ctx.flush(&mut conn.t);
            self.conns.mark_dirty(key);
            match result {
                Ok(Message::Pong(_)) => self.conns.on_pong(key),
                Ok(Message::Close(_)) => {
                    // tungstenite queued the close reply (or this answers
                    // ours): drop once it is sent, without lingering.
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.input_done = true;
                        if conn.timers.linger_until.is_some() {
                            self.drop_conn(key);
                        } else {
                            conn.closing.get_or_insert(Instant::now() + CLOSE_GRACE);
                        }
                    }
                    return;
                }
                Ok(_) if closing => {}
                Ok(Message::Text(text)) if echo => self.conns.echo(key, Message::Text(text)),
                Ok(Message::Binary(data)) if echo => self.conns.echo(key, Message::Binary(data)),
                Ok(Message::Text(text)) if tcp::is_pong(&text) => self.conns.on_pong(key),
                Ok(Message::Text(text)) => {
                    if self.conns.get(key).is_some_and(|c| c.closing.is_none()) {
                        self.on_frame(key, &text);
                    }
                }
                Ok(Message::Binary(_)) => {
                    let e = frames::ErrorReply::new(
                        "binary_unsupported",
                        "send JSON frames as WebSocket text messages",
                    );
                    self.conns.reply(key, frames::error(None, &e));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Io(_),
                ) => {
                    self.drop_conn(key);
                    return;
                }
                Err(e) => {
                    // What follows cannot be parsed: it is discarded until
                    // the peer closes or the linger time is up.
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.input_broken = true;
                    }
                    if !closing {
                        log::info!("worker {}: WebSocket error, closing: {e}", self.slot);
                        let code = u16::from(ws::close_code_for(&e));
                        let reason = e.to_string();
                        self.conns
                            .close_with(key, code, &reason, Instant::now() + CLOSE_GRACE);
                    }
                    return self.conns.discard_input(key);
                }
            }
        }
        self.conns.requeue_read(key);
    }

    /// Pipelined requests are read no faster than they are answered: while
    /// the buffer already holds the largest request there can be, the socket
    /// is left alone, so the client meets TCP backpressure instead of the
    /// worker buffering without bound.
    fn read_http(&mut self, key: usize) {
        let most = http::MAX_HEAD + self.config.limits.max_frame;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Session::Http { buf } = &mut conn.session else {
            return;
        };
        let filled = if buf.len() < most {
            fill(&mut conn.t.stream, buf, &mut conn.t.bytes_in)
        } else {
            Filled::Budget
        };
        if matches!(filled, Filled::Closed) {
            self.drop_conn(key);
            return;
        }
        self.serve_http(key);
        // A connection waiting for an owner or for its client to read is
        // requeued by `answer_http` or `flush_conn` instead of spinning here;
        // a closing one has nothing more to serve.
        let waiting = self
            .conns
            .get(key)
            .is_none_or(|c| c.http_busy || c.http_stalled || c.closing.is_some());
        if matches!(filled, Filled::Budget) && !waiting {
            self.conns.requeue_read(key);
        }
    }
}
