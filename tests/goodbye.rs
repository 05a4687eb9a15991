//! The last frame a client gets when its worker retires says why: a reload
//! (reconnect and resume) or a shutdown.

mod common;

use common::{Client, Server, TIMEOUT};

fn text(out: &std::process::Output) -> String {
    common::output_text(out)
}

/// Connects a TCP and a WebSocket client to every worker, runs `syncd ARGS`,
/// and checks each gets the `bye` code and close code it should.
fn goodbye_on(args: &[&str], code: &str, close: u16) {
    let server = Server::start(2, "");
    let mut tcp = server.clients_on_every_worker(2, || server.tcp());
    let mut ws = server.clients_on_every_worker(2, || server.ws());
    for c in tcp.iter_mut() {
        c.sub("x");
    }
    for c in ws.iter_mut() {
        c.sub("x");
    }
    let out = server.cli(args);
    assert!(out.status.success(), "{}", text(&out));
    for c in tcp.iter_mut() {
        let bye = c.recv();
        assert_eq!(
            (bye["op"].as_str(), bye["code"].as_str()),
            (Some("bye"), Some(code)),
            "{args:?}: {bye}"
        );
        let message = bye["message"].as_str().unwrap_or_default();
        if code == "reload" {
            assert!(
                message.contains("reconnect") && message.contains("resume"),
                "{message}"
            );
        }
        assert!(c.closed_by_server(TIMEOUT));
    }
    for c in ws.iter_mut() {
        assert_eq!(c.close_code(TIMEOUT), Some(close), "{args:?}");
    }
}

#[test]
fn a_reload_says_reload_and_to_resume() {
    goodbye_on(&["reload"], "reload", 1012);
}

#[test]
fn a_graceful_reload_says_reload_too() {
    goodbye_on(&["reload", "-g"], "reload", 1012);
}

#[test]
fn a_stop_says_shutdown() {
    goodbye_on(&["stop"], "shutdown", 1001);
}

#[test]
fn a_graceful_stop_says_shutdown() {
    goodbye_on(&["stop", "-g"], "shutdown", 1001);
}
