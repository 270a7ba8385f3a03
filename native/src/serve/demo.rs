//! `tiqu serve-demo`: the browser page (wasm/www, built by scripts/build-wasm) and one model
//! folder's files on localhost, for trying the model in a browser tab. A small std-only HTTP/1.1
//! server: GET and HEAD of plain files, nothing else.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use clap::Args;
use serde_json::json;


#[derive(Args)]
pub struct ServeArgs {
    /// The model folder (or Hub id) whose files the page loads: config.json, tokenizer.json,
    /// safetensors, generation_config.json.
    #[arg(long)]
    model: String,
    /// An adapter folder (adapter_config.json + adapter_model.safetensors) to load on top.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// 0 picks a free port; the address is printed on stdout.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The page's folder (default: wasm/www of this source tree).
    #[arg(long)]
    www: Option<PathBuf>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let model = tiqu_core::checkpoint::resolve_dir(&args.model)?;
    let www = args.www.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm/www"));
    if !www.join("index.html").is_file() {
        return Err(anyhow!("{}: no index.html (pass --www DIR)", www.display()));
    }
    if !www.join("pkg/tiqu_wasm_bg.wasm").is_file() {
        eprintln!("warning: {}: not built yet; run scripts/build-wasm", www.join("pkg").display());
    }
    if let Some(a) = &args.adapter {
        if !a.join("adapter_config.json").is_file() {
            return Err(anyhow!("{}: no adapter_config.json", a.display()));
        }
    }
    let listener = TcpListener::bind((args.host.as_str(), args.port)).map_err(|e| anyhow!("{}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let demo = json!({
        "model": "model/",
        "model_name": model.file_name().map(|n| n.to_string_lossy().to_string()),
        "adapter": args.adapter.as_ref().map(|_| "adapter/"),
    })
    .to_string();
    println!("serving http://{addr}/ (model {})", model.display());
    std::io::stdout().flush()?;
    let site = std::sync::Arc::new(Site { www, model, adapter: args.adapter.clone(), demo });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            let _ = site.answer(stream);
        });
    }
    Ok(())
}

struct Site {
    www: PathBuf,
    model: PathBuf,
    adapter: Option<PathBuf>,
    /// `/demo.json`: where the page finds the served model.
    demo: String,
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "css" => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// One path segment that names a file: no separators, no `..`, no hidden files.
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']) && name != ".."
}

impl Site {
    /// The file a request path names, if it is one this server shows.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        let parts: Vec<&str> = rel.split('/').collect();
        let file = match parts.as_slice() {
            ["model", name] if plain(name) => self.model.join(name),
            ["adapter", name] if plain(name) => self.adapter.as_ref()?.join(name),
            parts if parts.iter().all(|p| plain(p)) => self.www.join(rel),
            _ => return None,
        };
        file.is_file().then_some(file)
    }

    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        loop {
            let mut request = String::new();
            if reader.read_line(&mut request)? == 0 {
                return Ok(());
            }
            let mut keep_alive = true;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                    break;
                }
                if header.to_ascii_lowercase().starts_with("connection:") && header.to_ascii_lowercase().contains("close") {
                    keep_alive = false;
                }
            }
            let mut words = request.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
            if method != "GET" && method != "HEAD" {
                respond(&mut out, "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", method == "HEAD")?;
            } else if path.split('?').next() == Some("/demo.json") {
                respond(&mut out, "200 OK", "application/json", self.demo.as_bytes(), method == "HEAD")?;
            } else if let Some(file) = self.file(path) {
                let f = File::open(&file)?;
                let len = f.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\n\r\n",
                    content_type(&file.to_string_lossy())
                )?;
                if method == "GET" {
                    std::io::copy(&mut BufReader::with_capacity(1 << 20, f), &mut out)?;
                }
            } else {
                respond(&mut out, "404 Not Found", "text/plain", format!("{path}: not found\n").as_bytes(), method == "HEAD")?;
            }
            out.flush()?;
            if !keep_alive {
                return Ok(());
            }
        }
    }
}

fn respond(out: &mut TcpStream, status: &str, kind: &str, body: &[u8], head: bool) -> std::io::Result<()> {
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\r\n", body.len())?;
    if !head {
        out.write_all(body)?;
    }
    Ok(())
}
