//! `tiqu serve`: the local extraction service on axum/tokio. The port is bound first and the
//! model loads in the background (`/health` answers 503 until it is ready); HTTP handlers only
//! enqueue jobs on a bounded queue, and one worker thread owns the model (`worker.rs`), so the
//! model never has to be shared between threads and a continuous-batching engine replaces only
//! the worker.

mod chat;
mod demo;
mod limits;
mod listen;
mod metrics;
mod openai;
mod routes;
mod state;
mod worker;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use tiqu_core::{Constrain, Schema};

use crate::backend::BackendName;
use crate::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on; anything but a loopback address exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// A host name requests may carry besides loopback ones, and browser pages on it may call
    /// the API (a reverse proxy that passes its own Host through, a web app behind it); repeat
    /// for several. Without it, on loopback, other Host names get 403 (DNS rebinding).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_host: Vec<String>,
    /// 0 picks a free port; the address is printed on stdout (`serving http://…/`).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $TIQU_API_KEY when set).
    #[arg(long, env = "TIQU_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests waiting for the model beyond the one running; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Texts decoded together in one batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Seconds a request may take, queueing included: 504 when the model has not answered,
    /// 408 when the client has not finished sending.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Seconds a connection may take to send a request's headers, waiting idle between
    /// keep-alive requests included; then it is closed.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout_s: f64,
    /// Connections open at once; more wait in the kernel's backlog until one closes.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Largest request body accepted (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Most texts in one /v1/extract request (413 beyond): one request cannot queue the work of
    /// thousands, which would only end at --timeout-s.
    #[arg(long, default_value_t = 1024)]
    max_texts: usize,
    /// Default fields for /v1/extract and for `response_format: json_object`: a list of names or
    /// {"fields": [{"name", "description"?, "nullable"?}]} (default: name, address, email, question).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Default constraint for /v1/extract: none, json or copy (values copied from the text).
    #[arg(long, default_value = "copy")]
    constrain: Constrain,
    /// Tokens the model may pick per text in /v1/extract.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Speculative decoding for /v1/extract in copy mode (off, auto, or a draft length 1-16):
    /// the same fields in fewer forward passes.
    #[arg(long, default_value = "auto")]
    speculate: tiqu_core::Speculate,
    /// Also serve the browser demo (wasm/www) and the model folder's files, as the page loads them.
    #[arg(long)]
    demo: bool,
    /// The demo page's folder (default: wasm/www of this source tree).
    #[arg(long, requires = "demo")]
    www: Option<PathBuf>,
}

/// Everything the command line decides, checked before the port is bound.
pub struct Settings {
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub max_batch: usize,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub max_texts: usize,
    pub schema: Schema,
    pub constrain: Constrain,
    pub max_new_tokens: usize,
    pub speculate: tiqu_core::Speculate,
    /// The name /v1/models lists and completions report.
    pub model_name: String,
    /// Listening on a loopback address only: requests must then name a loopback host or one of
    /// `allowed_hosts`.
    pub loopback: bool,
    /// `--allow-host` names, lowercase, without a port.
    pub allowed_hosts: Vec<String>,
}

impl Settings {
    /// `name` (without its port) is one of the `--allow-host` names.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed_hosts.contains(&name.trim_end_matches('.').to_ascii_lowercase())
    }
}

impl ServeArgs {
    fn settings(&self, model_dir: &std::path::Path) -> Result<Settings> {
        if self.max_queue == 0 {
            bail!("--max-queue must be at least 1");
        }
        crate::check_rows("--max-batch", self.max_batch)?;
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            bail!("--timeout-s must be a number of seconds in (0, 86400], got {:?}", self.timeout_s);
        }
        if !(self.idle_timeout_s.is_finite() && self.idle_timeout_s > 0.0 && self.idle_timeout_s <= 86_400.0) {
            bail!("--idle-timeout-s must be a number of seconds in (0, 86400], got {:?}", self.idle_timeout_s);
        }
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        // Counted with semaphores, whose permits are bounded; far above what a machine serves.
        const MOST: usize = 1 << 20;
        for (flag, value) in [("--max-queue", self.max_queue), ("--max-connections", self.max_connections)] {
            if value > MOST {
                bail!("{flag} {value} is above the limit of {MOST}");
            }
        }
        if self.max_body_bytes == 0 {
            bail!("--max-body-bytes must be at least 1");
        }
        if self.max_texts == 0 {
            bail!("--max-texts must be at least 1");
        }
        if let Some(bad) = self.allow_host.iter().find(|h| h.trim().is_empty() || (h.contains(['/', ':', ' ']) && !h.starts_with('['))) {
            bail!("--allow-host `{bad}`: give a host name without scheme or port (api.example.com)");
        }
        let api_key = match self.api_key.as_deref().map(str::trim) {
            Some("") => bail!("--api-key (or TIQU_API_KEY) is empty; unset it to serve without a key"),
            Some(key) => Some(key.to_string()),
            None => None,
        };
        if self.demo && api_key.is_some() {
            // The page downloads the weights (and adapter) without a key: the key would guard the
            // API while the model itself is free to take.
            bail!("--demo serves the model's files to anyone, which an API key cannot guard: drop --demo or the key (--api-key / TIQU_API_KEY)");
        }
        let schema = match &self.schema {
            Some(p) => Schema::from_json(&fs::read(p).map_err(|e| anyhow!("--schema {}: {e}", p.display()))?, &p.display().to_string())?,
            None => Schema::default(),
        };
        let model_name = model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.model.model.clone());
        Ok(Settings {
            api_key,
            max_queue: self.max_queue,
            max_batch: self.max_batch,
            timeout: Duration::from_secs_f64(self.timeout_s),
            max_body_bytes: self.max_body_bytes,
            max_texts: self.max_texts,
            schema,
            constrain: self.constrain,
            max_new_tokens: self.max_new_tokens,
            speculate: self.speculate,
            model_name,
            loopback: limits::is_loopback_name(&self.host),
            allowed_hosts: self.allow_host.iter().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).collect(),
        })
    }
}

pub fn run(backend: BackendName, args: &ServeArgs) -> Result<()> {
    // Resolving the folder and reading config.json here makes a wrong --model an immediate error
    // instead of a server that never becomes healthy.
    crate::checkpoint::resolve(&args.model.model)?;
    let model_dir = tiqu_core::checkpoint::resolve_dir(&args.model.model)?;
    let settings = args.settings(&model_dir)?;
    let site = if args.demo { Some(demo::Site::new(&model_dir, args.model.adapter.as_deref(), args.www.as_deref())?) } else { None };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tiqu-http")
        .build()
        .map_err(|e| anyhow!("starting the HTTP runtime: {e}"))?;
    runtime.block_on(serve(backend, args, settings, site, model_dir))
}

async fn serve(backend: BackendName, args: &ServeArgs, settings: Settings, site: Option<demo::Site>, model_dir: PathBuf) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow!("{}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && settings.api_key.is_none() {
        eprintln!("warning: listening on {addr} without --api-key: whoever reaches this port can use the model");
    }
    let (queue, jobs) = worker::queue(settings.max_queue);
    let state = Arc::new(state::AppState::new(settings, queue, site));
    println!("serving http://{addr}/ (model {}, loading)", model_dir.display());
    std::io::stdout().flush()?;

    let model_args = args.model.clone();
    let for_worker = state.clone();
    std::thread::Builder::new()
        .name("tiqu-model".into())
        .spawn(move || worker::run(backend, &model_args, for_worker, jobs))
        .map_err(|e| anyhow!("starting the model thread: {e}"))?;

    let app = routes::router(state.clone());
    let idle = Duration::from_secs_f64(args.idle_timeout_s);
    listen::serve(listener, app, idle, args.max_connections, state::shutdown_signal(state.clone())).await;
    if let Some(why) = state.load_failure() {
        bail!("{why}");
    }
    eprintln!("stopped");
    Ok(())
}
