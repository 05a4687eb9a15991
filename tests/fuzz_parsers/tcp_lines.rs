//! Raw TCP: splitting input into lines

use super::*;

fn tcp_input() -> impl Strategy<Value = Vec<u8>> {
    let lines = proptest::collection::vec(
        prop_oneof![
            mutated(valid_requests(), 3),
            random_bytes(80),
            Just(b"\r".to_vec()),
            Just(Vec::new()),
        ],
        0..8,
    )
    .prop_map(|ls| ls.join(&b'\n'));
    prop_oneof![random_bytes(400), lines]
}

proptest! {
    #![proptest_config(config(512))]

    /// `next_line` always moves forward, returns each line at most `max`
    /// bytes long and without its end, refuses an over-long line or tail,
    /// and every text line then parses to a request or a clear error.
    #[test]
    fn tcp_lines(input in tcp_input(), max in 0usize..200) {
        let mut start = 0;
        let mut rebuilt: Vec<u8> = Vec::new();
        loop {
            let before = start;
            match tcp::next_line(&input, &mut start, max) {
                Ok(Some(line)) => {
                    prop_assert!(start > before && start <= input.len());
                    prop_assert_eq!(input[start - 1], b'\n');
                    let raw = &input[before..start - 1];
                    prop_assert!(raw.len() <= max);
                    match line {
                        Line::Text(text) => {
                            prop_assert!(!text.contains('\n'));
                            prop_assert!(raw == text.as_bytes() || raw == [text.as_bytes(), b"\r"].concat());
                            check_request(text)?;
                        }
                        Line::NotUtf8 => prop_assert!(std::str::from_utf8(raw).is_err()
                            || std::str::from_utf8(raw.strip_suffix(b"\r").unwrap_or(raw)).is_err()),
                    }
                    rebuilt.extend_from_slice(raw);
                    rebuilt.push(b'\n');
                }
                Ok(None) => {
                    prop_assert_eq!(start, before);
                    let rest = &input[start..];
                    prop_assert!(!rest.contains(&b'\n') && rest.len() <= max);
                    rebuilt.extend_from_slice(rest);
                    prop_assert_eq!(&rebuilt, &input);
                    break;
                }
                Err(TooLong) => {
                    let rest = &input[start..];
                    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                    prop_assert!(end > max);
                    break;
                }
            }
        }
    }
}
