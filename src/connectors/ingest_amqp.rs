//! The AMQP ingest: `lapin` on a current-thread tokio runtime of its own
//! thread. The queue is declared passively (used as it is), or declared
//! durable with no arguments when missing. At most `prefetch` deliveries
//! are unacknowledged; each is `basic.ack`ed once the owner answered it
//! stored, or rejected without requeue (the queue's dead-letter policy)
//! when it can never be published. After a transient refusal the ingest
//! takes nothing more, settles what is in flight, and closes the
//! connection, so the broker redelivers the refused messages (and the
//! prefetched rest) in order; the `message_id` (idempotency key) keeps any
//! redelivery of a stored message from being published twice.

use std::collections::HashMap;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection, ConnectionProperties};

use super::body::{self, Source};
use super::{is_transient, with_retries, Link};
use crate::config::queues::Ingest;

type Result<T> = std::result::Result<T, String>;

fn err(e: lapin::Error) -> String {
    format!("amqp: {e}")
}

pub fn run(ingest: Ingest, max_frame: usize, mut link: Link) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return log::error!("ingest {}: no tokio runtime: {e}", ingest.source()),
    };
    let (status, stop) = (link.status.clone(), link.stop.clone());
    // Once the queue has been seen, it is never declared again (below).
    let mut seen_queue = false;
    with_retries(&status, &stop, || {
        link.begin_session();
        runtime.block_on(async {
            let conn = Connection::connect(&ingest.url, ConnectionProperties::default())
                .await
                .map_err(err)?;
            let result = consume(&conn, &ingest, max_frame, &mut link, &mut seen_queue).await;
            // Whatever is unacknowledged goes back to the queue, in order.
            let _ = conn.close(200, "syncd ingest restarting".into()).await;
            result
        })
    });
}

/// The queue as it is, or a durable one with no arguments when missing.
/// A failed passive declare closes the channel, so a new one declares.
///
/// Only while `may_create`: a queue that existed and is missing after a
/// reconnect is most likely still being recovered by a restarting broker,
/// and declaring it then would replace it, and its messages, with an empty
/// one. So that is an error, retried with backoff.
async fn declare_queue(conn: &Connection, queue: &str, may_create: bool) -> Result<Channel> {
    let channel = conn.create_channel().await.map_err(err)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        return Ok(channel);
    }
    if !may_create {
        return Err(format!(
            "queue {queue} is missing (the broker may still be recovering it); \
             syncd declares a queue only the first time"
        ));
    }
    let channel = conn.create_channel().await.map_err(err)?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .map_err(err)?;
    Ok(channel)
}

async fn consume(
    conn: &Connection,
    ingest: &Ingest,
    max_frame: usize,
    link: &mut Link,
    seen_queue: &mut bool,
) -> Result<()> {
    let queue = ingest.queue.as_deref().unwrap_or_default();
    let channel = declare_queue(conn, queue, !*seen_queue).await?;
    *seen_queue = true;
    channel
        .basic_qos(ingest.prefetch, BasicQosOptions::default())
        .await
        .map_err(err)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "syncd-ingest".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    link.set_state("connected");
    let mut inflight: HashMap<u64, Acker> = HashMap::new();
    let mut check_stop = tokio::time::interval(std::time::Duration::from_millis(200));
    // Set by a refusal for now: take nothing more, settle what is in
    // flight (so stored messages are not redelivered), then start over.
    let mut failing: Option<String> = None;
    loop {
        let winding_down = link.stopping() || failing.is_some();
        if winding_down && inflight.is_empty() {
            // What was prefetched and not taken, and the refused ones, go
            // back to the queue with the close.
            return failing.map_or(Ok(()), Err);
        }
        tokio::select! {
            _ = check_stop.tick() => {}
            answer = link.answers.recv() => {
                let Some(answer) = answer else {
                    return Err("the worker is stopping".into());
                };
                // Answers for an earlier connection's deliveries find nothing.
                let Some(acker) = inflight.remove(&answer.id) else {
                    continue;
                };
                match answer.result {
                    Ok(acked) => {
                        acker.ack(BasicAckOptions::default()).await.map_err(err)?;
                        link.count_stored(&acked);
                    }
                    Err(e) if is_transient(&e) => {
                        failing.get_or_insert(format!("publish refused for now: {}", e.message));
                    }
                    Err(e) => {
                        link.count_dead(&e.message);
                        reject(&acker).await?;
                    }
                }
            }
            delivery = consumer.next(), if !winding_down => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(err(e)),
                    None => return Err("the broker cancelled the consumer".into()),
                };
                link.count_received(1);
                // An empty message_id is no id (not a bad key).
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str())
                    .filter(|s| !s.is_empty());
                let source = Source {
                    format: ingest.format,
                    fixed_channel: ingest.channel.as_deref(),
                    pubsub_channel: None,
                    broker_id: id,
                    max_frame,
                };
                match body::parse(&delivery.data, &source) {
                    Ok(parsed) => {
                        let id = link.submit(parsed);
                        inflight.insert(id, delivery.acker);
                    }
                    Err(e) => {
                        link.count_dead(&e.message);
                        reject(&delivery.acker).await?;
                    }
                }
            }
        }
    }
}

/// Without requeue: the queue's dead-letter exchange gets it, if it has one.
async fn reject(acker: &Acker) -> Result<()> {
    acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(|_| ())
        .map_err(err)
}
