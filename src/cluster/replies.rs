//! Redis replies to the engine's pipeline, as completions for the owner
//! core. Anything unexpected is a failure of that one request, never a
//! panic.

use std::collections::HashMap;

use redis::Value;

use crate::store::message::Stored;
use crate::store::{Completion, Looked, Numbered, Outcome, Range, Redelivery};

thread_local! {
    /// Presence changes failing while Redis is down are logged within this.
    static PRESENCE_LOG: std::cell::RefCell<crate::logging::LogLimit> =
        const { std::cell::RefCell::new(crate::logging::LogLimit::new(2)) };
}

/// What each command of a pipeline answers.
pub enum Asked {
    Append {
        ticket: u64,
        state: bool,
    },
    Range {
        tag: u64,
    },
    Lookup {
        tag: u64,
    },
    Ack {
        tag: u64,
    },
    Presence,
    Redeliver {
        channel: String,
        seq: u64,
        give_up: Option<(&'static str, String)>,
    },
}

/// Each request's completion from its reply; appends together as one
/// `Committed` in ticket order.
pub fn answers(
    asked: Vec<Asked>,
    values: impl Iterator<Item = Result<Value, String>>,
) -> Vec<Completion> {
    let mut done = Vec::new();
    let mut numbered = Vec::new();
    for (asked, value) in asked.into_iter().zip(values) {
        let value = value.and_then(|v| match v {
            Value::ServerError(e) => {
                Err(format!("redis: {} {}", e.code(), e.details().unwrap_or("")))
            }
            v => Ok(v),
        });
        match asked {
            Asked::Append { ticket, state } => {
                let outcome = match value {
                    Ok(v) => written(&v, state).unwrap_or_else(|| Outcome::Unavailable {
                        error: "unexpected reply from redis".into(),
                    }),
                    Err(error) => Outcome::Unavailable { error },
                };
                numbered.push(Numbered { ticket, outcome });
            }
            Asked::Range { tag } => {
                let result = value.and_then(|v| range(&v).ok_or_else(|| "bad range".into()));
                done.push(Completion::Range { tag, result });
            }
            Asked::Lookup { tag } => {
                let result = value.and_then(|v| looked(&v).ok_or_else(|| "bad lookup".into()));
                done.push(Completion::Looked { tag, result });
            }
            Asked::Redeliver {
                channel,
                seq,
                give_up,
            } => {
                let outcome = value.ok().and_then(|v| redelivered(&v));
                done.push(Completion::Redelivered {
                    channel,
                    seq,
                    outcome: outcome.unwrap_or(Redelivery::Failed),
                    give_up,
                });
            }
            Asked::Presence => {
                if let Err(e) = value {
                    let now = std::time::Instant::now();
                    if let Some(left_out) = PRESENCE_LOG.with(|l| l.borrow_mut().allow(now)) {
                        log::warn!("redis: presence not recorded: {e}; {left_out} more not logged");
                    }
                }
            }
            Asked::Ack { tag } => done.push(Completion::AcksStored {
                tags: vec![tag],
                error: value.err(),
            }),
        }
    }
    if let Some(last) = numbered.last() {
        let upto = last.ticket;
        let count = numbered
            .iter()
            .filter(|n| matches!(n.outcome, Outcome::Stored { .. }))
            .count() as u64;
        done.insert(
            0,
            Completion::Committed {
                upto,
                count,
                numbered,
            },
        );
    }
    done
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The publish script's reply.
fn written(v: &Value, state: bool) -> Option<Outcome> {
    let Value::Array(parts) = v else {
        return None;
    };
    let kind = text(parts.first()?)?;
    let n = int(parts.get(1)?)?;
    match kind.as_str() {
        "ok" => Some(Outcome::Stored {
            seq: n,
            version: state.then(|| parts.get(2).and_then(int)).flatten(),
        }),
        "dup" => Some(Outcome::Duplicate { seq: n }),
        "conflict" => Some(Outcome::Conflict {
            value: parts.get(2).and_then(text),
            version: n,
        }),
        _ => None,
    }
}

/// The redeliver script's reply.
fn redelivered(v: &Value) -> Option<Redelivery> {
    let Value::Array(parts) = v else {
        return None;
    };
    let acked = int(parts.get(1)?)?;
    match text(parts.first()?)?.as_str() {
        "acked" => Some(Redelivery::Acked(acked)),
        "sent" => Some(Redelivery::Sent),
        "offline" => Some(Redelivery::Offline),
        "unacked" => Some(Redelivery::Unacked),
        _ => None,
    }
}

/// The lookup script's reply: seq, epoch, the state hash, live members.
fn looked(v: &Value) -> Option<Looked> {
    let Value::Array(parts) = v else {
        return None;
    };
    let strings = |v: &Value| -> Vec<String> {
        let Value::Array(list) = v else {
            return Vec::new();
        };
        list.iter().filter_map(text).collect()
    };
    let hash = strings(parts.get(2)?);
    let mut versions = std::collections::BTreeMap::new();
    let mut values = HashMap::new();
    for kv in hash.chunks(2) {
        match (kv[0].split_once(':'), kv.get(1)) {
            (Some(("v", key)), Some(v)) => {
                versions.insert(key.to_string(), v.parse().unwrap_or(0));
            }
            (Some(("d", key)), Some(v)) => {
                values.insert(key.to_string(), v.clone());
            }
            _ => {}
        }
    }
    let state = versions
        .into_iter()
        .map(|(key, version)| {
            let value = values.remove(&key);
            (key, value, version)
        })
        .collect();
    let members = strings(parts.get(3)?)
        .into_iter()
        .filter_map(|m| m.split_once('\n').map(|(_, uid)| uid.to_string()))
        .collect();
    Some(Looked {
        seq: int(parts.first()?)?,
        epoch: text(parts.get(1)?)?,
        state,
        members,
    })
}

/// The range script's reply: seq, epoch, entries, the oldest entry.
fn range(v: &Value) -> Option<Range> {
    let Value::Array(parts) = v else {
        return None;
    };
    let entries = |v: &Value| -> Vec<Stored> {
        let Value::Array(list) = v else {
            return Vec::new();
        };
        list.iter().filter_map(entry).collect()
    };
    Some(Range {
        seq: int(parts.first()?)?,
        epoch: text(parts.get(1)?)?,
        rows: entries(parts.get(2)?),
        oldest: entries(parts.get(3)?).first().map(|m| m.seq),
    })
}

/// One stream entry: [id "seq-0", [field, value, …]].
fn entry(v: &Value) -> Option<Stored> {
    let Value::Array(pair) = v else {
        return None;
    };
    let id = text(pair.first()?)?;
    let seq = id.split('-').next()?.parse().ok()?;
    let Value::Array(fields) = pair.get(1)? else {
        return None;
    };
    let (mut data, mut expires_ms) = (None, i64::MAX);
    for kv in fields.chunks(2) {
        match (kv.first().and_then(text).as_deref(), kv.get(1)) {
            (Some("d"), Some(v)) => data = text(v),
            (Some("e"), Some(v)) => {
                expires_ms = text(v).and_then(|t| t.parse().ok()).unwrap_or(i64::MAX)
            }
            _ => {}
        }
    }
    Some(Stored {
        seq,
        expires_ms,
        data: data?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn publish_replies_become_outcomes_in_ticket_order() {
        let asked = vec![
            Asked::Append {
                ticket: 1,
                state: false,
            },
            Asked::Append {
                ticket: 2,
                state: true,
            },
            Asked::Append {
                ticket: 3,
                state: true,
            },
            Asked::Append {
                ticket: 4,
                state: false,
            },
        ];
        let values = vec![
            Ok(Value::Array(vec![bulk("ok"), Value::Int(7), Value::Int(0)])),
            Ok(Value::Array(vec![bulk("ok"), Value::Int(8), Value::Int(3)])),
            Ok(Value::Array(vec![
                bulk("conflict"),
                Value::Int(3),
                bulk("{\"a\":1}"),
            ])),
            Ok(Value::Array(vec![bulk("dup"), Value::Int(2)])),
        ];
        let done = answers(asked, values.into_iter());
        let Some(Completion::Committed {
            upto,
            count,
            numbered,
        }) = done.first()
        else {
            panic!("{done:?}")
        };
        assert_eq!((*upto, *count), (4, 2));
        let outcomes: Vec<&Outcome> = numbered.iter().map(|n| &n.outcome).collect();
        assert_eq!(
            outcomes,
            [
                &Outcome::Stored {
                    seq: 7,
                    version: None
                },
                &Outcome::Stored {
                    seq: 8,
                    version: Some(3)
                },
                &Outcome::Conflict {
                    value: Some("{\"a\":1}".into()),
                    version: 3
                },
                &Outcome::Duplicate { seq: 2 },
            ]
        );
    }

    #[test]
    fn a_failed_pipeline_fails_each_request_alone() {
        let asked = vec![
            Asked::Append {
                ticket: 5,
                state: false,
            },
            Asked::Range { tag: 9 },
        ];
        let done = answers(asked, std::iter::repeat(Err("down".to_string())));
        assert!(matches!(&done[0], Completion::Committed { numbered, .. }
            if matches!(numbered[0].outcome, Outcome::Unavailable { .. })));
        assert!(matches!(
            &done[1],
            Completion::Range {
                tag: 9,
                result: Err(_)
            }
        ));
    }

    #[test]
    fn ranges_and_lookups_parse_and_bad_replies_are_errors() {
        let entry = |seq: &str, data: &str| {
            Value::Array(vec![
                bulk(seq),
                Value::Array(vec![bulk("d"), bulk(data), bulk("e"), bulk("99")]),
            ])
        };
        let v = Value::Array(vec![
            bulk("12"),
            bulk("ep"),
            Value::Array(vec![entry("11-0", "1"), entry("12-0", "2")]),
            Value::Array(vec![entry("3-0", "0")]),
        ]);
        let r = range(&v).unwrap();
        assert_eq!((r.seq, r.epoch.as_str(), r.oldest), (12, "ep", Some(3)));
        assert_eq!(r.rows[1].seq, 12);
        assert_eq!((r.rows[1].data.as_str(), r.rows[1].expires_ms), ("2", 99));
        let v = Value::Array(vec![
            bulk("4"),
            bulk("ep"),
            Value::Array(vec![
                bulk("v:k"),
                bulk("2"),
                bulk("d:k"),
                bulk("true"),
                bulk("v:gone"),
                bulk("3"),
            ]),
            Value::Array(vec![bulk("node-a\nalice"), bulk("node-b\nalice")]),
        ]);
        let l = looked(&v).unwrap();
        assert_eq!(
            l.state,
            vec![
                ("gone".into(), None, 3),
                ("k".into(), Some("true".into()), 2)
            ]
        );
        assert_eq!(l.members, ["alice", "alice"]);
        assert!(range(&Value::Nil).is_none() && looked(&bulk("x")).is_none());
        assert!(written(&Value::Array(vec![bulk("what"), Value::Int(1)]), false).is_none());
    }
}
