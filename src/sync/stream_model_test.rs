//! Property test: one worker's `Stream` of a channel another worker owns,
//! with the owner's messages, `sub` answers and fetch answers interleaved
//! on one FIFO link in random orders (answers from disk name the seq they
//! were asked at and come after later messages), owner processes that die
//! with messages stored but never sent, and connections subscribing at any
//! moment. The worker side is played as `worker/answers.rs` and
//! `worker/dispatch.rs` play it.
//! Checked: every connection gets every seq from 1 once, in order.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::stream::{Arrival, ConnKey, Fetched, Out, Stream};
use super::sub_buffer::SubBuffer;

#[derive(Debug, Clone)]
enum Op {
    /// The owner releases its next message.
    Release,
    /// The worker handles the next frame on the link.
    Receive,
    /// The owner answers the next request: from its cache at once, or
    /// `from_disk`, when the read comes back (`ReadDone`), naming the seq
    /// it had when asked while later messages go out meanwhile.
    Answer { from_disk: bool },
    /// The owner's oldest disk read comes back.
    ReadDone,
    /// A new connection subscribes from the start.
    Subscribe,
    /// The owner's process dies with `lost` messages stored and never
    /// sent, and a new one takes over; `noticed`: the worker saw the link
    /// go down and come back (`BusEvent::Up` fetches), else only the next
    /// message's skipped seq shows it.
    Restart { lost: u64, noticed: bool },
}

/// Frames from the owner to the worker, in order.
enum Frame {
    Msg(u64),
    SubAnswer { conn: ConnKey, seq: u64 },
    FetchAnswer { round: u64, since: u64, seq: u64 },
}

/// Requests from the worker to the owner, in order.
enum Request {
    Sub(ConnKey),
    Fetch { round: u64, since: u64 },
}

#[derive(Default)]
struct World {
    /// Messages the owner has stored: 1..=stored.
    stored: u64,
    link: VecDeque<Frame>,
    requests: VecDeque<Request>,
    /// Answers waiting for the owner's disk reads, in order.
    reading: VecDeque<Frame>,
    stream: Option<Stream>,
    rounds: u64,
    subscribed: Vec<ConnKey>,
    waiting: HashMap<ConnKey, SubBuffer>,
    received: HashMap<ConnKey, Vec<u64>>,
    /// Connections whose `sub` was lost with a link.
    gave_up: Vec<ConnKey>,
    next_conn: ConnKey,
}

const CAP: usize = 100_000;

fn line(seq: u64) -> Bytes {
    Bytes::from(seq.to_string())
}

fn seq_of(line: &Bytes) -> u64 {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl World {
    fn run(&mut self, op: &Op) {
        match op {
            Op::Release => {
                self.stored += 1;
                self.link.push_back(Frame::Msg(self.stored));
            }
            Op::Receive => self.receive(),
            Op::Answer { from_disk } => self.answer(*from_disk),
            Op::ReadDone => {
                if let Some(frame) = self.reading.pop_front() {
                    self.link.push_back(frame);
                }
            }
            Op::Subscribe => {
                self.next_conn += 1;
                self.waiting.insert(self.next_conn, SubBuffer::default());
                self.requests.push_back(Request::Sub(self.next_conn));
            }
            Op::Restart { lost, noticed } => {
                // What was on the old link is gone with it: its messages are
                // stored but never arrive, a waiting `sub` is answered
                // `unavailable` (its client gives up here), a fetch gets no
                // answer.
                self.stored += lost;
                self.link.clear();
                self.requests.clear();
                self.reading.clear();
                for conn in self.waiting.drain().map(|(conn, _)| conn) {
                    self.gave_up.push(conn);
                }
                if let Some(stream) = &mut self.stream {
                    // The link's end fails what waits on it (`fail_pending`).
                    stream.resolve(self.rounds, None, CAP);
                    if *noticed {
                        stream.stall();
                        self.fetch();
                    }
                }
            }
        }
    }

    fn fetch(&mut self) {
        if let Some(stream) = &mut self.stream {
            self.rounds += 1;
            let (since, _) = stream.start_fetch(self.rounds);
            let round = self.rounds;
            self.requests.push_back(Request::Fetch { round, since });
        }
    }

    fn answer(&mut self, from_disk: bool) {
        let frame = match self.requests.pop_front() {
            Some(Request::Sub(conn)) => Frame::SubAnswer {
                conn,
                seq: self.stored,
            },
            Some(Request::Fetch { round, since }) => Frame::FetchAnswer {
                round,
                since,
                seq: self.stored,
            },
            None => return,
        };
        match from_disk {
            true => self.reading.push_back(frame),
            false => self.link.push_back(frame),
        }
    }

    fn send(&mut self, seq: u64) {
        for &conn in &self.subscribed {
            if !self.stream.as_ref().is_some_and(|s| s.has(conn, seq)) {
                self.received.entry(conn).or_default().push(seq);
            }
        }
    }

    fn receive(&mut self) {
        match self.link.pop_front() {
            Some(Frame::Msg(seq)) => {
                for buffer in self.waiting.values_mut() {
                    buffer.push(seq, &line(seq), CAP);
                }
                let Some(stream) = &mut self.stream else {
                    return;
                };
                match stream.arrive(seq, &line(seq), CAP) {
                    Arrival::Deliver => self.send(seq),
                    Arrival::Skip => {}
                    Arrival::Fetch => self.fetch(),
                }
            }
            // As `Worker::finish_sub`: the replay, what came meanwhile,
            // then the stream from there.
            Some(Frame::SubAnswer { conn, seq }) => {
                let buffer = self.waiting.remove(&conn).unwrap_or_default();
                let upto = seq.max(buffer.last_seen());
                let live = buffer.after(seq).unwrap_or_default();
                let got = self.received.entry(conn).or_default();
                got.extend(1..=seq);
                got.extend(live.iter().map(seq_of));
                self.subscribed.push(conn);
                match &mut self.stream {
                    Some(stream) => stream.join(conn, upto),
                    None => self.stream = Some(Stream::new(upto, "e")),
                }
            }
            // As `Worker::finish_repair`.
            Some(Frame::FetchAnswer { round, since, seq }) => {
                let Some(stream) = &mut self.stream else {
                    return;
                };
                let fetched = Fetched {
                    seq,
                    epoch: "e".into(),
                    recovered: true,
                    oldest: None,
                    lines: (since + 1..=seq).map(line).collect(),
                };
                let (out, again) = stream.resolve(round, Some(fetched), CAP);
                for out in out {
                    match out {
                        Out::Msg(seq, _) => self.send(seq),
                        Out::Resync { .. } => panic!("a whole fetch announced a resync"),
                    }
                }
                if again {
                    self.fetch();
                }
            }
            None => {}
        }
    }

    /// Everything still on its way arrives; one last message shows a
    /// stream held after a loss that it must fetch.
    fn settle(&mut self) {
        self.run(&Op::Release);
        while !self.link.is_empty() || !self.requests.is_empty() || !self.reading.is_empty() {
            self.answer(false);
            self.run(&Op::ReadDone);
            self.receive();
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Release),
        1 => (0..4u64, any::<bool>()).prop_map(|(lost, noticed)| Op::Restart { lost, noticed }),
        8 => Just(Op::Receive),
        3 => Just(Op::Answer { from_disk: false }),
        2 => Just(Op::Answer { from_disk: true }),
        2 => Just(Op::ReadDone),
        1 => Just(Op::Subscribe),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_connection_gets_every_seq_once_in_order(ops in proptest::collection::vec(op(), 1..200)) {
        let mut world = World::default();
        for op in &ops {
            world.run(op);
        }
        world.settle();
        let all: Vec<u64> = (1..=world.stored).collect();
        for conn in (1..=world.next_conn).filter(|c| !world.gave_up.contains(c)) {
            let got = world.received.get(&conn).cloned().unwrap_or_default();
            prop_assert_eq!(&got, &all, "connection {}", conn);
        }
    }
}
