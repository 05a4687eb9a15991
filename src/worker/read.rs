//! Reading from client connections: bytes into HTTP requests, WebSocket
//! messages or TCP lines, each under a budget so one busy client cannot hold
//! the loop (the rest waits in `pending_reads` for the next turn). These are
//! connection-table methods; the worker serves what they hand back
//! (`Worker::read_conn`).

use std::io::{self, Read};

use std::time::Instant;

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::conn::{Protocol, Session, Transport};
use super::connections::Connections;
use super::CLOSE_GRACE;
use crate::proto::ws_codec::{self, Event, Violation};
use crate::proto::{frames, http, tcp};

/// Bytes read from one connection per loop turn.
const READ_BUDGET: usize = 256 * 1024;

pub enum Filled {
    /// Read everything the socket had.
    Drained,
    /// Stopped at the budget; more may be waiting.
    Budget,
    /// The peer closed or the socket failed.
    Closed,
}

/// A TCP connection's lines, read for the worker to serve: copied out of
/// the connection's buffer one after the other into `text` (one
/// allocation a read, not one a line), each a span of it, or `None` when
/// it was not UTF-8.
pub struct TcpRead {
    text: String,
    spans: Vec<Option<std::ops::Range<usize>>>,
    too_long: bool,
    filled: Filled,
    /// Stopped at `room` lines: complete ones may be left in the buffer.
    more: bool,
}

impl TcpRead {
    /// The lines in order: `None` for one that was not UTF-8.
    pub fn lines(&self) -> impl Iterator<Item = Option<&str>> {
        let text = &self.text;
        self.spans
            .iter()
            .map(move |span| span.clone().map(|r| &text[r]))
    }
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
    while read.spans.len() < room {
        match tcp::next_line(buf, start, max) {
            Ok(Some(tcp::Line::Text(text))) if text.trim().is_empty() => {}
            Ok(Some(tcp::Line::Text(text))) if tcp::is_pong(text) => *pong = true,
            Ok(Some(tcp::Line::Text(text))) => {
                let at = read.text.len();
                read.text.push_str(text);
                read.spans.push(Some(at..read.text.len()));
            }
            Ok(Some(tcp::Line::NotUtf8)) => read.spans.push(None),
            Ok(None) => return,
            Err(tcp::TooLong) => {
                read.too_long = true;
                return;
            }
        }
    }
    read.more = true;
}

/// A WebSocket connection's text messages, read for the worker to serve.
pub struct WsRead {
    pub texts: Vec<String>,
    filled: Filled,
    /// Stopped at `room` messages: whole frames may still be held.
    more: bool,
}

/// Reads what the socket has into `scratch`, up to the budget, handing
/// each chunk to `take`, which says whether to go on. Stopped by `take`,
/// it answers `Drained`: the caller knows why it stopped.
///
/// A read shorter than `scratch` emptied the socket's receive queue, and
/// the edge-triggered poll announces whatever arrives after it, so it ends
/// the pass without a last read that would only say `WouldBlock` (one
/// system call per readable event, as uSockets and tokio do). Once the poll
/// said the peer shut its side (`read_closed`), its end of input will not
/// be announced again, so then reading goes on until it is met.
fn read_chunks(
    t: &mut Transport,
    scratch: &mut [u8],
    mut take: impl FnMut(&[u8]) -> bool,
) -> Filled {
    let mut got = 0;
    while got < READ_BUDGET {
        match t.stream.read(scratch) {
            Ok(0) => return Filled::Closed,
            Ok(n) => {
                got += n;
                t.bytes_in += n as u64;
                if !take(&scratch[..n]) {
                    return Filled::Drained;
                }
                if n < scratch.len() && !t.read_closed {
                    return Filled::Drained;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Filled::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Filled::Closed,
        }
    }
    Filled::Budget
}

/// Appends what the socket has to `buf`, up to the budget.
fn fill(t: &mut Transport, buf: &mut Vec<u8>) -> Filled {
    read_chunks(t, &mut [0u8; 16 * 1024], |chunk| {
        buf.extend_from_slice(chunk);
        true
    })
}

/// Reads and throws away what the socket has, up to the budget.
fn discard(t: &mut Transport) -> Filled {
    read_chunks(t, &mut [0u8; 16 * 1024], |_| true)
}

impl Connections {
    /// Input of a connection on its way out: read and dropped, so that
    /// closing the socket never meets unread input (and sends a reset).
    pub fn discard_input(&mut self, key: usize) {
        let Some(conn) = self.get_mut(key) else {
            return;
        };
        match discard(&mut conn.t) {
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
            text: String::new(),
            spans: Vec::new(),
            too_long: false,
            filled: Filled::Drained,
            more: false,
        };
        let mut pong = false;
        let room = room.max(1);
        parse_lines(buf, start, max, room, &mut read, &mut pong);
        if !read.more && !read.too_long {
            read.filled = fill(&mut conn.t, buf);
            parse_lines(buf, start, max, room, &mut read, &mut pong);
        }
        buf.drain(..*start);
        *start = 0;
        // Hold only a line that has not ended, not the largest read so far.
        if buf.is_empty() {
            *buf = Vec::new();
        } else if buf.capacity() > 2 * buf.len() + 1024 {
            buf.shrink_to_fit();
        }
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

    /// Reads what a WebSocket connection sent, up to the budget, into the
    /// worker's scratch buffer and decodes it. Control frames, echo, binary
    /// messages and violations are handled here; the text messages are
    /// handed back to be served, then to `end_ws_read`. At most `room`
    /// messages are decoded (`max_inflight_per_conn`): frames already held
    /// go first, and while they fill `room` the socket is left alone.
    pub fn read_ws(&mut self, key: usize, room: usize) -> Option<WsRead> {
        let max = self.limits().max_frame;
        let conn = self.slab.get_mut(key)?;
        if conn.input_broken {
            self.discard_input(key);
            return None;
        }
        let Session::Ws { decoder, echo } = &mut conn.session else {
            return None;
        };
        let echo = *echo;
        let mut events = Vec::new();
        let room = room.max(1);
        let mut violation = decoder.feed_upto(&[], max, &mut events, room).err();
        let filled = if violation.is_some() || events.len() >= room {
            Filled::Drained
        } else {
            read_chunks(&mut conn.t, &mut self.scratch, |chunk| {
                violation = decoder.feed_upto(chunk, max, &mut events, room).err();
                violation.is_none() && events.len() < room
            })
        };
        // Stopped at the room: held frames, or unread input the edge-
        // triggered poll will not announce again, wait for the next read.
        let more = events.len() >= room;
        let mut texts = Vec::new();
        for event in events {
            match self.on_ws_event(key, event, echo) {
                Some(text) => texts.push(text),
                None => continue,
            }
        }
        if let Some(v) = violation {
            self.ws_violation(key, v);
            return None;
        }
        Some(WsRead {
            texts,
            filled,
            more,
        })
    }

    /// A control frame, an echo or a refusal is taken care of here; a
    /// request comes back to be served.
    fn on_ws_event(&mut self, key: usize, event: Event, echo: bool) -> Option<String> {
        let conn = self.slab.get_mut(key)?;
        // Our close frame is on its way: only the peer's matters now.
        let closing = conn.closing.is_some();
        self.mark_dirty(key);
        let conn = self.slab.get_mut(key)?;
        match event {
            // After the peer's close, nothing it sends counts.
            _ if conn.input_done => {}
            Event::Pong => self.on_pong(key),
            Event::Ping(_) if closing => {}
            Event::Ping(payload) => conn.t.queue(&[&ws_codec::pong(&payload)]),
            Event::Close(code) => {
                conn.input_done = true;
                if !closing {
                    // Answer with the peer's code, as RFC 6455 5.5.1 asks.
                    conn.t.overflowed = false;
                    conn.t.queue(&[&ws_codec::close(code.unwrap_or(1000), "")]);
                    conn.closing = Some(Instant::now() + CLOSE_GRACE);
                } else if conn.timers.linger_until.is_some() {
                    self.drop_conn(key);
                }
            }
            _ if closing => {}
            Event::Text(text) if echo => {
                let frame = ws_codec::server_frame(OpCode::Data(Data::Text), text.as_bytes());
                conn.t.queue(&[&frame]);
            }
            Event::Binary(data) if echo => {
                let frame = ws_codec::server_frame(OpCode::Data(Data::Binary), &data);
                conn.t.queue(&[&frame]);
            }
            Event::Text(text) if tcp::is_pong(&text) => self.on_pong(key),
            Event::Text(text) => return Some(text),
            Event::Binary(_) => {
                let e = frames::ErrorReply::new(
                    "binary_unsupported",
                    "send JSON frames as WebSocket text messages",
                );
                self.reply(key, frames::error(None, &e));
            }
        }
        None
    }

    /// Input that breaks the protocol: close with its code, and discard
    /// what still arrives until the peer closes or the linger time is up.
    fn ws_violation(&mut self, key: usize, v: Violation) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        conn.input_broken = true;
        if conn.closing.is_none() {
            log::info!(
                "worker {}: WebSocket error, closing: {}",
                self.slot(),
                v.reason
            );
            self.close_with(key, v.code, v.reason, Instant::now() + CLOSE_GRACE);
        }
        self.discard_input(key);
    }

    /// After the messages of `read_ws` were served.
    pub fn end_ws_read(&mut self, key: usize, read: WsRead) {
        match read.filled {
            _ if read.more => self.requeue_read(key),
            Filled::Closed => self.drop_conn(key),
            Filled::Budget => self.requeue_read(key),
            Filled::Drained => {}
        }
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
            fill(&mut conn.t, buf)
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

impl Connections {
    /// Marks `key` as paused; false if it already was.
    pub fn pause_read(&mut self, key: usize) -> bool {
        let Some(conn) = self.get_mut(key) else {
            return false;
        };
        if conn.read_paused {
            return false;
        }
        conn.read_paused = true;
        self.keep_paused(key);
        true
    }

    pub fn unpause(&mut self, key: usize) {
        if let Some(conn) = self.get_mut(key) {
            conn.read_paused = false;
        }
    }
}
