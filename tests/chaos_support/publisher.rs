//! Publishers: HTTP publishes with idempotency keys, each retried with the
//! same key until it is acknowledged.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Rng, Shared};

/// One publish may keep failing at most this long (a worker restarting in
/// backoff takes up to a few seconds); then the test fails.
pub const PUBLISH_GIVE_UP: Duration = Duration::from_secs(20);

/// Why one HTTP publish attempt failed.
pub enum Failure {
    /// Worth retrying with the same key: refused, reset, no answer, 5xx.
    Retry(String),
    /// The server said something a correct request should never get.
    Fatal(String),
}

/// A keep-alive HTTP connection to the ws port.
pub struct Http {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Http> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(Http {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// POSTs `body` and returns the status and the answer's body.
    pub fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-key\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(raw.as_bytes())?;
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed mid-answer");
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(eof());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[derive(Default)]
pub struct PublisherReport {
    /// Every publish ever attempted: (channel index, payload key).
    pub attempted: Vec<(usize, String)>,
    /// The acknowledged ones: (channel index, seq, payload key).
    pub acked: Vec<(usize, u64, String)>,
    /// Failed attempts, by kind.
    pub retries: BTreeMap<String, u64>,
    /// Publishes that never got acknowledged, or got an answer no retry
    /// fixes. Must stay empty.
    pub fatal: Vec<String>,
}

pub fn publisher(shared: Arc<Shared>, p: usize, seed: u64) -> PublisherReport {
    let mut rng = Rng::new(seed ^ (0x1000 + p as u64));
    let mut report = PublisherReport::default();
    let mut conn: Option<Http> = None;
    for n in 0u64.. {
        if shared.stop_publishing.load(Ordering::SeqCst) {
            break;
        }
        let ch = rng.below(shared.channels.len() as u64) as usize;
        let key = format!("p{p}-{n}");
        report.attempted.push((ch, key.clone()));
        shared.attempts.fetch_add(1, Ordering::SeqCst);
        // The same key for every attempt of this publish: a retry of one
        // that was stored returns its first seq and publishes nothing.
        let body = json!({
            "channel": shared.channels[ch],
            "data": {"k": key},
            "idempotency_key": format!("{seed:x}-{key}"),
        })
        .to_string();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            let attempt = match conn.as_mut() {
                Some(c) => Ok(c),
                None => Http::connect(shared.addr).map(|c| conn.insert(c)),
            }
            .and_then(|c| c.post("/api/publish", &body));
            let result = match attempt {
                Err(e) => Err(Failure::Retry(format!("io {:?}", e.kind()))),
                Ok((200, answer)) => serde_json::from_str::<Value>(&answer)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .ok_or_else(|| Failure::Fatal(format!("200 without a seq: {answer}"))),
                Ok((status @ 500..=599, answer)) => {
                    let code = serde_json::from_str::<Value>(&answer)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    Err(Failure::Retry(format!("{status} {code}")))
                }
                Ok((status, answer)) => Err(Failure::Fatal(format!("{status} {answer}"))),
            };
            match result {
                Ok(seq) => {
                    report.acked.push((ch, seq, key.clone()));
                    shared.acked.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(Failure::Fatal(why)) => {
                    report.fatal.push(format!("publish {key}: {why}"));
                    return report;
                }
                Err(Failure::Retry(why)) => {
                    // Whatever failed, the next attempt starts on a fresh
                    // connection (the server closes one after an error).
                    conn = None;
                    *report.retries.entry(why.clone()).or_default() += 1;
                    if started.elapsed() > PUBLISH_GIVE_UP {
                        report.fatal.push(format!(
                            "publish {key} not acknowledged after {:?}, last: {why}",
                            started.elapsed()
                        ));
                        return report;
                    }
                    // Backoff between retries is the client's workload, not
                    // a wait for some condition.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
    report
}
