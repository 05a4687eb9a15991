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
