//! RFC 6455 conformance: Autobahn|Testsuite's fuzzingclient against `/echo`,
//! cases 1.* to 7.*, 9.* and 10.*, must report 0 failed.
//!
//! `scripts/setup-tests.sh` installs wstest into `.cache/autobahn` on first
//! run; `scripts/autobahn-run.sh` drives it and summarises the report.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn autobahn_fuzzingclient_reports_no_failed_case() {
    common::setup_test_tools();
    let server = Server::start(
        2,
        "[limits]\nmax_frame = \"20MiB\"\nsend_buffer_hard = \"64MiB\"\n[debug]\necho = true\n",
    );
    let out = Command::new("bash")
        .arg(common::repo_path("scripts/autobahn-run.sh"))
        .arg(format!("ws://127.0.0.1:{}/echo", server.ws_port))
        .arg(server.path("autobahn"))
        .output()
        .expect("run scripts/autobahn-run.sh");
    let summary = common::output_text(&out);
    println!("{summary}");
    assert!(out.status.success(), "Autobahn found failures:\n{summary}");
    assert!(summary.contains(" 0 failed"), "{summary}");
    assert_eq!(server.restarts(), 0);
}
