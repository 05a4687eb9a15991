//! syncd-bench: a bounded load generator for a running syncd over raw TCP.
//!
//! Subscribers join one channel; publishers send `pub` requests with a window of
//! unanswered ones; every subscriber counts what it receives and the latency
//! from publish to delivery. It stops after `--messages` or `--timeout`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "syncd-bench", about = "Load generator for syncd (raw TCP)")]
struct Args {
    /// syncd's TCP address
    #[arg(long, default_value = "127.0.0.1:2345")]
    tcp: String,
    /// Subscriber connections
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Publisher connections
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Messages to publish in all
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Bytes of padding in each message's data
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Unanswered publishes each publisher may have in flight
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Channel name prefix (a fresh one per run is best)
    #[arg(long)]
    channel: Option<String>,
    /// Spread the messages over this many channels (and so over owner workers)
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Instead of a live run: publish --messages, then time one client that
    /// resumes from `since: 0` until it has all of them replayed
    #[arg(long)]
    resume: bool,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn connect(addr: &str) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("bench-{}", now_micros()));
    let channels: Vec<String> = (0..args.channels.max(1))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    if args.resume {
        return resume(&args, &channels[0]);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(args.subscribers + 1));

    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let (mut reader, mut writer) = connect(&args.tcp)?;
        for channel in &channels {
            writeln!(writer, r#"{{"op":"sub","id":0,"channel":"{channel}"}}"#)?;
        }
        let (ready, stop, total, subs) =
            (ready.clone(), stop.clone(), args.messages, channels.len());
        subscribers.push(std::thread::spawn(move || {
            let mut line = String::new();
            for _ in 0..subs {
                let _ = reader.read_line(&mut line);
            }
            ready.wait();
            let mut latencies = Vec::with_capacity(total as usize);
            let mut last_seq: std::collections::HashMap<String, u64> =
                std::collections::HashMap::new();
            let mut gaps = 0u64;
            while (latencies.len() as u64) < total
                && !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => continue,
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["op"] != "msg" {
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap_or(0);
                let last = last_seq
                    .entry(v["channel"].as_str().unwrap_or("").to_string())
                    .or_default();
                if seq != *last + 1 {
                    gaps += 1;
                }
                *last = seq;
                let sent = v["data"]["t"].as_u64().unwrap_or(0);
                latencies.push(now_micros().saturating_sub(sent));
            }
            (latencies, gaps)
        }));
    }
    ready.wait();

    let started = Instant::now();
    let per_publisher = args.messages / args.publishers as u64;
    let extra = args.messages % args.publishers as u64;
    let pad = "x".repeat(args.size);
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let count = per_publisher + u64::from((p as u64) < extra);
        let (mut reader, writer) = connect(&args.tcp)?;
        let (channels, pad, window) = (channels.clone(), pad.clone(), args.window);
        publishers.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let mut writer = std::io::BufWriter::new(writer);
            let (mut sent, mut acked) = (0u64, 0u64);
            let mut line = String::new();
            while acked < count && Instant::now() < deadline {
                while sent < count && sent - acked < window {
                    let channel = &channels[(sent as usize + p) % channels.len()];
                    writeln!(
                        writer,
                        r#"{{"op":"pub","channel":"{channel}","data":{{"t":{},"p":"{pad}"}}}}"#,
                        now_micros()
                    )?;
                    sent += 1;
                }
                writer.flush()?;
                // Take every answer already here before sending more, so the
                // window refills in bursts rather than one message at a time.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(acked);
                    }
                    if line.contains(r#""op":"ok""#) {
                        acked += 1;
                    }
                    if !reader.buffer().contains(&b'\n') {
                        break;
                    }
                }
            }
            Ok(acked)
        }));
    }
    let mut acked = 0;
    for p in publishers {
        acked += p
            .join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut gaps = 0;
    for s in subscribers {
        let (l, g) = s
            .join()
            .map_err(|_| anyhow::anyhow!("subscriber panicked"))?;
        latencies.extend(l);
        gaps += g;
    }
    stop.store(true, Ordering::Relaxed);
    let deliver_secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    let expected = args.messages * args.subscribers as u64;
    println!(
        "published {acked}/{} in {publish_secs:.2}s: {:.0} msg/s",
        args.messages,
        acked as f64 / publish_secs
    );
    println!(
        "delivered {}/{expected} in {deliver_secs:.2}s: {:.0} msg/s, seq gaps {gaps}",
        latencies.len(),
        latencies.len() as f64 / deliver_secs
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if acked < args.messages || (latencies.len() as u64) < expected || gaps > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Publishes `--messages` to `channel`, then times a resume of all of them.
fn resume(args: &Args, channel: &str) -> anyhow::Result<()> {
    let (mut reader, mut writer) = connect(&args.tcp)?;
    let pad = "x".repeat(args.size);
    let mut line = String::new();
    writeln!(writer, r#"{{"op":"sub","id":"s","channel":"{channel}"}}"#)?;
    reader.read_line(&mut line)?;
    let epoch = serde_json::from_str::<serde_json::Value>(&line)?["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    writeln!(writer, r#"{{"op":"unsub","id":"u","channel":"{channel}"}}"#)?;
    let mut buffered = std::io::BufWriter::new(writer);
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < args.messages + 1 {
        while sent < args.messages && sent - acked < args.window {
            writeln!(
                buffered,
                r#"{{"op":"pub","channel":"{channel}","data":{{"p":"{pad}"}}}}"#
            )?;
            sent += 1;
        }
        buffered.flush()?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("server closed the connection");
        }
        acked += 1;
    }
    let (mut reader, mut writer) = connect(&args.tcp)?;
    let started = Instant::now();
    writeln!(
        writer,
        r#"{{"op":"sub","id":"r","channel":"{channel}","since":0,"epoch":"{epoch}"}}"#
    )?;
    line.clear();
    reader.read_line(&mut line)?;
    let reply: serde_json::Value = serde_json::from_str(&line)?;
    if reply["op"] != "ok" {
        anyhow::bail!("resume refused: {}", line.trim());
    }
    let mut got = 0;
    while got < args.messages {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        got += 1;
    }
    let took = started.elapsed();
    println!(
        "resumed {got}/{} missed messages in {:.1} ms (recovered: {})",
        args.messages,
        took.as_secs_f64() * 1000.0,
        reply["recovered"]
    );
    Ok(())
}
