//! The config file

use super::*;

fn check_config(text: &str) -> Result<(), TestCaseError> {
    let source = Path::new("/etc/syncd/syncd.toml");
    match Config::parse(text, Path::new("/etc/syncd"), source) {
        Ok(c) => {
            prop_assert!(c.workers >= 1 && c.limits.max_frame >= 128);
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let shown = e.to_string();
            let ConfigError::Invalid { message, .. } = e else {
                unreachable!()
            };
            prop_assert!(!message.trim().is_empty());
            prop_assert!(shown.contains("/etc/syncd/syncd.toml"), "{shown}");
        }
        Err(e) => prop_assert!(false, "parse cannot fail to read: {e}"),
    }
    Ok(())
}

/// Lines of the default config, with values swapped for odd ones and lines
/// dropped, repeated or added.
fn config_lines() -> impl Strategy<Value = String> {
    let lines: Vec<String> = EMBEDDED_DEFAULT.lines().map(str::to_string).collect();
    let value = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"18446744073709551615 EiB\"".to_string()),
        Just("\"99999999999999999999h\"".to_string()),
        Just("\"1e308s\"".to_string()),
        Just("\"-5s\"".to_string()),
        Just("\"\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        Just("nan".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "\"[ -~]{0,20}\"",
        "-?[0-9]{1,25}",
    ];
    let edit = (0usize..4, 0.0..1.0f64, value);
    (Just(lines), proptest::collection::vec(edit, 1..6)).prop_map(|(mut lines, edits)| {
        for (kind, at, value) in edits {
            let i = ((at * lines.len() as f64) as usize).min(lines.len() - 1);
            match kind {
                0 => {
                    // key = value → key = other value
                    if let Some((key, _)) = lines[i].split_once('=') {
                        lines[i] = format!("{key}= {value}");
                    }
                }
                1 => {
                    lines.remove(i);
                }
                2 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => lines.insert(i, format!("k{i} = {value}")),
            }
        }
        lines.join("\n")
    })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn config_random_text(text in "[\\[\\]a-z_=\"'{}.,0-9 \n#-]{0,200}") {
        check_config(&text)?;
    }

    #[test]
    fn config_edited_default(text in config_lines()) {
        check_config(&text)?;
    }

    #[test]
    fn config_mutated_default(bytes in mutated(vec![EMBEDDED_DEFAULT.as_bytes().to_vec()], 4)) {
        check_config(&String::from_utf8_lossy(&bytes))?;
    }
}

#[test]
fn config_deep_nesting_and_huge_values_are_refused() {
    let path = Path::new("/x/syncd.toml");
    for text in [
        format!("workers = {}", "[".repeat(100_000)),
        format!("workers = {}", "{a=".repeat(100_000)),
        format!("{}\n", "[a.".repeat(50_000)),
        format!("workers = {}", "9".repeat(10_000)),
        format!("[limits]\nmax_frame = \"{}KiB\"", "9".repeat(100)),
        format!("[limits]\nstop_timeout = \"{}s\"", "9".repeat(100)),
        // bytesize saturates this to u64::MAX: refused, not "no limit".
        "[limits]\nmax_frame = \"16EiB\"".into(),
        "[limits]\nmax_frame = \"2GiB\"".into(),
        "[storage]\ncache_bytes = \"2TiB\"".into(),
        "\u{feff}workers = 1\nworkers = 2".into(),
        "workers = \"\u{0}\"".into(),
    ] {
        let e = Config::parse(&text, Path::new("/x"), path).expect_err("refused");
        assert!(!e.to_string().is_empty());
    }
}
