//! The Redis a worker's engine and sweeps talk to: one server, or the
//! primaries of a Redis Cluster. Which one is found at connect (`INFO
//! cluster`), so `redis_url` is the same key for both: on a cluster it is
//! any node, and the slot map comes from `CLUSTER SLOTS`.
//!
//! Every command of a channel names keys with the channel's hash tag, so a
//! command goes whole to the primary of its first key's slot; a batch is one
//! pipeline per primary. A reply that says the slots moved (`MOVED`, `ASK`)
//! or the scripts are gone (`NOSCRIPT`) fails only its own command and asks
//! for a new connection, which reads the slot map and loads the scripts
//! again (`needs_reopen`).
//!
//! Pub/sub stays on one connection to `redis_url` with plain SUBSCRIBE: a
//! Redis Cluster passes every PUBLISH to every node, so any node hears all.

use redis::{Cmd, ConnectionAddr, RedisResult, Value};

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

pub struct Nodes {
    /// One connection per primary; a single server is the one primary.
    cons: Vec<redis::Connection>,
    /// (first slot, last slot, index in `cons`), sorted by first slot.
    slots: Vec<(u16, u16, usize)>,
}

impl Nodes {
    pub fn open(seed: &redis::Client) -> RedisResult<Nodes> {
        let mut con = super::connect(seed)?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut con)?;
        if !info.contains("cluster_enabled:1") {
            return Ok(Nodes {
                cons: vec![con],
                slots: vec![(0, SLOTS - 1, 0)],
            });
        }
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        let seed_info = seed.get_connection_info();
        let seed_host = match seed_info.addr() {
            ConnectionAddr::Tcp(host, _) => host.clone(),
            _ => String::new(),
        };
        let ranges = parse_slots(&reply, &seed_host).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "CLUSTER SLOTS",
                "an unreadable reply".to_string(),
            ))
        })?;
        let mut addrs: Vec<(String, u16)> = Vec::new();
        let mut slots = Vec::new();
        for (first, last, addr) in ranges {
            let index = match addrs.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    addrs.push(addr);
                    addrs.len() - 1
                }
            };
            slots.push((first, last, index));
        }
        slots.sort_unstable();
        let mut cons = Vec::with_capacity(addrs.len());
        for (host, port) in addrs {
            let info = seed_info.clone().set_addr(ConnectionAddr::Tcp(host, port));
            cons.push(super::connect(&redis::Client::open(info)?)?);
        }
        Ok(Nodes { cons, slots })
    }

    /// Loads a script on every primary; its SHA1.
    pub fn load(&mut self, source: &str) -> RedisResult<String> {
        let mut sha = String::new();
        for con in &mut self.cons {
            sha = redis::cmd("SCRIPT").arg("LOAD").arg(source).query(con)?;
        }
        Ok(sha)
    }

    /// Runs `cmds`, each on the primary of its key's slot, as one pipeline
    /// per primary; the replies come in the order of `cmds`. A command's
    /// own error is its reply (`Value::ServerError`). A primary whose
    /// connection broke fails only the commands sent to it (those sent to
    /// the others ran and keep their answers), and the first such error
    /// comes back beside the replies: the caller then reconnects.
    pub fn run_each(&mut self, cmds: Vec<Cmd>) -> (Vec<Result<Value, String>>, Option<String>) {
        let count = cmds.len();
        let mut pipes: Vec<(redis::Pipeline, Vec<usize>)> = (0..self.cons.len())
            .map(|_| (redis::pipe(), Vec::new()))
            .collect();
        for (at, cmd) in cmds.into_iter().enumerate() {
            let node = match self.cons.len() {
                1 => 0,
                _ => self.node_of(slot(route_key(&cmd))),
            };
            pipes[node].0.add_command(cmd);
            pipes[node].1.push(at);
        }
        let mut replies = vec![Ok(Value::Nil); count];
        let mut broken = None;
        for (node, (mut pipe, order)) in pipes.into_iter().enumerate() {
            if order.is_empty() {
                continue;
            }
            pipe.ignore_errors();
            let values = pipe
                .query(&mut self.cons[node])
                .map_err(|e| e.to_string())
                .and_then(|values| checked(values, order.len()));
            match values {
                Ok(values) => {
                    for (at, value) in order.into_iter().zip(values) {
                        replies[at] = Ok(value);
                    }
                }
                Err(e) => {
                    for at in order {
                        replies[at] = Err(e.clone());
                    }
                    broken.get_or_insert(e);
                }
            }
        }
        (replies, broken)
    }

    /// `run_each` for work that goes on only when every primary answered.
    pub fn run(&mut self, cmds: Vec<Cmd>) -> Result<Vec<Value>, String> {
        let (replies, broken) = self.run_each(cmds);
        match broken {
            Some(e) => Err(e),
            None => replies.into_iter().collect(),
        }
    }

    fn node_of(&self, slot: u16) -> usize {
        let at = self.slots.partition_point(|&(first, _, _)| first <= slot);
        match at.checked_sub(1).map(|i| self.slots[i]) {
            Some((_, last, node)) if slot <= last => node,
            // A slot no primary serves: any node answers CLUSTERDOWN.
            _ => 0,
        }
    }
}

/// Whether a reply says this connection is out of date: the scripts were
/// flushed, or the cluster's slots moved.
pub fn is_stale(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e)
        if matches!(e.code(), "NOSCRIPT" | "MOVED" | "ASK"))
}

fn checked(values: Vec<Value>, count: usize) -> Result<Vec<Value>, String> {
    match values.len() == count {
        true => Ok(values),
        false => Err(format!("{} replies to {count} commands", values.len())),
    }
}

/// The key that places a command: the first of `EVALSHA`'s keys, else its
/// first argument.
fn route_key(cmd: &Cmd) -> &[u8] {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .take(4)
        .map(|a| match a {
            redis::Arg::Simple(bytes) => bytes,
            _ => b"",
        })
        .collect();
    let name = args.first().copied().unwrap_or_default();
    let at = match name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        true => 3,
        false => 1,
    };
    args.get(at).copied().unwrap_or_default()
}

/// A key's slot: CRC16 of its hash tag (the first `{…}` that is not empty),
/// else of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let len = rest.iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &rest[..len])
    });
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM), as Redis Cluster hashes keys.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc
}

/// A range of slots and the primary that serves it: (first, last, (host,
/// port)).
type SlotRange = (u16, u16, (String, u16));

/// `CLUSTER SLOTS`: one `SlotRange` per range. A primary announced without a
/// host is on the seed's.
fn parse_slots(reply: &Value, seed_host: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let number = |v: &Value| match v {
            Value::Int(n) => u16::try_from(*n).ok(),
            _ => None,
        };
        let first = number(parts.first()?)?;
        let last = number(parts.get(1)?)?;
        let Value::Array(primary) = parts.get(2)? else {
            return None;
        };
        let host = match primary.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let host = match host.as_str() {
            "" | "?" => seed_host.to_string(),
            _ => host,
        };
        let port = number(primary.get(1)?)?;
        out.push((first, last, (host, port)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"syncd:{news}:seq"), slot(b"news"));
        assert_eq!(slot(b"syncd:{news}:log"), slot(b"syncd:{news}:msgs"));
        assert_eq!(
            slot(b"a{}b"),
            crc16(b"a{}b") % SLOTS,
            "an empty tag is no tag"
        );
        assert_eq!(slot(b"a{b"), crc16(b"a{b") % SLOTS);
    }

    #[test]
    fn commands_are_placed_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("sha")
            .arg(2)
            .arg("syncd:{x}:seq")
            .arg("syncd:{x}:log");
        assert_eq!(route_key(&eval), b"syncd:{x}:seq");
        let mut zadd = redis::cmd("ZADD");
        zadd.arg("syncd:{x}:presence").arg(1).arg("m");
        assert_eq!(route_key(&zadd), b"syncd:{x}:presence");
        assert_eq!(route_key(&redis::cmd("PING")), b"");
    }

    #[test]
    fn cluster_slots_replies_are_read_and_bad_ones_refused() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let parsed = parse_slots(&reply, "seed").unwrap();
        assert_eq!(parsed[0], (0, 5460, ("10.0.0.1".to_string(), 7000)));
        assert_eq!(parsed[1], (5461, 16383, ("seed".to_string(), 7001)));
        assert!(parse_slots(&Value::Int(1), "seed").is_none());
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert!(parse_slots(&bad, "seed").is_none());
        let big = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99999),
            node("h", 1),
        ])]);
        assert!(parse_slots(&big, "seed").is_none());
    }
}
