//! One client connection: its socket, its outbound queue and which protocol it
//! speaks (HTTP until upgraded, WebSocket, or newline-delimited JSON).

use crate::sync::rate::TokenBucket;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use std::collections::VecDeque;

use bytes::Bytes;
use mio::net::TcpStream;

use crate::outbound::{OutboundQueue, Overflow};
use crate::packing::Packer;
use crate::proto::ws_codec::Decoder;
use crate::sync::deadlines::ConnTimers;
pub use crate::sync::deadlines::Protocol;
use crate::sync::pressure::Marks;

/// The socket and the bytes waiting for it: control frames and shared
/// message frames share one queue.
pub struct Transport {
    pub stream: TcpStream,
    pub out: OutboundQueue,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set when bytes were refused because the queue would have passed
    /// `send_buffer_hard` even after writing what the socket took.
    pub overflowed: bool,
    /// The poll said the peer shut its side or the socket failed: read to
    /// the end of input, which no later event will announce.
    pub read_closed: bool,
    /// The poll watches the socket for input (`connections/accept.rs`).
    pub watched: bool,
    /// ... and for output: since a write left bytes the socket would not take.
    pub writable_watched: bool,
    /// `send_buffer_soft`: replays refill the queue up to here, and a queue
    /// that stays above it for `send_buffer_soft_for` is cut off.
    soft: usize,
}

impl Transport {
    /// A transport whose queue holds at most `hard` bytes, and aims to stay
    /// under `soft`.
    pub fn new(stream: TcpStream, hard: usize, soft: usize) -> Self {
        Transport {
            stream,
            out: OutboundQueue::new(hard),
            bytes_in: 0,
            bytes_out: 0,
            overflowed: false,
            read_closed: false,
            watched: false,
            writable_watched: false,
            soft: soft.min(hard),
        }
    }

    /// Queues `parts` as one unit, or marks the connection overflowed. The
    /// hard limit is checked only after trying to write what is queued: a
    /// client whose socket takes the bytes is never cut off for them.
    pub fn queue(&mut self, parts: &[&Bytes]) {
        self.push_or_flush(|out| out.push(parts));
    }

    /// As `queue`, for one segment given up by the caller: moved in, so no
    /// reference count is taken and dropped (a replay's chunks, the
    /// backlog's segments).
    pub fn queue_owned(&mut self, part: Bytes) {
        let size = part.len();
        let mut part = Some(part);
        // Checked before `push_owned`, which would drop a part it refused.
        self.push_or_flush(|out| {
            if out.len() + size > out.limit() {
                return Err(Overflow);
            }
            out.push_owned(part.take(), size)
        });
    }

    /// As `queue`, for bytes `put` writes into the queue's packed tail
    /// (`OutboundQueue::push_packed`).
    pub fn queue_packed(&mut self, put: impl Fn(&mut Vec<u8>)) {
        self.push_or_flush(|out| out.push_packed(&put));
    }

    /// `push`es; if the queue is full, writes what the socket takes and
    /// tries once more; if it is still full, marks the connection overflowed.
    fn push_or_flush(&mut self, mut push: impl FnMut(&mut OutboundQueue) -> Result<(), Overflow>) {
        if push(&mut self.out).is_ok() {
            return;
        }
        if self.flush_out().is_ok() && push(&mut self.out).is_ok() {
            return;
        }
        self.overflowed = true;
    }

    /// The soft limit: what replays and pipelined HTTP answers aim below.
    pub fn out_limit(&self) -> usize {
        self.soft
    }

    pub fn flush_out(&mut self) -> io::Result<()> {
        let n = self.out.write_to(&mut self.stream)?;
        self.bytes_out += n as u64;
        super::timers::note_written(n);
        Ok(())
    }
}

pub enum Session {
    /// HTTP requests on the ws port, until one upgrades to WebSocket.
    Http { buf: Vec<u8> },
    Ws {
        /// Holds only an unfinished frame or fragmented message.
        decoder: Decoder,
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
    /// Pipelined HTTP answers fill half the send buffer: serving waits until
    /// the client reads them.
    pub http_stalled: bool,
    /// Queued in `pending_reads` because its read budget ran out.
    pub read_pending: bool,
    /// Not read for now (see `worker/inputs.rs`: a cap, a full store queue,
    /// or backpressure).
    pub read_paused: bool,
    /// The outbound queue is over its backpressure mark (`sync::pressure`).
    pub over_mark: bool,
    /// Over the mark and still reading: its channels' publishers are held.
    pub holding: bool,
    /// Wire bytes waiting to enter the outbound queue: a resume's replay
    /// (which may be larger than `send_buffer_hard`), in chunks, and the live
    /// messages behind it. They move into the queue as it drains, so order
    /// is kept and memory bounded.
    pub backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    backlog_limit: usize,
    /// Set once the connection has shown a valid token.
    pub user: Option<crate::auth::User>,
    /// Heartbeat, idle, soft-limit and linger deadlines.
    pub timers: ConnTimers,
    /// The peer will send nothing more that matters (its WebSocket close
    /// came, or it shut its side): once our output is out, close without
    /// lingering.
    pub input_done: bool,
    /// The input stopped making sense (a frame too large, a protocol error):
    /// what still arrives is discarded unread.
    pub input_broken: bool,
    /// `publish_rate`'s bucket, made at the first publish.
    pub publishes: Option<TokenBucket>,
}

impl Conn {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        t: Transport,
        session: Session,
        timers: ConnTimers,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            peer,
            t,
            session,
            opened: now,
            active: now,
            closing: None,
            http_busy: false,
            http_stalled: false,
            read_pending: false,
            read_paused: false,
            over_mark: false,
            holding: false,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            backlog_limit: 0,
            user: None,
            timers,
            input_done: false,
            input_broken: false,
            publishes: None,
        }
    }

    /// Queues a newline-terminated line (as is on TCP, as a text frame
    /// without the newline on WebSocket), behind any waiting backlog;
    /// `ws_frame`, when given, is the same line as a whole WebSocket frame
    /// (`proto::ws::text_frame`), shared by every subscriber of a message.
    pub fn send_line(&mut self, line: &Bytes, ws_frame: Option<&Bytes>) {
        if self.closing.is_some() {
            return;
        }
        let wire = match (&self.session, ws_frame) {
            (Session::Ws { .. }, Some(frame)) => frame.clone(),
            (Session::Ws { .. }, None) => crate::proto::ws::text_frame(line),
            (Session::Tcp { .. }, _) => line.clone(),
            (Session::Http { .. }, _) => return,
        };
        self.send_wire(wire);
    }

    /// Queues a reply (`text`, one JSON object) packed with this turn's
    /// other replies (`OutboundQueue::push_packed`), or behind a replay.
    pub fn send_reply(&mut self, text: &[u8]) {
        let Some(ws) = self.takes_messages_as_frames() else {
            return;
        };
        if !self.backlog.is_empty() {
            let wire = if ws {
                crate::proto::ws::text_frame(text)
            } else {
                Bytes::from([text, b"\n"].concat())
            };
            return self.send_wire(wire);
        }
        self.t.queue_packed(|out| {
            if ws {
                crate::proto::ws::put_text_frame(out, text);
            } else {
                out.extend_from_slice(text);
                out.push(b'\n');
            }
        });
    }

    /// How this connection takes messages: `Some(true)` as WebSocket text
    /// frames, `Some(false)` as TCP lines, `None` not at all (it is
    /// closing, or still speaks HTTP).
    fn takes_messages_as_frames(&self) -> Option<bool> {
        if self.closing.is_some() {
            return None;
        }
        match self.session {
            Session::Ws { .. } => Some(true),
            Session::Tcp { .. } => Some(false),
            Session::Http { .. } => None,
        }
    }

    /// Queues wire bytes now, or behind a replay still in the backlog.
    fn send_wire(&mut self, wire: Bytes) {
        if self.backlog.is_empty() {
            self.t.queue_owned(wire);
            return;
        }
        self.backlog_bytes += wire.len();
        if self.backlog_bytes > self.backlog_limit {
            self.t.overflowed = true;
            return;
        }
        self.backlog.push_back(wire);
    }

    /// Sends `lines` (a replay) through the backlog; live lines may pile up
    /// behind them up to `live_limit` bytes before the client counts as slow.
    /// The lines are packed, as their wire bytes, into chunks of up to
    /// 64 KiB (`packing`): a resume of 100 000 messages is then a few
    /// hundred segments to queue, write and free, not 100 000 (each a
    /// reference count taken and dropped, and an iovec for the kernel).
    pub fn replay(&mut self, lines: impl IntoIterator<Item = Bytes>, live_limit: usize) {
        let Some(ws) = self.takes_messages_as_frames() else {
            return;
        };
        let before = self.backlog_bytes;
        // A quarter of the soft limit at most, so a chunk always fits.
        let mut packer = Packer::new(self.t.out_limit() / 4);
        for line in lines {
            let chunk = packer.room_for(line.len() + 10);
            if ws {
                crate::proto::ws::put_text_frame(chunk, &line);
            } else {
                chunk.extend_from_slice(&line);
            }
        }
        for chunk in packer.finish() {
            self.backlog_bytes += chunk.len();
            self.backlog.push_back(chunk);
        }
        self.backlog_limit =
            self.backlog_limit.max(before) + (self.backlog_bytes - before) + live_limit;
        self.refill();
    }

    /// After a write: whether it starts (`Some(true)`) or stops holding
    /// back the publishers of its channels (`sync::pressure`), as its queue
    /// passes its backpressure mark or falls back under it.
    pub fn note_queue(&mut self, marks: Marks) -> Option<bool> {
        let was_over = self.over_mark;
        self.over_mark = marks.over(was_over, self.t.out.len());
        (self.over_mark != was_over).then(|| self.set_holding(self.over_mark))?
    }

    /// On the tick's sweep: a queue over the mark that got nothing written
    /// for `grace` stops holding publishers (its peer is not reading, and
    /// the soft and hard limits deal with it); once it moves, it holds again.
    pub fn note_progress(&mut self, now: Instant, grace: std::time::Duration) -> Option<bool> {
        self.timers
            .note_progress(self.over_mark, self.t.bytes_out, now);
        self.set_holding(self.over_mark && !self.timers.stalled(now, grace))
    }

    fn set_holding(&mut self, holding: bool) -> Option<bool> {
        let holding = holding && self.closing.is_none();
        (holding != self.holding).then(|| {
            self.holding = holding;
            holding
        })
    }

    /// Moves backlog segments into the outbound queue while they fit under
    /// the soft limit (into an empty queue whatever their size, so none
    /// waits forever).
    pub fn refill(&mut self) {
        while let Some(next) = self.backlog.front() {
            if !self.t.out.is_empty() && self.t.out.len() + next.len() + 10 > self.t.out_limit() {
                return;
            }
            let Some(wire) = self.backlog.pop_front() else {
                break;
            };
            self.backlog_bytes -= wire.len();
            self.t.queue_owned(wire);
        }
        if self.backlog.is_empty() {
            self.backlog_bytes = 0;
            self.backlog_limit = 0;
            if self.backlog.capacity() > 64 {
                self.backlog = VecDeque::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every connection costs before it holds any data (see
    /// docs/benchmarks.md): a guard against fields that grow it unnoticed.
    #[test]
    fn a_connection_is_small() {
        let sizes = [
            ("Conn", std::mem::size_of::<Conn>()),
            ("Transport", std::mem::size_of::<Transport>()),
            ("Session", std::mem::size_of::<Session>()),
            ("ConnTimers", std::mem::size_of::<ConnTimers>()),
            ("Decoder", std::mem::size_of::<Decoder>()),
        ];
        eprintln!("{sizes:?}");
        assert!(sizes[0].1 <= 512, "{sizes:?}");
    }

    /// A connection over a real loopback socket; the peer's end is returned
    /// to read what the connection writes.
    fn connected(session: Session, soft: usize) -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, addr) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let timers = ConnTimers {
            last_input: now,
            next_ping: now,
            pong_due: None,
            soft_since: None,
            linger_until: None,
            stall: None,
            refresh_asked: false,
        };
        let t = Transport::new(TcpStream::from_std(ours), 32 << 20, soft);
        (Conn::new(1, addr, t, session, timers), peer)
    }

    /// Writes everything queued and backlogged, and reads it back.
    fn drain(conn: &mut Conn, peer: &mut std::net::TcpStream, expect: usize) -> Vec<u8> {
        use std::io::Read;
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = vec![0u8; expect];
        let mut filled = 0;
        while filled < expect {
            conn.t.flush_out().unwrap();
            conn.refill();
            filled += peer.read(&mut got[filled..]).unwrap();
        }
        got
    }

    /// A replay's lines go out packed into a few segments, in order, with a
    /// live line queued behind them; on WebSocket each line is its own text
    /// frame all the same.
    #[test]
    fn a_replay_is_packed_into_few_segments_and_keeps_its_order() {
        let lines: Vec<Bytes> = (0..5000)
            .map(|i| Bytes::from(format!("{{\"op\":\"msg\",\"seq\":{i}}}\n")))
            .collect();
        let live = Bytes::from_static(b"{\"op\":\"msg\",\"seq\":5000}\n");
        let tcp = Session::Tcp {
            buf: Vec::new(),
            start: 0,
        };
        let (mut conn, mut peer) = connected(tcp, 4 << 20);
        conn.replay(lines.clone(), 1 << 20);
        conn.send_line(&live, None);
        assert!(
            conn.t.out.segments() + conn.backlog.len() <= 4,
            "5000 lines in {} segments",
            conn.t.out.segments() + conn.backlog.len()
        );
        let expected: Vec<u8> = lines
            .iter()
            .chain([&live])
            .flat_map(|l| l.to_vec())
            .collect();
        assert_eq!(drain(&mut conn, &mut peer, expected.len()), expected);

        let ws = Session::Ws {
            decoder: Decoder::with_early(Vec::new()),
            echo: false,
        };
        // A small soft limit: chunks of a quarter of it, still in order.
        let (mut conn, mut peer) = connected(ws, 16 << 10);
        conn.replay(lines.clone(), 1 << 20);
        conn.send_line(&live, None);
        let expected: Vec<u8> = lines
            .iter()
            .chain([&live])
            .flat_map(|l| crate::proto::ws::text_frame(l).to_vec())
            .collect();
        assert_eq!(drain(&mut conn, &mut peer, expected.len()), expected);
    }
}
