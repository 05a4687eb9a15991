//! Control-socket requests (`status`, `connections`): the master asks every
//! serving worker, gathers the answers, and replies once all are in or the
//! deadline passes (a worker that does not answer shows as unknown).

use std::io;
use std::time::{Duration, Instant, UNIX_EPOCH};

use mio::{Interest, Token};

use super::{Master, Phase, CLIENT_BASE};
use crate::control::{
    CliRequest, ConnInfo, ConnectionsReply, LineChannel, StatusReply, ToWorker, WorkerRow,
    WorkerStats,
};

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

pub enum Answer {
    Stats(Box<WorkerStats>),
    Connections(Vec<ConnInfo>),
}

pub struct Query {
    client: usize,
    status: bool,
    waiting: Vec<usize>,
    stats: Vec<Option<WorkerStats>>,
    connections: Vec<ConnInfo>,
    deadline: Instant,
}

impl Master {
    pub(super) fn accept_clients(&mut self) {
        loop {
            match self.control.accept() {
                Ok((stream, _)) => {
                    // The socket is 0600 in a 0700 folder; this is the last lock.
                    if let Err(why) = crate::private_socket::peer_is_us(&stream) {
                        log::warn!("master: refused a control connection: {why}");
                        continue;
                    }
                    let entry = self.clients.vacant_entry();
                    let mut channel = LineChannel::new(stream);
                    let token = Token(CLIENT_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut channel.stream,
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        entry.insert(channel);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("master: control accept failed: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn on_client(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut requests = Vec::new();
        let open = client.receive::<CliRequest>(&mut requests).unwrap_or(false);
        let _ = client.flush();
        if !open {
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
            return;
        }
        for request in requests {
            self.ask_workers(key, matches!(request, CliRequest::Status));
        }
    }

    fn ask_workers(&mut self, client: usize, status: bool) {
        self.next_tag += 1;
        let tag = self.next_tag;
        let mut waiting = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(link) = slot.link.as_mut().filter(|_| slot.ready) else {
                continue;
            };
            let ask = if status {
                ToWorker::Stats { tag }
            } else {
                ToWorker::Connections { tag }
            };
            if link.send(&ask).is_ok() {
                waiting.push(index);
            }
        }
        let query = Query {
            client,
            status,
            waiting,
            stats: vec![None; self.slots.len()],
            connections: Vec::new(),
            deadline: Instant::now() + QUERY_TIMEOUT,
        };
        self.queries.insert(tag, query);
        self.finish_if_done(tag);
    }

    pub(super) fn on_answer(&mut self, tag: u64, index: usize, answer: Answer) {
        let Some(query) = self.queries.get_mut(&tag) else {
            return;
        };
        query.waiting.retain(|&i| i != index);
        match answer {
            Answer::Stats(stats) => query.stats[index] = Some(*stats),
            Answer::Connections(list) => query.connections.extend(list),
        }
        self.finish_if_done(tag);
    }

    /// When the oldest unanswered query gives up on its workers.
    pub(super) fn next_query_deadline(&self) -> Option<Instant> {
        self.queries.values().map(|q| q.deadline).min()
    }

    pub(super) fn expire_queries(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| now >= q.deadline)
            .map(|(&t, _)| t)
            .collect();
        for tag in late {
            if let Some(query) = self.queries.get_mut(&tag) {
                query.waiting.clear();
            }
            self.finish_if_done(tag);
        }
    }

    fn finish_if_done(&mut self, tag: u64) {
        if self.queries.get(&tag).is_none_or(|q| !q.waiting.is_empty()) {
            return;
        }
        let Some(query) = self.queries.remove(&tag) else {
            return;
        };
        let Some(client) = self.clients.get_mut(query.client) else {
            return;
        };
        let sent = if query.status {
            let state = match self.phase {
                Phase::Rolling(_) => "reloading",
                Phase::Running => "running",
                Phase::Stopping { .. } => "stopping",
            };
            let workers = self
                .slots
                .iter()
                .zip(query.stats)
                .enumerate()
                .map(|(index, (slot, stats))| WorkerRow {
                    slot: index,
                    pid: slot.pid.map(|p| p.as_raw() as u32),
                    restarts: slot.restarts,
                    stats,
                })
                .collect();
            client.send(&StatusReply {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started: self
                    .started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                uptime_secs: self.started.elapsed().map_or(0, |d| d.as_secs()),
                reloads: self.reloads,
                state: state.into(),
                workers,
            })
        } else {
            let mut connections = query.connections;
            connections.sort_by_key(|c| (c.worker, c.id));
            client.send(&ConnectionsReply { connections })
        };
        if let Err(e) = sent {
            log::warn!("master: control reply failed: {e}");
        }
    }
}
