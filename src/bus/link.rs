//! One Unix-domain stream between two workers: a bounded outbound queue and the
//! inbound bytes not yet framed.

use std::io::{self, Read};

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

    /// Queues a frame; `header` comes from `frame::encode_header`.
    pub fn queue(&mut self, header: &Bytes, payload: &Bytes) -> Result<(), LinkError> {
        self.out
            .push(&[header, payload])
            .map_err(|_| LinkError::Stuck(self.out.len()))
    }

    /// Queues `msg`'s frame, its payload in `parts` (none, one, or a
    /// replay page's lines, written one after the other instead of copied
    /// together first).
    pub fn send<P>(&mut self, msg: &BusMsg, parts: P) -> Result<(), LinkError>
    where
        P: AsRef<[Bytes]> + IntoIterator<Item = Bytes>,
    {
        let len = parts.as_ref().iter().map(Bytes::len).sum();
        let header = frame::encode_header(msg, len);
        let size = header.len() + len;
        self.out
            .push_owned(std::iter::once(header).chain(parts), size)
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
            // Straight into the frame buffer: reading into a chunk on the
            // stack and copying it over was a second copy of every replay
            // page that crossed (docs/benchmarks.md).
            let start = self.inbuf.len();
            self.inbuf.resize(start + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.inbuf[start..]);
            self.inbuf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
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

    fn drain(&mut self, frames: &mut Vec<(BusMsg, Bytes)>) -> Result<(), LinkError> {
        while let Some(frame) = frame::decode(&mut self.inbuf, self.max_frame)? {
            frames.push(frame);
        }
        Ok(())
    }
}
