//! One client connection of the load generator, over WebSocket (tungstenite)
//! or newline-delimited TCP, with the same calls for both: blocking set-up
//! (connect, handshake, wait for an answer), then non-blocking sending and
//! reading under a mio loop.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Tcp => "tcp",
        }
    }
}

/// Where a server listens: a WebSocket URL path on `ws`, and optionally a
/// newline-delimited TCP port (syncd only).
#[derive(Clone, Debug)]
pub struct Target {
    pub ws: SocketAddr,
    pub ws_path: String,
    pub tcp: Option<SocketAddr>,
}

/// Why a connection ended, as the server said it (close code and reason, or
/// an error line), or the socket error.
#[derive(Debug, Clone)]
pub struct Ended(pub String);

pub enum Conn {
    Ws(Box<WebSocket<TcpStream>>),
    Tcp {
        stream: TcpStream,
        rbuf: Vec<u8>,
        wbuf: Vec<u8>,
    },
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes one read of a TCP connection takes.
const READ_CHUNK: usize = 64 << 10;

impl Conn {
    /// Connects and, for WebSocket, completes the handshake (blocking).
    pub fn open(target: &Target, transport: Transport) -> anyhow::Result<Conn> {
        match transport {
            Transport::Ws => {
                let stream = TcpStream::connect(target.ws)
                    .with_context(|| format!("connect to {}", target.ws))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(READ_TIMEOUT))?;
                let url = format!("ws://{}{}", target.ws, target.ws_path);
                // A small read buffer: tungstenite zero-fills the free part
                // on every read, so a large one costs more than it saves
                // (and the bench holds thousands of connections).
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(64 << 10)
                    .max_message_size(Some(64 << 20));
                let (ws, _) =
                    tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
                        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
                Ok(Conn::Ws(Box::new(ws)))
            }
            Transport::Tcp => {
                let Some(addr) = target.tcp else {
                    bail!("this server has no TCP port; use --transport ws");
                };
                let stream =
                    TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Conn::Tcp {
                    stream,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                })
            }
        }
    }

    fn stream(&self) -> &TcpStream {
        match self {
            Conn::Ws(ws) => ws.get_ref(),
            Conn::Tcp { stream, .. } => stream,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream().as_raw_fd()
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        self.stream().set_nonblocking(true)
    }

    /// Queues one frame (a WebSocket text message, or a TCP line).
    pub fn queue(&mut self, text: &str) -> anyhow::Result<()> {
        match self {
            Conn::Ws(ws) => match ws.write(Message::text(text)) {
                Ok(()) => Ok(()),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => bail!("send: {e}"),
            },
            Conn::Tcp { wbuf, .. } => {
                wbuf.extend_from_slice(text.as_bytes());
                wbuf.push(b'\n');
                Ok(())
            }
        }
    }

    /// Writes what the socket takes. Ok(true) when nothing is left queued.
    pub fn flush(&mut self) -> anyhow::Result<bool> {
        match self {
            Conn::Ws(ws) => match ws.flush() {
                Ok(()) => Ok(true),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(false)
                }
                Err(e) => bail!("send: {e}"),
            },
            Conn::Tcp { stream, wbuf, .. } => {
                while !wbuf.is_empty() {
                    match stream.write(wbuf) {
                        Ok(0) => bail!("send: connection closed"),
                        Ok(n) => {
                            wbuf.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => bail!("send: {e}"),
                    }
                }
                Ok(true)
            }
        }
    }

    /// Sends one frame and blocks until it is written (set-up only).
    pub fn send_blocking(&mut self, text: &str) -> anyhow::Result<()> {
        self.queue(text)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self.flush()? {
            if Instant::now() > deadline {
                bail!("send: the server took nothing for {READ_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Reads every frame that has arrived, handing each to `each`, until the
    /// socket would block. Err(Ended) when the connection ended.
    pub fn read_ready(&mut self, mut each: impl FnMut(&[u8])) -> Result<(), Ended> {
        match self {
            Conn::Ws(ws) => loop {
                match ws.read() {
                    Ok(Message::Text(t)) => each(t.as_bytes()),
                    Ok(Message::Binary(b)) => each(&b),
                    Ok(Message::Close(frame)) => {
                        return Err(Ended(match frame {
                            Some(f) => format!("closed by the server: {} {}", f.code, f.reason),
                            None => "closed by the server".to_string(),
                        }))
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(())
                    }
                    Err(tungstenite::Error::ConnectionClosed) => {
                        return Err(Ended("closed by the server".into()))
                    }
                    Err(e) => return Err(Ended(e.to_string())),
                }
            },
            Conn::Tcp { stream, rbuf, .. } => {
                let mut last_error_line = None;
                let result = loop {
                    // Lines already here first (left by a blocking read).
                    // The client must outrun the server it measures: a
                    // resume is 100 000 lines in a few tens of ms, so lines
                    // are found with memchr and read straight into `rbuf`.
                    let mut start = 0;
                    for end in memchr::memchr_iter(b'\n', rbuf) {
                        let line = &rbuf[start..end];
                        if line.starts_with(br#"{"op":"error""#) {
                            last_error_line = Some(String::from_utf8_lossy(line).into_owned());
                        }
                        each(line);
                        start = end + 1;
                    }
                    rbuf.drain(..start);
                    let filled = rbuf.len();
                    rbuf.resize(filled + READ_CHUNK, 0);
                    let read = stream.read(&mut rbuf[filled..]);
                    rbuf.truncate(filled + *read.as_ref().unwrap_or(&0));
                    match read {
                        Ok(0) => break Err(()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            last_error_line = Some(e.to_string());
                            break Err(());
                        }
                    }
                };
                result.map_err(|()| {
                    Ended(match last_error_line {
                        Some(line) => format!("closed by the server: {line}"),
                        None => "closed by the server".to_string(),
                    })
                })
            }
        }
    }

    /// Waits (blocking, set-up only) for the next frame and returns it.
    pub fn next_blocking(&mut self) -> anyhow::Result<String> {
        match self {
            Conn::Ws(ws) => loop {
                match ws.read() {
                    Ok(Message::Text(t)) => return Ok(t.as_str().to_string()),
                    Ok(Message::Close(f)) => bail!("the server closed the connection: {f:?}"),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if timed_out(&e) => {
                        bail!("no answer from the server within {READ_TIMEOUT:?}")
                    }
                    Err(e) => bail!("read: {e}"),
                }
            },
            Conn::Tcp { stream, rbuf, .. } => loop {
                if let Some(i) = rbuf.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&rbuf[..i]).into_owned();
                    rbuf.drain(..=i);
                    return Ok(line);
                }
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk) {
                    Ok(0) => bail!("the server closed the connection"),
                    Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if timed_out(&e) => {
                        bail!("no answer from the server within {READ_TIMEOUT:?}")
                    }
                    Err(e) => bail!("read: {e}"),
                }
            },
        }
    }

    /// Sends `text` and waits for the first frame that is not a `msg`: the
    /// answer. An `error` answer is an Err naming the server's words.
    pub fn request(&mut self, text: &str) -> anyhow::Result<serde_json::Value> {
        self.send_blocking(text)?;
        loop {
            let line = self.next_blocking()?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("the server answered something not JSON: {line}"))?;
            match v["op"].as_str() {
                Some("msg") | Some("ping") => continue,
                Some("error") => bail!("the server refused {text}: {line}"),
                _ => return Ok(v),
            }
        }
    }
}

/// A number field of a frame (`key` is like `"seq":`), found without
/// parsing the JSON: the send time in `"t":`, or a message's `seq`.
pub fn field_u64(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(frame, key)? + key.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n = 0u64;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Raises this process's open-file limit to its hard limit (thousands of
/// client sockets).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A blocking read that ran into `READ_TIMEOUT`.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::field_u64;

    #[test]
    fn finds_fields() {
        let f = br#"{"op":"msg","channel":"c","seq":7,"data":{"t":1234,"p":"x"}}"#;
        assert_eq!(field_u64(f, br#""t":"#), Some(1234));
        assert_eq!(field_u64(f, br#""seq":"#), Some(7));
        assert_eq!(field_u64(f, br#""id":"#), None);
    }
}
