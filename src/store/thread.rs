//! The store thread of one worker: the only writer of the shards that worker
//! owns. The event loop sends it requests over a channel and never waits; the
//! thread takes everything queued, commits it per shard in one transaction
//! (group commit), answers reads, sweeps old rows, and wakes the loop.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

use super::checkpointer::Checkpointer;
use super::engine::{Completion, Engine, Gone, Request};
use super::message::Append;
use super::segments;
use super::shard_db::ShardDb;
use super::trimming::{trims, Touched};
use crate::config::Storage;

/// Rows deleted per shard per sweep, so a sweep never holds the thread long.
const SWEEP_BATCH: usize = 500;
/// Requests taken into one group commit at most.
const MAX_BATCH: usize = 8192;

pub struct StoreThread {
    /// Bounded (`[limits] store_queue`).
    requests: Sender<Request>,
    /// Submitted during this loop turn, sent together by `flush` at its end:
    /// the thread then wakes once per turn and commits the turn's appends
    /// in one transaction per shard, instead of waking at the turn's first
    /// append and committing a few rows at a time.
    held: Vec<Request>,
    /// What did not fit in `requests`, in order, moved there as the thread
    /// takes requests out. While it is not empty the engine is busy and the
    /// worker reads no client, so it holds at most what the requests
    /// already read bring (see docs/architecture.md, "Storage").
    overflow: VecDeque<Request>,
    events: Receiver<Completion>,
    /// Appends the thread has written, handed back to be freed here, on
    /// the loop's thread that allocated them: glibc makes a free from
    /// another thread wait for the allocating arena's lock, and under load
    /// the loop and this thread slept on it (docs/benchmarks.md).
    spent: Receiver<Vec<Append>>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Kept here too: when the thread ends (a failed write ends it) its
    /// waker must stay open, or closing the eventfd takes the wake-up that
    /// announces the failure out of the loop's `poll`. `flush` wakes the
    /// loop with it when the thread is gone.
    _waker: Arc<Waker>,
}

impl StoreThread {
    /// A store thread taking at most `queue` requests at a time.
    pub fn spawn(
        mut shards: HashMap<u32, ShardDb>,
        retention: Storage,
        waker: Arc<Waker>,
        queue: usize,
    ) -> std::io::Result<StoreThread> {
        let (requests, inbox) = crossbeam_channel::bounded(queue.max(1));
        let (outbox, events) = crossbeam_channel::unbounded();
        let (spent_out, spent) = crossbeam_channel::unbounded();
        let kept = waker.clone();
        let checkpointer = Checkpointer::start(&mut shards, retention.durability)?;
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut worker = Writer {
                    _checkpointer: checkpointer,
                    shards,
                    retention,
                    touched: HashMap::new(),
                    trimmed: 0,
                    failed: false,
                    swept_news: false,
                    outbox,
                    spent: spent_out,
                    waker,
                };
                worker.run(inbox);
            })?;
        Ok(StoreThread {
            requests,
            held: Vec::new(),
            overflow: VecDeque::new(),
            events,
            spent,
            handle: Some(handle),
            _waker: kept,
        })
    }
}

impl StoreThread {
    /// Moves the overflow into the channel while it has room, in order.
    /// `Err` hands back a request the ended thread will never take.
    fn drain_overflow(&mut self) -> Result<(), Gone> {
        while let Some(request) = self.overflow.pop_front() {
            match self.requests.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(request)) => {
                    self.overflow.push_front(request);
                    break;
                }
                Err(TrySendError::Disconnected(request)) => return Err(Gone(Box::new(request))),
            }
        }
        Ok(())
    }
}

impl Engine for StoreThread {
    /// Never waits: the request is held until the turn's `flush`.
    fn submit(&mut self, request: Request) -> Result<(), Gone> {
        self.held.push(request);
        Ok(())
    }

    /// Never waits: a full channel keeps the rest in the overflow. An ended
    /// thread's requests stay there, and the loop is woken so that
    /// `completions` answers them as failures.
    fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.overflow.extend(self.held.drain(..));
        if let Err(Gone(request)) = self.drain_overflow() {
            self.overflow.push_front(*request);
            let _ = self._waker.wake();
        }
    }

    /// What is held for this turn does not count: it is at most what the
    /// turn read.
    fn is_busy(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// The thread took requests out (it wakes the loop after each batch but
    /// a quiet sweep's; the worker's tick calls this too while it has an
    /// overflow), so the overflow moves on first.
    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.events.try_iter());
        self.spent.try_iter().for_each(drop);
        while let Err(Gone(request)) = self.drain_overflow() {
            out.extend(request.gone());
        }
    }

    /// Sends what overflowed and `Close`, and waits for the thread to finish
    /// what was queued.
    fn close(&mut self) {
        self.overflow.extend(self.held.drain(..));
        for request in self.overflow.drain(..) {
            let _ = self.requests.send(request);
        }
        let _ = self.requests.send(Request::Close);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

struct Writer {
    /// Declared before `shards` so that it stops first (`checkpointer.rs`).
    _checkpointer: Checkpointer,
    shards: HashMap<u32, ShardDb>,
    /// Which `history_size` applies to which channel.
    retention: Storage,
    /// Channels appended to since the sweep last trimmed them whole.
    touched: HashMap<u32, HashMap<String, Touched>>,
    /// Rows the appends trimmed since the last sweep, counted with its own.
    trimmed: u64,
    /// A write failed: the shards may lack something the worker counted on,
    /// so they must not be marked as closed cleanly.
    failed: bool,
    /// The last sweep sent `Completion::Swept`.
    swept_news: bool,
    outbox: Sender<Completion>,
    /// Written appends, back to `StoreThread::spent`.
    spent: Sender<Vec<Append>>,
    waker: Arc<Waker>,
}

impl Writer {
    fn run(&mut self, inbox: Receiver<Request>) {
        for (n, shard) in &self.shards {
            if let Err(e) = shard.set_state("clean_shutdown", "0") {
                log::error!("store: marking shard {n} as open failed: {e}");
            }
        }
        while let Ok(first) = inbox.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // The worker is woken for what the batch tells it. A batch of
            // sweeps that found nothing to expire or trim tells it nothing
            // (an idle worker would otherwise wake every second for it).
            let sweeps_only = batch.iter().all(|r| matches!(r, Request::Sweep { .. }));
            let closing = self.handle(batch);
            if !sweeps_only || std::mem::take(&mut self.swept_news) {
                let _ = self.waker.wake();
            }
            if closing {
                self.mark_clean();
                return;
            }
        }
    }

    /// Returns true when asked to close.
    fn handle(&mut self, batch: Vec<Request>) -> bool {
        let mut appends: HashMap<u32, Vec<Append>> = HashMap::new();
        let mut last_ticket = None;
        let mut count = 0;
        let mut rest = Vec::new();
        for request in batch {
            match request {
                Request::Append { shard, ticket, msg } => {
                    appends.entry(shard).or_default().push(msg);
                    last_ticket = Some(ticket);
                    count += 1;
                }
                other => rest.push(other),
            }
        }
        for (shard, msgs) in &appends {
            let touched = self.touched.entry(*shard).or_default();
            // One grouping by channel, for the trims and the append.
            let runs = segments::by_channel(msgs);
            let trims = trims(&runs, &self.retention, touched);
            let result = match self.shards.get_mut(shard) {
                Some(db) => db.append_runs(&runs, &trims).map_err(|e| e.to_string()),
                None => Err(format!("shard {shard} is not owned here")),
            };
            match result {
                Ok(trimmed) => self.trimmed += trimmed,
                Err(error) => {
                    self.failed = true;
                    let _ = self.outbox.send(Completion::Failed { error });
                    return true;
                }
            }
        }
        if let Some(upto) = last_ticket {
            let _ = self.outbox.send(Completion::Committed {
                upto,
                count,
                numbered: Vec::new(),
            });
        }
        for (_, msgs) in appends {
            let _ = self.spent.send(msgs);
        }
        let mut acks: HashMap<u32, Vec<(u64, String, u64)>> = HashMap::new();
        let mut closing = false;
        for request in rest {
            match request {
                Request::Read {
                    tag,
                    shard,
                    channel,
                    after,
                    upto,
                    limit,
                } => {
                    let keep = self.retention.retention_for(&channel).0;
                    let result = match self.shards.get(&shard) {
                        Some(db) => db
                            .read(&channel, after, upto, limit, keep)
                            .map_err(|e| e.to_string()),
                        None => Err(format!("shard {shard} is not owned here")),
                    };
                    let _ = self.outbox.send(Completion::Read { tag, result });
                }
                Request::Oldest {
                    tag,
                    shard,
                    channel,
                    after,
                    now_ms,
                } => {
                    let keep = self.retention.retention_for(&channel).0;
                    let result = match self.shards.get(&shard) {
                        Some(db) => db
                            .oldest(&channel, after, keep, now_ms)
                            .map_err(|e| e.to_string()),
                        None => Err(format!("shard {shard} is not owned here")),
                    };
                    let _ = self.outbox.send(Completion::Oldest { tag, result });
                }
                Request::Sweep { now_ms } => self.sweep(now_ms),
                Request::Ack {
                    tag,
                    shard,
                    channel,
                    seq,
                } => acks.entry(shard).or_default().push((tag, channel, seq)),
                Request::DeadLetter {
                    shard,
                    channel,
                    seq,
                    reason,
                    data,
                    time_ms,
                } => {
                    let stored = self
                        .shards
                        .get(&shard)
                        .map(|db| db.add_dead_letter(&channel, seq, time_ms, reason, &data));
                    if let Some(Err(e)) = stored {
                        self.failed = true;
                        log::error!("store: recording a dead letter of {channel} failed: {e}");
                    }
                }
                Request::Range { tag, .. } => {
                    let result = Err("ranges are for a shared engine".to_string());
                    let _ = self.outbox.send(Completion::Range { tag, result });
                }
                Request::Lookup { tag, .. } => {
                    let result = Err("lookups are for a shared engine".to_string());
                    let _ = self.outbox.send(Completion::Looked { tag, result });
                }
                Request::Presence { .. } | Request::Redeliver { .. } => {}
                Request::Close => closing = true,
                Request::Append { .. } => {}
            }
        }
        self.store_acks(acks);
        closing
    }

    /// One transaction per shard for its acks, then each ack is answered.
    fn store_acks(&mut self, acks: HashMap<u32, Vec<(u64, String, u64)>>) {
        for (shard, batch) in acks {
            let result = match self.shards.get_mut(&shard) {
                Some(db) => db
                    .set_acks(batch.iter().map(|(_, c, s)| (c.as_str(), *s)))
                    .map_err(|e| e.to_string()),
                None => Err(format!("shard {shard} is not owned here")),
            };
            let error = result.err();
            if let Some(e) = &error {
                self.failed = true;
                log::error!("store: recording acks in shard {shard} failed: {e}");
            }
            let tags = batch.into_iter().map(|(tag, _, _)| tag).collect();
            let _ = self.outbox.send(Completion::AcksStored { tags, error });
        }
    }

    /// A clean shutdown only if every write was stored: in `memory`
    /// durability an unclean one gives the shards' channels new epochs.
    fn mark_clean(&self) {
        if self.failed {
            log::warn!("store: a write failed, so the shards are not marked clean");
            return;
        }
        for (n, shard) in &self.shards {
            if let Err(e) = shard.set_state("clean_shutdown", "1") {
                log::error!("store: marking shard {n} as closed cleanly failed: {e}");
            }
        }
    }

    fn sweep(&mut self, now_ms: i64) {
        let (mut expired, mut trimmed) = (0, std::mem::take(&mut self.trimmed));
        for db in self.shards.values_mut() {
            match db.delete_expired(now_ms, SWEEP_BATCH) {
                Ok(n) => expired += n,
                Err(e) => log::error!("store: sweeping expired messages failed: {e}"),
            }
        }
        for (shard, channels) in &mut self.touched {
            let Some(db) = self.shards.get_mut(shard) else {
                continue;
            };
            channels.retain(|channel, seen| {
                let upto = seen
                    .last
                    .saturating_sub(self.retention.retention_for(channel).0);
                match db.trim(channel, upto, SWEEP_BATCH) {
                    Ok(done) => {
                        trimmed += done.messages;
                        seen.trimmed_to = Some(upto);
                        // Trimmed to its size: nothing to do until appended to again.
                        done.more
                    }
                    Err(e) => {
                        log::error!("store: trimming {channel} failed: {e}");
                        true
                    }
                }
            });
        }
        self.touched.retain(|_, channels| !channels.is_empty());
        if expired + trimmed > 0 {
            let _ = self.outbox.send(Completion::Swept { expired, trimmed });
            self.swept_news = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::shard_db::shard_path;

    /// Message `seq` of channel `a`, ticket `seq`, to shard 0.
    fn append(seq: u64) -> Request {
        Request::Append {
            shard: 0,
            ticket: seq,
            msg: Append::of("a", seq),
        }
    }

    /// A store thread over shard 0 in a new folder (kept in the `TempDir`),
    /// waking `Poll`, with a request queue of `queue`.
    fn started(
        durability: Durability,
        retention: Storage,
        queue: usize,
    ) -> (tempfile::TempDir, mio::Poll, StoreThread) {
        let dir = tempfile::tempdir().unwrap();
        let db = ShardDb::open(&shard_path(dir.path(), 0), durability).unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let shards = HashMap::from([(0, db)]);
        let store = StoreThread::spawn(shards, retention, waker, queue).unwrap();
        (dir, poll, store)
    }

    /// Appends trim as they go: 1000 messages in batches of 25 on a
    /// channel that keeps 10 leave exactly the last 10, with no sweep; the
    /// sweep alone trims 500 a second, which a faster channel outgrew.
    #[test]
    fn appends_keep_a_channel_at_its_history_size() {
        let retention = Storage {
            history_size: 10,
            ..Storage::default()
        };
        let (dir, mut poll, mut store) = started(Durability::Commit, retention, 64);
        let mut events = mio::Events::with_capacity(8);
        let mut upto = 0;
        for batch in (1..=1000u64).collect::<Vec<_>>().chunks(25) {
            batch
                .iter()
                .for_each(|&seq| assert!(store.submit(append(seq)).is_ok()));
            store.flush();
            while upto < *batch.last().unwrap() {
                poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut done = Vec::new();
                store.completions(&mut done);
                for completion in done {
                    match completion {
                        Completion::Committed { upto: u, .. } => upto = u,
                        Completion::Failed { error } => panic!("{error}"),
                        _ => {}
                    }
                }
            }
        }
        store.close();
        let db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Commit).unwrap();
        let rows = db.read("a", 0, 1000, 1000, u64::MAX).unwrap();
        let seqs: Vec<u64> = rows.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (991..=1000).collect::<Vec<_>>());
        assert_eq!(db.oldest("a", 0, u64::MAX, 0).unwrap(), Some(991));
    }

    /// A queue of 2 takes 1000 appends without the caller ever waiting: the
    /// rest waits in order in the overflow (busy meanwhile) and moves on
    /// each time the thread wakes the loop, until every append is stored.
    #[test]
    fn a_full_queue_overflows_in_order_and_is_busy_until_drained() {
        let (dir, mut poll, mut store) = started(Durability::Memory, Storage::default(), 2);
        for seq in 1..=1000 {
            assert!(store.submit(append(seq)).is_ok());
        }
        assert!(!store.is_busy(), "held until the end of the turn");
        store.flush();
        assert!(store.is_busy(), "1000 requests do not fit in 2");
        let mut events = mio::Events::with_capacity(8);
        let (mut stored, mut upto) = (0, 0);
        while upto < 1000 {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "the store thread wakes the loop");
            let mut done = Vec::new();
            store.completions(&mut done);
            for completion in done {
                if let Completion::Committed { upto: u, count, .. } = completion {
                    assert!(u > upto, "in ticket order");
                    upto = u;
                    stored += count;
                }
            }
        }
        assert_eq!(stored, 1000);
        assert!(!store.is_busy());
        store.close();
        let db = ShardDb::open(&shard_path(dir.path(), 0), Durability::Memory).unwrap();
        let rows = db.read("a", 0, 1000, 1000, u64::MAX).unwrap();
        let seqs: Vec<u64> = rows.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    }
}
