//! JWT tokens

use super::*;

const SECRET: &str = "fuzz-secret";

/// `[auth]` with the test secret; `exp` checked to the second, as the
/// properties expect.
fn server_auth() -> syncd::config::Auth {
    syncd::config::Auth {
        jwt_secret: SECRET.into(),
        jwt_leeway: std::time::Duration::ZERO,
        ..Default::default()
    }
}

fn check_token(token: &str) -> Result<bool, TestCaseError> {
    let (result, largest) = watch(|| syncd::auth::verify(&server_auth(), token));
    prop_assert!(
        largest <= 2 * token.len() + 4096,
        "{largest} bytes for {}",
        token.len()
    );
    match result {
        Ok(user) => {
            prop_assert!(!user.uid.is_empty() && user.uid.len() <= 128);
            Ok(true)
        }
        Err(e) => {
            prop_assert_eq!(e.code, "unauthorized");
            prop_assert!(!e.message.is_empty());
            Ok(false)
        }
    }
}

/// Tokens minted once, so every case sees the same ones.
fn minted() -> Vec<Vec<u8>> {
    static MINTED: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    MINTED.get_or_init(mint_tokens).clone()
}

fn mint_tokens() -> Vec<Vec<u8>> {
    let ttl = Duration::from_secs(3600);
    vec![
        syncd::auth::mint(SECRET, "alice", ttl, vec![])
            .unwrap()
            .into_bytes(),
        syncd::auth::mint(SECRET, "b", ttl, vec!["private-*".into(), "$x".into()])
            .unwrap()
            .into_bytes(),
        syncd::auth::mint("other", "mallory", ttl, vec![])
            .unwrap()
            .into_bytes(),
    ]
}

fn b64ish(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_=+/-]{{0,{max}}}")).unwrap()
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn jwt_random_strings(token in ".{0,300}") {
        prop_assert!(!check_token(&token)?);
    }

    #[test]
    fn jwt_random_segments(a in b64ish(120), b in b64ish(200), c in b64ish(60), dots in 0usize..5) {
        let token = [a, b, c].join(&".".repeat(dots.max(1)));
        prop_assert!(!check_token(&token)?);
    }

    /// A changed token is refused, unless the change kept it the same token
    /// (base64 padding bits and the like are checked by the signature).
    #[test]
    fn jwt_mutated_tokens(token in mutated(minted(), 4)) {
        let text = String::from_utf8_lossy(&token);
        if check_token(&text)? {
            // Only an unchanged token signed with our secret may pass (the
            // mutations can cancel out: a zero-length run, a cut at the end).
            prop_assert!(minted()[..2].iter().any(|s| s[..] == token[..]), "{text} passed");
        }
    }

    #[test]
    fn jwt_swapped_segments(i in 0usize..3, j in 0usize..3, k in 0usize..3) {
        let seeds: Vec<String> = minted().into_iter().map(|t| String::from_utf8(t).unwrap()).collect();
        let parts: Vec<Vec<&str>> = seeds.iter().map(|t| t.split('.').collect()).collect();
        let token = format!("{}.{}.{}", parts[i][0], parts[j][1], parts[k][2]);
        let valid = check_token(&token)?;
        // Header and claims must travel with their own signature.
        prop_assert_eq!(valid, j == k && k < 2);
    }
}

#[test]
fn jwt_huge_and_odd_tokens_are_refused() {
    let good = String::from_utf8(minted().remove(0)).unwrap();
    assert!(syncd::auth::verify(&server_auth(), &good).is_ok());
    let parts: Vec<&str> = good.split('.').collect();
    let huge = "A".repeat(1 << 20);
    for token in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{huge}.{}.{}", parts[1], parts[2]),
        format!("{}.{huge}.{}", parts[0], parts[2]),
        format!("{}.{}.{huge}", parts[0], parts[1]),
        format!("{}.{}.{}", parts[0], "!!!!", parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        // alg none, unsigned, far future
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.".into(),
        // a header that is deeply nested JSON
        format!(
            "{}.{}.{}",
            base64url(&"[".repeat(100_000)),
            parts[1],
            parts[2]
        ),
    ] {
        let e = syncd::auth::verify(&server_auth(), &token).expect_err("refused");
        assert_eq!(e.code, "unauthorized");
        assert!(
            !e.message.is_empty() && e.message.len() < 1000,
            "{}",
            e.message
        );
    }
}

fn base64url(bytes: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = bytes.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
