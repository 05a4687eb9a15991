//! Who is asking: JWT tokens for clients (HS256 with a shared secret, or
//! RS256/ES256 with a public key), API keys for backends, and which channels
//! a user may read or publish to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::Auth;
use crate::proto::frames::ErrorReply;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    channels: Vec<String>,
}

/// An authenticated user: its id and the private channels its token grants.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub uid: String,
    /// Channel names, or prefixes ending in `*`.
    pub channels: Vec<String>,
    /// When the token expires (seconds since the epoch).
    pub exp: u64,
}

/// The public key of `[auth] jwt_public_key` and the one algorithm it
/// verifies: RS256 for an RSA key, ES256 for a P-256 key.
fn public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    DecodingKey::from_ec_pem(pem)
        .map(|key| (Algorithm::ES256, key))
        .map_err(|e| format!("not an RSA or EC (P-256) public key in PEM: {e}"))
}

/// Checks at start that the configured key can verify tokens.
pub fn check_config(auth: &Auth) -> Result<(), String> {
    match &auth.jwt_public_key {
        Some(path) => public_key(&auth.jwt_public_pem)
            .map(|_| ())
            .map_err(|e| format!("auth.jwt_public_key {}: {e}", path.display())),
        None => Ok(()),
    }
}

/// Checks a token against `[auth]`: signed with the HS256 secret or by the
/// public key's own algorithm (so `alg: none`, and an HS256 token "signed"
/// with the public key, are refused), within `exp` and `nbf` give or take
/// `jwt_leeway`, with `aud` and `iss` when they are configured, and a
/// non-empty `sub`.
pub fn verify(auth: &Auth, token: &str) -> Result<User, ErrorReply> {
    let header = decode_header(token).map_err(|e| unauthorized(&format!("bad token: {e}")))?;
    let (algorithm, key) = match header.alg {
        Algorithm::HS256 if !auth.jwt_secret.is_empty() => (
            Algorithm::HS256,
            DecodingKey::from_secret(auth.jwt_secret.as_bytes()),
        ),
        Algorithm::RS256 | Algorithm::ES256 if auth.jwt_public_key.is_some() => {
            public_key(&auth.jwt_public_pem).map_err(|e| unauthorized(&e))?
        }
        alg => {
            return Err(unauthorized(&format!(
            "this server accepts no {alg:?} tokens (see auth.jwt_secret and auth.jwt_public_key)"
        )))
        }
    };
    if algorithm != header.alg {
        return Err(unauthorized("bad token: wrong algorithm for the key"));
    }
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = auth.jwt_leeway.as_secs();
    validation.validate_nbf = true;
    // Without a configured audience a token's `aud` is not ours to judge.
    validation.validate_aud = !auth.jwt_audience.is_empty();
    if !auth.jwt_audience.is_empty() {
        validation.set_audience(&[&auth.jwt_audience]);
        validation.required_spec_claims.insert("aud".into());
    }
    if !auth.jwt_issuer.is_empty() {
        validation.set_issuer(&[&auth.jwt_issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    let data = decode::<Claims>(token, &key, &validation)
        .map_err(|e| unauthorized(&format!("bad token: {e}")))?;
    if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
        return Err(unauthorized("bad token: `sub` must be 1 to 128 bytes"));
    }
    Ok(User {
        uid: data.claims.sub,
        channels: data.claims.channels,
        exp: data.claims.exp,
    })
}

/// Mints a token for testing (`syncd token`).
pub fn mint(
    secret: &str,
    uid: &str,
    ttl: Duration,
    channels: Vec<String>,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !secret.is_empty(),
        "auth.jwt_secret is not set in the config"
    );
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
    let claims = Claims {
        sub: uid.to_string(),
        exp,
        channels,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// True when `presented` is one of `keys`, compared in constant time.
pub fn api_key_ok(keys: &[String], presented: &[u8]) -> bool {
    let mut found = subtle::Choice::from(0);
    for key in keys {
        found |= key.as_bytes().ct_eq(presented);
    }
    bool::from(found) && !presented.is_empty()
}

/// Whether a WebSocket handshake's `Origin` is on `allowed` (see
/// `[auth] allowed_origins`). An empty list allows all. An entry with a
/// scheme (`https://app.example.com`) is compared with the whole origin; one
/// without (`app.example.com:8443`) with its host and port under any scheme.
/// A leading `*.` stands for one or more subdomains, never the bare domain.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let host = origin.split_once("://").map_or("", |(_, host)| host);
    allowed.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        if entry == "*" {
            return true;
        }
        let (candidate, pattern) = if entry.contains("://") {
            (origin.as_str(), entry.as_str())
        } else {
            (host, entry.as_str())
        };
        match pattern.split_once("*.") {
            // `https://*.example.com` or `*.example.com`: the part before the
            // star must match exactly, then any labels, then the domain.
            Some((before, domain)) => candidate
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(domain))
                .is_some_and(|labels| labels.len() > 1 && labels.ends_with('.')),
            None => candidate == pattern,
        }
    })
}

pub fn unauthorized(message: &str) -> ErrorReply {
    ErrorReply::new("unauthorized", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_by_host_or_by_subdomain_pattern() {
        let list: Vec<String> = ["https://app.example.com", "*.example.org", "localhost:3000"]
            .map(String::from)
            .to_vec();
        let allowed = |o: &str| origin_allowed(&list, o);
        assert!(allowed("https://app.example.com") && allowed("HTTPS://App.Example.com"));
        assert!(!allowed("http://app.example.com") && !allowed("https://app.example.com:8443"));
        assert!(allowed("https://a.example.org") && allowed("http://a.b.example.org"));
        assert!(!allowed("https://example.org") && !allowed("https://evilexample.org"));
        assert!(!allowed("https://example.org.evil.net") && !allowed("https://a.example.org:1"));
        assert!(allowed("http://localhost:3000") && !allowed("http://localhost:3001"));
        assert!(!allowed("null") && !allowed(""));
        let pinned = vec!["https://*.example.com".to_string()];
        assert!(origin_allowed(&pinned, "https://x.example.com"));
        assert!(!origin_allowed(&pinned, "http://x.example.com"));
        assert!(origin_allowed(&[], "https://anything.test"));
    }

    fn hs256(secret: &str) -> Auth {
        Auth {
            jwt_secret: secret.into(),
            jwt_leeway: Duration::ZERO,
            ..Auth::default()
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token with any claims, signed as `alg` with `key`.
    fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, key).unwrap()
    }

    fn keys_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
    }

    fn with_public_key(file: &str) -> Auth {
        let path = keys_dir().join(file);
        Auth {
            jwt_public_pem: std::fs::read(&path).unwrap(),
            jwt_public_key: Some(path),
            ..Auth::default()
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let token = mint(
            "s3cret",
            "alice",
            Duration::from_secs(60),
            vec!["private-a*".into()],
        )
        .unwrap();
        let user = verify(&hs256("s3cret"), &token).unwrap();
        assert_eq!(user.uid, "alice");
        assert!(user.exp >= now() + 59);
        let refused = |auth: &Auth, token: &str| verify(auth, token).unwrap_err().code;
        assert_eq!(refused(&hs256("other"), &token), "unauthorized");
        assert_eq!(refused(&hs256(""), &token), "unauthorized");
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert_eq!(refused(&hs256("s3cret"), &tampered), "unauthorized");
        // alg: none, unsigned
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(refused(&hs256("s3cret"), none), "unauthorized");
        let key = EncodingKey::from_secret(b"s3cret");
        let expired = sign(
            Algorithm::HS256,
            &key,
            serde_json::json!({"sub":"bob","exp":now() - 3}),
        );
        assert_eq!(refused(&hs256("s3cret"), &expired), "unauthorized");
        let lenient = Auth {
            jwt_leeway: Duration::from_secs(5),
            ..hs256("s3cret")
        };
        assert!(verify(&lenient, &expired).is_ok(), "within jwt_leeway");
    }

    #[test]
    fn nbf_aud_and_iss_are_checked_when_configured() {
        let key = EncodingKey::from_secret(b"k");
        let exp = now() + 60;
        let token = |claims: serde_json::Value| sign(Algorithm::HS256, &key, claims);
        let plain = hs256("k");
        let early = token(serde_json::json!({"sub":"a","exp":exp,"nbf":now() + 30}));
        assert!(verify(&plain, &early).is_err(), "nbf in the future");
        let strict = Auth {
            jwt_audience: "syncd".into(),
            jwt_issuer: "https://auth.example.com".into(),
            ..hs256("k")
        };
        let good = token(serde_json::json!({"sub":"a","exp":exp,
            "aud":["other","syncd"],"iss":"https://auth.example.com"}));
        assert!(verify(&strict, &good).is_ok());
        assert!(
            verify(&plain, &good).is_ok(),
            "aud and iss unchecked when not configured"
        );
        for bad in [
            serde_json::json!({"sub":"a","exp":exp,"aud":"other","iss":"https://auth.example.com"}),
            serde_json::json!({"sub":"a","exp":exp,"aud":"syncd","iss":"https://evil.test"}),
            serde_json::json!({"sub":"a","exp":exp,"iss":"https://auth.example.com"}),
            serde_json::json!({"sub":"a","exp":exp,"aud":"syncd"}),
        ] {
            assert!(verify(&strict, &token(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn rs256_and_es256_verify_with_the_public_key_only() {
        let claims = serde_json::json!({"sub":"carol","exp":now() + 60});
        for (alg, private, public) in [
            (Algorithm::RS256, "rsa-private.pem", "rsa-public.pem"),
            (Algorithm::ES256, "ec-private.pem", "ec-public.pem"),
        ] {
            let pem = std::fs::read(keys_dir().join(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ec_pem(&pem).unwrap(),
            };
            let auth = with_public_key(public);
            assert_eq!(check_config(&auth), Ok(()));
            let token = sign(alg, &key, claims.clone());
            assert_eq!(verify(&auth, &token).unwrap().uid, "carol", "{alg:?}");
            // The classic confusion: HS256 "signed" with the public key's bytes.
            let forged = sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&auth.jwt_public_pem),
                claims.clone(),
            );
            assert!(verify(&auth, &forged).is_err(), "{alg:?}");
        }
        // An RS256 token against an EC key is refused, not confused.
        let rsa =
            EncodingKey::from_rsa_pem(&std::fs::read(keys_dir().join("rsa-private.pem")).unwrap())
                .unwrap();
        let token = sign(Algorithm::RS256, &rsa, claims);
        assert!(verify(&with_public_key("ec-public.pem"), &token).is_err());
        let mut bad = with_public_key("ec-public.pem");
        bad.jwt_public_pem = b"not a key".to_vec();
        assert!(check_config(&bad)
            .unwrap_err()
            .contains("auth.jwt_public_key"));
    }

    #[test]
    fn api_keys_match_exactly() {
        assert!(api_key_ok(&["k1".into(), "k2".into()], b"k2"));
        assert!(!api_key_ok(&["k1".into()], b"k"));
        assert!(!api_key_ok(&[], b""));
    }
}
