//! Subscribers: WebSocket or TCP connections that resume with `since` and
//! `epoch` whenever they lose their connection, and check every seq.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Shared;
use crate::common::Ws;

pub enum Event {
    Frame(Value),
    Idle,
    Closed(String),
}

/// One subscriber connection, WebSocket or TCP, that tells a quiet moment
/// from a closed connection (the common clients do not).
pub enum Conn {
    Tcp {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
        partial: String,
    },
    Ws(Box<Ws>),
}

impl Conn {
    pub fn open(ws: bool, shared: &Shared) -> Result<Conn, String> {
        let port = if ws {
            shared.addr.port()
        } else {
            shared.tcp_port
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(5))))
            .map_err(|e| e.to_string())?;
        if ws {
            let url = format!("ws://127.0.0.1:{port}/ws");
            let (ws, _) = tungstenite::client(url, s).map_err(|e| format!("ws handshake: {e}"))?;
            ws.get_ref()
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            Ok(Conn::Ws(Box::new(ws)))
        } else {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            Ok(Conn::Tcp {
                writer: s.try_clone().map_err(|e| e.to_string())?,
                reader: BufReader::new(s),
                partial: String::new(),
            })
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Conn::Tcp { writer, .. } => writer.local_addr().ok(),
            Conn::Ws(ws) => ws.get_ref().local_addr().ok(),
        }
    }

    pub fn send(&mut self, frame: &Value) -> Result<(), String> {
        match self {
            Conn::Tcp { writer, .. } => writer
                .write_all(format!("{frame}\n").as_bytes())
                .map_err(|e| e.to_string()),
            Conn::Ws(ws) => ws
                .send(tungstenite::Message::text(frame.to_string()))
                .map_err(|e| e.to_string()),
        }
    }

    pub fn next(&mut self) -> Event {
        let quiet = |k: std::io::ErrorKind| {
            k == std::io::ErrorKind::WouldBlock || k == std::io::ErrorKind::TimedOut
        };
        let parse = |text: &str| match serde_json::from_str(text) {
            Ok(v) => Event::Frame(v),
            Err(e) => Event::Closed(format!("bad frame {text:?}: {e}")),
        };
        match self {
            Conn::Tcp {
                reader, partial, ..
            } => loop {
                // A timeout may leave half a line in `partial`; the next
                // read appends the rest.
                match reader.read_line(partial) {
                    Ok(0) => return Event::Closed("eof".into()),
                    Ok(_) if partial.ends_with('\n') => {
                        let event = parse(partial.trim_end());
                        partial.clear();
                        return event;
                    }
                    Ok(_) => continue,
                    Err(e) if quiet(e.kind()) => return Event::Idle,
                    Err(e) => return Event::Closed(e.to_string()),
                }
            },
            Conn::Ws(ws) => loop {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => return parse(&t),
                    Ok(tungstenite::Message::Close(f)) => {
                        return Event::Closed(format!("close {:?}", f.map(|f| u16::from(f.code))))
                    }
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e)) if quiet(e.kind()) => {
                        // Pongs tungstenite queued go out now.
                        let _ = ws.flush();
                        return Event::Idle;
                    }
                    Err(e) => return Event::Closed(e.to_string()),
                }
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum SubState {
    /// Send a `sub` at this moment.
    Due(Instant),
    /// A `sub` is on its way; its id.
    Waiting(u64),
    Subscribed,
    /// Only with gap repair: an `unsub` is on its way (its id), after which
    /// the channel is subscribed again from the last seq received.
    Repairing(u64),
}

pub struct SubscriberReport {
    pub name: String,
    /// Per channel: (seq, payload key) in the order received.
    pub received: Vec<Vec<(u64, String)>>,
    pub connects: u64,
    pub closes: BTreeMap<String, u64>,
    pub unavailable: u64,
    pub resumes: u64,
    /// Messages replayed by resumes (seq ≤ the resume reply's seq).
    pub replayed: u64,
    /// Gaps on a live subscription (the server bug), each repaired by
    /// resubscribing when `Shared::repair` is on.
    pub live_gaps: Vec<String>,
    /// Seqs those gaps skipped.
    pub live_missed: u64,
    pub failures: Vec<String>,
}

pub struct Progress {
    /// Per subscriber, per channel: the last seq received.
    pub last: Vec<Vec<AtomicU64>>,
    /// Subscribers whose first subscriptions are all answered.
    pub ready: AtomicUsize,
}

pub fn subscriber(
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    i: usize,
    ws: bool,
) -> SubscriberReport {
    let name = format!("{}{}", if ws { "ws" } else { "tcp" }, i);
    let n = shared.channels.len();
    let index: HashMap<&str, usize> = shared
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut report = SubscriberReport {
        name: name.clone(),
        received: vec![Vec::new(); n],
        connects: 0,
        closes: BTreeMap::new(),
        unavailable: 0,
        resumes: 0,
        replayed: 0,
        live_gaps: Vec::new(),
        live_missed: 0,
        failures: Vec::new(),
    };
    let mut epochs: Vec<Option<String>> = vec![None; n];
    let mut last = vec![0u64; n];
    // Each channel's last frames (ok or msg, seq, local port), shown with a
    // failure: which connection got what, around it.
    let mut recent: Vec<VecDeque<(&str, u64, u16)>> = vec![VecDeque::new(); n];
    // A resume's reply seq: messages up to it are the replay.
    let mut replay_upto = vec![0u64; n];
    let mut state = vec![SubState::Due(Instant::now()); n];
    let mut next_id = 0u64;
    let mut conn: Option<Conn> = None;
    let mut reconnect_backoff = Duration::from_millis(5);
    let mut ready = false;
    let fail = |report: &mut SubscriberReport, text: String| {
        shared.event(format!("{name}: FAILURE {text}"));
        report.failures.push(text);
    };
    while !shared.stop_subscribers.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            match Conn::open(ws, &shared) {
                Ok(c) => {
                    report.connects += 1;
                    reconnect_backoff = Duration::from_millis(5);
                    state = vec![SubState::Due(Instant::now()); n];
                    conn = Some(c);
                }
                Err(why) => {
                    *report.closes.entry(format!("open: {why}")).or_default() += 1;
                    // Reconnect backoff: the client's workload, not a wait.
                    std::thread::sleep(reconnect_backoff);
                    reconnect_backoff = (reconnect_backoff * 2).min(Duration::from_millis(200));
                }
            }
            continue;
        };
        let now = Instant::now();
        let mut lost: Option<String> = None;
        for ch in 0..n {
            if let SubState::Due(at) = state[ch] {
                if at > now {
                    continue;
                }
                next_id += 1;
                let mut frame = json!({"op":"sub","id":next_id,"channel":shared.channels[ch]});
                if let Some(epoch) = &epochs[ch] {
                    frame["since"] = json!(last[ch]);
                    frame["epoch"] = json!(epoch);
                }
                if let Err(e) = c.send(&frame) {
                    lost = Some(format!("send: {e}"));
                    break;
                }
                state[ch] = SubState::Waiting(next_id);
            }
        }
        let event = match lost {
            Some(why) => Event::Closed(why),
            None => c.next(),
        };
        match event {
            Event::Idle => {}
            Event::Closed(why) => {
                let why = why.split(':').next().unwrap_or_default().to_string();
                *report.closes.entry(why).or_default() += 1;
                conn = None;
            }
            Event::Frame(v) => match v["op"].as_str().unwrap_or_default() {
                "msg" => {
                    let Some(&ch) = v["channel"].as_str().and_then(|c| index.get(c)) else {
                        fail(&mut report, format!("msg on an unknown channel: {v}"));
                        continue;
                    };
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let key = v["data"]["k"].as_str().unwrap_or("?").to_string();
                    if let SubState::Repairing(_) = state[ch] {
                        // Until the unsub is answered; the resume replays it.
                        continue;
                    }
                    if state[ch] != SubState::Subscribed {
                        fail(
                            &mut report,
                            format!("msg before the sub reply ({:?}): {v}", state[ch]),
                        );
                    }
                    note_recent(&mut recent[ch], ("msg", seq, port_of(c)));
                    let in_replay = seq <= replay_upto[ch];
                    if seq > last[ch] + 1 && !in_replay {
                        // A live subscription skipped seqs: nothing closed,
                        // no `recovered: false`, the messages are stored.
                        let gap = format!(
                            "{}: live gap, expected seq {} got {seq} on {:?}",
                            shared.channels[ch],
                            last[ch] + 1,
                            c.local_addr()
                        );
                        shared.event(format!("{name}: {gap}"));
                        report.live_missed += seq - last[ch] - 1;
                        report.live_gaps.push(gap.clone());
                        if shared.repair {
                            next_id += 1;
                            let unsub =
                                json!({"op":"unsub","id":next_id,"channel":shared.channels[ch]});
                            if c.send(&unsub).is_ok() {
                                state[ch] = SubState::Repairing(next_id);
                            }
                            continue;
                        }
                        fail(&mut report, gap);
                    } else if seq != last[ch] + 1 {
                        fail(
                            &mut report,
                            format!(
                                "{}: expected seq {} got {seq} ({}{}) on {:?}; last frames {:?}",
                                shared.channels[ch],
                                last[ch] + 1,
                                if seq <= last[ch] { "duplicate" } else { "gap" },
                                if in_replay {
                                    " in a resume's replay"
                                } else {
                                    ""
                                },
                                c.local_addr(),
                                recent[ch]
                            ),
                        );
                    }
                    if seq <= replay_upto[ch] {
                        report.replayed += 1;
                    }
                    last[ch] = seq;
                    progress.last[i][ch].store(seq, Ordering::SeqCst);
                    report.received[ch].push((seq, key));
                }
                "ok" => {
                    let id = v["id"].as_u64();
                    let repaired =
                        (0..n).find(|&ch| Some(state[ch]) == id.map(SubState::Repairing));
                    if let Some(ch) = repaired {
                        // Unsubscribed: resume from the last seq received.
                        state[ch] = SubState::Due(Instant::now());
                        continue;
                    }
                    let Some(ch) = (0..n).find(|&ch| Some(state[ch]) == id.map(SubState::Waiting))
                    else {
                        fail(&mut report, format!("an ok nobody waits for: {v}"));
                        continue;
                    };
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                    note_recent(&mut recent[ch], ("ok", seq, port_of(c)));
                    match &epochs[ch] {
                        None => {
                            // The first subscription, before any publish.
                            if seq != 0 || v.get("recovered").is_some() {
                                fail(&mut report, format!("first sub: {v}"));
                            }
                            epochs[ch] = Some(epoch);
                        }
                        Some(known) => {
                            report.resumes += 1;
                            if v["recovered"] != true || &epoch != known || seq < last[ch] {
                                fail(
                                    &mut report,
                                    format!("resume since {} not recovered: {v}", last[ch]),
                                );
                            }
                            replay_upto[ch] = seq;
                        }
                    }
                    state[ch] = SubState::Subscribed;
                    if !ready && state.iter().all(|s| *s == SubState::Subscribed) {
                        ready = true;
                        progress.ready.fetch_add(1, Ordering::SeqCst);
                    }
                }
                "error" => {
                    let id = v["id"].as_u64();
                    let waiting = (0..n).find(|&ch| Some(state[ch]) == id.map(SubState::Waiting));
                    match waiting {
                        Some(ch) if v["code"] == "unavailable" => {
                            // The channel's owner is restarting: ask again.
                            report.unavailable += 1;
                            state[ch] = SubState::Due(Instant::now() + Duration::from_millis(20));
                        }
                        _ => {
                            let code = v["code"].as_str().unwrap_or_default().to_string();
                            if code == "slow_consumer" {
                                fail(&mut report, format!("cut off: {v}"));
                            } else {
                                fail(&mut report, format!("error: {v}"));
                            }
                        }
                    }
                }
                // A `bye` (reload or shutdown) comes just before the close.
                "bye" => {
                    let code = v["code"].as_str().unwrap_or_default();
                    *report.closes.entry(format!("bye {code}")).or_default() += 1;
                }
                _ => fail(&mut report, format!("unexpected frame {v}")),
            },
        }
    }
    report
}

/// Keeps a channel's last 12 frames for a failure's message.
pub fn note_recent<'a>(recent: &mut VecDeque<(&'a str, u64, u16)>, frame: (&'a str, u64, u16)) {
    if recent.len() == 12 {
        recent.pop_front();
    }
    recent.push_back(frame);
}

/// A connection's local port, to tell a client's connections apart.
pub fn port_of(c: &Conn) -> u16 {
    c.local_addr().map_or(0, |a| a.port())
}
