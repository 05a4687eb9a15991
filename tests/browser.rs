//! The demos in real Chromium: two pages racing for a seat, pages surviving a
//! `kill -9` of every worker, and chat between pages. Driven by
//! `tests/browser/run.mjs` (playwright-core); `scripts/setup-tests.sh`
//! installs Debian's chromium and playwright-core when missing.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn demos_work_in_chromium() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    common::setup_test_tools();
    let server = Server::start(2, "");
    let mut run = Command::new("node");
    run.arg(format!("{dir}/run.mjs"))
        .arg(format!("http://127.0.0.1:{}", server.ws_port))
        .arg(server.path("syncd.sock"))
        .arg("test-key");
    if let Some(shots) = std::env::var_os("SYNCD_SCREENSHOTS") {
        run.arg(shots);
    }
    let out = run.output().expect("run node");
    let text = common::output_text(&out);
    println!("{text}");
    assert!(
        out.status.success(),
        "browser tests failed:\n{text}\nserver log:\n{}",
        server.log()
    );
    assert!(text.contains("3 passed, 0 failed"), "{text}");
}
