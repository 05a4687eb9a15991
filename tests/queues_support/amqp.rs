//! A plain AMQP client for the tests (lapin on its own tokio runtime): the
//! producer and the independent consumer the issue asks for.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub struct Amqp {
    runtime: tokio::runtime::Runtime,
    _conn: Connection,
    channel: Channel,
}

/// One message taken from a queue: its `message_id` and body.
pub struct Got {
    pub message_id: Option<String>,
    pub body: serde_json::Value,
}

impl Amqp {
    pub fn connect(url: &str) -> Amqp {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (conn, channel) = runtime.block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .expect("amqp connect");
            let channel = conn.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            (conn, channel)
        });
        Amqp {
            runtime,
            _conn: conn,
            channel,
        }
    }

    /// A durable queue; `dead_letter_to` sets the queue's dead-letter
    /// policy (through the default exchange to that queue).
    pub fn queue(&self, name: &str, dead_letter_to: Option<&str>) {
        let mut args = FieldTable::default();
        if let Some(dead) = dead_letter_to {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(dead)),
            );
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.runtime
            .block_on(self.channel.queue_declare(name.into(), options, args))
            .expect("queue_declare");
    }

    pub fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.runtime
            .block_on(self.channel.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .expect("queue_bind");
    }

    /// Persistent messages to `queue` (default exchange), each confirmed.
    pub fn publish(&self, queue: &str, bodies: &[(Option<String>, String)]) {
        self.runtime.block_on(async {
            let mut confirms = Vec::new();
            for (id, body) in bodies {
                let mut props = BasicProperties::default().with_delivery_mode(2);
                if let Some(id) = id {
                    props = props.with_message_id(id.as_str().into());
                }
                let c = self
                    .channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .expect("publish");
                confirms.push(c);
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack());
            }
        });
    }

    /// Takes `n` messages from `queue` (acknowledged as taken); fails after
    /// 30 s without all of them.
    pub fn take(&self, queue: &str, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages on {queue}",
                got.len()
            );
            let options = BasicGetOptions { no_ack: true };
            let message = self
                .runtime
                .block_on(self.channel.basic_get(queue.into(), options))
                .expect("basic_get");
            match message {
                Some(m) => got.push(Got {
                    message_id: m
                        .delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string()),
                    body: serde_json::from_slice(&m.delivery.data).expect("JSON body"),
                }),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        got
    }

    /// Messages waiting in `queue` now.
    pub fn count(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.runtime
            .block_on(
                self.channel
                    .queue_declare(queue.into(), options, FieldTable::default()),
            )
            .expect("passive declare")
            .message_count()
    }
}
