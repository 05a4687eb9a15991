//! `resume`: publishes M messages on a fresh channel, then times one client
//! that subscribes from before them (`since`) until all M are replayed.
//! When the server cannot replay them all, the result says why, in the
//! server's words (history too short, cut off, stalled), instead of failing
//! on a socket error.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::client::{field_u64, Conn, Target, Transport};
use crate::publisher::{self, PubSpec};
use crate::stats::{ServerProc, Window};

pub struct ResumeResult {
    pub messages: u64,
    pub replayed: u64,
    pub millis: f64,
    /// The server's CPU time over the replay, in ms (with its pid): steadier
    /// than `millis` on a shared machine.
    pub server_cpu_ms: Option<f64>,
    /// Why not all `messages` were replayed; None when they were.
    pub shortfall: Option<String>,
}

impl ResumeResult {
    pub fn print(&self) {
        let cpu = self
            .server_cpu_ms
            .map(|ms| format!("; server CPU {ms:.1} ms"))
            .unwrap_or_default();
        match &self.shortfall {
            None => println!(
                "resumed {} missed messages in {:.1} ms{cpu}",
                self.replayed, self.millis
            ),
            Some(why) => println!(
                "resume incomplete: {} of {} messages replayed in {:.1} ms: {why}",
                self.replayed, self.messages, self.millis
            ),
        }
    }
}

/// Longest silence while a replay is under way before it counts as stalled.
const STALL: Duration = Duration::from_secs(10);

pub fn run(
    target: &Target,
    transport: Transport,
    channel: &str,
    messages: u64,
    size: usize,
    server: Option<ServerProc>,
) -> anyhow::Result<ResumeResult> {
    // Where the channel is before: the resume starts right after it.
    let mut first = Conn::open(target, transport)?;
    let reply = first.request(&format!(r#"{{"op":"sub","id":"s","channel":"{channel}"}}"#))?;
    let since = reply["seq"].as_u64().unwrap_or(0);
    let epoch = reply["epoch"].as_str().unwrap_or_default().to_string();
    drop(first);

    let spec = PubSpec {
        transport,
        publishers: 1,
        rate: 0.0,
        window: 256,
        duration: Duration::from_secs(600),
        count: messages,
        size,
        channels: vec![channel.to_string()],
    };
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher::start_spec(target, &spec, stop.clone())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while publishing.progress().1 < messages && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publishing.join()?;
    if published.acked < messages {
        anyhow::bail!(
            "only {} of {messages} publishes were acknowledged{}",
            published.acked,
            published
                .first_error
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }

    let mut conn = Conn::open(target, transport)?;
    let window = Window::open(server);
    let started = Instant::now();
    let reply = conn
        .request(&format!(
            r#"{{"op":"sub","id":"r","channel":"{channel}","since":{since},"epoch":"{epoch}"}}"#
        ))
        .context("resume")?;
    if reply["recovered"] == false {
        let seq = reply["seq"].as_u64().unwrap_or(0);
        let oldest = reply["oldest"].as_u64().unwrap_or(0);
        return Ok(ResumeResult {
            messages,
            replayed: 0,
            millis: started.elapsed().as_secs_f64() * 1000.0,
            server_cpu_ms: None,
            shortfall: Some(format!(
                "the server refused the replay (recovered: false): it retains seq {oldest}..={seq} only, {} of the {messages} missed; raise [storage] history_size to at least {messages}",
                (seq + 1).saturating_sub(oldest)
            )),
        });
    }
    conn.set_nonblocking()?;
    let (replayed, shortfall) = read_replay(&mut conn, since, messages)?;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let spent = window.close();
    Ok(ResumeResult {
        messages,
        replayed,
        millis,
        server_cpu_ms: spent.measured.then_some(spent.cpu_secs * 1000.0),
        shortfall,
    })
}

/// Reads `msg` frames until `messages` of them came, the connection ends, or
/// nothing comes for `STALL`.
fn read_replay(
    conn: &mut Conn,
    since: u64,
    messages: u64,
) -> anyhow::Result<(u64, Option<String>)> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&conn.fd()), Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    let (mut got, mut expected_seq, mut out_of_order) = (0u64, since + 1, None);
    let mut last_progress = Instant::now();
    loop {
        let before = got;
        let result = conn.read_ready(|frame| {
            if !frame.starts_with(br#"{"op":"msg""#) {
                return;
            }
            let seq = field_u64(frame, br#""seq":"#).unwrap_or(0);
            if seq != expected_seq && out_of_order.is_none() {
                out_of_order = Some((expected_seq, seq));
            }
            expected_seq = seq + 1;
            got += 1;
        });
        if let Some((want, seq)) = out_of_order {
            return Ok((got, Some(format!("expected seq {want}, got {seq}"))));
        }
        if got >= messages {
            return Ok((got, None));
        }
        if let Err(ended) = result {
            return Ok((
                got,
                Some(format!(
                    "{} (the send-buffer limits, [limits] send_buffer_hard/soft, cut off a replay they cannot hold)",
                    ended.0
                )),
            ));
        }
        if got > before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Ok((
                got,
                Some(format!("the replay stalled: nothing for {STALL:?}")),
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
    }
}
