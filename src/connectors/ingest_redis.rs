//! Redis ingests, each on its own thread with a blocking connection:
//!
//! - `redis-list`: `BLMOVE key key:processing RIGHT LEFT`, so a message is
//!   never only in our memory; `LREM` from the processing list once stored.
//!   What an earlier run left in the processing list is published first.
//!   Unparsable messages move to `key:dead`.
//! - `redis-stream`: `XREADGROUP` in `group`; `XACK` once stored, the entry
//!   id being the idempotency key; the consumer's pending entries are read
//!   again first after a restart. Unparsable entries go to `stream:dead`.
//! - `redis-pubsub`: `PSUBSCRIBE`; at most once by nature (Redis keeps
//!   nothing for a subscriber that is away).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, Connection, Value};

use super::body::{self, Parsed, Source};
use super::{is_transient, with_retries, Answer, Link};
use crate::config::queues::{Ingest, IngestKind};
use crate::proto::frames::ErrorReply;

type Result<T> = std::result::Result<T, String>;

fn err(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

pub fn run(ingest: Ingest, max_frame: usize, mut link: Link) {
    let (status, stop) = (link.status.clone(), link.stop.clone());
    with_retries(&status, &stop, || session(&ingest, max_frame, &mut link));
}

fn session(ingest: &Ingest, max_frame: usize, link: &mut Link) -> Result<()> {
    link.begin_session();
    let client = redis::Client::open(ingest.url.as_str()).map_err(err)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(err)?;
    // Longer than any blocking read we make, so a dead server is noticed.
    con.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    match ingest.kind {
        IngestKind::RedisList => list(ingest, max_frame, link, &mut con),
        IngestKind::RedisStream => stream(ingest, max_frame, link, &mut con),
        _ => pubsub(ingest, max_frame, link, &mut con),
    }
}

fn source<'a>(ingest: &'a Ingest, max_frame: usize, id: Option<&'a str>) -> Source<'a> {
    Source {
        format: ingest.format,
        fixed_channel: ingest.channel.as_deref(),
        pubsub_channel: None,
        broker_id: id,
        max_frame,
    }
}

/// What became of one message of a batch.
enum Outcome {
    Stored,
    Dead(String),
    /// Refused for now (the owner is restarting): left with the broker.
    Later(String),
}

/// Publishes a batch and waits for every answer. The caller acknowledges
/// what is settled (stored or dead), then fails the session if anything
/// was refused for now, so that is read again from the broker.
fn publish_batch(
    link: &mut Link,
    parsed: Vec<std::result::Result<Parsed, ErrorReply>>,
) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(parsed.len());
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Ok(p) => {
                waiting.insert(link.submit(p), i);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Outcome::Dead(e.message))),
        }
    }
    while !waiting.is_empty() {
        let Some(Answer { id, result }) = link.answers.blocking_recv() else {
            return Err("the worker is stopping".into());
        };
        let Some(i) = waiting.remove(&id) else {
            continue; // from an earlier session
        };
        outcomes[i] = match result {
            Ok(acked) => {
                link.count_stored(&acked);
                Some(Outcome::Stored)
            }
            Err(e) if is_transient(&e) => Some(Outcome::Later(e.message)),
            Err(e) => Some(Outcome::Dead(e.message)),
        };
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Later("no answer".into())))
        .collect())
}

fn list(ingest: &Ingest, max_frame: usize, link: &mut Link, con: &mut Connection) -> Result<()> {
    let key = ingest.key.as_deref().unwrap_or_default();
    let processing = format!("{key}:processing");
    let dead = format!("{key}:dead");
    link.set_state("connected");
    // Left over by an earlier run (or session), the oldest at the right:
    // taken in pages of `prefetch` from there (each page leaves the list
    // before the next is read), so memory stays bounded however many.
    let mut leftover: usize = con.llen(&processing).map_err(err)?;
    while !link.stopping() {
        let batch = if leftover == 0 {
            take_from_list(con, key, &processing, ingest.prefetch)?
        } else {
            let n = leftover.min(usize::from(ingest.prefetch).max(1));
            leftover -= n;
            let from = -isize::try_from(n).unwrap_or(isize::MAX);
            let mut page: Vec<Vec<u8>> = con.lrange(&processing, from, -1).map_err(err)?;
            page.reverse();
            page
        };
        if batch.is_empty() {
            continue;
        }
        link.count_received(batch.len() as u64);
        let parsed = batch
            .iter()
            .map(|b| body::parse(b, &source(ingest, max_frame, None)))
            .collect();
        let outcomes = publish_batch(link, parsed)?;
        let mut pipe = redis::pipe();
        let mut later = None;
        for (item, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Later(why) => later = Some(why),
                Outcome::Dead(why) => {
                    link.count_dead(&why);
                    pipe.lpush(&dead, item).ignore();
                    pipe.lrem(&processing, 1, item).ignore();
                }
                Outcome::Stored => {
                    pipe.lrem(&processing, 1, item).ignore();
                }
            }
        }
        pipe.atomic().query::<()>(con).map_err(err)?;
        if let Some(why) = later {
            return Err(format!("publish refused for now: {why}"));
        }
    }
    Ok(())
}

/// Up to `prefetch` messages moved into the processing list: the first
/// waits up to a second, the rest are taken only if already there, with
/// one pipeline of `LMOVE`s (one round trip, not one per message).
fn take_from_list(
    con: &mut Connection,
    key: &str,
    processing: &str,
    prefetch: u16,
) -> Result<Vec<Vec<u8>>> {
    let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
        .arg(key)
        .arg(processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(1.0)
        .query(con)
        .map_err(err)?;
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let waiting: usize = con.llen(key).map_err(err)?;
    let more = waiting.min(usize::from(prefetch).saturating_sub(1));
    let mut pipe = redis::pipe();
    for _ in 0..more {
        pipe.cmd("LMOVE")
            .arg(key)
            .arg(processing)
            .arg("RIGHT")
            .arg("LEFT");
    }
    // Another consumer of the key may have emptied it meanwhile: nil.
    let rest: Vec<Option<Vec<u8>>> = match more {
        0 => Vec::new(),
        _ => pipe.query(con).map_err(err)?,
    };
    let mut batch = vec![first];
    batch.extend(rest.into_iter().flatten());
    Ok(batch)
}

fn stream(ingest: &Ingest, max_frame: usize, link: &mut Link, con: &mut Connection) -> Result<()> {
    let stream = ingest.stream.as_deref().unwrap_or_default();
    let group = ingest.group.as_deref().unwrap_or_default();
    let dead = format!("{stream}:dead");
    // A new group reads the stream from its start: messages added before
    // syncd first ran are not skipped.
    let created: redis::RedisResult<()> = con.xgroup_create_mkstream(stream, group, "0");
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(err(e));
        }
    }
    let consumer = consumer_name();
    link.set_state("connected");
    // Our pending entries (read, never acknowledged) come first, with what
    // other consumers left stranded.
    let mut from_pending = true;
    let mut next_claim = Instant::now();
    while !link.stopping() {
        if Instant::now() >= next_claim {
            next_claim = Instant::now() + ingest.claim_after;
            let idle = ingest.claim_after;
            if claim_stranded(con, stream, group, &consumer, idle, ingest.prefetch)? > 0 {
                from_pending = true;
            }
        }
        let mut options = StreamReadOptions::default()
            .group(group, &consumer)
            .count(usize::from(ingest.prefetch));
        if !from_pending {
            options = options.block(1000);
        }
        let start = if from_pending { "0" } else { ">" };
        let reply: Option<StreamReadReply> = con
            .xread_options(&[stream], &[start], &options)
            .map_err(err)?;
        let entries: Vec<_> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if entries.is_empty() {
            from_pending = false;
            continue;
        }
        link.count_received(entries.len() as u64);
        let bodies: Vec<Option<Vec<u8>>> = entries
            .iter()
            .map(|e| match e.map.get("body") {
                Some(Value::BulkString(b)) => Some(b.clone()),
                Some(Value::SimpleString(s)) => Some(s.clone().into_bytes()),
                _ => None,
            })
            .collect();
        let parsed = entries
            .iter()
            .zip(&bodies)
            .map(|(e, b)| match b {
                Some(b) => {
                    // Entry ids repeat across streams (`1-0` in each), so the
                    // key names the stream: two streams feeding one channel
                    // never drop each other's entries as duplicates.
                    let id = format!("{stream}:{}", e.id);
                    body::parse(b, &source(ingest, max_frame, Some(&id)))
                }
                None => Err(ErrorReply::new(
                    "bad_request",
                    "a stream entry needs a `body` field",
                )),
            })
            .collect();
        let outcomes = publish_batch(link, parsed)?;
        let mut pipe = redis::pipe();
        let mut later = None;
        for ((entry, body), outcome) in entries.iter().zip(&bodies).zip(outcomes) {
            if let Outcome::Later(why) = outcome {
                later = Some(why);
                continue;
            }
            if let Outcome::Dead(why) = outcome {
                link.count_dead(&why);
                let body = body.clone().unwrap_or_default();
                let fields: [(&str, &[u8]); 3] = [
                    ("body", &body),
                    ("id", entry.id.as_bytes()),
                    ("error", why.as_bytes()),
                ];
                pipe.xadd(&dead, "*", &fields).ignore();
            }
            pipe.xack(stream, group, &[&entry.id]).ignore();
        }
        pipe.atomic().query::<()>(con).map_err(err)?;
        if let Some(why) = later {
            // The session starts over with the pending entries.
            return Err(format!("publish refused for now: {why}"));
        }
    }
    Ok(())
}

/// Takes over the entries other consumers of `group` read and left
/// unacknowledged for `idle` or more (a server that died, or came back
/// under another name), so they are published rather than stranded. They
/// become ours to read as pending entries; each one's key is its entry id,
/// so one the other consumer did publish is a duplicate, not a second
/// message. How many were taken.
fn claim_stranded(
    con: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
    idle: Duration,
    count: u16,
) -> Result<usize> {
    let mut cursor = "0-0".to_string();
    let mut claimed = 0;
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
            .arg(&cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("JUSTID")
            .query(con)
            .map_err(err)?;
        // [next cursor, [ids], (Redis 7: [ids deleted meanwhile])]
        let Value::Array(parts) = reply else {
            return Err("XAUTOCLAIM: an unreadable reply".into());
        };
        let next: String = parts
            .first()
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or_else(|| "0-0".into());
        if let Some(Value::Array(ids)) = parts.get(1) {
            claimed += ids.len();
        }
        if next == "0-0" || next == cursor {
            break;
        }
        cursor = next;
    }
    if claimed > 0 {
        log::warn!("ingest redis-stream {stream}: took over {claimed} entries other consumers of {group} left unacknowledged");
    }
    Ok(claimed)
}

/// The same name across restarts of this host's syncd, so the pending
/// entries of an earlier run are ours to read again.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("syncd-{}", host.trim())
}

fn pubsub(ingest: &Ingest, max_frame: usize, link: &mut Link, con: &mut Connection) -> Result<()> {
    let mut pubsub = con.as_pubsub();
    for pattern in &ingest.channels {
        pubsub.psubscribe(pattern).map_err(err)?;
    }
    pubsub
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(err)?;
    link.set_state("connected");
    let mut inflight = 0usize;
    while !link.stopping() {
        // At most `prefetch` publishes waiting: the rest of Redis's
        // output waits in the socket.
        while inflight >= usize::from(ingest.prefetch) {
            match link.answers.blocking_recv() {
                Some(answer) => inflight -= count_answer(link, answer),
                None => return Err("the worker is stopping".into()),
            }
        }
        while let Ok(answer) = link.answers.try_recv() {
            inflight = inflight.saturating_sub(count_answer(link, answer));
        }
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(err(e)),
        };
        link.count_received(1);
        let name = body::strip_prefix(msg.get_channel_name(), &ingest.prefix);
        let source = Source {
            pubsub_channel: Some(name),
            ..source(ingest, max_frame, None)
        };
        match body::parse(msg.get_payload_bytes(), &source) {
            Ok(parsed) => {
                link.submit(parsed);
                inflight += 1;
            }
            // Nowhere to put it back: counted and logged.
            Err(e) => link.count_dead(&e.message),
        }
    }
    Ok(())
}

/// Pub/sub answers are only counted: there is nothing to acknowledge.
fn count_answer(link: &Link, answer: Answer) -> usize {
    match answer.result {
        Ok(acked) => link.count_stored(&acked),
        Err(e) => link.count_dead(&e.message),
    }
    1
}
