//! Plain HTTP/1.1 on the ws port: request parsing (`httparse`) and responses.
//! Bodies are read by Content-Length only; chunked uploads get 411.

use tungstenite::http;

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;
/// Largest request head (request line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    /// HTTP/1.`minor`.
    pub minor: u8,
}

#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole request, and how many bytes of the buffer it used.
    Complete(Box<Request>, usize),
    /// The bytes are not a request we can serve; answer with this status.
    Invalid(u16, String),
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn wants_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
    }
}

pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Invalid(431, "request head too large".into())
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(400, format!("bad request: {e}")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid(400, "bad request line".into());
    };
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    if find("transfer-encoding").is_some() {
        return Parsed::Invalid(411, "send the body with Content-Length".into());
    }
    let body_len = match find("content-length") {
        None => 0,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            Some(n) => n,
            None => return Parsed::Invalid(400, "bad Content-Length".into()),
        },
    };
    if body_len > max_body {
        return Parsed::Invalid(413, format!("body over {max_body} bytes"));
    }
    // Saturating: with a huge `max_body` the sum could overflow.
    if buf.len() < head_len.saturating_add(body_len) {
        return Parsed::Partial;
    }
    let connection = find("connection").map(|v| v.to_ascii_lowercase());
    let keep_alive = match (minor, connection.as_deref()) {
        (_, Some(b"close")) => false,
        (0, Some(b"keep-alive")) => true,
        (0, _) => false,
        _ => true,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let request = Request {
        method: method.to_string(),
        path,
        query,
        body: buf[head_len..head_len + body_len].to_vec(),
        headers,
        keep_alive,
        minor,
    };
    Parsed::Complete(Box::new(request), head_len + body_len)
}

/// A complete response with a body; JSON unless said otherwise.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn json_error(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    response(status, "application/json", body.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_post_with_body_in_pieces() {
        let raw = b"POST /api/publish?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
        assert!(matches!(parse(&raw[..20], 100), Parsed::Partial));
        assert!(matches!(parse(&raw[..raw.len() - 1], 100), Parsed::Partial));
        let Parsed::Complete(req, used) = parse(raw, 100) else {
            panic!()
        };
        assert_eq!(
            (req.path.as_str(), req.query.as_str()),
            ("/api/publish", "x=1")
        );
        assert_eq!(
            (req.body.as_slice(), used, req.keep_alive),
            (&b"body"[..], raw.len(), true)
        );
    }

    #[test]
    fn rejects_garbage_and_oversized_bodies() {
        assert!(matches!(
            parse(b"\x01\x02 nope\r\n\r\n", 10),
            Parsed::Invalid(400, _)
        ));
        let big = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(parse(big, 10), Parsed::Invalid(413, _)));
    }
}
