//! One Unix-domain stream between two workers: a bounded outbound queue and the
//! inbound bytes not yet framed.

use std::io;
use std::os::fd::AsRawFd;

use bytes::{Bytes, BytesMut};
use mio::net::UnixStream;

use super::frame::{self, BusMsg, FrameError};
use crate::outbound::OutboundQueue;

/// Bytes queued towards one peer worker before the link counts as stuck.
pub const LINK_SEND_BUFFER: usize = 512 << 20;

/// Most bytes one read of a link takes.
const READ_CHUNK: usize = 64 << 10;

pub struct Link {
    pub stream: UnixStream,
    out: OutboundQueue,
    inbuf: BytesMut,
    max_frame: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer closed the link")]
    Closed,
    #[error("peer is not reading: {0} bytes queued")]
    Stuck(usize),
    /// The peer could not prove it was forked by our master.
    #[error("refused: {0}")]
    Refused(&'static str),
}

impl Link {
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        Link {
            stream,
            out: OutboundQueue::new(LINK_SEND_BUFFER),
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// Queues a frame; `header` comes from `frame::encode_header`. Both are
    /// shared by several links; small ones are copied (`push_frame`).
    pub fn queue(&mut self, header: &Bytes, payload: &Bytes) -> Result<(), LinkError> {
        self.out
            .push_frame(
                |out| out.extend_from_slice(header),
                std::slice::from_ref(payload),
            )
            .map_err(|_| LinkError::Stuck(self.out.len()))
    }

    /// Queues `msg`'s frame, its payload in `parts` (none, one, or a
    /// replay page's packed segments), written one after the other. The
    /// header goes into the queue's packed tail, with the parts that are
    /// small: a turn's small frames leave as one buffer.
    pub fn send<P>(&mut self, msg: &BusMsg, parts: P) -> Result<(), LinkError>
    where
        P: AsRef<[Bytes]>,
    {
        let parts = parts.as_ref();
        let len = parts.iter().map(Bytes::len).sum();
        self.out
            .push_frame(|out| frame::put_header(out, msg, len), parts)
            .map_err(|_| LinkError::Stuck(self.out.len()))
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn flush(&mut self) -> Result<(), LinkError> {
        self.out.write_to(&mut self.stream)?;
        Ok(())
    }

    /// Reads what the socket has and returns every whole frame in it.
    pub fn receive(&mut self, frames: &mut Vec<(BusMsg, Bytes)>) -> Result<(), LinkError> {
        loop {
            match self.read_some() {
                Ok(0) => {
                    self.drain(frames)?;
                    return Err(LinkError::Closed);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.drain(frames)
    }

    /// One read straight into the frame buffer's spare room: reading into
    /// a chunk on the stack and copying it over was a second copy of every
    /// replay page that crossed (docs/benchmarks.md), and zeroing the room
    /// first would cost a 64 KiB memset per read.
    fn read_some(&mut self) -> io::Result<usize> {
        self.inbuf.reserve(READ_CHUNK);
        let spare = self.inbuf.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
        // room and returns how many it wrote; only those are then counted.
        let n = unsafe {
            libc::read(
                self.stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the `n` bytes after the length were just written by read(2).
        unsafe { self.inbuf.set_len(self.inbuf.len() + n) };
        Ok(n)
    }

    fn drain(&mut self, frames: &mut Vec<(BusMsg, Bytes)>) -> Result<(), LinkError> {
        while let Some(frame) = frame::decode(&mut self.inbuf, self.max_frame)? {
            frames.push(frame);
        }
        Ok(())
    }
}
