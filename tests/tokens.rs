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
