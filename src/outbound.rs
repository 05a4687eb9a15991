//! A bounded queue of byte segments waiting to be written to one socket.
//!
//! Segments are `Bytes`, so one serialized message is shared by every queue it
//! sits in; writing drains as many segments as fit with one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Most segments handed to one `writev` call (Linux allows 1024).
const MAX_IOVECS: usize = 256;
/// An empty queue keeps room for this many segments; after a burst that
/// needed more, the room is given back, so idle connections hold no buffer.
const KEEP_SEGMENTS: usize = 64;

#[derive(Debug)]
pub struct Overflow;

pub struct OutboundQueue {
    segments: VecDeque<Bytes>,
    queued: usize,
    limit: usize,
    /// The first segment has been partly written and must be finished first.
    head_started: bool,
}

impl OutboundQueue {
    pub fn new(limit: usize) -> Self {
        OutboundQueue {
            segments: VecDeque::new(),
            queued: 0,
            limit,
            head_started: false,
        }
    }

    /// Queues `parts` as one unit: all of them, or none if they would pass the limit.
    pub fn push(&mut self, parts: &[&Bytes]) -> Result<(), Overflow> {
        let size: usize = parts.iter().map(|b| b.len()).sum();
        // Cloned (a reference count each) only once they fit.
        self.push_owned(parts.iter().map(|&part| part.clone()), size)
    }

    /// As `push`, taking the segments (`size` bytes in all): a clone of
    /// `Bytes` made from a `Vec` (a link frame's header) allocates to share it.
    pub fn push_owned(
        &mut self,
        parts: impl IntoIterator<Item = Bytes>,
        size: usize,
    ) -> Result<(), Overflow> {
        if self.queued + size > self.limit {
            return Err(Overflow);
        }
        self.segments
            .extend(parts.into_iter().filter(|b| !b.is_empty()));
        self.queued += size;
        Ok(())
    }

    /// Queues bytes past the limit: for the few bytes of a closing frame.
    pub fn push_unbounded(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.segments.push_back(bytes);
    }

    /// Drops everything not yet started, keeping the rest of a partly written
    /// segment so the stream stays well framed.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.head_started).min(self.segments.len());
        self.segments.truncate(keep);
        self.queued = self.segments.iter().map(Bytes::len).sum();
        self.shrink_if_drained();
    }

    fn shrink_if_drained(&mut self) {
        if self.segments.is_empty() && self.segments.capacity() > KEEP_SEGMENTS {
            self.segments = VecDeque::new();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued
    }

    /// Segments waiting (each a `writev` iovec).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Writes until the queue is empty or the socket would block. Returns the
    /// bytes written; a `WouldBlock` is not an error here.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.segments.is_empty() {
            let mut written = match write_some(&self.segments, w) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.queued -= written;
            while written > 0 {
                let Some(head) = self.segments.front_mut() else {
                    break;
                };
                if written >= head.len() {
                    written -= head.len();
                    self.segments.pop_front();
                    self.head_started = false;
                } else {
                    head.advance(written);
                    self.head_started = true;
                    written = 0;
                }
            }
        }
        self.shrink_if_drained();
        Ok(total)
    }
}

/// Segments up to which the iovecs are built in a small array on the stack.
const STACK_IOVECS: usize = 16;

/// One write of as many of `segments` as one call takes: a plain `write`
/// for one segment (the common case in fan-out: one message per loop turn),
/// else one `writev` of up to `MAX_IOVECS`.
fn write_some(segments: &VecDeque<Bytes>, w: &mut impl Write) -> io::Result<usize> {
    let n = segments.len().min(MAX_IOVECS);
    if n == 1 {
        return w.write(&segments[0]);
    }
    if n <= STACK_IOVECS {
        let mut slices = [IoSlice::new(&[]); STACK_IOVECS];
        for (slot, segment) in slices.iter_mut().zip(segments) {
            *slot = IoSlice::new(segment);
        }
        return w.write_vectored(&slices[..n]);
    }
    let slices: Vec<IoSlice<'_>> = segments.iter().take(n).map(|b| IoSlice::new(b)).collect();
    w.write_vectored(&slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes, then would block.
    struct Trickle {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_partial_writes_keep_framing() {
        let mut q = OutboundQueue::new(10);
        let a = Bytes::from_static(b"hello");
        assert!(q.push(&[&a, &a]).is_ok());
        assert!(
            q.push(&[&Bytes::from_static(b"x")]).is_err(),
            "over the limit"
        );
        let mut w = Trickle {
            got: vec![],
            room: 7,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 7);
        assert_eq!(q.len(), 3);
        q.discard_unsent();
        assert_eq!(q.len(), 3, "the partly written segment stays");
        q.push_unbounded(Bytes::from_static(b"!"));
        w.room = 100;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"hellohello!");
        assert!(q.is_empty());
    }

    #[test]
    fn one_few_or_many_segments_arrive_whole_and_in_order() {
        for count in [1, 2, STACK_IOVECS, STACK_IOVECS + 1, MAX_IOVECS * 2 + 3] {
            let mut q = OutboundQueue::new(1 << 20);
            let mut want = Vec::new();
            for i in 0..count {
                let seg = Bytes::from(format!("{i},"));
                want.extend_from_slice(&seg);
                q.push(&[&seg]).unwrap();
            }
            let mut w = Vectored::default();
            q.write_to(&mut w).unwrap();
            assert_eq!(w.got, want, "{count} segments");
            assert!(q.is_empty());
            let most = count.min(MAX_IOVECS);
            assert!(w.calls.iter().all(|&c| c <= most) && w.calls[0] == most);
        }
    }

    /// Takes everything it is given, remembering how many slices each call had.
    #[derive(Default)]
    struct Vectored {
        got: Vec<u8>,
        calls: Vec<usize>,
    }

    impl Write for Vectored {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls.push(bufs.len());
            let before = self.got.len();
            for b in bufs {
                self.got.extend_from_slice(b);
            }
            Ok(self.got.len() - before)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_drained_queue_gives_back_the_room_a_burst_took() {
        let mut q = OutboundQueue::new(1 << 20);
        let b = Bytes::from_static(b"x");
        for _ in 0..1000 {
            q.push(&[&b]).unwrap();
        }
        assert!(q.segments.capacity() >= 1000);
        let mut w = Trickle {
            got: vec![],
            room: usize::MAX,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.segments.capacity(), 0);
    }
}
