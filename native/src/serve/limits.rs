//! What a request may do and how it is refused: the API key, the deadline, and every error as
//! one JSON line `{"error": {"message", "type"}}` (OpenAI's shape, which its clients parse).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::state::AppState;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self { status, message: message.to_string().replace(['\n', '\r'], " "), retry_after: None }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unavailable(message: &str, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    pub fn timeout(timeout: Duration) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, format!("the model did not answer within {} s (--timeout-s)", timeout.as_secs_f64()))
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => "overloaded_error",
            // The client's own slowness (its body did not arrive in time), not the server's load.
            StatusCode::REQUEST_TIMEOUT => "timeout_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A compressed body would be read as JSON bytes as they are (or pass when it happens to parse):
/// refused by name instead, since the service does not decode bodies.
pub async fn identity_encoding(request: Request, next: Next) -> Response {
    match request.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase()) {
        Some(e) if !e.is_empty() && e != "identity" => {
            let message = format!("Content-Encoding `{e}` is not supported: send the body uncompressed");
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response()
        }
        _ => next.run(request).await,
    }
}

/// A page can make its own name resolve to 127.0.0.1 (DNS rebinding) and then read this server
/// as "same-origin", `/metrics` included: a server listening on loopback only answers requests
/// that name a loopback host, an address, or a name allowed with `--allow-host`. A request naming
/// two hosts is refused as HTTP/1.1 requires, since a proxy and this server could each read
/// another one; so is one with two origins.
pub async fn own_host(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let settings = &state.settings;
    if request.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return ApiError::new(StatusCode::BAD_REQUEST, "more than one Host header".to_string()).into_response();
    }
    if request.headers().get_all(header::ORIGIN).iter().nth(1).is_some() {
        return ApiError::new(StatusCode::BAD_REQUEST, "more than one Origin header".to_string()).into_response();
    }
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    // A request without Host is no browser's; rebinding needs a name, so an address (a proxy
    // beside the server passing the pod's IP to a probe) is no rebound page.
    let is_address = host_name(host).trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    if settings.loopback && !host.is_empty() && !is_address && !is_loopback_name(host_name(host)) && !settings.allows(host_name(host)) {
        let message = format!(
            "Host `{host}` is not a name of this server, which listens on loopback only (a page whose name resolves to 127.0.0.1?); a reverse proxy's name is allowed with --allow-host"
        );
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    next.run(request).await
}

/// A page on another site may POST to this server without asking first (a "simple" request:
/// `text/plain` or a form), and a server without a key, on localhost, would run the model for
/// it. Browsers name the page's origin in `Origin`; a request from another origin than the
/// server's own is refused. Clients outside a browser send no `Origin`; the demo page is served
/// from this origin.
pub async fn same_origin(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let settings = &state.settings;
    // (A second Origin is refused by `own_host`, on every route.)
    let Some(origin) = request.headers().get(header::ORIGIN) else { return next.run(request).await };
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin = origin.to_str().unwrap_or("?");
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    let own = authority.is_some_and(|o| (!host.is_empty() && o.eq_ignore_ascii_case(host)) || settings.allows(host_name(o)));
    if own {
        return next.run(request).await;
    }
    let message = format!(
        "requests from pages of another origin ({origin}) are refused: call the API from a server, from the page `tiqu serve --demo` serves, or allow the page's host with --allow-host"
    );
    ApiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// `host[:port]` or `[v6][:port]` without its port.
fn host_name(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `localhost` (and names under it, `localhost.localdomain`), 127.0.0.0/8 and ::1 (also as
/// `::ffff:127.0.0.1`).
pub fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.ends_with(".localhost") || name == "localhost.localdomain" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// When the request must be answered by; handlers waiting for the model stop there (504).
#[derive(Clone, Copy)]
pub struct Deadline(pub Instant);

/// Past the deadline, a request still unanswered (a client still sending its body) gets 408; a
/// moment later than the handlers' own 504 so that a slow model is reported as such.
pub async fn deadline(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let timeout = state.settings.timeout;
    let at = Instant::now() + timeout;
    request.extensions_mut().insert(Deadline(at));
    match tokio::time::timeout_at(at + Duration::from_millis(250), next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request was not complete within {} s (--timeout-s)", timeout.as_secs_f64()))
            .into_response(),
    }
}

/// Compares in time independent of where the first difference is, so the key cannot be guessed
/// byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer KEY` on the routes it wraps, when a key is set.
pub async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.settings.api_key else { return next.run(request).await };
    // The scheme's name is case-insensitive (RFC 9110 §11.1): `bearer KEY` is the same header.
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim_start().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest)
    });
    match given {
        Some(g) if same(g.trim().as_bytes(), key.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong API key").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "this server needs an API key: send `Authorization: Bearer KEY`").into_response(),
    }
}

/// The 413's message, for a body cut off by its declared length or while it was read.
pub fn body_too_large(limit: usize) -> String {
    format!("payload too large: the body is over {limit} bytes (--max-body-bytes)")
}

/// Errors made by layers that answer in plain text or with no body (the body limit's 413,
/// axum's 405, the demo's file server's 416) get the same JSON shape as the handlers' own; the
/// body limit's is said with the limit.
pub async fn json_errors(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // A file served as it is keeps its own type (`config.json`) on an error with no body.
    let empty = axum::body::HttpBody::size_hint(response.body()).exact() == Some(0);
    if status.as_u16() < 400 || (is_json && !empty) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => body_too_large(state.settings.max_body_bytes),
        (_, true) => reason,
        (_, false) => format!("{reason}: {text}"),
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
