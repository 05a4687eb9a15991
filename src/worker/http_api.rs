//! The HTTP side of the ws port: health, the publish API, and the upgrade to
//! WebSocket at `/ws` (and `/echo` when `[debug] echo` is on). Requests are
//! parsed, checked and answered on the connection table; one that needs an
//! owner, the links or the stats goes to the worker as a `Call`
//! (`Worker::serve_http`), and its answer comes back through `answer_http`.

use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::conn::Session;
use super::connections::Connections;
use super::dispatch::{Origin, PublishOptions};
use super::pending::HistoryFor;
use super::static_files;
use crate::auth;
use crate::config::Config;
use crate::owner::Query;
use crate::proto::api::{
    error_response, presented_key, query_param, BroadcastBody, DisconnectBody, PublishBody,
    PutStateBody, SendBody,
};
use crate::proto::compact::compact;
use crate::proto::frames::{self, ErrorReply};
use crate::proto::http::{self, Parsed, Request};
use crate::proto::ws;
use crate::proto::ws_codec::Decoder;
use crate::sync::channel;

fn api_key_ok(config: &Config, request: &Request) -> bool {
    auth::api_key_ok(&config.auth.api_keys, presented_key(request))
}

/// Most pipelined requests one connection gets answered per loop turn; the
/// rest wait in its buffer for the next turn (docs/api.md).
pub const MAX_PIPELINED: usize = 256;

/// What the next request in an HTTP connection's buffer needs.
pub enum Next {
    /// Nothing to serve now (no complete request, or one still waits).
    Wait,
    /// Answered here.
    Done,
    /// Answered by the worker: it needs routing or several parts (boxed:
    /// a publish's options make it far larger than the other answers).
    Call(Box<Call>),
}

/// An HTTP request the connection table cannot answer alone.
pub enum Call {
    Publish {
        origin: Origin,
        channel: String,
        data: String,
        options: PublishOptions,
    },
    SetState {
        origin: Origin,
        channel: String,
        key: String,
        value: String,
        version: u64,
    },
    History {
        channel: String,
        since: u64,
        limit: usize,
        reply: HistoryFor,
    },
    /// A question whose answer is one JSON object (`state`, a user).
    Json {
        channel: String,
        query: Query,
        reply: HistoryFor,
    },
    Presence {
        channel: String,
        reply: HistoryFor,
    },
    Broadcast {
        data: String,
        keep_alive: bool,
    },
    Disconnect {
        uid: String,
        keep_alive: bool,
    },
    Stats {
        keep_alive: bool,
    },
    /// Now a WebSocket: bind the token's user, then serve the frames that
    /// came with the upgrade request, if any (`pipelined`).
    Upgraded {
        user: Option<auth::User>,
        pipelined: bool,
    },
}

/// The answer to a broadcast or disconnect call.
pub const OK_BODY: &str = r#"{"ok":true}"#;

impl Connections {
    /// The next complete request in the connection's buffer, answered here
    /// or handed back as a `Call`, one at a time and in order (a request
    /// waiting for an owner holds back the ones behind it).
    pub fn next_http(&mut self, key: usize, config: &Config) -> Next {
        let max_body = self.limits().max_frame;
        let slot = self.slot();
        let Some(conn) = self.get_mut(key) else {
            return Next::Wait;
        };
        if conn.http_busy || conn.closing.is_some() {
            return Next::Wait;
        }
        // Answers pile up unread: wait until the client takes some
        // (`flush_conn` resumes us) rather than cut it off as slow.
        if conn.t.out.len() > conn.t.out_limit() / 2 {
            conn.http_stalled = true;
            return Next::Wait;
        }
        let Session::Http { buf } = &mut conn.session else {
            return Next::Wait;
        };
        match http::parse(buf, max_body) {
            Parsed::Partial => Next::Wait,
            Parsed::Invalid(status, message) => {
                let peer = conn.peer;
                log::info!("worker {slot}: bad HTTP request from {peer}: {message}");
                let code = if status == 413 {
                    "too_large"
                } else {
                    "bad_request"
                };
                self.respond(key, http::json_error(status, code, &message), false);
                Next::Wait
            }
            Parsed::Complete(request, used) => {
                buf.drain(..used);
                conn.active = Instant::now();
                match self.route(key, *request, config) {
                    Some(call) => Next::Call(Box::new(call)),
                    None => Next::Done,
                }
            }
        }
    }

    fn route(&mut self, key: usize, request: Request, config: &Config) -> Option<Call> {
        let keep_alive = request.keep_alive;
        let method = request.method.as_str();
        let http = HistoryFor::Http { keep_alive };
        if request.path.starts_with("/api/") && !api_key_ok(config, &request) {
            // Never echo the presented key: it may be a real one mistyped.
            let message = if config.auth.api_keys.is_empty() {
                "the HTTP API is off: set auth.api_keys in the config"
            } else if presented_key(&request).is_empty() {
                "send an API key: Authorization: Bearer KEY (or X-API-Key: KEY)"
            } else {
                "API key not accepted: check it against auth.api_keys"
            };
            log::info!("worker {}: HTTP API call without a valid key", self.slot());
            return self.bad(key, http::json_error(401, "unauthorized", message));
        }
        match (method, request.path.as_str()) {
            ("GET", "/ws") => self.upgrade(key, &request, false, config),
            ("GET", "/echo") if config.debug.echo => self.upgrade(key, &request, true, config),
            ("GET", path) if static_files::lookup(path).is_some() => {
                if let Some((content_type, body)) = static_files::lookup(path) {
                    let response = http::response(200, content_type, body, keep_alive);
                    self.respond(key, response, keep_alive);
                }
                None
            }
            ("GET", "/healthz") => {
                let body = serde_json::json!({"status": "ok", "worker": self.slot()}).to_string();
                self.respond_json(key, 200, body, keep_alive);
                None
            }
            ("POST", "/api/publish") => self.http_publish(key, &request),
            ("GET", "/api/history") => self.http_history(key, &request),
            ("POST", "/api/send") => self.http_send(key, &request),
            ("POST", "/api/broadcast") => {
                match serde_json::from_slice::<BroadcastBody>(&request.body) {
                    Ok(body) => Some(Call::Broadcast {
                        data: compact(body.data).into_owned(),
                        keep_alive,
                    }),
                    Err(e) => self.bad_body(key, "{\"data\":..}", &e),
                }
            }
            ("POST", "/api/disconnect") => {
                match serde_json::from_slice::<DisconnectBody>(&request.body) {
                    Ok(body) => Some(Call::Disconnect {
                        uid: body.uid,
                        keep_alive,
                    }),
                    Err(e) => self.bad_body(key, "{\"uid\":..}", &e),
                }
            }
            ("GET", "/api/presence") => {
                let channel = query_param(&request.query, "channel").unwrap_or_default();
                if let Err(e) = frames::check_channel(&channel) {
                    return self.bad(key, http::json_error(400, e.code, &e.message));
                }
                self.set_busy(key);
                Some(Call::Presence {
                    channel,
                    reply: http,
                })
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
                        Some(Call::Json {
                            channel: channel::inbox(&uid),
                            query: Query::User {
                                uid: uid.into_owned(),
                            },
                            reply: http,
                        })
                    }
                    Err(e) => self.bad(key, http::json_error(400, e.code, &e.message)),
                }
            }
            ("GET", "/api/state") => {
                let channel = query_param(&request.query, "channel").unwrap_or_default();
                let limit = query_param(&request.query, "limit").map(|l| l.parse::<u64>());
                let checked = frames::check_channel(&channel).and_then(|()| match limit {
                    Some(Err(_)) => Err(ErrorReply::new(
                        "bad_request",
                        "`limit` must be a whole number",
                    )),
                    Some(Ok(n)) => frames::history_limit(Some(n)),
                    None => frames::history_limit(None),
                });
                let limit = match checked {
                    Ok(limit) => limit,
                    Err(e) => return self.bad(key, http::json_error(400, e.code, &e.message)),
                };
                let after = query_param(&request.query, "after").map(|a| a.to_string());
                self.set_busy(key);
                Some(Call::Json {
                    channel,
                    query: Query::State { after, limit },
                    reply: http,
                })
            }
            ("PUT", "/api/state") => self.http_put_state(key, &request),
            ("GET", "/api/stats") => Some(Call::Stats { keep_alive }),
            (
                _,
                "/ws" | "/healthz" | "/api/publish" | "/api/history" | "/api/send"
                | "/api/broadcast",
            )
            | (_, "/api/disconnect" | "/api/presence" | "/api/stats" | "/api/state") => {
                let e = http::json_error(405, "method_not_allowed", "method not allowed");
                self.bad(key, e)
            }
            (_, path) => {
                let message = format!(
                    "no such path: {}",
                    path.chars().take(100).collect::<String>()
                );
                self.bad(key, http::json_error(404, "not_found", &message))
            }
        }
    }

    /// `PUT /api/state?channel=&key=`: the body is `{"value":…,"version":N}`,
    /// or the bare value with the expected version in `If-Match`.
    fn http_put_state(&mut self, key: usize, request: &Request) -> Option<Call> {
        let channel = query_param(&request.query, "channel").unwrap_or_default();
        let state_key = query_param(&request.query, "key");
        let checked = frames::check_channel(&channel)
            .and_then(|()| frames::check_key(state_key.map(Into::into)));
        let state_key = match checked {
            Ok(k) => k.into_owned(),
            Err(e) => return self.bad(key, http::json_error(400, e.code, &e.message)),
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
            Err(message) => return self.bad(key, http::json_error(400, "bad_request", &message)),
        };
        let origin = self.http_origin(key, request)?;
        Some(Call::SetState {
            origin,
            channel,
            key: state_key,
            value,
            version,
        })
    }

    fn set_busy(&mut self, key: usize) {
        if let Some(conn) = self.get_mut(key) {
            conn.http_busy = true;
        }
    }

    /// Answers with an error and closes; no call.
    fn bad(&mut self, key: usize, response: Vec<u8>) -> Option<Call> {
        self.respond(key, response, false);
        None
    }

    fn bad_body(&mut self, key: usize, shape: &str, e: &serde_json::Error) -> Option<Call> {
        let message = format!("body must be {shape}: {e}");
        self.bad(key, http::json_error(400, "bad_request", &message))
    }

    fn http_send(&mut self, key: usize, request: &Request) -> Option<Call> {
        let body: SendBody = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return self.bad_body(key, "{\"uid\":..,\"data\":..}", &e),
        };
        match frames::check_uid(Some(body.uid)) {
            Ok(uid) => {
                let inbox = channel::inbox(&uid);
                let data = compact(body.data).into_owned();
                self.http_write(key, request, inbox, data, body.ttl, body.idempotency_key)
            }
            Err(e) => self.bad(key, http::json_error(400, e.code, &e.message)),
        }
    }

    fn http_publish(&mut self, key: usize, request: &Request) -> Option<Call> {
        let body: PublishBody = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return self.bad_body(key, "{\"channel\":..,\"data\":..}", &e),
        };
        match frames::check_channel(&body.channel) {
            Ok(()) => {
                let (ttl, idempotency_key) = (body.ttl, body.idempotency_key);
                let channel = body.channel.into_owned();
                let data = compact(body.data).into_owned();
                self.http_write(key, request, channel, data, ttl, idempotency_key)
            }
            Err(e) => self.bad(key, http::json_error(400, e.code, &e.message)),
        }
    }

    /// Publishes for `POST /api/publish` and `/api/send`; the answer comes
    /// once the owner has stored the message.
    fn http_write(
        &mut self,
        key: usize,
        request: &Request,
        channel: String,
        data: String,
        ttl: Option<u64>,
        idempotency_key: Option<String>,
    ) -> Option<Call> {
        if let Err(e) = frames::check_idempotency_key(idempotency_key.as_deref()) {
            return self.bad(key, http::json_error(400, e.code, &e.message));
        }
        let origin = self.http_origin(key, request)?;
        self.stats.msgs_in += 1;
        let options = PublishOptions {
            ttl: ttl.filter(|&t| t > 0),
            idempotency_key,
            ..PublishOptions::default()
        };
        Some(Call::Publish {
            origin,
            channel,
            data,
            options,
        })
    }

    /// Marks the connection as waiting for an owner and names it as the
    /// origin of the request.
    fn http_origin(&mut self, key: usize, request: &Request) -> Option<Origin> {
        let conn = self.get_mut(key)?;
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
    pub fn answer_http(
        &mut self,
        key: usize,
        conn_id: u64,
        keep_alive: bool,
        result: Result<String, ErrorReply>,
    ) {
        let Some(conn) = self.get_mut(key).filter(|c| c.id == conn_id) else {
            return;
        };
        conn.http_busy = false;
        match result {
            Ok(body) => self.respond_json(key, 200, body, keep_alive),
            Err(e) => self.respond(key, error_response(&e), false),
        }
        self.requeue_read(key);
    }

    fn http_history(&mut self, key: usize, request: &Request) -> Option<Call> {
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
            Err(e) => return self.bad(key, http::json_error(400, e.code, &e.message)),
        };
        self.set_busy(key);
        let reply = HistoryFor::Http {
            keep_alive: request.keep_alive,
        };
        Some(Call::History {
            channel,
            since,
            limit,
            reply,
        })
    }

    fn upgrade(
        &mut self,
        key: usize,
        request: &Request,
        echo: bool,
        config: &Config,
    ) -> Option<Call> {
        let slot = self.slot();
        if !request.wants_upgrade() {
            let e = http::json_error(400, "bad_request", "this path takes a WebSocket upgrade");
            return self.bad(key, e);
        }
        // Browsers always send Origin; other clients need not, and are let in.
        if let Some(origin) = request.header("origin") {
            let origin = String::from_utf8_lossy(origin);
            if !auth::origin_allowed(&config.auth.allowed_origins, &origin) {
                log::info!("worker {slot}: refusing an upgrade from origin {origin}");
                let e = http::json_error(403, "forbidden", "this origin may not connect");
                return self.bad(key, e);
            }
        }
        let token = form_urlencoded::parse(request.query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned());
        let user = match token.map(|t| auth::verify(&config.auth, &t)) {
            None => None,
            Some(Ok(user)) => Some(user),
            Some(Err(e)) => {
                log::info!("worker {slot}: refusing an upgrade: {}", e.message);
                return self.bad(key, http::json_error(401, e.code, &e.message));
            }
        };
        let response = match ws::upgrade_response(request) {
            Ok(response) => response,
            Err(message) => return self.bad(key, http::json_error(400, "bad_request", &message)),
        };
        let conn = self.get_mut(key)?;
        let Session::Http { buf } = &mut conn.session else {
            return None;
        };
        let early = std::mem::take(buf);
        let pipelined = !early.is_empty();
        conn.t.queue(&[&Bytes::from(response)]);
        conn.session = Session::Ws {
            decoder: Decoder::with_early(early),
            echo,
        };
        self.mark_dirty(key);
        Some(Call::Upgraded { user, pipelined })
    }

    pub fn respond_json(&mut self, key: usize, status: u16, body: String, keep_alive: bool) {
        let response = http::response(status, "application/json", body.as_bytes(), keep_alive);
        self.respond(key, response, keep_alive);
    }

    fn respond(&mut self, key: usize, response: Vec<u8>, keep_alive: bool) {
        let Some(conn) = self.get_mut(key) else {
            return;
        };
        conn.t.queue(&[&Bytes::from(response)]);
        if !keep_alive {
            conn.closing = Some(Instant::now() + super::CLOSE_GRACE);
        }
        self.mark_dirty(key);
    }
}
