//! The demos in real Chromium: two pages racing for a seat, pages surviving a
//! `kill -9` of every worker, chat between pages, and two pages getting every
//! message through five `kill -9`s of their channel's owner worker, and
//! syncd.js following history and state pages. Driven by
//! `tests/browser/run.mjs` (playwright-core); `scripts/setup-tests.sh`
//! installs Debian's chromium and playwright-core when missing.

mod common;

use std::process::Command;

use common::Server;

/// Pinned so run.mjs can work out which worker owns a channel.
const SHARDS: u32 = 16;

#[test]
fn demos_work_in_chromium() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    common::setup_test_tools();
    let server = Server::start(2, &format!("[storage]\nshards = {SHARDS}\n"));
    // Screenshots, and everything node and Chromium put in TMPDIR (the
    // browser profile), stay in the server's temp dir, removed with it.
    let shots = std::env::var_os("SYNCD_SCREENSHOTS").map_or(server.path("shots"), Into::into);
    let tmp = server.path("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let mut run = Command::new("node");
    run.arg(format!("{dir}/run.mjs"))
        .arg(format!("http://127.0.0.1:{}", server.ws_port))
        .arg(server.control_socket())
        .arg("test-key")
        .arg(shots)
        .env("TMPDIR", &tmp)
        .env("SYNCD_SHARDS", SHARDS.to_string());
    let out = run.output().expect("run node");
    let text = common::output_text(&out);
    println!("{text}");
    assert!(
        out.status.success(),
        "browser tests failed:\n{text}\nserver log:\n{}",
        server.log()
    );
    assert!(text.contains("7 passed, 0 failed"), "{text}");
}
