//! `compare`: every scenario against syncd and each baseline, one after the
//! other, each on fresh server processes, then one table of ratios.
//! fanout, saturate and idle run on every server over WebSocket; durable and
//! resume are syncd's own (the baselines keep nothing). The floor
//! (bench/floor) is not a rival: it is the least a broadcast server can do,
//! so floor/bun shows how much of a figure is the kernel's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::{now_micros, Transport};
use crate::load::{self, LoadSpec};
use crate::publisher::PubSpec;
use crate::servers::{self, Kind, Running, SyncdConfig};
use crate::{durable, idle, resume};

#[derive(Args, Debug, Clone)]
pub struct DurableArgs {
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Unanswered publishes each publisher may have
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Seconds of publishing
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Channels the publishes are spread over
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

impl DurableArgs {
    pub fn spec(&self, channels: usize) -> PubSpec {
        let prefix = format!("bench-durable-{}", now_micros());
        PubSpec {
            transport: self.transport,
            publishers: self.publishers,
            rate: 0.0,
            window: self.window,
            duration: Duration::from_secs_f64(self.duration),
            count: 0,
            size: self.size,
            channels: (0..channels.max(1))
                .map(|i| format!("{prefix}-{i}"))
                .collect(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Scenarios to run, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,saturate,idle,durable,resume"
    )]
    pub only: Vec<String>,
    /// Servers to run fanout, saturate and idle against, comma-separated
    /// (the floor runs in fanout and idle only)
    #[arg(long, value_delimiter = ',', default_value = "syncd,bun,tokio,floor")]
    pub servers: Vec<String>,
    /// The syncd binary (default: the one beside this binary)
    #[arg(long)]
    pub syncd_bin: Option<PathBuf>,
    /// syncd's worker processes (default: its own, one per CPU)
    #[arg(long)]
    pub workers: Option<usize>,
    /// syncd's `[delivery] write_delay` ("0ms", its default, writes each
    /// live message at once)
    #[arg(long, default_value = "0ms")]
    pub write_delay: String,
    /// Seconds of publishing in fanout and saturate
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1000)]
    pub fanout_subscribers: usize,
    /// Publishes/s in fanout
    #[arg(long, default_value_t = 200.0)]
    pub fanout_rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub saturate_subscribers: usize,
    /// Publishes/s offered in saturate
    #[arg(long, default_value_t = 5000.0)]
    pub saturate_rate: f64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Threads reading the subscribers
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 2000)]
    pub idle_connections: usize,
    /// Publishers in `durable` (over TCP)
    #[arg(long, default_value_t = 4)]
    pub durable_publishers: usize,
    /// Unanswered publishes each durable publisher may have
    #[arg(long, default_value_t = 256)]
    pub durable_window: u64,
    /// Seconds of publishing in each durable run
    #[arg(long, default_value_t = 3.0)]
    pub durable_duration: f64,
    /// Channels of the many-channel durable runs
    #[arg(long, default_value_t = 8)]
    pub durable_channels: usize,
    /// Durability modes for `durable`, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "memory,commit,fsync")]
    pub modes: Vec<String>,
    #[arg(long, default_value_t = 100_000)]
    pub resume_messages: u64,
    /// syncd's [storage] history_size in `resume` (default: the message
    /// count; 1000 is syncd's own default)
    #[arg(long)]
    pub resume_history_size: Option<u64>,
    /// Runs of the whole set, each server fresh in each; the table then
    /// gives each figure's median and each run's ratios (single runs on a
    /// shared machine move by ±30%)
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// One row: a figure for each server (None: not run, or failed).
struct Row {
    scenario: String,
    metric: String,
    better: &'static str,
    values: [Option<f64>; 4],
    note: String,
    /// RATIOS over several rounds; None: from `values`.
    ratios: [Option<f64>; 3],
}

const KINDS: [Kind; 4] = [Kind::Syncd, Kind::Bun, Kind::Tokio, Kind::Floor];

/// The ratios in the table: (slot over slot, as named).
const RATIOS: [(usize, usize, &str); 3] = [
    (0, 1, "syncd/bun"),
    (0, 2, "syncd/tokio"),
    (3, 1, "floor/bun"),
];

fn slot(kind: Kind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let rounds = args.rounds.max(1);
    let mut runs = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("=== round {round} of {rounds}");
        }
        runs.push(run_round(args));
    }
    print_table(&merge(runs));
    eprintln!("compare took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every scenario once, each server fresh: one row per figure.
fn run_round(args: &CompareArgs) -> Vec<Row> {
    let syncd_bin = args
        .syncd_bin
        .clone()
        .unwrap_or_else(servers::default_syncd_bin);
    let kinds: Vec<Kind> = KINDS
        .into_iter()
        .filter(|k| args.servers.iter().any(|s| s == k.name()))
        .collect();
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let base_config = SyncdConfig {
        workers: args.workers,
        write_delay: args.write_delay.clone(),
        ..SyncdConfig::default()
    };
    let mut rows: Vec<Row> = Vec::new();

    for (scenario, subs, rate, window) in [
        ("fanout", args.fanout_subscribers, args.fanout_rate, 100_000),
        (
            "saturate",
            args.saturate_subscribers,
            args.saturate_rate,
            1_000_000,
        ),
    ] {
        if !wants(scenario) {
            continue;
        }
        let mut figures: Vec<Row> = Vec::new();
        for &kind in &kinds {
            // The floor makes one write a delivery by design; past capacity
            // that is no floor, only a server that falls behind.
            if kind == Kind::Floor && scenario == "saturate" {
                continue;
            }
            eprintln!(
                "== {scenario}: {} ({subs} subscribers, {rate} msg/s)",
                kind.name()
            );
            let spec = LoadSpec {
                transport: Transport::Ws,
                subscribers: subs,
                publishers: 1,
                rate,
                window,
                duration: Duration::from_secs_f64(args.duration),
                size: args.size,
                channel: format!("bench-{scenario}-{}", now_micros()),
                threads: args.threads,
                drain: Duration::from_secs(15),
                publish_to: None,
            };
            let outcome = Running::start(kind, &syncd_bin, &base_config)
                .and_then(|server| load::run(&server.target, &spec, Some(server.proc())));
            let r = match outcome {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("   {} failed: {e:#}", kind.name());
                    continue;
                }
            };
            r.print();
            let acked_pct = 100.0 * r.published.acked as f64 / r.published.sent.max(1) as f64;
            let mut put = |metric: &str, better: &'static str, v: f64| {
                let row = match figures.iter_mut().find(|row| row.metric == metric) {
                    Some(row) => row,
                    None => {
                        figures.push(Row {
                            scenario: scenario.to_string(),
                            metric: metric.to_string(),
                            better,
                            values: [None; 4],
                            note: String::new(),
                            ratios: [None; 3],
                        });
                        figures.last_mut().expect("just pushed")
                    }
                };
                row.values[slot(kind)] = Some(v);
            };
            put("server CPU us/delivery", "lower", r.cpu_us_per_delivery());
            put("server CPU in kernel %", "-", 100.0 * r.spent.kernel_share);
            put("delivered/s", "higher", r.delivered_per_sec());
            put("lost", "lower", r.lost as f64);
            put("undelivered at drain limit", "lower", r.late as f64);
            put("cut off", "lower", r.cut_off as f64);
            put("publishes acked %", "higher", acked_pct);
            put("pub->delivery p50 ms", "lower", r.e2e.ms(0.5));
            put("pub->delivery p99 ms", "lower", r.e2e.ms(0.99));
            put("pub->delivery p999 ms", "lower", r.e2e.ms(0.999));
            put("pub->delivery max ms", "lower", r.e2e.max_ms());
            put("pub->ack p99 ms", "lower", r.published.ack.ms(0.99));
            put(
                "server RSS MiB at end",
                "lower",
                r.spent.rss_end as f64 / 1048576.0,
            );
        }
        rows.extend(figures);
    }

    if wants("idle") {
        let n = args.idle_connections;
        let mut runs: Vec<(Kind, Transport)> = kinds.iter().map(|&k| (k, Transport::Ws)).collect();
        if kinds.contains(&Kind::Syncd) {
            runs.push((Kind::Syncd, Transport::Tcp));
        }
        let mut figures = [
            ("RSS KiB/conn", [None; 4], [None; 4]),
            ("CPU us/connect", [None; 4], [None; 4]),
            ("CPU us/close", [None; 4], [None; 4]),
        ];
        for (kind, transport) in runs {
            eprintln!(
                "== idle: {} {} ({n} connections)",
                kind.name(),
                transport.name()
            );
            let outcome = Running::start(kind, &syncd_bin, &base_config)
                .and_then(|server| idle::run(&server.target, transport, n, Some(server.proc())));
            match outcome {
                Ok(r) => {
                    r.print();
                    let values = [
                        r.rss_per_conn / 1024.0,
                        r.cpu_us_per_connect,
                        r.cpu_us_per_close,
                    ];
                    for (f, v) in figures.iter_mut().zip(values) {
                        match transport {
                            Transport::Ws => f.1[slot(kind)] = Some(v),
                            Transport::Tcp => f.2[0] = Some(v),
                        }
                    }
                }
                Err(e) => eprintln!("   {} failed: {e:#}", kind.name()),
            }
        }
        for (metric, ws, tcp) in figures {
            rows.push(Row {
                scenario: format!("idle ws ({n})"),
                metric: metric.into(),
                better: "lower",
                values: ws,
                note: String::new(),
                ratios: [None; 3],
            });
            if tcp[0].is_some() {
                rows.push(Row {
                    scenario: format!("idle tcp ({n})"),
                    metric: metric.into(),
                    better: "lower",
                    values: tcp,
                    note: "syncd only".into(),
                    ratios: [None; 3],
                });
            }
        }
    }

    if wants("durable") {
        let d = &DurableArgs {
            transport: Transport::Tcp,
            publishers: args.durable_publishers,
            window: args.durable_window,
            duration: args.durable_duration,
            channels: args.durable_channels,
            size: args.size,
        };
        for mode in &args.modes {
            let config = SyncdConfig {
                durability: mode.clone(),
                ..base_config.clone()
            };
            for channels in [1, d.channels] {
                eprintln!(
                    "== durable: syncd {mode}, {channels} channel(s), {} publishers, window {}",
                    d.publishers, d.window
                );
                let spec = d.spec(channels);
                let outcome = Running::start_syncd(&syncd_bin, &config)
                    .and_then(|server| durable::run(&server.target, &spec, Some(server.proc())));
                let scenario = format!("durable {mode}, {channels} ch");
                match outcome {
                    Ok(r) => {
                        r.print(mode);
                        rows.push(syncd_row(
                            &scenario,
                            "publishes/s",
                            "higher",
                            r.per_sec(),
                            "",
                        ));
                        rows.push(syncd_row(
                            &scenario,
                            "pub->ack p99 ms",
                            "lower",
                            r.published.ack.ms(0.99),
                            "",
                        ));
                    }
                    Err(e) => eprintln!("   durable {mode} failed: {e:#}"),
                }
            }
        }
    }

    if wants("resume") {
        let m = args.resume_messages;
        let history_size = args.resume_history_size.unwrap_or(m);
        eprintln!("== resume: syncd, {m} messages (history_size {history_size})");
        let config = SyncdConfig {
            history_size,
            ..base_config.clone()
        };
        let channel = format!("bench-resume-{}", now_micros());
        let outcome = Running::start_syncd(&syncd_bin, &config).and_then(|server| {
            let proc = Some(server.proc());
            resume::run(&server.target, Transport::Tcp, &channel, m, args.size, proc)
        });
        match outcome {
            Ok(r) => {
                r.print();
                let note = r.shortfall.clone().unwrap_or_default();
                rows.push(syncd_row(
                    &format!("resume {m}"),
                    "replay ms",
                    "lower",
                    r.millis,
                    &note,
                ));
                if let Some(cpu) = r.server_cpu_ms {
                    rows.push(syncd_row(
                        &format!("resume {m}"),
                        "server CPU ms",
                        "lower",
                        cpu,
                        "",
                    ));
                }
            }
            Err(e) => eprintln!("   resume failed: {e:#}"),
        }
    }

    rows
}

/// One row per figure from several rounds: each server's median, the
/// median of the rounds' ratios (each measured side by side in its
/// round), and with more than one round, those ratios in the note.
fn merge(mut runs: Vec<Vec<Row>>) -> Vec<Row> {
    if runs.len() == 1 {
        return runs.pop().unwrap_or_default();
    }
    let mut merged: Vec<Row> = Vec::new();
    for row in runs.iter().flatten() {
        if merged
            .iter()
            .any(|m| m.scenario == row.scenario && m.metric == row.metric)
        {
            continue;
        }
        let same: Vec<&Row> = runs
            .iter()
            .flatten()
            .filter(|r| r.scenario == row.scenario && r.metric == row.metric)
            .collect();
        let values = [0, 1, 2, 3].map(|i| median(same.iter().filter_map(|r| r.values[i])));
        // Each round's ratios.
        let by_round = RATIOS.map(|(over, under, _)| -> Vec<f64> {
            same.iter()
                .filter_map(|r| match (r.values[over], r.values[under]) {
                    (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                    _ => None,
                })
                .collect()
        });
        let listed = |each: Vec<f64>, fmt: fn(f64) -> String| -> String {
            each.into_iter().map(fmt).collect::<Vec<_>>().join(" ")
        };
        let mut note = row.note.clone();
        for (each, (_, _, name)) in by_round.iter().zip(RATIOS) {
            if !each.is_empty() && row.better != "-" {
                let each = listed(each.clone(), |r| format!("{r:.2}"));
                note = format!("{note} {name} by round: {each}");
            }
        }
        if by_round.iter().all(Vec::is_empty) {
            let each = listed(same.iter().filter_map(|r| r.values[0]).collect(), |v| {
                fmt_value(Some(v))
            });
            note = match note.is_empty() {
                true => format!("by round: {each}"),
                false => format!("{note}; by round: {each}"),
            };
        }
        merged.push(Row {
            scenario: row.scenario.clone(),
            metric: row.metric.clone(),
            better: row.better,
            values,
            note: note.trim().to_string(),
            ratios: by_round.map(|each| median(each.into_iter())),
        });
    }
    merged
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn syncd_row(scenario: &str, metric: &str, better: &'static str, v: f64, note: &str) -> Row {
    Row {
        scenario: scenario.to_string(),
        metric: metric.to_string(),
        better,
        values: [Some(v), None, None, None],
        note: if note.is_empty() {
            "syncd only".into()
        } else {
            note.into()
        },
        ratios: [None; 3],
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `merged`: the median of several rounds' ratios, if there were rounds.
fn ratio(merged: Option<f64>, a: Option<f64>, b: Option<f64>) -> String {
    if let Some(r) = merged {
        return format!("{r:.2}");
    }
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        (Some(a), Some(b)) if a == 0.0 && b == 0.0 => "=".into(),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    let names = RATIOS.map(|(_, _, name)| name).join(" | ");
    println!("| scenario | figure | better | syncd | bun | tokio | floor | {names} | note |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let values = r.values.map(fmt_value).join(" | ");
        // A row that is neither better higher nor lower gets no ratios.
        let ratios: Vec<String> = RATIOS
            .iter()
            .zip(r.ratios)
            .map(|(&(over, under, _), merged)| match r.better {
                "-" => "-".into(),
                _ => ratio(merged, r.values[over], r.values[under]),
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            r.better,
            values,
            ratios.join(" | "),
            r.note
        );
    }
}
