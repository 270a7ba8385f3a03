//! `tiqu serve` over real HTTP (reqwest, and raw sockets where a client must misbehave) on the
//! committed tiny fixture, each server on a free port it prints. Every bad request is followed
//! by a normal one that must still work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const TEXT: &str = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-untied")
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_with(&fixture(), args, &[])
    }

    /// Starts `tiqu serve` on port 0, reads the address it prints, and waits for /health.
    fn start_with(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Self::spawn(model, args, env);
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let base = first
            .strip_prefix("serving ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address printed: {first:?}"))
            .trim_end_matches('/')
            .to_string();
        let server = Self { child, base };
        let started = Instant::now();
        loop {
            if let Ok(r) = client().get(server.url("/health")).send() {
                if r.status() == 200 {
                    break;
                }
                assert_eq!(r.status(), 503, "/health while loading");
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the model never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn spawn(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiqu"));
        cmd.args(["--backend", "cpu", "serve", "--model"]).arg(model).args(["--port", "0"]).args(args);
        cmd.env("HF_HUB_OFFLINE", "1").env_remove("TIQU_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start tiqu serve")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        read(client().post(self.url(path)).json(body).send().unwrap())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        read(client().get(self.url(path)).send().unwrap())
    }

    /// A normal extraction, which must work after whatever came before.
    fn still_serves(&self) {
        let (status, body) = self.post("/v1/extract", &json!({"text": TEXT}));
        assert_eq!(status, 200, "a normal request after a bad one: {body}");
        assert!(body["fields"].is_object(), "{body}");
    }

    fn metrics(&self) -> String {
        client().get(self.url("/metrics")).send().unwrap().text().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {text}"));
    (status, body)
}

/// A refusal: `status`, OpenAI's error shape, one line naming every `needle`.
fn assert_error(got: (u16, Value), status: u16, needles: &[&str]) {
    let (s, body) = got;
    assert_eq!(s, status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {body}"));
    assert!(!message.contains('\n'), "{message}");
    for n in needles {
        assert!(message.contains(n), "`{message}` should name `{n}`");
    }
}

/// The value of one metric line (`name{labels} value`), 0 when absent.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn assert_copied(fields: &Value, text: &str) {
    for (k, v) in fields.as_object().unwrap() {
        if let Some(s) = v.as_str() {
            assert!(text.contains(s), "{k} = {s:?} is not a substring of the text");
        } else {
            assert!(v.is_null(), "{k} = {v}");
        }
    }
}

/// Proves: one text and a batch come back with the schema's fields, equal to `tiqu extract`'s
/// on the same model (the service runs the same extractor); a text that fails (empty, not a
/// string) gets its own error while the others succeed; a request schema and constraint apply.
#[test]
fn extract_one_text_a_batch_and_per_text_errors() {
    let server = Server::start(&[]);
    let (status, one) = server.post("/v1/extract", &json!({"text": TEXT}));
    assert_eq!(status, 200, "{one}");
    let names: Vec<&String> = one["fields"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["name", "address", "email", "question"]);
    assert_copied(&one["fields"], TEXT);

    let cli = Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(["--backend", "cpu", "extract", "--model"])
        .arg(fixture())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(format!("{TEXT}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let line: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(one["fields"], line["fields"], "the service and `tiqu extract` disagree");

    let other = "王小明，北京市海淀区中关村大街1号，邮箱 xm@example.org。电梯坏了";
    let (status, batch) = server.post("/v1/extract", &json!({"texts": [TEXT, "", 5, other]}));
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["fields"], one["fields"], "the same text alone and in a batch");
    assert_eq!(results[1]["error"], "empty text");
    assert_eq!(results[2]["error"], "texts[2] is not a string");
    assert_copied(&results[3]["fields"], other);

    let (status, custom) = server.post("/v1/extract", &json!({"text": TEXT, "schema": ["email", {"name": "city", "nullable": true}], "constrain": "json"}));
    assert_eq!(status, 200, "{custom}");
    let names: Vec<&String> = custom["fields"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["email", "city"]);

    // One text that cannot be extracted is the request's failure.
    assert_error(server.post("/v1/extract", &json!({"text": "  "})), 422, &["empty text"]);
    server.still_serves();
}

/// Proves: malformed JSON, wrong shapes, bad schemas (duplicate or empty names), unknown
/// constraints, unknown routes, wrong methods, oversize bodies and headers, more texts than
/// --max-texts each get their status with one JSON line, and the server keeps serving after each.
#[test]
fn bad_requests_get_one_json_line_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-body-bytes", "65536", "--max-texts", "3"]);
    let raw = |body: &str| read(client().post(server.url("/v1/extract")).header("content-type", "application/json").body(body.to_string()).send().unwrap());
    assert_error(raw("{\"text\": "), 400, &["malformed JSON"]);
    server.still_serves();
    assert_error(raw(""), 400, &["empty"]);
    server.still_serves();
    assert_error(raw("[1, 2]"), 400, &["JSON object"]);
    // The last of a key given twice would win, silently (a constraint, then `null`).
    assert_error(raw(r#"{"text": "a", "text": "b"}"#), 400, &["the key `text` appears twice"]);
    let twice = r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}, "response_format": null}"#;
    let r = client().post(server.url("/v1/chat/completions")).header("content-type", "application/json").body(twice).send().unwrap();
    assert_error(read(r), 400, &["the key `response_format` appears twice"]);
    assert_error(server.post("/v1/extract", &json!({"txt": TEXT})), 400, &["unknown field `txt`"]);
    assert_error(server.post("/v1/extract", &json!({"texts": []})), 400, &["non-empty list"]);
    let gzip = client().post(server.url("/v1/extract")).header("content-encoding", "gzip").body(json!({"text": TEXT}).to_string()).send().unwrap();
    assert_error(read(gzip), 415, &["Content-Encoding `gzip` is not supported"]);
    assert_error(server.post("/v1/chat/completions", &json!([[{"role": "user", "content": "hi"}]])), 400, &["the body must be a JSON object"]);
    assert_error(server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": ""}]})), 400, &["messages[0].content is empty"]);
    assert_error(server.post("/v1/extract", &json!({"texts": ["a", "b", "c", "d"]})), 413, &["4 texts in one request; the limit is 3 (--max-texts)"]);
    assert_error(server.post("/v1/extract", &json!({"text": TEXT, "schema": ["a", "b", "a"]})), 400, &["schema", "`a` appears twice"]);
    server.still_serves();
    assert_error(server.post("/v1/extract", &json!({"text": TEXT, "schema": ["a", " "]})), 400, &["fields[1] has a name of spaces only"]);
    assert_error(server.post("/v1/extract", &json!({"text": TEXT, "schema": {"oops": 1}})), 400, &["schema: unknown key `oops`"]);
    assert_error(server.post("/v1/extract", &json!({"text": TEXT, "constrain": "strict"})), 400, &["unknown constraint `strict`"]);
    assert_error(server.get("/v2/nothing"), 404, &["/v2/nothing", "no such route"]);
    server.still_serves();
    assert_error(server.get("/v1/extract"), 405, &["method not allowed"]);
    // Over --max-body-bytes, announced by Content-Length and sent chunked without one.
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(70_000));
    assert_error(raw(&big), 413, &["payload too large", "over 65536 bytes (--max-body-bytes)"]);
    server.still_serves();
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(big.into_bytes()));
    assert_error(read(client().post(server.url("/v1/extract")).body(chunked).send().unwrap()), 413, &["over 65536 bytes (--max-body-bytes)"]);
    server.still_serves();
    // A chunk whose size line is not hex: the answer says what broke, not only that it did.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    let _ = write!(s, "POST /v1/extract HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("the body could not be read") && answer.contains("chunk size"), "{answer}");
    server.still_serves();
    // A header of 1 MiB: hyper refuses it (431) before any handler runs.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    let _ = write!(s, "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "y".repeat(1 << 20));
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);
    server.still_serves();
}

/// Proves: with a key (flag or TIQU_API_KEY), /v1/* needs `Authorization: Bearer KEY` (401
/// otherwise, with WWW-Authenticate) while /health stays open for probes.
#[test]
fn api_key_guards_v1() {
    for (args, env) in [(vec!["--api-key", "s3cret"], vec![]), (vec![], vec![("TIQU_API_KEY", "s3cret")])] {
        let server = Server::start_with(&fixture(), &args, &env);
        let r = client().get(server.url("/v1/models")).send().unwrap();
        assert_eq!(r.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
        assert_error(read(r), 401, &["API key"]);
        assert_error(read(client().get(server.url("/v1/models")).bearer_auth("wrong").send().unwrap()), 401, &["wrong API key"]);
        assert_error(read(client().post(server.url("/v1/extract")).json(&json!({"text": TEXT})).send().unwrap()), 401, &[]);
        let (status, models) = read(client().get(server.url("/v1/models")).bearer_auth("s3cret").send().unwrap());
        assert_eq!((status, models["data"][0]["id"].as_str()), (200, Some("tiny-untied")));
        let (status, _) = read(client().post(server.url("/v1/extract")).bearer_auth("s3cret").json(&json!({"text": TEXT})).send().unwrap());
        assert_eq!(status, 200);
        // The scheme's name is case-insensitive.
        let r = client().get(server.url("/v1/models")).header("authorization", "bearer s3cret").send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(server.get("/health").0, 200);
    }
}

/// A one-text extraction sent by hand with the given `Host` and `Origin` (as a browser page, or
/// a proxy, would send it); the whole answer.
fn post_as(server: &Server, host: &str, origin: &str) -> String {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    let body = json!({"text": TEXT}).to_string();
    write!(s, "POST /v1/extract HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// Proves: a page of another origin cannot make the server work (a browser sends a text/plain
/// POST from any page without asking; the key-less server ran the model for it): 403, the
/// request never queued; the server's own origin and clients without `Origin` are served.
#[test]
fn requests_from_other_origins_are_refused() {
    let server = Server::start(&[]);
    let body = json!({"text": TEXT}).to_string();
    for origin in ["http://evil.example", "null", "http://localhost:1", &format!("https://evil.example/{}", server.addr())] {
        let r = client().post(server.url("/v1/extract")).header("origin", origin).header("content-type", "text/plain").body(body.clone()).send().unwrap();
        assert_error(read(r), 403, &["another origin", origin]);
    }
    assert_eq!(metric(&server.metrics(), "tiqu_tokens_generated_total"), 0.0, "nothing ran");
    let own = format!("http://{}", server.addr());
    let r = client().post(server.url("/v1/extract")).header("origin", own).json(&json!({"text": TEXT})).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.post("/v1/extract", &json!({"text": TEXT})).0, 200);
    // A page whose own name resolves to 127.0.0.1 (DNS rebinding) is "same-origin" by the check
    // above: a server on loopback answers only requests that name a loopback host.
    let port = server.addr().rsplit(':').next().unwrap().to_string();
    let raw = |host: &str| post_as(&server, host, &format!("http://{host}"));
    let rebound = raw(&format!("attacker.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 403") && rebound.contains("not a name of this server"), "{rebound}");
    // An address is no rebound name (a proxy beside the server may pass the pod's IP).
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::ffff:127.0.0.1]:{port}"), format!("10.1.2.3:{port}")] {
        assert!(raw(&host).starts_with("HTTP/1.1 200"), "{host}");
    }
    // The metrics too: a rebound page could otherwise read them.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Two Hosts (or two Origins) could be read differently by a proxy and by this server.
    let two_hosts = post_as(&server, &format!("localhost:{port}\r\nHost: attacker.example"), &format!("http://localhost:{port}"));
    assert!(two_hosts.starts_with("HTTP/1.1 400") && two_hosts.contains("more than one Host"), "{two_hosts}");
    let two_origins = post_as(&server, &format!("localhost:{port}"), &format!("http://localhost:{port}\r\nOrigin: http://evil.example"));
    assert!(two_origins.starts_with("HTTP/1.1 400") && two_origins.contains("more than one Origin"), "{two_origins}");
    drop(server);
    // Behind a reverse proxy that passes its own name through, the name is allowed by flag; a
    // page on it may call the API even where the proxy rewrites Host.
    let proxied = Server::start(&["--allow-host", "api.example.com"]);
    let port = proxied.addr().rsplit(':').next().unwrap().to_string();
    let send = |host: &str, origin: &str| post_as(&proxied, host, origin);
    assert!(send("api.example.com", "https://api.example.com").starts_with("HTTP/1.1 200"));
    assert!(send(&format!("127.0.0.1:{port}"), "https://api.example.com").starts_with("HTTP/1.1 200"));
    assert!(send("evil.example", "https://evil.example").starts_with("HTTP/1.1 403"));
}

fn long_chat(max_tokens: usize) -> Value {
    json!({"model": "tiny-untied", "messages": [{"role": "user", "content": TEXT}], "max_tokens": max_tokens})
}

/// Proves: beyond --max-queue waiting requests the server answers 503 with Retry-After at once
/// (never hangs), the admitted requests all complete, and it serves normally afterwards.
#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["--max-queue", "1", "--max-batch", "1"]);
    let url = server.url("/v1/chat/completions");
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = client().post(url).json(&long_chat(200)).send().unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let (status, body) = read(r);
                (status, retry, body)
            })
        })
        .collect();
    let answers: Vec<(u16, Option<String>, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let full: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    assert!(!full.is_empty(), "no 503 among {:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert!(ok >= 1 && ok + full.len() == answers.len(), "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    for (_, retry, body) in full {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(body["error"]["message"].as_str().unwrap().contains("queue is full"), "{body}");
    }
    server.still_serves();
}

fn schema_chat(stream: bool) -> Value {
    json!({
        "model": "tiny-untied",
        "messages": [{"role": "system", "content": "extract the name and email"}, {"role": "user", "content": TEXT}],
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "response_format": {"type": "json_schema", "json_schema": {"name": "contact", "strict": true, "schema": {
            "type": "object", "additionalProperties": false, "required": ["name", "email"],
            "properties": {"name": {"type": ["string", "null"]}, "email": {"type": ["string", "null"]}}}}},
        "constrain": "copy",
    })
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))).map(str::to_string).collect()
}

/// Proves: chat completions answer in OpenAI's shapes; a json_schema response format is
/// enforced (the content parses, has exactly the schema's keys in order, and in copy mode its
/// values are substrings of the user's message); streaming sends role, content deltas that
/// add up to the same content, the finish reason, usage and `[DONE]`; max_tokens is kept; what
/// cannot be enforced or is not supported is a 400 naming the part.
#[test]
fn chat_completions_with_a_json_schema_whole_and_streamed() {
    let server = Server::start(&[]);
    let (status, whole) = server.post("/v1/chat/completions", &schema_chat(false));
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let object: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("content is not JSON ({e}): {content}"));
    assert_eq!(object.as_object().unwrap().keys().collect::<Vec<_>>(), ["name", "email"]);
    assert_copied(&object, TEXT);
    let usage = &whole["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0 && usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");

    let r = client().post(server.url("/v1/chat/completions")).json(&schema_chat(true)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(&r.text().unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content, "greedy decoding streams what it answers whole");
    assert!(chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty())).count() > 1, "content came in pieces");
    let finish: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0].get("finish_reason")).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, [&json!("stop")]);
    assert_eq!(chunks.last().unwrap()["usage"], *usage, "usage chunk");
    assert_eq!(metric(&server.metrics(), r#"tiqu_chat_streams_total{outcome="done"}"#), 1.0);

    // json_object: the served schema's object.
    let (status, obj) = server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": TEXT}], "response_format": {"type": "json_object"}}));
    assert_eq!(status, 200, "{obj}");
    let parsed: Value = serde_json::from_str(obj["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.as_object().unwrap().keys().collect::<Vec<_>>(), ["name", "address", "email", "question"]);

    // Free text within max_tokens.
    let (status, free) = server.post("/v1/chat/completions", &long_chat(5));
    assert_eq!(status, 200, "{free}");
    assert!(free["usage"]["completion_tokens"].as_u64().unwrap() <= 5, "{free}");
    // Constrained too: the keys the grammar writes are completion tokens that max_tokens caps.
    for n in [1, 3] {
        let (status, cut) = server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": TEXT}], "response_format": {"type": "json_object"}, "max_tokens": n}));
        assert_eq!(status, 200, "{cut}");
        assert_eq!(cut["usage"]["completion_tokens"].as_u64(), Some(n), "{cut}");
        assert_eq!(cut["choices"][0]["finish_reason"], "length", "{cut}");
    }

    let mut bad = schema_chat(false);
    bad["response_format"]["json_schema"]["schema"]["properties"]["age"] = json!({"type": "integer"});
    assert_error(server.post("/v1/chat/completions", &bad), 400, &["response_format.json_schema.schema.properties.age", "integer"]);
    let mut bad = schema_chat(false);
    bad["response_format"]["json_schema"]["schema"]["properties"]["email"]["format"] = json!("date");
    assert_error(server.post("/v1/chat/completions", &bad), 400, &["properties.email.format \"date\" cannot be enforced"]);
    // `format: email` is enforced: the email is null or shaped as an address.
    let mut email = schema_chat(false);
    email["response_format"]["json_schema"]["schema"]["properties"]["email"]["format"] = json!("email");
    let (status, obj) = server.post("/v1/chat/completions", &email);
    assert_eq!(status, 200, "{obj}");
    let content: Value = serde_json::from_str(obj["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    match content["email"].as_str() {
        None => assert!(content["email"].is_null(), "{content}"),
        Some(e) => assert!(tiqu_core::format::is_email(e.as_bytes()), "{content}"),
    }
    // A required (non-null) email and a message without an address: no answer can be right.
    let mut required = email.clone();
    required["response_format"]["json_schema"]["schema"]["properties"]["email"]["type"] = json!("string");
    required["messages"][1]["content"] = json!("没有邮箱的投诉：水压太低");
    assert_error(server.post("/v1/chat/completions", &required), 422, &["no email address for the required field `email`"]);
    // A key the decoder cannot write byte for byte (it holds an added token): 422, not 500.
    let mut think = schema_chat(false);
    let props = think["response_format"]["json_schema"]["schema"]["properties"].as_object_mut().unwrap();
    let name = props.remove("name").unwrap();
    props.insert("<think>".into(), name);
    think["response_format"]["json_schema"]["schema"]["required"] = json!(["<think>", "email"]);
    assert_error(server.post("/v1/chat/completions", &think), 422, &["<think>", "cannot be written"]);
    assert_error(
        server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]})),
        400,
        &["messages"],
    );
    assert_error(server.post("/v1/chat/completions", &json!({"prompt": "hi"})), 400, &["the body needs \"messages\""]);
    let long = "字".repeat(600);
    assert_error(server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": long}]})), 400, &["context is 512"]);
    server.still_serves();
}

/// Proves: /health is 200 once loaded; /v1/models lists the model; /metrics counts requests by
/// route pattern and status and reports queue depth, rows in use, tokens generated, time to
/// first token and latency histograms, in Prometheus' text format.
#[test]
fn health_models_and_metrics() {
    let server = Server::start(&[]);
    let (status, health) = server.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, models) = server.get("/v1/models");
    assert_eq!((status, models["object"].as_str(), models["data"][0]["id"].as_str()), (200, Some("list"), Some("tiny-untied")));
    server.still_serves();
    let _ = server.post("/v1/extract", &json!({"txt": 1}));
    let _ = server.get("/nowhere");
    let (status, _) = server.post("/v1/chat/completions", &long_chat(3));
    assert_eq!(status, 200);
    let m = server.metrics();
    assert_eq!(metric(&m, r#"tiqu_http_requests_total{route="/v1/extract",status="200"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"tiqu_http_requests_total{route="/v1/extract",status="400"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"tiqu_http_requests_total{route="unmatched",status="404"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, "tiqu_queue_depth"), 0.0);
    assert_eq!(metric(&m, "tiqu_rows_in_use"), 0.0);
    assert_eq!(metric(&m, "tiqu_model_ready"), 1.0);
    assert!(metric(&m, "tiqu_tokens_generated_total") > 3.0, "{m}");
    assert_eq!(metric(&m, "tiqu_time_to_first_token_seconds_count"), 1.0, "{m}");
    assert!(metric(&m, r#"tiqu_http_request_duration_seconds_count{route="/v1/chat/completions"}"#) >= 1.0, "{m}");
    assert!(m.contains("# TYPE tiqu_http_request_duration_seconds histogram"));
}

/// Proves: SIGTERM during a streamed completion lets it finish (through `[DONE]`) and the
/// process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut body = json!({"messages": [{"role": "user", "content": TEXT}], "max_tokens": 300, "stream": true});
    body["temperature"] = json!(0);
    let mut r = client().post(server.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    let mut first = [0u8; 16];
    r.read_exact(&mut first).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// Keeps the model thread busy for seconds (`texts` of them: with --max-batch 300, batches of 300
/// it cannot interrupt; with --max-batch 1, one after the other) and returns once the job is
/// running; the thread ends with the request's answer.
fn busy(server: &Server, texts: usize) -> std::thread::JoinHandle<(u16, Value)> {
    let url = server.url("/v1/extract");
    let before = metric(&server.metrics(), r#"tiqu_extract_texts_total{outcome="ok"}"#);
    let job = std::thread::spawn(move || read(client().post(url).json(&json!({"texts": vec![TEXT; texts]})).send().unwrap()));
    while metric(&server.metrics(), r#"tiqu_extract_texts_total{outcome="ok"}"#) == before && metric(&server.metrics(), "tiqu_rows_in_use") == 0.0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    job
}

/// Waits until `tiqu_jobs_cancelled_total` exceeds `before`.
fn wait_cancelled(server: &Server, before: f64, within: Duration) {
    let started = Instant::now();
    while metric(&server.metrics(), "tiqu_jobs_cancelled_total") <= before {
        assert!(started.elapsed() < within, "no job was cancelled within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proves: a client that sends half its body and stalls gets 408 at the deadline; requests the
/// model cannot answer in time get 504 at the deadline (not when the model gets to them), and a
/// request that timed out while queued is skipped, so the server serves normally afterwards.
#[test]
fn deadlines_give_408_and_504() {
    let server = Server::start(&["--timeout-s", "0.5", "--max-batch", "1000", "--max-texts", "3000"]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(s, "POST /v1/extract HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\":").unwrap();
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"message\":\"the request was not complete within 0.5 s"), "{answer}");
    server.still_serves();

    let before = metric(&server.metrics(), "tiqu_jobs_cancelled_total");
    // Three batches of 1,000: the queued request waits at least for the first, and a batch of 300
    // ends within the 0.5 s deadline here (25 tokens a text, the email held to the text's one).
    let job = busy(&server, 3000);
    let started = Instant::now();
    let queued = server.post("/v1/extract", &json!({"text": TEXT}));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // At its deadline, or answered just before it: the large request's 504 frees its rows at
    // the next pass, and the queued text may then finish in the moments it has left.
    let answered = queued.0 == 200;
    if !answered {
        assert_error(queued, 504, &["did not answer within 0.5 s"]);
    }
    assert_error(job.join().unwrap(), 504, &["did not answer within 0.5 s"]);
    // The clients that got 504 are gone, and their texts with them.
    wait_cancelled(&server, if answered { before } else { before + 1.0 }, Duration::from_secs(60));
    server.still_serves();
}

/// Proves: a large request whose client times out stops holding the model between batches: a
/// request after it is answered long before the large one's texts could all have been extracted.
#[test]
fn a_timed_out_request_stops_between_batches() {
    let server = Server::start(&["--timeout-s", "1", "--max-batch", "1", "--max-texts", "3000"]);
    let started = Instant::now();
    // About 20 ms per text here: 3000 texts one by one would hold the model for a minute.
    let (status, _) = server.post("/v1/extract", &json!({"texts": vec![TEXT; 3000]}));
    assert_eq!(status, 504);
    server.still_serves();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// Proves: requests share the rows in turn: a one-text request sent while a long one is
/// decoding is answered long before the long one, not after its last text.
#[test]
fn a_long_request_does_not_hold_every_row() {
    let server = Server::start(&["--timeout-s", "600", "--max-batch", "2"]);
    // Kept small: the other tests' servers share the CPU, and some hold tight deadlines.
    let job = busy(&server, 60);
    let (status, one) = server.post("/v1/extract", &json!({"text": TEXT}));
    assert_eq!(status, 200, "{one}");
    assert!(!job.is_finished(), "the long request should still be decoding");
    assert_eq!(job.join().unwrap().0, 200);
    // Between requests the gauge falls back to 0.
    let started = Instant::now();
    while metric(&server.metrics(), "tiqu_rows_in_use") != 0.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "tiqu_rows_in_use stays above 0 with nothing to decode");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proves: a chat decoding a long answer does not hold extraction: a one-text request sent
/// meanwhile is answered while the chat still decodes (chats ran whole between engine passes:
/// the text waited for the chat's last token), and the chat ends as it would alone.
#[test]
fn a_long_chat_does_not_hold_extraction() {
    let server = Server::start(&["--timeout-s", "600"]);
    let chat = json!({"messages": [{"role": "user", "content": TEXT}], "temperature": 2, "seed": 0, "max_tokens": 400, "stream": true});
    let url = server.url("/v1/chat/completions");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let job = std::thread::spawn(move || {
        let mut r = client().post(url).json(&chat).send().unwrap();
        let mut body = String::new();
        let mut first = [0u8; 1];
        r.read_exact(&mut first).unwrap();
        started_tx.send(()).unwrap();
        r.read_to_string(&mut body).unwrap();
        body
    });
    started_rx.recv().unwrap();
    let (status, one) = server.post("/v1/extract", &json!({"text": TEXT}));
    assert_eq!(status, 200, "{one}");
    assert!(!job.is_finished(), "the chat should still be decoding");
    let body = job.join().unwrap();
    assert!(body.contains("\"finish_reason\":\"length\"") && body.trim_end().ends_with("data: [DONE]"), "{body}");
}

/// Proves: queued chats whose clients leave free their places at once (they held --max-queue,
/// and the gauge, until the running chat ended: every other request got 503 meanwhile).
#[test]
fn queued_requests_of_departed_clients_free_their_places() {
    let server = Server::start(&["--timeout-s", "600", "--max-queue", "2"]);
    let chat = json!({"messages": [{"role": "user", "content": TEXT}], "temperature": 2, "seed": 0, "max_tokens": 400, "stream": true});
    let url = server.url("/v1/chat/completions");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let running = std::thread::spawn(move || {
        let mut r = client().post(url).json(&chat).send().unwrap();
        let mut first = [0u8; 1];
        r.read_exact(&mut first).unwrap();
        started_tx.send(()).unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
    });
    started_rx.recv().unwrap();
    let impatient = Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    for _ in 0..2 {
        assert!(impatient.post(server.url("/v1/chat/completions")).json(&long_chat(400)).send().unwrap_err().is_timeout());
    }
    let left = Instant::now();
    while metric(&server.metrics(), "tiqu_queue_depth") != 0.0 {
        assert!(left.elapsed() < Duration::from_secs(3), "the departed clients' places are still held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.post("/v1/extract", &json!({"text": TEXT})).0, 200);
    assert!(!running.is_finished(), "the running chat should still be decoding");
    assert_eq!(metric(&server.metrics(), "tiqu_jobs_cancelled_total"), 2.0);
    running.join().unwrap();
}

/// Proves: a client that disconnects frees its place: a queued request is skipped when the model
/// gets to it (long before its deadline), and a streamed completion stops decoding; the model
/// then serves the next request. The request is counted, under status 499.
#[test]
fn clients_that_leave_free_their_place() {
    let server = Server::start(&["--timeout-s", "600", "--max-batch", "1"]);
    let before = metric(&server.metrics(), "tiqu_jobs_cancelled_total");
    let job = busy(&server, 300);
    let impatient = Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    assert!(impatient.post(server.url("/v1/extract")).json(&json!({"text": TEXT})).send().unwrap_err().is_timeout());
    assert_eq!(job.join().unwrap().0, 200);
    wait_cancelled(&server, before, Duration::from_secs(5));
    server.still_serves();
    // The request that was never answered is counted all the same.
    assert_eq!(metric(&server.metrics(), r#"tiqu_http_requests_total{route="/v1/extract",status="499"}"#), 1.0);

    let before = metric(&server.metrics(), "tiqu_jobs_cancelled_total");
    let mut r = client().post(server.url("/v1/chat/completions")).json(&json!({"messages": [{"role": "user", "content": TEXT}], "stream": true})).send().unwrap();
    let mut head = [0u8; 8];
    r.read_exact(&mut head).unwrap();
    drop(r);
    // Counted when the decoding loop stops for its client, not at the end of the context.
    wait_cancelled(&server, before, Duration::from_secs(5));
    server.still_serves();
    // Its status was 200 once the stream began: how it ended is counted apart.
    assert_eq!(metric(&server.metrics(), r#"tiqu_chat_streams_total{outcome="left"}"#), 1.0);
}

/// Proves: texts already decoding for a client that has gone leave their rows at the next pass
/// (before, they decoded on to --max-new-tokens for nobody).
#[test]
fn texts_decoding_for_a_departed_client_free_their_rows() {
    let server = Server::start(&["--timeout-s", "600", "--max-batch", "4", "--max-new-tokens", "400"]);
    let impatient = Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let request = json!({"texts": vec![TEXT; 4], "constrain": "json"});
    assert!(impatient.post(server.url("/v1/extract")).json(&request).send().unwrap_err().is_timeout());
    let left = Instant::now();
    while metric(&server.metrics(), "tiqu_rows_in_use") != 0.0 {
        // Freed at the next pass; decoding on to 400 tokens took 8 s more here.
        assert!(left.elapsed() < Duration::from_secs(3), "rows still decoding for a client that has gone");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.still_serves();
}

/// Proves: connections that send nothing, or their headers a byte at a time, are closed after
/// --idle-timeout-s; beyond --max-connections a new connection waits (it is not refused) until a
/// slot frees, and is then served.
#[test]
fn slow_and_idle_connections_are_closed() {
    let server = Server::start(&["--idle-timeout-s", "1", "--max-connections", "4"]);
    // Let the health checks' connections close, so that the four below hold every slot.
    std::thread::sleep(Duration::from_millis(300));
    let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(server.addr()).unwrap()).collect();
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    held.push(slow);
    let started = Instant::now();
    assert_eq!(server.get("/health").0, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(5), "a fifth connection waited {waited:?}");
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("closed by the server, not left open");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    server.still_serves();
}

/// Proves: the port is bound before the model loads, and a model that fails to load (its
/// config.json is fine, its weights are not) stops the server with one error line, exit 1.
#[test]
fn a_model_that_fails_to_load_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let child = Server::spawn(dir.path(), &[], &[]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("serving http://127.0.0.1:"), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(!errors.is_empty() && errors.iter().all(|l| l.contains("model.safetensors")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Proves: `--demo` serves the page, `/demo.json`, and the model folder's checkpoint files only
/// (not other files beside them, nothing outside); the API runs beside it.
#[test]
fn demo_serves_the_page_and_the_checkpoint_files_only() {
    let server = Server::start(&["--demo"]);
    let page = client().get(server.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("<html"));
    let (status, demo) = server.get("/demo.json");
    assert_eq!((status, demo["model"].as_str(), demo["model_name"].as_str()), (200, Some("model/"), Some("tiny-untied")));
    let config = client().get(server.url("/model/config.json")).send().unwrap();
    assert_eq!(config.status(), 200);
    assert_eq!(config.bytes().unwrap().as_ref(), std::fs::read(fixture().join("config.json")).unwrap());
    let weights = client().head(server.url("/model/model.safetensors")).send().unwrap();
    assert_eq!(weights.status(), 200);
    let length = weights.headers()["content-length"].to_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(length, std::fs::metadata(fixture().join("model.safetensors")).unwrap().len());
    for path in ["/model/reference.json", "/model/../Cargo.toml", "/adapter/adapter_config.json", "/.hidden", "/model/%2e%2e/Cargo.toml"] {
        assert_error(server.get(path), 404, &["not found"]);
    }
    assert_error(read(client().delete(server.url("/app.js")).send().unwrap()), 405, &["GET or HEAD"]);
    // A range past a JSON file's end: the error is a JSON body, not an empty one typed as JSON.
    let past = client().get(server.url("/model/config.json")).header("Range", "bytes=999999999-").send().unwrap();
    assert_error(read(past), 416, &["range not satisfiable"]);
    server.still_serves();
}

/// Proves: a client that sends requests and never reads the answers loses its connection once
/// a write has made no progress for --idle-timeout-s; before, it held its slot for ever, and
/// with every slot held so the server answered nobody.
#[test]
fn clients_that_never_read_lose_their_connection() {
    let server = Server::start(&["--idle-timeout-s", "1", "--max-connections", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let stalled = TcpStream::connect(server.addr()).unwrap();
    let writer = {
        let mut s = stalled.try_clone().unwrap();
        // Pipelined requests whose answers fill both sockets' buffers; the write ends with an
        // error once the server has closed the connection.
        std::thread::spawn(move || {
            let requests = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(200);
            for _ in 0..200 {
                if s.write_all(&requests).is_err() {
                    break;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(server.get("/health").0, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    drop(stalled);
    writer.join().unwrap();
    server.still_serves();
}

/// Proves: `tiqu bench serve` drives a server with C concurrent clients and reports, per level,
/// every request answered with its records/s and latency percentiles; against a queue of one it
/// reports the 503s by status instead of hanging or failing.
#[test]
fn bench_serve_reports_each_level() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    std::fs::write(&input, format!("{}\n{}\n", json!({"text": TEXT}), json!({"id": 2, "text": "王小明，邮箱 xm@example.org"}))).unwrap();
    let bench = |server: &Server, clients: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tiqu"))
            .args(["bench", "serve", "--url", &server.base, "--input"])
            .arg(&input)
            .args(["--clients", clients, "--requests", "24", "--json"])
            .env_remove("TIQU_API_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>()
    };
    let server = Server::start(&[]);
    let levels = bench(&server, "1,4");
    assert_eq!(levels.len(), 2);
    for (level, clients) in levels.iter().zip([1, 4]) {
        assert_eq!((level["clients"].as_u64(), level["requests"].as_u64(), level["ok"].as_u64()), (Some(clients), Some(24), Some(24)), "{level}");
        assert!(level["records_per_s"].as_f64().unwrap() > 0.0 && level["p99_ms"].as_f64() >= level["p50_ms"].as_f64(), "{level}");
        assert_eq!(level["errors"], json!({}));
    }
    drop(server);

    let small = Server::start(&["--max-queue", "1", "--max-batch", "1"]);
    let level = bench(&small, "16").remove(0);
    let full = level["errors"]["503"].as_u64().unwrap_or(0);
    assert!(full > 0 && level["ok"].as_u64().unwrap() + full == 24, "{level}");
    small.still_serves();
}
