//! JSON text in compact form. `data` (and state values) arrive as the sender
//! wrote them, often pretty-printed; stored and sent as is, a newline inside
//! would split a TCP line in two. Compacting keeps the same JSON value: only
//! the whitespace between tokens goes, strings and numbers stay byte for byte.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// `raw` without whitespace between tokens; borrowed when already compact.
pub fn compact(raw: &RawValue) -> Cow<'_, str> {
    compact_text(raw.get())
}

/// As `compact`, for text known to be valid JSON (a `RawValue`, or what we
/// stored from one).
pub fn compact_text(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let Some(first) = next_gap(bytes, 0, &mut false) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    let mut at = first;
    let mut in_string = false;
    loop {
        // Skip the run of whitespace, then copy up to the next one.
        while at < bytes.len() && is_space(bytes[at]) {
            at += 1;
        }
        match next_gap(bytes, at, &mut in_string) {
            Some(gap) => {
                // Both ends are ASCII positions, so these are char boundaries.
                out.push_str(&text[at..gap]);
                at = gap;
            }
            None => {
                out.push_str(&text[at..]);
                return Cow::Owned(out);
            }
        }
    }
}

/// True when a frame built around `text` would span more than one line.
pub fn has_line_break(text: &str) -> bool {
    memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index of the next whitespace byte outside a string, from `at`.
/// `in_string` carries the scanner's state from one call to the next.
/// Inside a string it jumps to the next quote or backslash (memchr): most
/// of a message is strings, and this runs on every publish's data.
fn next_gap(bytes: &[u8], at: usize, in_string: &mut bool) -> Option<usize> {
    let mut i = at;
    while i < bytes.len() {
        if *in_string {
            i += memchr::memchr2(b'"', b'\\', &bytes[i..])?;
            match bytes[i] {
                // The escaped byte is skipped with it.
                b'\\' => i += 2,
                _ => {
                    *in_string = false;
                    i += 1;
                }
            }
            continue;
        }
        match bytes[i] {
            b'"' => *in_string = true,
            b if is_space(b) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> String {
        compact_text(text).into_owned()
    }

    #[test]
    fn removes_whitespace_between_tokens_only() {
        let pretty = "{\n  \"a b\": [\n    1.50,\n\t\"x \\\" \\\\\" ,  null\r\n  ],\n  \"é\": \"line\\nbreak\"\n}\n";
        assert_eq!(
            c(pretty),
            r#"{"a b":[1.50,"x \" \\",null],"é":"line\nbreak"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(&c(pretty)).unwrap()
        );
    }

    /// The scan a byte at a time that `next_gap` replaced, as the reference.
    fn next_gap_bytewise(bytes: &[u8], at: usize, in_string: &mut bool) -> Option<usize> {
        let mut i = at;
        while i < bytes.len() {
            let b = bytes[i];
            if *in_string {
                match b {
                    b'\\' => i += 1,
                    b'"' => *in_string = false,
                    _ => {}
                }
            } else if b == b'"' {
                *in_string = true;
            } else if is_space(b) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Escapes at a string's end, a backslash last, unterminated strings:
    /// the jumps inside strings find the same gaps as a byte at a time, from
    /// every start and either state.
    #[test]
    fn next_gap_finds_what_a_bytewise_scan_finds() {
        let texts = [
            r#"{"a":"x\\" , "b" : "\\\\" ,"c":"\"" }"#,
            "[ \"tab\\t\" ,\t\"q\\\"\" ]\n",
            r#""unterminated \"#,
            r#""ends in escape\"#,
            r#"  "" "\\\"" 1 "#,
            r#"{"é": "ü ö" , "n" :[1, 2 ,3]}"#,
        ];
        for text in texts {
            let bytes = text.as_bytes();
            for at in 0..=bytes.len() {
                for state in [false, true] {
                    let (mut a, mut b) = (state, state);
                    assert_eq!(
                        next_gap(bytes, at, &mut a),
                        next_gap_bytewise(bytes, at, &mut b),
                        "{text:?} from {at}, in a string: {state}"
                    );
                    assert_eq!(a, b, "{text:?} from {at}");
                }
            }
        }
    }

    #[test]
    fn compact_text_is_borrowed() {
        let text = r#"{"a":"s p a c e","b":[1,2]}"#;
        assert!(matches!(compact_text(text), Cow::Borrowed(t) if t == text));
        assert!(matches!(compact_text("5"), Cow::Borrowed("5")));
        assert_eq!(c(" \"x\" "), "\"x\"");
        assert!(has_line_break("{\n}") && !has_line_break(r#"{"a":"\n"}"#));
    }
}
