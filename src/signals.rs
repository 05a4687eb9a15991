//! Signals turned into mio events: each handler sets a flag and writes a byte to
//! a pipe that the event loop watches (signal-hook's self-pipe pattern).

use std::io::{self, Read};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::UnixStream;
use signal_hook::SigId;

pub struct SignalSet {
    flags: Vec<(i32, Arc<AtomicBool>)>,
    ids: Vec<SigId>,
    pub reader: UnixStream,
}

impl SignalSet {
    pub fn new(signals: &[i32]) -> io::Result<SignalSet> {
        let (reader, writer) = StdUnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut set = SignalSet {
            flags: Vec::new(),
            ids: Vec::new(),
            reader: UnixStream::from_std(reader),
        };
        for &signal in signals {
            let flag = Arc::new(AtomicBool::new(false));
            set.ids
                .push(signal_hook::flag::register(signal, Arc::clone(&flag))?);
            set.ids.push(signal_hook::low_level::pipe::register(
                signal,
                writer.try_clone()?,
            )?);
            set.flags.push((signal, flag));
        }
        Ok(set)
    }

    /// The signals that arrived since the last call, in registration order.
    pub fn drain(&mut self) -> Vec<i32> {
        let mut sink = [0u8; 64];
        while matches!(self.reader.read(&mut sink), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(signal, _)| *signal)
            .collect()
    }

    /// Removes the handlers (a forked worker drops the master's). The signals
    /// stay caught by signal-hook's no-op handler, so they are ignored.
    pub fn unregister_all(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
