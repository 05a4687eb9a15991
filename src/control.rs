//! Messages between the CLI, the master and the workers. The CLI talks to the
//! master's control socket; the master talks to each worker over a socket pair
//! made at fork. Both carry one JSON object per line.

use serde::{Deserialize, Serialize};

/// CLI → master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum CliRequest {
    Status,
    Connections,
}

/// Master → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum ToWorker {
    Stats {
        tag: u64,
    },
    Connections {
        tag: u64,
    },
    /// Leave now (`graceful`: flush and close the clients first), telling
    /// the clients why.
    Retire {
        why: Retire,
        graceful: bool,
    },
}

/// Why a worker retires, which its clients are told: after a reload they
/// should reconnect and resume at once; after a stop there is nothing to
/// reconnect to for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retire {
    Reload,
    Shutdown,
}

/// Worker → master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum FromWorker {
    /// Linked to its peers and accepting clients.
    Ready,
    /// Boxed: the counters outweigh every other message.
    Stats {
        tag: u64,
        stats: Box<WorkerStats>,
    },
    Connections {
        tag: u64,
        list: Vec<ConnInfo>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    pub rss_bytes: u64,
    pub ws: usize,
    pub tcp: usize,
    pub http: usize,
    pub subscriptions: usize,
    pub channels_owned: usize,
    /// Client frames received (requests).
    pub msgs_in: u64,
    /// `msg` frames queued to subscribers.
    pub msgs_out: u64,
    /// Clients cut off as slow consumers: their queue passed
    /// `send_buffer_hard`, or stayed over `send_buffer_soft` too long.
    pub send_failures: u64,
    /// Connections closed because a ping went unanswered for `pong_timeout`.
    #[serde(default)]
    pub pong_timeouts: u64,
    /// Connections closed after `idle_timeout` without input.
    #[serde(default)]
    pub idle_timeouts: u64,
    /// Connections refused over `max_connections`.
    pub refused: u64,
    /// Owner answers that came after their request was answered
    /// `unavailable` (request_timeout, or a broken link), dropped.
    #[serde(default)]
    pub late_replies: u64,
    /// Requests refused by `publish_rate`, connections by
    /// `connect_rate_per_ip`.
    #[serde(default)]
    pub rate_limited: u64,
    /// Messages written to this worker's shards, expired and deleted, and
    /// trimmed (over `history_size`) and deleted.
    pub stored: u64,
    pub expired: u64,
    pub trimmed: u64,
    /// Resume and history reads the cache could not answer.
    pub disk_reads: u64,
    /// Cap hits: `sub`s refused by `max_subs_per_conn`, publishes by
    /// `max_channels`, connections by `max_conns_per_ip`; times a
    /// connection's reading paused at `max_inflight_per_conn`, and times
    /// this worker's reading paused because its store queue was full.
    #[serde(default)]
    pub subs_refused: u64,
    #[serde(default)]
    pub channels_refused: u64,
    #[serde(default)]
    pub conns_per_ip_refused: u64,
    #[serde(default)]
    pub inflight_pauses: u64,
    #[serde(default)]
    pub store_full_pauses: u64,
    /// Times a publisher was held (not read) because its channel's
    /// subscribers, here or on another worker, or a worker link, were over
    /// their mark (`sync::pressure`).
    #[serde(default)]
    pub pressure_holds: u64,
    /// Messages and presence events sent to other workers (one per link
    /// frame), and received from them: only workers that want a channel
    /// get its messages (`sync::interest`).
    #[serde(default)]
    pub link_msgs_out: u64,
    #[serde(default)]
    pub link_msgs_in: u64,
    /// This worker's queue connectors (`[[ingest]]`, `[[egress]]`).
    #[serde(default)]
    pub connectors: Vec<crate::connectors::ConnectorStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnInfo {
    pub worker: usize,
    pub id: u64,
    pub protocol: String,
    pub peer: String,
    pub subscriptions: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub age_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub pid: u32,
    pub version: String,
    /// Unix time in seconds.
    pub started: u64,
    pub uptime_secs: u64,
    pub reloads: u64,
    /// `running`, `reloading` or `stopping`.
    pub state: String,
    pub workers: Vec<WorkerRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRow {
    pub slot: usize,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Absent when the worker did not answer in time.
    pub stats: Option<WorkerStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsReply {
    pub connections: Vec<ConnInfo>,
}

/// A non-blocking Unix stream carrying JSON lines, used on both ends of the
/// master ↔ worker pair and by the master's control socket.
pub struct LineChannel {
    pub stream: mio::net::UnixStream,
    inbuf: Vec<u8>,
    out: crate::outbound::OutboundQueue,
}

/// Longest line accepted on a control channel.
const MAX_CONTROL_LINE: usize = 64 << 20;

impl LineChannel {
    pub fn new(stream: mio::net::UnixStream) -> Self {
        LineChannel {
            stream,
            inbuf: Vec::new(),
            out: crate::outbound::OutboundQueue::new(MAX_CONTROL_LINE),
        }
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out
            .push(&[&bytes::Bytes::from(line)])
            .map_err(|_| std::io::Error::other("control channel full"))?;
        self.flush()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.write_to(&mut self.stream).map(drop)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads what is available into `msgs`, one per complete line. Returns
    /// false once the other end has closed.
    pub fn receive<T: for<'de> Deserialize<'de>>(
        &mut self,
        msgs: &mut Vec<T>,
    ) -> std::io::Result<bool> {
        use std::io::Read;
        let mut chunk = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.inbuf.len() > MAX_CONTROL_LINE {
            return Err(std::io::Error::other("control line too long"));
        }
        while let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=end).collect();
            match serde_json::from_slice(&line[..end]) {
                Ok(msg) => msgs.push(msg),
                Err(e) => log::warn!("control: bad line ignored: {e}"),
            }
        }
        Ok(!closed)
    }
}
