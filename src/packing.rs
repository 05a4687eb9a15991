//! Many small lines packed into a few large segments: a replay page's 2000
//! messages become a handful of `Bytes`, so queueing, writing (one iovec
//! each) and freeing them costs per segment, not per line. The segments'
//! buffers come back to a small per-thread pool when the last reference
//! goes, so a long replay does not fault in fresh pages for every segment
//! (the allocator gives freed memory back to the system, and a resume of
//! 100 000 messages took ~1600 page faults on its worker without the pool).

use std::cell::RefCell;

use bytes::Bytes;

/// Most bytes in one segment.
pub const CHUNK: usize = 64 << 10;

/// Buffers a thread keeps for reuse: 2 MiB, about what a replay has in
/// flight under the default soft limit.
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer as the owner of a `Bytes`: back to the pool on drop.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // On a thread that is exiting the pool is gone: the buffer is freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < POOL_MAX {
                    pool.push(buf);
                }
            }
        });
    }
}

fn take_buffer() -> Vec<u8> {
    POOL.try_with(|pool| pool.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Fills segments of at most `size` bytes (at most `CHUNK`), one line after
/// another; a line longer than that gets a segment of its own.
pub struct Packer {
    size: usize,
    current: Vec<u8>,
    done: Vec<Bytes>,
}

impl Packer {
    pub fn new(size: usize) -> Packer {
        Packer {
            size: size.clamp(1, CHUNK),
            current: Vec::new(),
            done: Vec::new(),
        }
    }

    /// The buffer to append the next `len` bytes to: the current segment,
    /// or a new one when they would not fit.
    pub fn room_for(&mut self, len: usize) -> &mut Vec<u8> {
        if !self.current.is_empty() && self.current.len() + len > self.size {
            self.seal();
        }
        if self.current.capacity() == 0 {
            self.current = if len <= CHUNK {
                take_buffer()
            } else {
                Vec::with_capacity(len)
            };
        }
        &mut self.current
    }

    /// Every segment filled, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        self.seal();
        self.done
    }

    fn seal(&mut self) {
        let full = std::mem::take(&mut self.current);
        if full.is_empty() {
            return;
        }
        self.done.push(if full.capacity() == CHUNK {
            Bytes::from_owner(Pooled(full))
        } else {
            Bytes::from(full)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(lines: &[&[u8]], size: usize) -> Vec<Bytes> {
        let mut packer = Packer::new(size);
        for line in lines {
            packer.room_for(line.len()).extend_from_slice(line);
        }
        packer.finish()
    }

    #[test]
    fn lines_fill_segments_in_order_and_a_long_line_gets_its_own() {
        let long = vec![b'x'; 25];
        let segments = pack(&[b"aaaa\n", b"bbbb\n", b"cc\n", &long, b"d\n"], 12);
        let got: Vec<&[u8]> = segments.iter().map(|b| &b[..]).collect();
        assert_eq!(
            got,
            vec![&b"aaaa\nbbbb\n"[..], b"cc\n", &long[..], b"d\n"],
            "each segment at most 12 bytes unless one line is longer"
        );
        assert!(pack(&[], 12).is_empty());
    }

    #[test]
    fn a_dropped_segment_buffer_is_reused() {
        let first = pack(&[b"one\n"], CHUNK);
        let address = first[0].as_ptr();
        drop(first);
        let second = pack(&[b"two\n"], CHUNK);
        assert_eq!(second[0].as_ptr(), address, "the pooled buffer came back");
        assert_eq!(&second[0][..], b"two\n");
    }
}
