//! Fuzzed parsers (issue 12, item 6): every parser that reads bytes from
//! outside the process gets random and structure-aware input and must never
//! panic, never allocate in proportion to a length field it was sent, and
//! always say what was wrong.
//!
//! Each property runs `SYNCD_FUZZ_CASES` cases (a small default, so the suite
//! stays fast); `scripts/fuzz.sh` runs them with many more in release mode.
//!
//! "No unbounded allocation" is measured, not assumed: a counting global
//! allocator records the largest single allocation made by the current thread
//! while a parser runs, and each property bounds it by the input's size and
//! the configured limit, never by a length the input claims.

#[path = "../common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use syncd::bus::frame::{self, BusMsg, FrameError};
use syncd::bus::secret::LinkSecret;
use syncd::config::{Config, ConfigError, EMBEDDED_DEFAULT};
use syncd::proto::compact::has_line_break;
use syncd::proto::frames::{check_channel, parse_request, Op};
use syncd::proto::http::{self, Parsed};
use syncd::proto::tcp::{self, Line, TooLong};
use syncd::proto::ws;
use syncd::proto::ws_codec::{Decoder, Event};

mod bus;
mod config_file;
mod http_requests;
mod json;
mod jwt;
mod tcp_lines;
mod ws_frames;

use json::{check_request, valid_requests};

// ---------------------------------------------------------------------------
// Measuring allocations

struct Counting;

thread_local! {
    /// Largest single allocation (or reallocation) of this thread since `watch`.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while the thread shuts down.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it made.
fn watch<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------
// Shared strategies

/// Cases per property: `SYNCD_FUZZ_CASES`, or `default` (kept small so the
/// whole file adds a few seconds to `cargo test` in debug).
fn cases(default: u32) -> u32 {
    std::env::var("SYNCD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // Shrinking a long random input can take a while; a failure is
        // printed with its (partly) minimised input either way.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the input at this fraction of its length.
    Truncate(f64),
    /// XOR one byte.
    Flip(f64, u8),
    /// Put a byte in.
    Insert(f64, u8),
    /// Take a run out.
    Delete(f64, usize),
    /// Repeat a run in place.
    Duplicate(f64, usize),
    /// Put a hostile chunk in: huge digits, deep nesting, long text, bad UTF-8.
    Splice(f64, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        at.clone().prop_map(Mutation::Truncate),
        (at.clone(), 1..=255u8).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (at.clone(), 1..16usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at.clone(), 1..64usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (at, 0..HOSTILE.len()).prop_map(|(a, i)| Mutation::Splice(a, i)),
    ]
}

/// Chunks that stress parsers: length fields at and past every limit, deep
/// nesting, long runs, invalid UTF-8, separators.
const HOSTILE: &[&[u8]] = &[
    b"4294967296",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-1",
    b"1e400",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\0",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"\\u0000",
    b"\\ud800",
    b"\"",
    b"{\"op\":",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    b"}}}}]]]]",
    b"Content-Length: 4294967296\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xff\xff\xff\xff",
    b"=",
    b"[[a]]",
    b"\"\"\"",
];

fn apply(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    for m in mutations {
        let len = input.len();
        match *m {
            Mutation::Truncate(f) => input.truncate(pos(f, len)),
            Mutation::Flip(f, x) if len > 0 => {
                let i = pos(f, len - 1);
                input[i] ^= x;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(f, b) => input.insert(pos(f, len), b),
            Mutation::Delete(f, n) => {
                let i = pos(f, len);
                input.drain(i..(i + n).min(len));
            }
            Mutation::Duplicate(f, n) => {
                let i = pos(f, len);
                let run = input[i..(i + n).min(len)].to_vec();
                input.splice(i..i, run);
            }
            Mutation::Splice(f, k) => {
                let i = pos(f, len);
                input.splice(i..i, HOSTILE[k].iter().copied());
            }
        }
    }
    input
}

/// Some valid input from `seeds`, then up to `n` mutations.
fn mutated(seeds: Vec<Vec<u8>>, n: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 0..=n),
    )
        .prop_map(|(seed, ms)| apply(seed, &ms))
}

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
