//! syncd-bench's `fanout` scenario runs against a real syncd and reports
//! deliveries with nothing lost. No timing is asserted: only that it
//! completes and counts.

mod common;

use std::process::Command;

use common::{output_text, Server};

#[test]
fn fanout_completes_with_deliveries_and_nothing_lost() {
    let server = Server::start(2, "[limits]\npublish_rate = 0\n");
    for transport in ["ws", "tcp"] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd-bench"))
            .args(["fanout", "--transport", transport])
            .args(["--ws", &format!("127.0.0.1:{}", server.ws_port)])
            .args(["--tcp", &format!("127.0.0.1:{}", server.tcp_port)])
            .args(["--server-pid", &server.master_pid().to_string()])
            .args(["--subscribers", "4", "--rate", "50", "--duration", "1"])
            .output()
            .expect("run syncd-bench");
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "{transport}: syncd-bench failed:\n{text}"
        );
        let delivered: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("delivered "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{transport}: no delivered line:\n{text}"));
        assert!(delivered > 0, "{transport}: nothing delivered:\n{text}");
        assert!(
            text.contains("lost 0,"),
            "{transport}: messages lost:\n{text}"
        );
        assert!(
            text.contains("server CPU per delivery"),
            "{transport}: no server figures:\n{text}"
        );
    }
}

/// `compare` starts syncd and the floor (bench/floor, built by cargo on
/// first use) itself and prints one table with both, and floor/bun as "-"
/// where bun was not run. Counts only; no timing is asserted.
#[test]
fn compare_runs_syncd_and_the_floor_side_by_side() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncd-bench"))
        .args(["compare", "--only", "fanout", "--servers", "syncd,floor"])
        .args(["--duration", "1", "--fanout-subscribers", "20"])
        .args(["--fanout-rate", "50", "--threads", "1"])
        .output()
        .expect("run syncd-bench compare");
    let text = output_text(&out);
    assert!(out.status.success(), "compare failed:\n{text}");
    let row = |metric: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| fanout | {metric} |")))
            .unwrap_or_else(|| panic!("no {metric} row:\n{text}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    // Columns: "", scenario, figure, better, syncd, bun, tokio, floor, ...
    let delivered = row("delivered/s");
    for (name, cell) in [("syncd", &delivered[4]), ("floor", &delivered[7])] {
        let v: f64 = cell
            .parse()
            .unwrap_or_else(|_| panic!("{name} delivered nothing:\n{text}"));
        assert!(v > 0.0, "{name} delivered nothing:\n{text}");
    }
    let lost = row("lost");
    assert_eq!((&lost[4][..], &lost[7][..]), ("0", "0"), "lost:\n{text}");
    assert_eq!(lost[5], "-", "bun was not run:\n{text}");
    assert!(
        text.contains("| syncd/bun | syncd/tokio | floor/bun |"),
        "table header:\n{text}"
    );
}
