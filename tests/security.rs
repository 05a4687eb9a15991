//! Local trust: only processes of syncd's own user, forked by its master,
//! may use the control socket and the worker links. A local process that
//! forges a worker's Hello and a Deliver gets nothing to any subscriber.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{Client, Server};
use serde_json::{json, Value};
use syncd::bus::frame::{self, BusMsg};

/// A worker-link frame: `u32 length | u32 meta length | meta | payload`,
/// big-endian, the meta in syncd's own encoding.
fn link_frame(meta: Value, payload: &[u8]) -> Vec<u8> {
    let msg: BusMsg = serde_json::from_value(meta).expect("a BusMsg");
    [&frame::encode_header(&msg, payload.len())[..], payload].concat()
}

/// A frame whose meta is JSON text: not a frame of ours at all.
fn json_frame(meta: &Value) -> Vec<u8> {
    let meta = meta.to_string().into_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + meta.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

/// True once the server has closed `stream` (EOF or reset within the timeout).
fn closed_by_server(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn sockets_are_private_to_syncds_user() {
    let server = Server::start(2, "");
    assert_eq!(mode(&server.path("run")), 0o700);
    assert_eq!(mode(&server.control_socket()), 0o600);
    for slot in 0..2 {
        assert_eq!(mode(&server.bus_socket(slot)), 0o600);
    }
}

#[test]
fn a_forged_hello_and_deliver_reach_no_subscriber() {
    let server = Server::start(2, "");
    let mut subscribers = server.clients_on_every_worker(2, || server.tcp());
    for s in &mut subscribers {
        s.sub("news");
    }
    let forged_line = b"{\"op\":\"msg\",\"channel\":\"news\",\"seq\":1,\"data\":\"forged\"}\n";
    let deliver = || {
        link_frame(
            json!({"Deliver": {"channel": "news", "seq": 1}}),
            forged_line,
        )
    };
    let attempts: Vec<Vec<u8>> = vec![
        // A well-formed Hello with a guessed secret.
        [
            link_frame(
                json!({"Hello": {"slot": 1, "instance": 7, "secret": "0".repeat(32)}}),
                b"",
            ),
            deliver(),
        ]
        .concat(),
        // A Hello in a form that is not ours (JSON, without any secret).
        [
            json_frame(&json!({"t": "Hello", "slot": 0, "instance": 7})),
            deliver(),
        ]
        .concat(),
        // No Hello at all.
        deliver(),
    ];
    for (i, bytes) in attempts.iter().enumerate() {
        for slot in 0..2 {
            let mut forger = UnixStream::connect(server.bus_socket(slot)).expect("dial a link");
            forger.write_all(bytes).expect("send the forgery");
            assert!(
                closed_by_server(&mut forger),
                "attempt {i} on worker {slot}: the link stays open"
            );
        }
    }
    // Anything forged would have been queued before this real message.
    let (status, body) = server.http(
        "POST",
        "/api/publish",
        r#"{"channel":"news","data":"real"}"#,
    );
    assert_eq!(status, 200, "{body}");
    for s in &mut subscribers {
        let got = s.recv();
        assert_eq!(
            (got["seq"].clone(), got["data"].clone()),
            (json!(1), json!("real"))
        );
    }
    assert!(server.log().contains("refused a link"), "{}", server.log());
    assert_eq!(server.restarts(), 0);
}

/// Runs a tiny Python client as user `nobody`: it connects to `socket`,
/// asks for status and prints what it got, or the error.
fn as_nobody_ask(socket: &Path) -> String {
    // A refusal shows as a reset, a broken pipe or a close with no reply.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('connect failed:', e); sys.exit(0)\n\
        s.settimeout(10)\n\
        try:\n    s.sendall(b'{\"cmd\":\"status\"}\\n'); data = s.recv(65536)\n\
        except (ConnectionResetError, BrokenPipeError):\n    data = b''\n\
        print('reply:', data.decode() if data else '(closed, nothing)')\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run python3 as nobody");
    common::output_text(&out)
}

#[test]
fn another_user_can_neither_reach_nor_use_the_control_socket() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/python3").exists() {
        println!("skipped: needs root (to act as another user) and /usr/bin/python3");
        return;
    }
    let server = Server::start(1, "");
    // Let `nobody` through the test's own temp dir, so only syncd's locks count.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let said = as_nobody_ask(&server.control_socket());
    assert!(
        said.contains("connect failed") && said.contains("Permission denied"),
        "{said}"
    );

    // Loosened by hand, the folder and socket still refuse another uid.
    std::fs::set_permissions(server.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        server.control_socket(),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let said = as_nobody_ask(&server.control_socket());
    assert!(said.contains("(closed, nothing)"), "{said}");
    assert!(
        server.log().contains("refused a control connection"),
        "{}",
        server.log()
    );
    assert_eq!(server.status().state, "running");
}

/// A WebSocket handshake on `/ws` with `origin` (if any); the HTTP status.
fn handshake(server: &Server, origin: Option<&str>) -> u16 {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    common::ws_handshake_status(server.ws_port, "/ws", &origin)
}

#[test]
fn websocket_origins_outside_the_allow_list_get_403() {
    let server = Server::start(
        2,
        "[auth]\njwt_secret = \"test-secret\"\napi_keys = [\"test-key\"]\n\
         allowed_origins = [\"https://app.example.com\", \"*.example.org\"]\n",
    );
    assert_eq!(handshake(&server, Some("https://app.example.com")), 101);
    assert_eq!(handshake(&server, Some("https://chat.example.org")), 101);
    assert_eq!(
        handshake(&server, None),
        101,
        "non-browser clients send no Origin"
    );
    for evil in [
        "https://evil.test",
        "http://app.example.com",
        "https://example.org",
        "null",
    ] {
        assert_eq!(handshake(&server, Some(evil)), 403, "{evil}");
    }
    let open = Server::start(1, "");
    assert_eq!(handshake(&open, Some("https://anyone.test")), 101);
}

#[test]
fn a_public_address_with_example_credentials_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("public.toml");
    std::fs::write(
        &config,
        "[listen]\nws = \"0.0.0.0:18000\"\ntcp = \"127.0.0.1:12345\"\n\
         [auth]\njwt_secret = \"dev-secret-change-me\"\napi_keys = [\"dev-key-change-me\"]\n",
    )
    .unwrap();
    let out = Command::new(common::syncd_bin())
        .args(["-c", config.to_str().unwrap(), "start"])
        .output()
        .unwrap();
    let said = common::output_text(&out);
    assert!(!out.status.success(), "{said}");
    for needed in [
        "auth.api_keys",
        "auth.jwt_secret",
        "insecure_allow_public",
        "0.0.0.0:18000",
    ] {
        assert!(said.contains(needed), "the refusal names {needed}: {said}");
    }
    assert!(
        !dir.path().join("syncd.pid").exists(),
        "refused before taking the pid file"
    );
}
