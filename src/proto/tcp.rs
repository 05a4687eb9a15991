//! Newline-delimited JSON over raw TCP: splitting the input into lines.

#[derive(Debug, PartialEq)]
pub enum Line<'a> {
    /// One line without its `\n` (and without a trailing `\r`).
    Text(&'a str),
    /// A line that is not UTF-8.
    NotUtf8,
}

#[derive(Debug, PartialEq)]
pub struct TooLong;

/// Takes the next complete line from `buf[*start..]`, advancing `start`.
/// A line (or an unterminated tail) longer than `max` is an error.
pub fn next_line<'a>(
    buf: &'a [u8],
    start: &mut usize,
    max: usize,
) -> Result<Option<Line<'a>>, TooLong> {
    let rest = &buf[*start..];
    // memchr looks at a word or a vector at a time, not a byte.
    let Some(end) = memchr::memchr(b'\n', rest) else {
        return if rest.len() > max {
            Err(TooLong)
        } else {
            Ok(None)
        };
    };
    if end > max {
        return Err(TooLong);
    }
    *start += end + 1;
    let mut line = &rest[..end];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    Ok(Some(match std::str::from_utf8(line) {
        Ok(text) => Line::Text(text),
        Err(_) => Line::NotUtf8,
    }))
}

/// Whether `text` is a client's `{"op":"pong"}`, the answer to the server's
/// heartbeat `{"op":"ping"}` (other fields are ignored). It gets no reply.
pub fn is_pong(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct OpOnly<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    text.contains("pong") && serde_json::from_str::<OpOnly<'_>>(text).is_ok_and(|f| f.op == "pong")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_lines() {
        assert!(is_pong(r#"{"op":"pong"}"#));
        assert!(is_pong(r#" { "op" : "pong", "id": 3 } "#));
        assert!(!is_pong(r#"{"op":"ping"}"#));
        assert!(!is_pong(r#"{"op":"pub","channel":"pong","data":1}"#));
        assert!(!is_pong("pong"));
    }

    #[test]
    fn splits_lines_and_flags_bad_ones() {
        let buf = b"{\"a\":1}\r\n\xff\xfe\npartial";
        let mut at = 0;
        assert_eq!(
            next_line(buf, &mut at, 100),
            Ok(Some(Line::Text("{\"a\":1}")))
        );
        assert_eq!(next_line(buf, &mut at, 100), Ok(Some(Line::NotUtf8)));
        assert_eq!(next_line(buf, &mut at, 100), Ok(None));
        assert_eq!(next_line(buf, &mut at, 3), Err(TooLong));
    }
}
