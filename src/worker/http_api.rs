//! The HTTP side of the ws port: health, the publish API, and the upgrade to
//! WebSocket at `/ws` (and `/echo` when `[debug] echo` is on).

use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::protocol::{Role, WebSocketContext};

use super::conn::Session;
use super::dispatch::{Origin, PublishOptions};
use super::pending::HistoryFor;
use super::static_files;
use super::Worker;
use crate::auth;
use crate::owner::Query;
use crate::proto::compact::compact;
use crate::proto::frames::{self, ErrorReply};
use crate::proto::http::{self, Parsed, Request};
use crate::proto::ws;

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    ttl: Option<u64>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct SendBody<'a> {
    #[serde(borrow)]
    uid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    ttl: Option<u64>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct DisconnectBody {
    uid: String,
}

#[derive(Deserialize)]
struct PutStateBody<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    version: u64,
}

/// An error answer with the status its code calls for (409 for a conflict,
/// with the current value and version).
fn error_response(e: &ErrorReply) -> Vec<u8> {
    let status = match e.code {
        "conflict" => 409,
        "forbidden" => 403,
        "unauthorized" => 401,
        "bad_request" | "bad_channel" => 400,
        _ => 503,
    };
    let mut body = serde_json::json!({ "error": e.code, "message": e.message });
    if let Some(current) = e
        .current
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
    {
        body["current"] = current;
    }
    http::response(
        status,
        "application/json",
        body.to_string().as_bytes(),
        false,
    )
}

/// The API key a request shows (`Authorization: Bearer`, else `X-API-Key`),
/// empty when none.
fn presented_key(request: &Request) -> &[u8] {
    let bearer = request.header("authorization").and_then(|v| {
        v.strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
    });
    bearer
        .or_else(|| request.header("x-api-key"))
        .unwrap_or_default()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// Most pipelined requests one connection gets answered per loop turn; the
/// rest wait in its buffer for the next turn (docs/api.md).
const MAX_PIPELINED: usize = 256;

impl Worker {
    /// Serves the complete requests in the connection's buffer, one at a time
    /// and in order (a request waiting for an owner holds back the ones behind
    /// it). Iterative: an answer never serves the next request from inside
    /// itself, so thousands of pipelined requests cannot deepen the stack.
    pub(super) fn serve_http(&mut self, key: usize) {
        for _ in 0..MAX_PIPELINED {
            let max_body = self.config.limits.max_frame;
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.http_busy || conn.closing.is_some() {
                return;
            }
            // Answers pile up unread: wait until the client takes some
            // (`flush_conn` resumes us) rather than cut it off as slow.
            if conn.t.out.len() > conn.t.out_limit() / 2 {
                conn.http_stalled = true;
                return;
            }
            let Session::Http { buf } = &mut conn.session else {
                return;
            };
            match http::parse(buf, max_body) {
                Parsed::Partial => return,
                Parsed::Invalid(status, message) => {
                    log::info!(
                        "worker {}: bad HTTP request from {}: {message}",
                        self.slot,
                        conn.peer
                    );
                    let code = if status == 413 {
                        "too_large"
                    } else {
                        "bad_request"
                    };
                    self.respond(key, http::json_error(status, code, &message), false);
                    return;
                }
                Parsed::Complete(request, used) => {
                    buf.drain(..used);
                    conn.active = Instant::now();
                    self.route(key, *request);
                }
            }
        }
        // The cap for this turn: the rest of the buffer waits for the next.
        self.conns.requeue_read(key);
    }

    fn route(&mut self, key: usize, request: Request) {
        let keep_alive = request.keep_alive;
        let method = request.method.as_str();
        if request.path.starts_with("/api/") && !self.api_key_ok(&request) {
            // Never echo the presented key: it may be a real one mistyped.
            let message = if self.config.auth.api_keys.is_empty() {
                "the HTTP API is off: set auth.api_keys in the config"
            } else if presented_key(&request).is_empty() {
                "send an API key: Authorization: Bearer KEY (or X-API-Key: KEY)"
            } else {
                "API key not accepted: check it against auth.api_keys"
            };
            log::info!("worker {}: HTTP API call without a valid key", self.slot);
            return self.respond(key, http::json_error(401, "unauthorized", message), false);
        }
        match (method, request.path.as_str()) {
            ("GET", "/ws") => self.upgrade(key, &request, false),
            ("GET", "/echo") if self.config.debug.echo => self.upgrade(key, &request, true),
            ("GET", path) if static_files::lookup(path).is_some() => {
                if let Some((content_type, body)) = static_files::lookup(path) {
                    let response = http::response(200, content_type, body, keep_alive);
                    self.respond(key, response, keep_alive);
                }
            }
            ("GET", "/healthz") => {
                let body = serde_json::json!({"status": "ok", "worker": self.slot}).to_string();
                self.respond_json(key, 200, body, keep_alive);
            }
            ("POST", "/api/publish") => self.http_publish(key, &request),
            ("GET", "/api/history") => self.http_history(key, &request),
            ("POST", "/api/send") => self.http_send(key, &request),
            ("POST", "/api/broadcast") => {
                match serde_json::from_slice::<BroadcastBody>(&request.body) {
                    Ok(body) => {
                        self.broadcast_all(&compact(body.data));
                        self.respond_json(key, 200, r#"{"ok":true}"#.into(), keep_alive);
                    }
                    Err(e) => self.bad_body(key, "{\"data\":..}", &e),
                }
            }
            ("POST", "/api/disconnect") => {
                match serde_json::from_slice::<DisconnectBody>(&request.body) {
                    Ok(body) => {
                        self.disconnect_everywhere(&body.uid);
                        self.respond_json(key, 200, r#"{"ok":true}"#.into(), keep_alive);
                    }
                    Err(e) => self.bad_body(key, "{\"uid\":..}", &e),
                }
            }
            ("GET", "/api/presence") => {
                let channel = query_param(&request.query, "channel").unwrap_or_default();
                if let Err(e) = frames::check_channel(&channel) {
                    return self.respond(key, http::json_error(400, e.code, &e.message), false);
                }
                self.set_busy(key);
                self.presence_query(key, &channel, HistoryFor::Http { keep_alive });
            }
            ("GET", path) if path.starts_with("/api/users/") => {
                let raw = &path["/api/users/".len()..];
                let uid: String = form_urlencoded::parse(format!("u={raw}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default();
                match frames::check_uid(Some(uid.as_str().into())) {
                    Ok(uid) => {
                        self.set_busy(key);
                        let query = Query::User {
                            uid: uid.to_string(),
                        };
                        let reply = HistoryFor::Http { keep_alive };
                        self.json_query(key, &auth::inbox(&uid), query, reply);
                    }
                    Err(e) => self.respond(key, http::json_error(400, e.code, &e.message), false),
                }
            }
            ("GET", "/api/state") => {
                let channel = query_param(&request.query, "channel").unwrap_or_default();
                if let Err(e) = frames::check_channel(&channel) {
                    return self.respond(key, http::json_error(400, e.code, &e.message), false);
                }
                self.set_busy(key);
                self.json_query(key, &channel, Query::State, HistoryFor::Http { keep_alive });
            }
            ("PUT", "/api/state") => self.http_put_state(key, &request),
            ("GET", "/api/stats") => {
                let mut stats = serde_json::to_value(self.snapshot()).unwrap_or_default();
                stats["worker"] = self.slot.into();
                self.respond_json(key, 200, stats.to_string(), keep_alive);
            }
            (
                _,
                "/ws" | "/healthz" | "/api/publish" | "/api/history" | "/api/send"
                | "/api/broadcast",
            )
            | (_, "/api/disconnect" | "/api/presence" | "/api/stats" | "/api/state") => {
                let e = http::json_error(405, "method_not_allowed", "method not allowed");
                self.respond(key, e, false);
            }
            (_, path) => {
                let message = format!(
                    "no such path: {}",
                    path.chars().take(100).collect::<String>()
                );
                self.respond(key, http::json_error(404, "not_found", &message), false);
            }
        }
    }

    fn api_key_ok(&self, request: &Request) -> bool {
        auth::api_key_ok(&self.config.auth.api_keys, presented_key(request))
    }

    /// `PUT /api/state?channel=&key=`: the body is `{"value":…,"version":N}`,
    /// or the bare value with the expected version in `If-Match`.
    fn http_put_state(&mut self, key: usize, request: &Request) {
        let channel = query_param(&request.query, "channel").unwrap_or_default();
        let state_key = query_param(&request.query, "key");
        let checked = frames::check_channel(&channel)
            .and_then(|()| frames::check_key(state_key.map(Into::into)));
        let state_key = match checked {
            Ok(k) => k.into_owned(),
            Err(e) => return self.respond(key, http::json_error(400, e.code, &e.message), false),
        };
        let if_match = request
            .header("if-match")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().trim_matches('"').parse::<u64>());
        let parsed = match if_match {
            Some(Ok(version)) => serde_json::from_slice::<&RawValue>(&request.body)
                .map(|v| (compact(v).into_owned(), version))
                .map_err(|e| e.to_string()),
            Some(Err(_)) => Err("If-Match must be a version number".into()),
            None => serde_json::from_slice::<PutStateBody>(&request.body)
                .map(|b| (compact(b.value).into_owned(), b.version))
                .map_err(|e| {
                    format!("body must be {{\"value\":..,\"version\":N}} or use If-Match: {e}")
                }),
        };
        let (value, version) = match parsed {
            Ok(p) => p,
            Err(message) => {
                return self.respond(key, http::json_error(400, "bad_request", &message), false)
            }
        };
        if let Some(origin) = self.http_origin(key, request) {
            self.set_state(origin, &channel, &state_key, Some(value), version);
        }
    }

    fn set_busy(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.http_busy = true;
        }
    }

    fn bad_body(&mut self, key: usize, shape: &str, e: &serde_json::Error) {
        let message = format!("body must be {shape}: {e}");
        self.respond(key, http::json_error(400, "bad_request", &message), false);
    }

    fn http_send(&mut self, key: usize, request: &Request) {
        let body: SendBody = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return self.bad_body(key, "{\"uid\":..,\"data\":..}", &e),
        };
        match frames::check_uid(Some(body.uid)) {
            Ok(uid) => {
                let inbox = auth::inbox(&uid);
                self.http_write(
                    key,
                    request,
                    &inbox,
                    &compact(body.data),
                    body.ttl,
                    body.idempotency_key,
                );
            }
            Err(e) => self.respond(key, http::json_error(400, e.code, &e.message), false),
        }
    }

    fn http_publish(&mut self, key: usize, request: &Request) {
        let body: PublishBody = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return self.bad_body(key, "{\"channel\":..,\"data\":..}", &e),
        };
        match frames::check_channel(&body.channel) {
            Ok(()) => {
                let (ttl, idempotency_key) = (body.ttl, body.idempotency_key);
                self.http_write(
                    key,
                    request,
                    &body.channel,
                    &compact(body.data),
                    ttl,
                    idempotency_key,
                );
            }
            Err(e) => self.respond(key, http::json_error(400, e.code, &e.message), false),
        }
    }

    /// Publishes for `POST /api/publish` and `/api/send`; the answer comes
    /// once the owner has stored the message.
    fn http_write(
        &mut self,
        key: usize,
        request: &Request,
        channel: &str,
        data: &str,
        ttl: Option<u64>,
        idempotency_key: Option<String>,
    ) {
        let Some(origin) = self.http_origin(key, request) else {
            return;
        };
        self.conns.stats.msgs_in += 1;
        let options = PublishOptions {
            ttl: ttl.filter(|&t| t > 0),
            idempotency_key,
            state: None,
        };
        self.publish(origin, channel, data, options);
    }

    /// Marks the connection as waiting for an owner and names it as the
    /// origin of the request.
    fn http_origin(&mut self, key: usize, request: &Request) -> Option<Origin> {
        let conn = self.conns.get_mut(key)?;
        conn.http_busy = true;
        Some(Origin::Http {
            key,
            conn_id: conn.id,
            keep_alive: request.keep_alive,
        })
    }

    /// Sends the answer to an HTTP request that waited for an owner. The
    /// requests behind it are served from the read queue, not from here:
    /// serving them in this call recursed once per pipelined request.
    pub(super) fn answer_http(
        &mut self,
        key: usize,
        conn_id: u64,
        keep_alive: bool,
        result: Result<String, ErrorReply>,
    ) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == conn_id) else {
            return;
        };
        conn.http_busy = false;
        match result {
            Ok(body) => self.respond_json(key, 200, body, keep_alive),
            Err(e) => self.respond(key, error_response(&e), false),
        }
        self.conns.requeue_read(key);
    }

    fn http_history(&mut self, key: usize, request: &Request) {
        let mut channel = None;
        let mut since = 0;
        let mut limit = None;
        let mut bad = None;
        for (name, value) in form_urlencoded::parse(request.query.as_bytes()) {
            match name.as_ref() {
                "channel" => channel = Some(value.into_owned()),
                "since" => match value.parse() {
                    Ok(n) => since = n,
                    Err(_) => bad = Some("`since` must be a whole number"),
                },
                "limit" => match value.parse() {
                    Ok(n) => limit = Some(n),
                    Err(_) => bad = Some("`limit` must be a whole number"),
                },
                _ => {}
            }
        }
        let checked = match (bad, channel) {
            (Some(message), _) => Err(ErrorReply::new("bad_request", message)),
            (None, None) => Err(ErrorReply::new("bad_request", "`channel` is required")),
            (None, Some(channel)) => frames::check_channel(&channel)
                .and_then(|()| frames::history_limit(limit))
                .map(|limit| (channel, limit)),
        };
        let (channel, limit) = match checked {
            Ok(ok) => ok,
            Err(e) => return self.respond(key, http::json_error(400, e.code, &e.message), false),
        };
        if let Some(conn) = self.conns.get_mut(key) {
            conn.http_busy = true;
        }
        let reply = HistoryFor::Http {
            keep_alive: request.keep_alive,
        };
        self.history(key, &channel, since, limit, reply);
    }

    fn upgrade(&mut self, key: usize, request: &Request, echo: bool) {
        if !request.wants_upgrade() {
            let e = http::json_error(400, "bad_request", "this path takes a WebSocket upgrade");
            self.respond(key, e, false);
            return;
        }
        // Browsers always send Origin; other clients need not, and are let in.
        if let Some(origin) = request.header("origin") {
            let origin = String::from_utf8_lossy(origin);
            if !auth::origin_allowed(&self.config.auth.allowed_origins, &origin) {
                log::info!(
                    "worker {}: refusing an upgrade from origin {origin}",
                    self.slot
                );
                let e = http::json_error(403, "forbidden", "this origin may not connect");
                return self.respond(key, e, false);
            }
        }
        let token = form_urlencoded::parse(request.query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned());
        let user = match token.map(|t| auth::verify(&self.config.auth, &t)) {
            None => None,
            Some(Ok(user)) => Some(user),
            Some(Err(e)) => {
                log::info!("worker {}: refusing an upgrade: {}", self.slot, e.message);
                return self.respond(key, http::json_error(401, e.code, &e.message), false);
            }
        };
        let response = match ws::upgrade_response(&request.head) {
            Ok(response) => response,
            Err(message) => {
                self.respond(key, http::json_error(400, "bad_request", &message), false);
                return;
            }
        };
        let max_frame = self.config.limits.max_frame;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Session::Http { buf } = &mut conn.session else {
            return;
        };
        let early = std::mem::take(buf);
        conn.t.queue(&[&Bytes::from(response)]);
        let ctx =
            WebSocketContext::from_partially_read(early, Role::Server, Some(ws::config(max_frame)));
        conn.session = Session::Ws {
            ctx: Box::new(ctx),
            echo,
        };
        self.conns.mark_dirty(key);
        if let Some(user) = user {
            self.bind_user(key, user);
        }
        // Frames that came with the upgrade request are already buffered.
        self.read_conn(key);
    }

    fn respond_json(&mut self, key: usize, status: u16, body: String, keep_alive: bool) {
        let response = http::response(status, "application/json", body.as_bytes(), keep_alive);
        self.respond(key, response, keep_alive);
    }

    fn respond(&mut self, key: usize, response: Vec<u8>, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.t.queue(&[&Bytes::from(response)]);
        if !keep_alive {
            conn.closing = Some(Instant::now() + super::CLOSE_GRACE);
        }
        self.conns.mark_dirty(key);
    }
}
