//! Where egress sends: a RabbitMQ exchange with publisher confirms, or a
//! Redis stream (`XADD` in one `MULTI`). Each message is the JSON
//! `{"channel","seq","epoch","data"}` with `message_id =
//! "{channel}:{epoch}:{seq}"`, so a consumer can drop the duplicates a
//! restart may send again.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::runtime::Runtime;

use crate::config::queues::{Egress, EgressKind};

/// One stored message on its way out.
pub struct Out {
    pub channel: String,
    pub seq: u64,
    pub epoch: String,
    /// The `data` JSON as stored.
    pub data: String,
}

impl Out {
    pub fn message_id(&self) -> String {
        format!("{}:{}:{}", self.channel, self.epoch, self.seq)
    }

    pub fn body(&self) -> String {
        let channel = serde_json::Value::from(self.channel.as_str());
        let epoch = serde_json::Value::from(self.epoch.as_str());
        format!(
            "{{\"channel\":{channel},\"seq\":{},\"epoch\":{epoch},\"data\":{}}}",
            self.seq, self.data
        )
    }
}

/// `{channel}` in a routing key or stream name replaced by the channel.
pub fn fill(template: &str, channel: &str) -> String {
    template.replace("{channel}", channel)
}

pub enum Sink<'rt> {
    Amqp {
        runtime: &'rt Runtime,
        /// Boxed: a connection and channel are large, and a sink is one.
        link: Box<(Connection, Channel)>,
        exchange: String,
        routing_key: String,
    },
    Redis {
        con: redis::Connection,
        stream: String,
    },
}

impl<'rt> Sink<'rt> {
    pub fn connect(section: &Egress, runtime: &'rt Runtime) -> Result<Sink<'rt>, String> {
        match section.kind {
            EgressKind::Amqp => {
                let exchange = section.exchange.clone().unwrap_or_default();
                let (conn, channel) = runtime.block_on(amqp_connect(&section.url, &exchange))?;
                Ok(Sink::Amqp {
                    runtime,
                    link: Box::new((conn, channel)),
                    exchange,
                    routing_key: section.routing_key.clone(),
                })
            }
            EgressKind::RedisStream => {
                let redis_err = |e: redis::RedisError| format!("redis: {e}");
                let client = redis::Client::open(section.url.as_str()).map_err(redis_err)?;
                let con = client
                    .get_connection_with_timeout(std::time::Duration::from_secs(5))
                    .map_err(redis_err)?;
                con.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .map_err(redis_err)?;
                Ok(Sink::Redis {
                    con,
                    stream: section.stream.clone().unwrap_or_default(),
                })
            }
        }
    }

    /// Returns once the broker has confirmed every message of the batch.
    pub fn send(&mut self, batch: &[Out]) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Amqp {
                runtime,
                link,
                exchange,
                routing_key,
            } => runtime.block_on(amqp_send(&link.1, exchange, routing_key, batch)),
            Sink::Redis { con, stream } => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for out in batch {
                    let fields = [("message_id", out.message_id()), ("body", out.body())];
                    pipe.xadd(fill(stream, &out.channel), "*", &fields).ignore();
                }
                pipe.query::<()>(con).map_err(|e| format!("redis: {e}"))
            }
        }
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if let Sink::Amqp { runtime, link, .. } = self {
            let _ = runtime.block_on(link.0.close(200, "syncd egress restarting".into()));
        }
    }
}

fn amqp_err(e: lapin::Error) -> String {
    format!("amqp: {e}")
}

/// The exchange as it is, or a durable topic exchange with no arguments
/// when missing; then publisher confirms.
async fn amqp_connect(url: &str, exchange: &str) -> Result<(Connection, Channel), String> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(amqp_err)?;
    let mut channel = conn.create_channel().await.map_err(amqp_err)?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let args = FieldTable::default;
    let exists = channel
        .exchange_declare(exchange.into(), ExchangeKind::Topic, passive, args())
        .await
        .is_ok();
    if !exists {
        // The failed passive declare closed the channel.
        channel = conn.create_channel().await.map_err(amqp_err)?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, args())
            .await
            .map_err(amqp_err)?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp_err)?;
    Ok((conn, channel))
}

async fn amqp_send(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    batch: &[Out],
) -> Result<(), String> {
    let mut confirms = Vec::with_capacity(batch.len());
    for out in batch {
        let properties = BasicProperties::default()
            .with_message_id(out.message_id().into())
            .with_content_type("application/json".into())
            // Persistent: kept by a durable queue across a broker restart.
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                fill(routing_key, &out.channel).into(),
                BasicPublishOptions::default(),
                out.body().as_bytes(),
                properties,
            )
            .await
            .map_err(amqp_err)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        if confirm.await.map_err(amqp_err)?.is_nack() {
            return Err("amqp: the broker refused (nack) a message".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_message_id() {
        let out = Out {
            channel: "orders".into(),
            seq: 7,
            epoch: "e1".into(),
            data: r#"{"id":981}"#.into(),
        };
        assert_eq!(out.message_id(), "orders:e1:7");
        assert_eq!(
            out.body(),
            r#"{"channel":"orders","seq":7,"epoch":"e1","data":{"id":981}}"#
        );
        assert_eq!(fill("syncd.{channel}", "orders"), "syncd.orders");
    }
}
