//! The HTTP API's wire formats: request bodies, the API key a request
//! shows, query parameters, and error answers with their status.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::frames::ErrorReply;
use super::http::{self, Request};

#[derive(Deserialize)]
pub struct PublishBody<'a> {
    #[serde(borrow)]
    pub channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
pub struct SendBody<'a> {
    #[serde(borrow)]
    pub uid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
pub struct BroadcastBody<'a> {
    #[serde(borrow)]
    pub data: &'a RawValue,
}

#[derive(Deserialize)]
pub struct DisconnectBody {
    pub uid: String,
}

#[derive(Deserialize)]
pub struct PutStateBody<'a> {
    #[serde(borrow)]
    pub value: &'a RawValue,
    pub version: u64,
}

/// An error answer with the status its code calls for (409 for a conflict,
/// with the current value and version).
pub fn error_response(e: &ErrorReply) -> Vec<u8> {
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
pub fn presented_key(request: &Request) -> &[u8] {
    let bearer = request.header("authorization").and_then(|v| {
        v.strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
    });
    bearer
        .or_else(|| request.header("x-api-key"))
        .unwrap_or_default()
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}
