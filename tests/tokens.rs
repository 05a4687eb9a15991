//! Token checks end to end: RS256 tokens verified with a public key file,
//! and `aud`, `iss` and `nbf` enforced at the handshake and in `auth`.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa_key() -> EncodingKey {
    let pem = std::fs::read(common::repo_path("tests/keys/rsa-private.pem")).unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

fn server() -> Server {
    let public = common::repo_path("tests/keys/rsa-public.pem");
    Server::start(
        2,
        &format!(
            "[auth]\njwt_secret = \"test-secret\"\napi_keys = [\"test-key\"]\n\
             jwt_public_key = \"{}\"\njwt_audience = \"syncd\"\njwt_issuer = \"https://auth.test\"\n",
            public.display()
        ),
    )
}

/// Tries `token` as an `auth` frame; the reply's op, "ok" or "error".
fn auth_frame(server: &Server, token: &str) -> Value {
    let mut c = server.tcp();
    c.request(json!({"op":"auth","id":1,"token":token}), &mut Vec::new())
}

fn handshake_status(server: &Server, token: &str) -> u16 {
    common::ws_handshake_status(server.ws_port, &format!("/ws?token={token}"), "")
}

#[test]
fn rs256_tokens_with_the_right_audience_and_issuer_are_accepted() {
    let server = server();
    let claims = json!({"sub":"dana","exp":now() + 600,"aud":"syncd","iss":"https://auth.test"});
    let token = encode(&Header::new(Algorithm::RS256), &claims, &rsa_key()).unwrap();
    let reply = auth_frame(&server, &token);
    assert_eq!(
        (reply["op"].as_str(), reply["uid"].as_str()),
        (Some("ok"), Some("dana")),
        "{reply}"
    );
    assert_eq!(handshake_status(&server, &token), 101);
}

#[test]
fn wrong_audience_wrong_issuer_and_future_nbf_are_refused() {
    let server = server();
    let exp = now() + 600;
    let bad = [
        (
            "wrong aud",
            json!({"sub":"e","exp":exp,"aud":"other","iss":"https://auth.test"}),
        ),
        (
            "wrong iss",
            json!({"sub":"e","exp":exp,"aud":"syncd","iss":"https://evil.test"}),
        ),
        (
            "no aud",
            json!({"sub":"e","exp":exp,"iss":"https://auth.test"}),
        ),
        (
            "nbf in a minute",
            json!({"sub":"e","exp":exp,"aud":"syncd","iss":"https://auth.test","nbf":now() + 60}),
        ),
    ];
    for (what, claims) in bad {
        let token = encode(&Header::new(Algorithm::RS256), &claims, &rsa_key()).unwrap();
        let reply = auth_frame(&server, &token);
        assert_eq!(reply["code"], "unauthorized", "{what}: {reply}");
        assert_eq!(handshake_status(&server, &token), 401, "{what}");
    }
    // An HS256 token forged with the public key as its secret.
    let pem = std::fs::read(common::repo_path("tests/keys/rsa-public.pem")).unwrap();
    let claims = json!({"sub":"e","exp":exp,"aud":"syncd","iss":"https://auth.test"});
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(auth_frame(&server, &forged)["code"], "unauthorized");
}

#[test]
fn a_bad_public_key_file_stops_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let config = dir.path().join("bad-key.toml");
    std::fs::write(
        &config,
        format!("[auth]\njwt_public_key = \"{}\"\n", junk.display()),
    )
    .unwrap();
    let out = std::process::Command::new(common::syncd_bin())
        .args(["-c", config.to_str().unwrap(), "start"])
        .output()
        .unwrap();
    let said = common::output_text(&out);
    assert!(
        !out.status.success() && said.contains("auth.jwt_public_key"),
        "{said}"
    );
}

fn hs_token(sub: &str, exp: u64) -> String {
    encode(
        &Header::default(),
        &json!({"sub":sub,"exp":exp}),
        &EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until the wall clock passes `at` (Unix seconds): token expiry is
/// about real time passing, so this is the event waited for.
fn wait_until(at: f64) {
    while unix_now() < at {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

const NO_LEEWAY: &str =
    "[auth]\njwt_secret = \"test-secret\"\napi_keys = [\"test-key\"]\njwt_leeway = \"0s\"\n";

#[test]
fn a_token_that_expires_unrefreshed_is_warned_then_closed_with_4001() {
    let server = Server::start(2, NO_LEEWAY);
    let exp = now() + 2;
    let mut ws = common::WsClient::connect(
        server.ws_port,
        &format!("/ws?token={}", hs_token("finn", exp)),
    );
    let warned = ws.recv();
    assert_eq!(
        warned,
        json!({"op":"refresh_needed","exp":exp}),
        "warned first (exp is < 30 s away)"
    );
    let expired = ws.recv();
    assert_eq!(expired["code"], "token_expired", "{expired}");
    assert_eq!(ws.close_code(common::TIMEOUT), Some(4001));
    let late = unix_now() - exp as f64;
    println!("closed {late:.2} s after exp");
    assert!(
        late < 1.5,
        "closed within about a second of exp + leeway, not {late:.2} s"
    );
}

#[test]
fn a_refreshed_connection_outlives_its_first_token() {
    let server = Server::start(2, NO_LEEWAY);
    let exp = now() + 2;
    let mut c = server.tcp();
    let auth = c.request(
        json!({"op":"auth","id":1,"token":hs_token("gus", exp)}),
        &mut Vec::new(),
    );
    assert_eq!(auth["op"], "ok", "{auth}");
    assert_eq!(c.recv(), json!({"op":"refresh_needed","exp":exp}));
    // Another user's token is no refresh; the connection stays as it was.
    let wrong = c.request(
        json!({"op":"refresh","id":2,"token":hs_token("hal", now() + 600)}),
        &mut Vec::new(),
    );
    assert_eq!(wrong["code"], "unauthorized", "{wrong}");
    let fresh_exp = now() + 600;
    let ok = c.request(
        json!({"op":"refresh","id":3,"token":hs_token("gus", fresh_exp)}),
        &mut Vec::new(),
    );
    assert_eq!(ok, json!({"op":"ok","id":3,"exp":fresh_exp}));
    wait_until(exp as f64 + 1.5);
    let mut early = Vec::new();
    let pong = c.request(json!({"op":"ping","id":4}), &mut early);
    assert_eq!(pong["op"], "pong", "still open past the first token's exp");
    assert!(
        early.is_empty(),
        "no warning or expiry for the fresh token: {early:?}"
    );
}
