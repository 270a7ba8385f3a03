//! `tiqu bench serve`: load on a running `tiqu serve`. C clients, each on its own keep-alive
//! connection, send `/v1/extract` requests of one text each, the next as soon as the last is
//! answered; for each C: records/s, latency percentiles and the errors by status. The client is
//! plain HTTP/1.1 over std sockets: the target is a local `http://host:port`, and a client
//! library would add dependencies to the binary for a benchmark.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct BenchServeArgs {
    /// The server, as `tiqu serve` prints it.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Texts: one per line, or JSONL records with "text" (or, as in SFT records, "input").
    #[arg(long)]
    input: PathBuf,
    /// Concurrent clients; a comma-separated list runs each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Requests per level (default: every text once, and at least one per client).
    #[arg(long)]
    requests: Option<usize>,
    /// Sent as `Authorization: Bearer KEY` (default: $TIQU_API_KEY when set).
    #[arg(long, env = "TIQU_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// One JSON line per level instead of the table.
    #[arg(long)]
    json: bool,
}

/// `host:port` of a plain-HTTP URL.
fn authority(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url {url}: only http://host:port is supported (the server is local)"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        bail!("--url {url}: no host");
    }
    // The requests go to /v1/extract: a path given here would be dropped without a word.
    if !path.is_empty() {
        bail!("--url {url}: give the server's root, http://host:port (the requests go to /v1/extract)");
    }
    Ok(if host.contains(':') && !host.ends_with(']') { host.to_string() } else { format!("{host}:80") })
}

fn read_texts(path: &PathBuf) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut texts = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = std::str::from_utf8(raw).map_err(|e| anyhow!("{}: not UTF-8 (column {})", at(), e.valid_up_to() + 1))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        // A record without its text was sent whole as the text, and measured as if it were one.
        texts.push(match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => match o.get("text").or_else(|| o.get("input")) {
                Some(Value::String(text)) => text.clone(),
                _ => bail!("{}: a JSON record without a \"text\" (or \"input\") string", at()),
            },
            _ => line.to_string(),
        });
    }
    if texts.is_empty() {
        bail!("{}: no texts", path.display());
    }
    Ok(texts)
}

/// One keep-alive connection to the server.
struct Connection {
    addr: String,
    reader: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// Sends one request and reads the answer: its status and body.
    fn post(&mut self, head: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(&self.addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(600)))?;
            self.reader = Some(BufReader::new(stream));
        }
        let Some(reader) = self.reader.as_mut() else { unreachable!("connected above") };
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(body);
        reader.get_mut().write_all(&request)?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&format!("status line {line:?}")))?;
        let (mut length, mut close) = (None, false);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(bad("the connection closed inside the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let length = length.ok_or_else(|| bad("an answer without Content-Length"))?;
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer)?;
        if close {
            self.reader = None;
        }
        Ok((status, answer))
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// What one level of load measured.
struct Level {
    clients: usize,
    requests: usize,
    seconds: f64,
    /// Latencies of the answered extractions, sorted.
    ok: Vec<f64>,
    /// Failures by status (`io` for a broken connection).
    errors: std::collections::BTreeMap<String, usize>,
}

impl Level {
    fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.ok.is_empty() {
            return None;
        }
        let i = ((self.ok.len() as f64 * p).ceil() as usize).clamp(1, self.ok.len()) - 1;
        Some(self.ok[i] * 1000.0)
    }

    fn json(&self, rss_mb: Option<f64>) -> Value {
        json!({
            "server_rss_mb": rss_mb,
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok.len(),
            "records_per_s": self.ok.len() as f64 / self.seconds,
            "p50_ms": self.percentile_ms(0.5),
            "p99_ms": self.percentile_ms(0.99),
            "errors": self.errors,
            "seconds": self.seconds,
        })
    }
}

fn level(addr: &str, auth: &str, texts: &[String], clients: usize, requests: usize) -> Level {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let outcomes: Vec<Vec<(std::result::Result<u16, String>, f64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let next = &next;
                scope.spawn(move || {
                    let mut conn = Connection { addr: addr.to_string(), reader: None };
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return out;
                        }
                        let body = json!({"text": texts[i % texts.len()]}).to_string();
                        let head = format!(
                            "POST /v1/extract HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
                            body.len()
                        );
                        let sent = Instant::now();
                        let outcome = match conn.post(&head, body.as_bytes()) {
                            Ok((200, answer)) if serde_json::from_slice::<Value>(&answer).is_ok_and(|v| v.get("fields").is_some()) => Ok(200),
                            Ok((status, _)) => Err(status.to_string()),
                            Err(_) => {
                                conn.reader = None;
                                Err("io".to_string())
                            }
                        };
                        out.push((outcome, sent.elapsed().as_secs_f64()));
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut result = Level { clients, requests, seconds, ok: Vec::new(), errors: Default::default() };
    for (outcome, latency) in outcomes.into_iter().flatten() {
        match outcome {
            Ok(_) => result.ok.push(latency),
            Err(status) => *result.errors.entry(status).or_default() += 1,
        }
    }
    result.ok.sort_by(f64::total_cmp);
    result
}

/// The server's resident memory after a level, from its /metrics (`None` if it cannot say).
fn server_rss_mb(addr: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with("tiqu_resident_memory_bytes "))?;
    let bytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    (bytes > 0.0).then_some(bytes / (1024.0 * 1024.0))
}

const MAX_CLIENTS: usize = 4096;

pub fn run(args: &BenchServeArgs) -> Result<()> {
    let addr = authority(&args.url)?;
    if args.clients.contains(&0) {
        bail!("--clients: every level needs at least 1 client");
    }
    // A client is a thread with its own connection: far beyond a server's --max-connections
    // (1024 by default) the threads, not the server, are measured, and the OS runs out of them.
    if let Some(&c) = args.clients.iter().find(|&&c| c > MAX_CLIENTS) {
        bail!("--clients {c}: at most {MAX_CLIENTS} clients per level");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let texts = read_texts(&args.input)?;
    // Fails early, with the reason, when nothing listens there.
    TcpStream::connect(&addr).map_err(|e| anyhow!("--url {}: {e} (is `tiqu serve` running?)", args.url))?;
    let auth = args.api_key.as_ref().map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    if !args.json {
        println!("{:>8} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}  errors", "clients", "requests", "ok", "records/s", "p50 ms", "p99 ms", "rss MB");
    }
    for &clients in &args.clients {
        let requests = args.requests.unwrap_or(texts.len()).max(clients);
        let l = level(&addr, &auth, &texts, clients, requests);
        let rss = server_rss_mb(&addr);
        if args.json {
            println!("{}", l.json(rss));
        } else {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
            let errors: Vec<String> = l.errors.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            println!(
                "{:>8} {:>9} {:>7} {:>10.1} {:>9} {:>9} {:>9}  {}",
                clients,
                requests,
                l.ok.len(),
                l.ok.len() as f64 / l.seconds,
                ms(l.percentile_ms(0.5)),
                ms(l.percentile_ms(0.99)),
                ms(rss),
                if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_percentiles() {
        assert_eq!(authority("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert_eq!(authority("http://localhost").unwrap(), "localhost:80");
        assert_eq!(authority("http://[::1]:9000").unwrap(), "[::1]:9000");
        assert!(authority("https://x:1").unwrap_err().to_string().contains("only http://"));
        assert!(authority("http://x:1/v1/chat").unwrap_err().to_string().contains("server's root"));
        let l = Level { clients: 1, requests: 4, seconds: 1.0, ok: vec![0.001, 0.002, 0.003, 0.1], errors: Default::default() };
        assert_eq!((l.percentile_ms(0.5), l.percentile_ms(0.99)), (Some(2.0), Some(100.0)));
    }

    /// Texts are lines or records' "text" (or "input"); a record without a text string, or a line
    /// that is not UTF-8, is named by its line, not sent as it is.
    #[test]
    fn texts_are_lines_or_records_with_a_text() {
        let dir = std::env::temp_dir().join(format!("tiqu-bench-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("texts.jsonl");
        std::fs::write(&file, "plain text\r\n\n{\"text\": \"a\"}\n{\"input\": \"b\"}\n").unwrap();
        assert_eq!(read_texts(&file).unwrap(), ["plain text", "a", "b"]);
        for (body, why) in [(&b"a\n{\"text\": 5}\n"[..], ":2: a JSON record without"), (&b"a\nb\xff\n"[..], ":2: not UTF-8 (column 2)")] {
            std::fs::write(&file, body).unwrap();
            let err = read_texts(&file).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
