//! A queue message's body → a publish, with the checks of `POST
//! /api/publish` (channel and uid rules, `max_frame`, compact `data`).
//! Sans-IO: bytes and names in, a publish or the reason it was refused out.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::queues::IngestFormat;
use crate::proto::compact::compact;
use crate::proto::frames::{self, ErrorReply};
use crate::sync::channel;

/// What an ingest asks the owner to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub channel: String,
    pub data: String,
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Another syncd's egress sent it (its body carries `epoch` and `seq`):
    /// stored marked, so egress never sends it on again (no loops).
    pub mirrored: bool,
}

/// Where a message came from, besides its body.
pub struct Source<'a> {
    pub format: IngestFormat,
    /// The ingest's fixed `channel`, if set.
    pub fixed_channel: Option<&'a str>,
    /// `redis-pubsub`: the channel it was published on, `prefix` stripped.
    pub pubsub_channel: Option<&'a str>,
    /// The broker's id (AMQP `message_id`, stream entry id): the
    /// idempotency key when the body has none.
    pub broker_id: Option<&'a str>,
    pub max_frame: usize,
}

/// The shape of `POST /api/publish` and `/api/send`, every field optional:
/// which ones must be there depends on the ingest's settings.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    uid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Set by egress (`{"channel","seq","epoch","data"}`), never by the
    /// API's shape: together they mark a mirrored message.
    #[serde(borrow, default)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Laravel's Redis broadcaster payload.
#[derive(Deserialize)]
struct Laravel<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn bad(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new("bad_request", message.into())
}

/// Reads one message. An error means it can never be published as it is:
/// the caller dead-letters it.
pub fn parse(body: &[u8], source: &Source) -> Result<Parsed, ErrorReply> {
    if body.len() > source.max_frame {
        return Err(ErrorReply::new(
            "too_large",
            format!(
                "the body is {} bytes, over limits.max_frame ({})",
                body.len(),
                source.max_frame
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    let parsed = match source.format {
        IngestFormat::Json => parse_json(text, source)?,
        IngestFormat::Laravel => parse_laravel(text, source)?,
    };
    frames::check_idempotency_key(parsed.idempotency_key.as_deref())?;
    frames::check_channel(&parsed.channel)?;
    Ok(parsed)
}

fn parse_json(text: &str, source: &Source) -> Result<Parsed, ErrorReply> {
    let shape = "the body must be JSON: {\"channel\":..,\"data\":..} or {\"uid\":..,\"data\":..}";
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| bad(format!("{shape}: {e}")))?;
    let body = if raw.get().starts_with('{') {
        serde_json::from_str::<Body>(raw.get()).map_err(|e| bad(format!("{shape}: {e}")))?
    } else {
        Body {
            channel: None,
            uid: None,
            data: None,
            ttl: None,
            idempotency_key: None,
            epoch: None,
            seq: None,
        }
    };
    let Some(data) = body.data else {
        // Not publish-shaped: the whole body is the data of a message on
        // the fixed or pub/sub channel.
        let channel = source
            .fixed_channel
            .or(source.pubsub_channel)
            .ok_or_else(|| bad(format!("{shape} (`data` is missing)")))?;
        return Ok(Parsed {
            channel: channel.to_string(),
            data: compact(raw).into_owned(),
            ttl: None,
            idempotency_key: source.broker_id.map(str::to_string),
            mirrored: false,
        });
    };
    let channel = match (source.fixed_channel, body.channel, body.uid) {
        (Some(fixed), _, _) => fixed.to_string(),
        (None, Some(channel), _) => channel.into_owned(),
        (None, None, Some(uid)) => channel::inbox(&frames::check_uid(Some(uid))?),
        (None, None, None) => match source.pubsub_channel {
            Some(name) => name.to_string(),
            None => return Err(bad(format!("{shape} (`channel` or `uid` is missing)"))),
        },
    };
    Ok(Parsed {
        channel,
        data: compact(data).into_owned(),
        ttl: body.ttl.filter(|&t| t > 0),
        idempotency_key: body
            .idempotency_key
            .or_else(|| source.broker_id.map(str::to_string)),
        mirrored: body.epoch.is_some() && body.seq.is_some(),
    })
}

/// `{"event","data","socket"}` on the broadcast channel's name: the
/// message's data is `{"event":…,"data":…}`.
fn parse_laravel(text: &str, source: &Source) -> Result<Parsed, ErrorReply> {
    let payload: Laravel = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "a Laravel broadcast must be {{\"event\",\"data\",\"socket\"}}: {e}"
        ))
    })?;
    let channel = source
        .fixed_channel
        .or(source.pubsub_channel)
        .ok_or_else(|| bad("no channel for a Laravel broadcast"))?;
    let event = serde_json::Value::from(payload.event).to_string();
    let data = format!("{{\"event\":{event},\"data\":{}}}", compact(payload.data));
    Ok(Parsed {
        channel: channel.to_string(),
        data,
        ttl: None,
        idempotency_key: source.broker_id.map(str::to_string),
        mirrored: false,
    })
}

/// A pub/sub channel's name with the ingest's `prefix` taken off.
pub fn strip_prefix<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source<'static> {
        Source {
            format: IngestFormat::Json,
            fixed_channel: None,
            pubsub_channel: None,
            broker_id: None,
            max_frame: 1000,
        }
    }

    #[test]
    fn publish_and_send_shapes() {
        let p = parse(
            br#"{"channel":"orders","data":{ "n": 1 },"ttl":5,"idempotency_key":"k"}"#,
            &source(),
        )
        .unwrap();
        assert_eq!(p.channel, "orders");
        assert_eq!(p.data, r#"{"n":1}"#);
        assert_eq!((p.ttl, p.idempotency_key.as_deref()), (Some(5), Some("k")));
        let p = parse(br#"{"uid":"bob","data":1}"#, &source()).unwrap();
        assert_eq!(p.channel, "#bob");
        assert!(!p.mirrored, "a backend's message goes out through egress");
    }

    #[test]
    fn what_another_syncds_egress_sent_is_mirrored() {
        let egressed = br#"{"channel":"orders","seq":7,"epoch":"e1","data":{"n":1}}"#;
        let p = parse(egressed, &source()).unwrap();
        assert!(p.mirrored);
        assert_eq!(
            (p.channel.as_str(), p.data.as_str()),
            ("orders", r#"{"n":1}"#)
        );
        for body in [
            br#"{"channel":"orders","seq":7,"data":1}"#.as_slice(),
            br#"{"channel":"orders","epoch":"e1","data":1}"#,
            br#"{"seq":7,"epoch":"e1"}"#,
        ] {
            let fixed = Source {
                fixed_channel: Some("f"),
                ..source()
            };
            assert!(!parse(body, &fixed).unwrap().mirrored, "{body:?}");
        }
    }

    #[test]
    fn the_broker_id_is_the_key_when_the_body_has_none() {
        let s = Source {
            broker_id: Some("m-1"),
            ..source()
        };
        let p = parse(br#"{"channel":"a","data":1}"#, &s).unwrap();
        assert_eq!(p.idempotency_key.as_deref(), Some("m-1"));
        let p = parse(br#"{"channel":"a","data":1,"idempotency_key":"b"}"#, &s).unwrap();
        assert_eq!(p.idempotency_key.as_deref(), Some("b"));
    }

    #[test]
    fn fixed_and_pubsub_channels() {
        let fixed = Source {
            fixed_channel: Some("orders"),
            ..source()
        };
        let p = parse(br#"{"channel":"x","data":2}"#, &fixed).unwrap();
        assert_eq!((p.channel.as_str(), p.data.as_str()), ("orders", "2"));
        let p = parse(br#"{"id":981, "paid":true}"#, &fixed).unwrap();
        assert_eq!(p.data, r#"{"id":981,"paid":true}"#);
        let pubsub = Source {
            pubsub_channel: Some("news"),
            ..source()
        };
        assert_eq!(parse(br#"[1]"#, &pubsub).unwrap().channel, "news");
        let p = parse(br#"{"channel":"other","data":1}"#, &pubsub).unwrap();
        assert_eq!(p.channel, "other");
    }

    #[test]
    fn laravel_payloads() {
        let s = Source {
            format: IngestFormat::Laravel,
            pubsub_channel: Some(strip_prefix(
                "laravel_database_orders.1",
                "laravel_database_",
            )),
            ..source()
        };
        let p = parse(
            br#"{"event":"OrderPaid","data":{"id":1},"socket":null}"#,
            &s,
        )
        .unwrap();
        assert_eq!(p.channel, "orders.1");
        assert_eq!(p.data, r#"{"event":"OrderPaid","data":{"id":1}}"#);
        assert!(parse(br#"{"data":1}"#, &s).is_err());
    }

    #[test]
    fn refusals() {
        for body in [
            &b"not json"[..],
            br#"{"data":1}"#,
            br#"{"channel":"","data":1}"#,
            br#"{"channel":"a b","data":1}"#,
            br#"{"uid":"a b","data":1}"#,
            br#"[1,2]"#,
            b"\xff",
        ] {
            assert!(parse(body, &source()).is_err(), "{body:?}");
        }
        let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(1000));
        assert_eq!(
            parse(big.as_bytes(), &source()).unwrap_err().code,
            "too_large"
        );
    }
}
