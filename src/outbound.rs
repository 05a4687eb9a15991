//! A bounded queue of byte segments waiting to be written to one socket.
//!
//! Segments are `Bytes`, so one serialized message is shared by every queue it
//! sits in; writing drains as many segments as fit with one `writev`. Small
//! bytes of this queue's own (replies, a link frame's header and small
//! payload) are packed into one buffer behind the segments instead: a
//! turn's acks to a publisher are one segment, not one each (an
//! allocation, a reference count and an iovec apiece).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Most segments handed to one `writev` call (Linux allows 1024).
const MAX_IOVECS: usize = 256;
/// An empty queue keeps room for this many segments; after a burst that
/// needed more, the room is given back, so idle connections hold no buffer.
const KEEP_SEGMENTS: usize = 64;
/// The packed tail's first room: a few dozen replies before it grows.
const TAIL_START: usize = 1024;
/// A frame's parts up to this size are copied into the packed tail: a
/// copy this small costs less than the segment's reference count, its
/// iovec, and the allocation sharing it took.
const COPY_UP_TO: usize = 512;

#[derive(Debug)]
pub struct Overflow;

pub struct OutboundQueue {
    segments: VecDeque<Bytes>,
    /// Packed bytes that follow `segments`; they become one segment before
    /// anything is queued behind them or written. No capacity while empty.
    tail: Vec<u8>,
    queued: usize,
    limit: usize,
    /// The first segment has been partly written and must be finished first.
    head_started: bool,
}

impl OutboundQueue {
    pub fn new(limit: usize) -> Self {
        OutboundQueue {
            segments: VecDeque::new(),
            tail: Vec::new(),
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
        self.seal();
        self.segments
            .extend(parts.into_iter().filter(|b| !b.is_empty()));
        self.queued += size;
        Ok(())
    }

    /// Appends what `put` writes to the packed tail, or nothing if it would
    /// pass the limit.
    pub fn push_packed(&mut self, put: impl FnOnce(&mut Vec<u8>)) -> Result<(), Overflow> {
        self.push_frame(put, &[])
    }

    /// Queues a frame: a head that `put` writes into the packed tail, then
    /// `parts`, each copied behind it if small, else shared as a segment of
    /// its own. All of it, or nothing if it would pass the limit.
    pub fn push_frame(
        &mut self,
        put: impl FnOnce(&mut Vec<u8>),
        parts: &[Bytes],
    ) -> Result<(), Overflow> {
        let before = self.tail.len();
        if self.tail.capacity() == 0 {
            self.tail.reserve(TAIL_START);
        }
        put(&mut self.tail);
        let size = self.tail.len() - before + parts.iter().map(Bytes::len).sum::<usize>();
        if self.queued + size > self.limit {
            match before {
                // An empty tail keeps no room (see `tail`).
                0 => self.tail = Vec::new(),
                _ => self.tail.truncate(before),
            }
            return Err(Overflow);
        }
        self.queued += size;
        for part in parts {
            if part.len() <= COPY_UP_TO {
                self.tail.extend_from_slice(part);
            } else if !part.is_empty() {
                self.seal();
                self.segments.push_back(part.clone());
            }
        }
        Ok(())
    }

    /// The packed tail becomes a segment (order kept: it follows the others).
    /// Cut to its length first (glibc shrinks in place): a queue's limit
    /// counts bytes, so a reader that reads nothing while pings and live
    /// messages alternate must not hold a 1 KiB buffer for each 20-byte
    /// pong; and a `Vec` as long as its room becomes `Bytes` without the
    /// shared box a longer one needs.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.tail.shrink_to_fit();
            self.segments
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// Queues bytes past the limit: for the few bytes of a closing frame.
    pub fn push_unbounded(&mut self, bytes: Bytes) {
        self.seal();
        self.queued += bytes.len();
        self.segments.push_back(bytes);
    }

    /// Drops everything not yet started, keeping the rest of a partly written
    /// segment so the stream stays well framed.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.head_started).min(self.segments.len());
        self.segments.truncate(keep);
        self.tail = Vec::new();
        self.queued = self.segments.iter().map(Bytes::len).sum();
        self.shrink_if_drained();
    }

    fn shrink_if_drained(&mut self) {
        if self.segments.is_empty() && self.segments.capacity() > KEEP_SEGMENTS {
            self.segments = VecDeque::new();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.tail.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queued
    }

    /// Segments waiting (each a `writev` iovec), the packed tail as one.
    pub fn segments(&self) -> usize {
        self.segments.len() + usize::from(!self.tail.is_empty())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Writes until the queue is empty or the socket would block. Returns the
    /// bytes written; a `WouldBlock` is not an error here.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        self.seal();
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
    fn packed_bytes_keep_their_place_between_segments_and_the_limit() {
        let mut q = OutboundQueue::new(12);
        q.push_packed(|out| out.extend_from_slice(b"a1,")).unwrap();
        q.push_packed(|out| out.extend_from_slice(b"a2,")).unwrap();
        assert_eq!(q.segments(), 1, "packed together");
        q.push(&[&Bytes::from_static(b"S,")]).unwrap();
        q.push_packed(|out| out.extend_from_slice(b"b1,")).unwrap();
        assert_eq!(q.len(), 11);
        assert!(q.push_packed(|out| out.extend_from_slice(b"xx")).is_err());
        assert_eq!(q.len(), 11, "a refused put leaves nothing behind");
        assert_eq!(q.segments(), 3);
        let mut w = Vectored::default();
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"a1,a2,S,b1,");
        assert!(q.is_empty());
        assert_eq!(q.tail.capacity(), 0, "no room kept once written");
        q.push_packed(|out| out.extend_from_slice(b"p")).unwrap();
        q.push(&[&Bytes::from_static(b"S")]).unwrap();
        assert_eq!(q.segments[0].len(), 1, "sealed to its length");
    }

    #[test]
    fn discarding_drops_the_packed_tail() {
        let mut q = OutboundQueue::new(100);
        q.push_packed(|out| out.extend_from_slice(b"reply"))
            .unwrap();
        q.discard_unsent();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        let too_big = [0u8; 101];
        assert!(q
            .push_packed(|out| out.extend_from_slice(&too_big))
            .is_err());
        assert_eq!(q.tail.capacity(), 0, "a refused put keeps no room");
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
