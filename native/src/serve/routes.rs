//! The routes: `/health`, `/metrics`, `/v1/models`, `/v1/extract`, `/v1/chat/completions`, and
//! with `--demo` the page and the model's files. Handlers parse and check, enqueue a job, and
//! wait for the model thread's answer until the request's deadline.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tiqu_core::{Constrain, Extraction, Schema};
use tokio::sync::{mpsc, oneshot};
use tower_http::limit::RequestBodyLimitLayer;

use super::chat::{ChatEvent, ChatJob};
use super::limits::{self, ApiError, Deadline};
use super::openai::{ChatRequest, Completion};
use super::state::{AppState, Phase};
use super::worker::{self, ExtractJob, Ticket, Work};

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.settings.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/extract", post(extract))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn(limits::identity_encoding))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::require_api_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::same_origin));
    // The last layer added runs first: errors become JSON around everything, then counting,
    // the deadline, and the body limit closest to the handlers.
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), limits::own_host))
        .layer(middleware::from_fn_with_state(state.clone(), limits::deadline))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(middleware::from_fn_with_state(state.clone(), limits::json_errors))
        .with_state(state)
}

/// Requests by route pattern and status, and their latency to the response's headers. A client
/// that leaves before its answer drops the request's future here: it is counted under status
/// 499 (nginx's "client closed request"), so the counter holds every request.
async fn count(State(state): Shared, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_string(),
        None if state.site.is_some() => "demo".to_string(),
        None => "unmatched".to_string(),
    };
    let mut counted = Counted { state, route, started: std::time::Instant::now(), status: None };
    let response = next.run(request).await;
    counted.status = Some(response.status());
    response
}

struct Counted {
    state: Arc<AppState>,
    route: String,
    started: std::time::Instant,
    /// `None` while no response was made.
    status: Option<StatusCode>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let status = self.status.as_ref().map_or("499", StatusCode::as_str);
        let metrics = &self.state.metrics;
        metrics.latency.with_label_values(&[self.route.as_str()]).observe(self.started.elapsed().as_secs_f64());
        metrics.requests.with_label_values(&[self.route.as_str(), status]).inc();
    }
}

async fn health(State(state): Shared) -> Response {
    match state.phase() {
        Phase::Ready => Json(json!({"status": "ok", "model": state.settings.model_name})).into_response(),
        Phase::Loading => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
            r
        }
        Phase::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "error": why}))).into_response(),
    }
}

async fn metrics(State(state): Shared) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

async fn models(State(state): Shared) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": state.settings.model_name, "object": "model", "created": 0, "owned_by": "tiqu"}]}))
}

async fn fallback(State(state): Shared, request: Request) -> Response {
    match &state.site {
        Some(site) => site.answer(request).await,
        None => ApiError::new(StatusCode::NOT_FOUND, format!("{} {}: no such route", request.method(), request.uri().path())).into_response(),
    }
}

/// The body as JSON, or why not.
fn parse_json(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Value, ApiError> {
    // A chunked body is cut off while it is read, past the check of a declared length: its
    // answer names the limit as that check's does, and a broken chunk says what broke.
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(r.status(), limits::body_too_large(max_body)),
        status => {
            let mut why = Vec::new();
            let mut source = std::error::Error::source(&r);
            while let Some(e) = source {
                why.push(e.to_string());
                source = e.source();
            }
            why.dedup();
            let why = if why.is_empty() { r.body_text() } else { why.join(": ") };
            ApiError::new(status, format!("the body could not be read: {why}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the body is empty: send a JSON object"));
    }
    let value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    // A key given twice keeps its last value when parsed: `"response_format"` twice, the second
    // `null`, would drop the constraint without a word.
    serde::de::DeserializeSeed::deserialize(NoRepeatedKeys, &mut serde_json::Deserializer::from_slice(&body))
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Walks a JSON document and fails at the first object that holds a key twice.
struct NoRepeatedKeys;

impl<'de> serde::de::DeserializeSeed<'de> for NoRepeatedKeys {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoRepeatedKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(format!("the key `{}` appears twice in one object", key.escape_debug())));
            }
            map.next_value_seed(NoRepeatedKeys)?;
            seen.insert(key);
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoRepeatedKeys)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Waits for `rx` until the deadline: 504 after it, 500 when the model thread dropped the job.
async fn until<T>(at: Deadline, state: &AppState, rx: impl std::future::Future<Output = Option<T>>) -> Result<T, ApiError> {
    match tokio::time::timeout_at(at.0, rx).await {
        Err(_) => Err(ApiError::timeout(state.settings.timeout)),
        Ok(None) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model thread stopped before answering")),
        Ok(Some(v)) => Ok(v),
    }
}

/// `/v1/extract`'s body: the texts (each a string, or why it is not), whether it was one
/// `text`, and the schema and constraint.
type ExtractRequest = (Vec<Result<String, String>>, bool, Schema, Constrain);

fn parse_extract(body: Value, state: &AppState) -> Result<ExtractRequest, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object with \"text\" or \"texts\""));
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "text" | "texts" | "schema" | "constrain")) {
        return Err(ApiError::bad_request(format!("unknown field `{k}` (text, texts, schema, constrain)")));
    }
    let (texts, single) = match (obj.get("text"), obj.get("texts")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give \"text\" or \"texts\", not both")),
        (Some(Value::String(t)), None) => (vec![Ok(t.clone())], true),
        (Some(_), None) => return Err(ApiError::bad_request("\"text\" must be a string")),
        (None, Some(Value::Array(list))) if list.len() > state.settings.max_texts => {
            let message = format!("{} texts in one request; the limit is {} (--max-texts): send them in several", list.len(), state.settings.max_texts);
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message));
        }
        (None, Some(Value::Array(list))) if !list.is_empty() => {
            let texts = list
                .iter()
                .enumerate()
                .map(|(i, t)| t.as_str().map(str::to_string).ok_or_else(|| format!("texts[{i}] is not a string")))
                .collect();
            (texts, false)
        }
        (None, Some(_)) => return Err(ApiError::bad_request("\"texts\" must be a non-empty list of strings")),
        (None, None) => return Err(ApiError::bad_request("the body needs \"text\" (a string) or \"texts\" (a list of strings)")),
    };
    let schema = match obj.get("schema") {
        None | Some(Value::Null) => state.settings.schema.clone(),
        Some(s) => Schema::from_json(s.to_string().as_bytes(), "schema").map_err(ApiError::bad_request)?,
    };
    let constrain = match obj.get("constrain") {
        None | Some(Value::Null) => state.settings.constrain,
        Some(Value::String(c)) => c.parse().map_err(|e| ApiError::bad_request(format!("constrain: {e}")))?,
        Some(_) => return Err(ApiError::bad_request("constrain must be \"copy\", \"json\" or \"none\"")),
    };
    Ok((texts, single, schema, constrain))
}

fn extraction_json(e: &Extraction) -> Value {
    let mut out = json!({"fields": e.fields.to_json(), "tokens": e.tokens});
    if let Some(w) = &e.warning {
        out["warning"] = w.clone().into();
    }
    if e.truncated {
        out["truncated"] = true.into();
    }
    out
}

async fn extract(State(state): Shared, Extension(at): Extension<Deadline>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let (texts, single, schema, constrain) = parse_extract(parse_json(body, state.settings.max_body_bytes)?, &state)?;
    let valid: Vec<String> = texts.iter().filter_map(|t| t.as_ref().ok().cloned()).collect();
    let mut done = Vec::new().into_iter();
    if !valid.is_empty() {
        let (reply, rx) = oneshot::channel();
        let _ticket = worker::submit(&state, Work::Extract(ExtractJob { texts: valid, schema, constrain, reply }))?;
        done = until(at, &state, async { rx.await.ok() }).await?.into_iter();
    }
    let results: Vec<Result<Value, String>> = texts
        .into_iter()
        .map(|t| match t {
            Err(why) => Err(why),
            Ok(_) => match done.next() {
                Some(r) => r.map(|e| extraction_json(&e)),
                None => Err("the model thread returned no result for this text".into()),
            },
        })
        .collect();
    if single {
        return match results.into_iter().next() {
            Some(Ok(v)) => Ok(Json(v).into_response()),
            Some(Err(why)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why)),
            None => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no result")),
        };
    }
    let results: Vec<Value> = results.into_iter().map(|r| r.unwrap_or_else(|why| json!({"error": why}))).collect();
    Ok(Json(json!({"results": results})).into_response())
}

fn event_error(status: u16, message: String) -> ApiError {
    ApiError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), message)
}

async fn chat(State(state): Shared, Extension(at): Extension<Deadline>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    let body = parse_json(body, state.settings.max_body_bytes)?;
    super::openai::check_keys(&body).map_err(ApiError::bad_request)?;
    let request: ChatRequest =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("not a chat completion request: {e}")))?;
    let plan = request.plan(&state.settings.schema).map_err(ApiError::bad_request)?;
    let (events, mut rx) = mpsc::unbounded_channel();
    let (stream, include_usage) = (plan.stream, plan.include_usage);
    let job = ChatJob { plan, arrived, events };
    let ticket = worker::submit(&state, Work::Chat(job))?;
    let completion = Completion::new(&state.settings.model_name);
    // The first event comes after the prompt's forward pass: a prompt the model refuses (too
    // long) is still an HTTP error, before any header of a stream goes out.
    let mut event = until(at, &state, rx.recv()).await?;
    if let ChatEvent::Error { status, message } = event {
        return Err(event_error(status, message));
    }
    if stream {
        let mut stream = ChatStream { rx, _ticket: ticket, at, completion, include_usage, pending: VecDeque::new(), ended: None, state: state.clone() };
        stream.pending.push_back(stream.completion.chunk(json!({"role": "assistant", "content": ""}), None).to_string());
        stream.push(event);
        let events = futures_util::stream::unfold(stream, |mut s| async move { s.next().await.map(|e| (Ok::<Event, Infallible>(e), s)) });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut content = String::new();
    loop {
        match event {
            ChatEvent::Delta(piece) => content.push_str(&piece),
            ChatEvent::Done { finish_reason, prompt_tokens, completion_tokens } => {
                drop(ticket);
                let usage = Completion::usage(prompt_tokens, completion_tokens);
                return Ok(Json(completion.whole(&content, finish_reason, usage)).into_response());
            }
            ChatEvent::Error { status, message } => return Err(event_error(status, message)),
        }
        event = until(at, &state, rx.recv()).await?;
    }
}

/// A streamed completion: OpenAI's chunks as server-sent events, then `[DONE]`. Dropping it
/// (the client left) drops the ticket, which stops the decoding at its next token.
struct ChatStream {
    rx: mpsc::UnboundedReceiver<ChatEvent>,
    _ticket: Ticket,
    at: Deadline,
    completion: Completion,
    include_usage: bool,
    pending: VecDeque<String>,
    /// How the stream ended, once it has: `tiqu_chat_streams_total`'s outcome.
    ended: Option<&'static str>,
    state: Arc<AppState>,
}

impl ChatStream {
    fn end(&mut self, outcome: &'static str) {
        self.ended = Some(outcome);
        self.state.metrics.streams.with_label_values(&[outcome]).inc();
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if self.ended.is_none() {
            self.end("left");
        }
    }
}

impl ChatStream {
    fn push(&mut self, event: ChatEvent) {
        match event {
            ChatEvent::Delta(piece) => self.pending.push_back(self.completion.chunk(json!({"content": piece}), None).to_string()),
            ChatEvent::Done { finish_reason, prompt_tokens, completion_tokens } => {
                self.pending.push_back(self.completion.chunk(json!({}), Some(finish_reason)).to_string());
                if self.include_usage {
                    self.pending.push_back(self.completion.usage_chunk(Completion::usage(prompt_tokens, completion_tokens)).to_string());
                }
                self.pending.push_back("[DONE]".into());
                self.end("done");
            }
            // OpenAI's clients raise on an event that carries an error.
            ChatEvent::Error { status, message } => {
                self.pending.push_back(event_error(status, message).body().to_string());
                self.end(if status == 504 { "timeout" } else { "error" });
            }
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                return Some(Event::default().data(data));
            }
            if self.ended.is_some() {
                return None;
            }
            let event = match tokio::time::timeout_at(self.at.0, self.rx.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => ChatEvent::Error { status: 500, message: "the model thread stopped before finishing".into() },
                Err(_) => ChatEvent::Error { status: 504, message: "the completion did not finish within --timeout-s".into() },
            };
            self.push(event);
        }
    }
}
