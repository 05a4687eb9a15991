//! Protected mode, as Redis has it: a server that listens beyond loopback
//! must not run with empty or example credentials, and one that serves
//! browsers from anywhere should say which origins it trusts.

use crate::config::Config;

/// The example values shipped in conf/syncd.toml.
pub const EXAMPLE_API_KEY: &str = "dev-key-change-me";
pub const EXAMPLE_JWT_SECRET: &str = "dev-secret-change-me";

/// Whether `config` may serve as it is. `Ok` carries warnings to log at
/// every start; `Err` names the keys to set.
pub fn check(config: &Config) -> Result<Vec<String>, String> {
    let public: Vec<String> = [config.listen.ws, config.listen.tcp]
        .iter()
        .filter(|addr| !addr.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if public.is_empty() {
        return Ok(Vec::new());
    }
    let auth = &config.auth;
    let mut weak = Vec::new();
    if auth.api_keys.is_empty() || auth.api_keys.iter().any(|k| k == EXAMPLE_API_KEY) {
        weak.push("auth.api_keys (empty or the shipped example)");
    }
    if auth.jwt_secret.is_empty() || auth.jwt_secret == EXAMPLE_JWT_SECRET {
        weak.push("auth.jwt_secret (empty or the shipped example)");
    }
    let mut warnings = Vec::new();
    if !weak.is_empty() {
        let problem = format!(
            "listening on {} (not loopback) with weak credentials: set {}",
            public.join(" and "),
            weak.join(" and ")
        );
        if !auth.insecure_allow_public {
            return Err(format!(
                "{problem}, or set auth.insecure_allow_public = true to serve anyway"
            ));
        }
        warnings.push(format!(
            "{problem}; serving anyway because auth.insecure_allow_public = true"
        ));
    }
    if auth.allowed_origins.is_empty() {
        warnings.push(format!(
            "listening on {} with no auth.allowed_origins: WebSocket handshakes from any \
             web page are accepted",
            public.join(" and ")
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let base = Path::new("/etc/syncd");
        Config::parse(text, base, &base.join("syncd.toml")).expect("valid config")
    }

    const STRONG: &str = "[auth]\napi_keys = [\"k-9f8e7d\"]\njwt_secret = \"s-1a2b3c\"\n";

    #[test]
    fn loopback_needs_nothing() {
        let c = config(crate::config::EMBEDDED_DEFAULT);
        assert_eq!(check(&c), Ok(Vec::new()));
    }

    #[test]
    fn public_with_example_or_empty_credentials_is_refused_naming_the_keys() {
        let c = config("[listen]\nws = \"0.0.0.0:8000\"\n[auth]\njwt_secret = \"dev-secret-change-me\"\napi_keys = [\"ok-key\"]\n");
        let e = check(&c).unwrap_err();
        assert!(
            e.contains("auth.jwt_secret") && !e.contains("auth.api_keys"),
            "{e}"
        );
        assert!(
            e.contains("0.0.0.0:8000") && e.contains("insecure_allow_public"),
            "{e}"
        );
        let c = config("[listen]\ntcp = \"10.0.0.5:2345\"\n[auth]\njwt_secret = \"x\"\n");
        assert!(check(&c).unwrap_err().contains("auth.api_keys"));
    }

    #[test]
    fn the_override_serves_with_a_warning() {
        let c = config("[listen]\nws = \"0.0.0.0:8000\"\n[auth]\ninsecure_allow_public = true\n");
        let warnings = check(&c).expect("allowed");
        assert!(warnings[0].contains("serving anyway"), "{warnings:?}");
    }

    #[test]
    fn public_with_strong_credentials_warns_only_about_origins() {
        let c = config(&format!("[listen]\nws = \"0.0.0.0:8000\"\n{STRONG}"));
        let warnings = check(&c).expect("allowed");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("allowed_origins"));
        let c = config(&format!(
            "[listen]\nws = \"0.0.0.0:8000\"\n{STRONG}allowed_origins = [\"https://app.example.com\"]\n"
        ));
        assert_eq!(check(&c), Ok(Vec::new()));
    }
}
