//! JSON requests (both transports end here)

use super::*;

const ERROR_CODES: &[&str] = &["bad_json", "bad_request", "unknown_op", "bad_channel"];

pub(crate) fn valid_requests() -> Vec<Vec<u8>> {
    [
        r#"{"op":"sub","id":1,"channel":"news"}"#,
        r#"{"op":"sub","id":2,"channel":"news","since":38,"epoch":"5f0c"}"#,
        r#"{"op":"unsub","id":3,"channel":"news"}"#,
        r#"{"op":"pub","id":4,"channel":"news","data":{"a":[1,2,{"b":"c d"}]},"ttl":60}"#,
        "{\"op\":\"pub\",\"id\":\"x\",\"channel\":\"n\",\"data\":\n [ 1.50 ,\n\t\"a\\\"b\" ]\n}",
        r#"{"op":"history","id":5,"channel":"news","since":0,"limit":100}"#,
        r#"{"op":"ping","id":6}"#,
        r#"{"op":"auth","id":7,"token":"abc.def.ghi"}"#,
        r#"{"op":"send","id":8,"uid":"bob","data":null,"ttl":60}"#,
        r##"{"op":"ack","id":9,"channel":"#alice","seq":12}"##,
        r#"{"op":"presence","id":10,"channel":"room-1"}"#,
        r#"{"op":"set","id":11,"channel":"seats","key":"F7","value":{"by":"é"},"version":0}"#,
        r#"{"op":"del","id":12,"channel":"seats","key":"F7","version":1}"#,
        r#"{"op":"get","id":13,"channel":"seats","key":"F7"}"#,
        r#"{"op":"state","id":14,"channel":"seats"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// JSON-ish token soup: mostly well-formed pieces in random order.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\n",
        "\"op\"",
        "\"sub\"",
        "\"pub\"",
        "\"set\"",
        "\"channel\"",
        "\"data\"",
        "\"id\"",
        "\"since\"",
        "\"limit\"",
        "\"value\"",
        "\"key\"",
        "\"version\"",
        "\"ttl\"",
        "0",
        "1",
        "-1",
        "1.5e3",
        "18446744073709551616",
        "null",
        "true",
        "\"a b\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"x\"",
    ];
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..40)
        .prop_map(|t| t.concat().into_bytes())
}

/// Parses one frame's text the way a worker does, and checks the result.
pub(crate) fn check_request(text: &str) -> Result<(), TestCaseError> {
    let (result, largest) = watch(|| {
        parse_request(text).map(|r| {
            // What a worker keeps from a good request: it must be sendable
            // as one line.
            match &r.op {
                Op::Pub { data, channel, .. }
                | Op::Send {
                    data, uid: channel, ..
                } => Some((channel.to_string(), Some(data.to_string()))),
                Op::Set { channel, value, .. } => {
                    Some((channel.to_string(), value.as_ref().map(|v| v.to_string())))
                }
                _ => None,
            }
        })
    });
    // Parsing may copy the text (unescaping, compacting) but never more.
    prop_assert!(
        largest <= 2 * text.len() + 4096,
        "{largest} bytes allocated for a {} byte frame",
        text.len()
    );
    match result {
        Ok(Some((_, Some(data)))) => {
            prop_assert!(!has_line_break(&data), "data keeps a line break: {data:?}");
            prop_assert!(serde_json::from_str::<&serde_json::value::RawValue>(&data).is_ok());
        }
        Ok(_) => {}
        Err((id, e)) => {
            prop_assert!(ERROR_CODES.contains(&e.code), "unexpected code {}", e.code);
            prop_assert!(!e.message.is_empty());
            if let Some(id) = id {
                // Echoed as sent: valid JSON, though not always a value
                // serde_json's `Value` holds (`1e400`).
                prop_assert!(
                    serde_json::from_str::<&serde_json::value::RawValue>(id.get()).is_ok()
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn json_random_text_is_refused_clearly(text in ".{0,200}") {
        check_request(&text)?;
    }

    #[test]
    fn json_random_bytes_are_refused_clearly(bytes in random_bytes(300)) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn json_token_soup(bytes in json_soup()) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn json_mutated_requests(bytes in mutated(valid_requests(), 6)) {
        check_request(&String::from_utf8_lossy(&bytes))?;
    }

    /// Good requests stay good, with channel rules and compact data.
    #[test]
    fn json_valid_requests_parse(
        channel in "[a-z#$-]{1,30}",
        id in prop_oneof![Just("1".to_string()), "\"[a-z]{0,8}\"", Just("null".to_string())],
        pretty in any::<bool>(),
    ) {
        let sep = if pretty { ",\n  " } else { "," };
        let text = format!(
            r#"{{"op":"pub"{sep}"id":{id}{sep}"channel":"{channel}"{sep}"data":{{"k":[1{sep}2]}}}}"#
        );
        let r = parse_request(&text).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(r.id.map(|i| i.get()), Some(id.as_str()));
        match r.op {
            Op::Pub { channel: c, data, .. } => {
                prop_assert_eq!(c.as_ref(), channel.as_str());
                prop_assert!(check_channel(&c).is_ok());
                prop_assert_eq!(data.as_ref(), r#"{"k":[1,2]}"#);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

#[test]
fn json_deep_nesting_and_huge_fields_are_refused_without_overflow() {
    let deep = "[".repeat(100_000);
    let deep_obj = "{\"a\":".repeat(100_000);
    let nested_data = format!(
        r#"{{"op":"pub","channel":"a","data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_channel = format!(
        r#"{{"op":"sub","id":1,"channel":"{}"}}"#,
        "c".repeat(1 << 20)
    );
    let long_op = format!(r#"{{"op":"{}","id":1}}"#, "x".repeat(1 << 20));
    let bad_utf8_escape = r#"{"op":"sub","id":1,"channel":"\ud800"}"#.to_string();
    let huge_number = format!(
        r#"{{"op":"ack","id":1,"channel":"a","seq":{}}}"#,
        "9".repeat(5000)
    );
    // Deep `data` is valid JSON and passes through (serde_json's RawValue
    // skips it without recursing): it must come out as one compact line.
    let (r, largest) = watch(|| parse_request(&nested_data).map(|r| format!("{:?}", r.op)));
    let op = r.expect("deep data is valid JSON");
    assert!(!has_line_break(&op) && largest <= 4 * nested_data.len());
    for text in [
        deep,
        deep_obj,
        long_channel,
        long_op,
        bad_utf8_escape,
        huge_number,
    ] {
        let (id, e) = parse_request(&text).expect_err("refused");
        assert!(ERROR_CODES.contains(&e.code), "{}", e.code);
        assert!(
            !e.message.is_empty() && e.message.len() < 1000,
            "{}",
            e.message
        );
        // The id is echoed when it could be read.
        if text.contains("\"id\":1") && e.code != "bad_json" {
            assert_eq!(id.map(|i| i.get().to_string()).as_deref(), Some("1"));
        }
    }
}
