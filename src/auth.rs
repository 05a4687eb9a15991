//! Who is asking: JWT (HS256) tokens for clients, API keys for backends, and
//! which channels a user may read or publish to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

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
}

/// Checks a token: HS256 only (so `alg: none` and every other algorithm are
/// refused), signed with `secret`, not expired, with a non-empty `sub`.
pub fn verify(secret: &str, token: &str) -> Result<User, ErrorReply> {
    if secret.is_empty() {
        return Err(unauthorized(
            "this server accepts no tokens (auth.jwt_secret is not set)",
        ));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 0;
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| unauthorized(&format!("bad token: {e}")))?;
    if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
        return Err(unauthorized("bad token: `sub` must be 1 to 128 bytes"));
    }
    Ok(User {
        uid: data.claims.sub,
        channels: data.claims.channels,
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

fn forbidden(message: String) -> ErrorReply {
    ErrorReply::new("forbidden", message)
}

/// The inbox channel of a user.
pub fn inbox(uid: &str) -> String {
    format!("#{uid}")
}

fn granted(user: Option<&User>, channel: &str) -> bool {
    user.is_some_and(|u| {
        u.channels.iter().any(|c| match c.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => c == channel,
        })
    })
}

/// May this connection subscribe to or read the history of `channel`?
/// `#uid` is its user's alone; `private-…` and `$…` need the token's grant.
pub fn may_read(user: Option<&User>, channel: &str) -> Result<(), ErrorReply> {
    if let Some(uid) = channel.strip_prefix('#') {
        return match user {
            Some(u) if u.uid == uid => Ok(()),
            _ => Err(forbidden(format!("{channel} is another user's inbox"))),
        };
    }
    if (channel.starts_with("private-") || channel.starts_with('$')) && !granted(user, channel) {
        return Err(forbidden(format!("your token does not grant {channel}")));
    }
    Ok(())
}

/// May this connection `pub` to `channel`? Inboxes take `send`, and `$…`
/// channels are written by the server only.
pub fn may_publish(user: Option<&User>, channel: &str) -> Result<(), ErrorReply> {
    if channel.starts_with('#') {
        return Err(forbidden("use `send` to write to a user's inbox".into()));
    }
    if channel.starts_with('$') {
        return Err(forbidden(format!(
            "{channel} is written by the server only"
        )));
    }
    if channel.starts_with("private-") && !granted(user, channel) {
        return Err(forbidden(format!("your token does not grant {channel}")));
    }
    Ok(())
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

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let token = mint(
            "s3cret",
            "alice",
            Duration::from_secs(60),
            vec!["private-a*".into()],
        )
        .unwrap();
        let user = verify("s3cret", &token).unwrap();
        assert_eq!(user.uid, "alice");
        assert_eq!(verify("other", &token).unwrap_err().code, "unauthorized");
        assert!(verify("", &token).is_err());
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(verify("s3cret", &tampered).is_err());
        // alg: none, unsigned
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(verify("s3cret", none).is_err());
        let expired = mint("s3cret", "bob", Duration::ZERO, vec![]).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(verify("s3cret", &expired).is_err());
    }

    #[test]
    fn channel_rules() {
        let alice = User {
            uid: "alice".into(),
            channels: vec![
                "private-team".into(),
                "$expired".into(),
                "private-a*".into(),
            ],
        };
        assert!(may_read(Some(&alice), "#alice").is_ok());
        assert!(may_read(Some(&alice), "#bob").is_err());
        assert!(may_read(None, "#alice").is_err());
        assert!(may_read(Some(&alice), "private-team").is_ok());
        assert!(may_read(Some(&alice), "private-abc").is_ok());
        assert!(may_read(Some(&alice), "private-other").is_err());
        assert!(may_read(None, "news").is_ok());
        assert!(may_read(Some(&alice), "$expired").is_ok());
        assert!(may_publish(Some(&alice), "$expired").is_err());
        assert!(may_publish(Some(&alice), "#bob").is_err());
        assert!(api_key_ok(&["k1".into(), "k2".into()], b"k2"));
        assert!(!api_key_ok(&["k1".into()], b"k"));
        assert!(!api_key_ok(&[], b""));
    }
}
