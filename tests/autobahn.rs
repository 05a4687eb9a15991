//! RFC 6455 conformance: Autobahn|Testsuite's fuzzingclient against `/echo`,
//! cases 1.* to 7.*, 9.* and 10.*, must report 0 failed.
//!
//! The suite is installed from PyPI by `../shared/tools/autobahn/setup.sh`
//! (override the folder with `SYNCD_AUTOBAHN_TOOLS`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

fn tools() -> PathBuf {
    std::env::var_os("SYNCD_AUTOBAHN_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/autobahn")
        })
}

#[test]
fn autobahn_fuzzingclient_reports_no_failed_case() {
    let tools = tools();
    assert!(
        tools.join("run.sh").exists(),
        "Autobahn scripts not found in {}; set SYNCD_AUTOBAHN_TOOLS",
        tools.display()
    );
    common::run_setup(&tools.join("setup.sh"));
    let server = Server::start(
        2,
        "[limits]\nmax_frame = \"20MiB\"\nmax_send_buffer = \"64MiB\"\n[debug]\necho = true\n",
    );
    let reports = server.path("autobahn");
    let out = Command::new("bash")
        .arg(tools.join("run.sh"))
        .arg(format!("ws://127.0.0.1:{}/echo", server.ws_port))
        .env("OUTDIR", &reports)
        .output()
        .expect("run run.sh");
    let summary = common::output_text(&out);
    println!("{summary}");
    assert!(out.status.success(), "Autobahn found failures:\n{summary}");
    assert!(summary.contains(" 0 failed"), "{summary}");
    assert_eq!(server.restarts(), 0);
}
