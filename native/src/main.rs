//! The `tiqu` command line: a thin layer over tiqu-core.

mod backend;
mod bench;
mod checkpoint;
mod data;
mod eval;
mod extract;
mod generate;
mod memory;
mod merge;
mod quickstart;
mod report;
mod runs;
mod serve;
mod storage;
mod parts;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use backend::BackendName;

#[derive(Parser)]
#[command(name = "tiqu", version, about = "Fine-tune and run Qwen3 to extract structured fields from text")]
#[command(args_override_self = true)]
struct Cli {
    /// Backend to run on (default: the best compiled one that initialises: cuda, wgpu, cpu).
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendName>,
    /// Dtype of the base weights and activations (LoRA adapters, AdamW state, normalisation,
    /// softmax and logits stay f32): auto = bf16 on cuda, f16 for inference on a wgpu adapter
    /// that supports it, else f32.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    dtype: backend::DtypeName,
    #[command(subcommand)]
    command: Command,
}

/// Where the model comes from.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A checkpoint folder (config.json, *.safetensors, tokenizer.json) or a Hub id such as
    /// Qwen/Qwen3-0.6B, looked up in the Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Read tokenizer.json from this folder instead of the model folder.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Apply this LoRA adapter (adapter_config.json + adapter_model.safetensors, as PEFT or
    /// tiqu writes it).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Build the model from config.json alone, with seeded random weights.
    #[arg(long)]
    random_weights: bool,
    /// Seed for --random-weights and for sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    quant: checkpoint::QuantArgs,
}

impl ModelArgs {
    fn load_options(&self) -> checkpoint::LoadOptions<'_> {
        checkpoint::LoadOptions {
            model: &self.model,
            adapter: self.adapter.as_deref(),
            tokenizer: self.tokenizer.as_deref(),
            random_weights: self.random_weights,
            seed: self.seed,
            quant: &self.quant,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// The whole job in minutes on a CPU: synthesise data, train a small model, evaluate it.
    Quickstart(quickstart::QuickstartArgs),
    /// Generate a reply to a chat prompt (thinking disabled).
    Generate(generate::GenerateArgs),
    /// Evaluate a model on SFT records.
    Eval(eval::EvalArgs),
    /// Extract the schema's fields from texts: JSONL out, one line per input line.
    Extract(Box<extract::ExtractArgs>),
    /// The parts of a sharded extraction (extract --shard I/N): check them, join them in order.
    #[command(subcommand)]
    Parts(parts::PartsCommand),
    /// LoRA fine-tuning with the seed notebook's recipe as defaults.
    Train(Box<train::TrainArgs>),
    /// Fold an adapter into the base: a standalone Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Inspect training runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Training data: synthesise records, or import, check and split your own.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Benchmarks on random weights (figures, not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// List the compiled backends and whether each initialises here.
    Doctor,
    /// The extraction service: /v1/extract, OpenAI-compatible /v1/chat/completions, /health,
    /// /metrics; with --demo also the browser page and the model's files.
    Serve(Box<serve::ServeArgs>),
}

/// Refuses a rows-at-once flag (`--batch`, `--max-batch`) outside 1..=[`tiqu_core::engine::MAX_ROWS`].
pub fn check_rows(flag: &str, rows: usize) -> anyhow::Result<()> {
    let max = tiqu_core::engine::MAX_ROWS;
    if rows == 0 || rows > max {
        anyhow::bail!("{flag} must be between 1 and {max} rows, got {rows}");
    }
    Ok(())
}

/// The backends, and the one a command would run on. With `--backend` or `--dtype` it answers
/// whether that choice works here, exit 1 if not (a script checking a machine before a job).
fn doctor(asked: Option<BackendName>) -> anyhow::Result<()> {
    println!("tiqu {}", env!("CARGO_PKG_VERSION"));
    for name in [BackendName::Cpu, BackendName::Wgpu, BackendName::Cuda] {
        match backend::probe(name) {
            Ok(device) => println!("{:5} ok       {device}", name.name()),
            Err(why) => println!("{:5} missing  {why}", name.name()),
        }
    }
    let which = if asked.is_some() { "chosen" } else { "default" };
    let name = match backend::choose(asked) {
        Ok(name) => name,
        Err(e) if asked.is_none() && backend::given_dtype().is_none() => {
            println!("default backend: none ({e})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let dtype = with_backend!(name, |B, device| backend::dtype::<B>(&device, backend::Use::Inference))?;
    println!("{which} backend: {} ({} for inference)", name.name(), tiqu_core::dtype::name(dtype));
    Ok(())
}

/// What to try when the device runs out of memory, for the command running.
fn memory_hint(command: &Command) -> &'static str {
    match command {
        Command::Train(_) => {
            "lower --batch-size (a higher --grad-accum keeps the global batch) or --max-length, use --gradient-checkpointing layer (the least memory), or --dtype bf16"
        }
        Command::Bench(_) => "lower --batch or --seq / --prompt-len",
        _ => "lower --batch or --max-new-tokens, or shrink the weights with --dtype bf16|f16 or --quantize int8",
    }
}

/// The first line of the last panic, with where it happened: `main` reports it.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Device allocators report exhaustion in their own words (cubecl's OutOfMemory, CUDA's
/// CUDA_ERROR_OUT_OF_MEMORY, wgpu's "Out of Memory").
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("out of memory") || m.contains("out-of-memory") || m.contains("out_of_memory") || m.contains("outofmemory")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    backend::set_dtype(cli.dtype);
    match cli.command {
        Command::Doctor => doctor(cli.backend),
        Command::Parts(parts::PartsCommand::Merge(args)) => parts::run_merge(&args),
        Command::Serve(args) => serve::run(backend::choose(cli.backend)?, &args),
        Command::Generate(args) => generate::run(backend::choose(cli.backend)?, &args),
        Command::Quickstart(args) => quickstart::run(backend::choose(cli.backend)?, &args),
        Command::Eval(args) => eval::run(backend::choose(cli.backend)?, &args),
        Command::Extract(args) => extract::run(backend::choose(cli.backend)?, &args),
        Command::Train(args) => train::run(backend::choose(cli.backend)?, &args),
        Command::Merge(args) => merge::run(&args),
        Command::Runs(cmd) => runs::run(&cmd),
        Command::Data(cmd) => data::run(&cmd),
        Command::Bench(cmd) => bench::run(backend::choose(cli.backend)?, &cmd),
    }
}

/// glibc hands every freed block above its mmap threshold back to the kernel, and the next
/// tensor of that size comes back as fresh pages the kernel must zero (and unmapping costs TLB
/// shootdowns across the training threads): 8 % of a 0.6B LoRA step (`perf`: `clear_page_erms`,
/// `smp_call_function_many_cond`). Kept in the heap instead, a step ran 6–14 % faster at the same
/// peak RSS (BENCHMARKS.md). Blocks over 32 MiB (glibc's largest threshold) are still mapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called first thing, before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// The error and its causes on one line, each cause once: core's I/O errors already show their
/// source, which `{:#}` would repeat ("x: stream did not contain valid UTF-8: stream did not…").
fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out.replace('\n', " ")
}

/// clap's usage error on one line: its message and tips, without the usage block (`--help`
/// has it), so a script's log holds one line per failure like every other error.
fn one_line(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            continue;
        }
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    if let Some(rest) = out.split("unexpected argument '-").nth(1) {
        if rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            out.push_str(" (a negative value is written as --flag=-1)");
        }
    }
    out
}

fn main() -> ExitCode {
    keep_freed_memory();
    // A panic is a bug or a device failure, but the user still gets one line, not a backtrace:
    // the hook only records it (a training thread's panic also comes back as an error).
    std::panic::set_hook(Box::new(|info| {
        let msg = backend::panic_message(info.payload()).unwrap_or_default();
        // cubecl puts the reason on the line after its headline.
        let first: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "Caused by:").take(2).collect();
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("{}{at}", first.join(": ")));
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::{DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion};
            if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
                e.exit();
            }
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Serve(_)) {
        remove_partials_on_signal();
    }
    let hint = memory_hint(&cli.command);
    let (message, panicked) = match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(e)) => (error_line(&e), false),
        Err(_) => {
            let panic = LAST_PANIC.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            // `println!` panics when standard output is closed (`tiqu doctor | head -0`): the
            // reader left, which is no bug of tiqu's.
            if let Some(why) = panic.strip_prefix("failed printing to stdout: ") {
                let why = why.split(" (at ").next().unwrap_or(why);
                eprintln!("error: standard output: {why}");
                return ExitCode::FAILURE;
            }
            (format!("internal failure: {panic}"), true)
        }
    };
    if is_out_of_memory(&message) {
        eprintln!("error: out of device memory; {hint} ({message})");
        return ExitCode::FAILURE;
    }
    eprintln!("error: {message}");
    // 101, as Rust's own panics: a bug, which tests tell from a refused input.
    if panicked {
        ExitCode::from(101)
    } else {
        ExitCode::FAILURE
    }
}

/// A Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops the process without running a
/// destructor: the files and folders
/// still being written beside their destinations are removed first, so an interrupted command
/// leaves nothing behind. (`serve` has its own handler: it finishes the requests in flight.)
fn remove_partials_on_signal() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let removed = tiqu_core::checkpoint::save::remove_partials();
                let what = if removed > 0 { format!(": removed {removed} unfinished output(s)") } else { String::new() };
                eprintln!("interrupted{what}");
                // 128 + the signal, as a shell reports a process the signal stopped.
                std::process::exit(128 + signal);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::is_out_of_memory;

    #[test]
    fn device_memory_exhaustion_is_recognised_in_each_backends_words() {
        // cubecl's LaunchError::OutOfMemory, cudarc's driver error, wgpu's allocation error.
        assert!(is_out_of_memory("internal failure: An out-of-memory error happened during launch: Out of memory"));
        assert!(is_out_of_memory("a training thread failed: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"));
        assert!(is_out_of_memory("internal failure: wgpu error: Validation Error: Out of Memory"));
        assert!(!is_out_of_memory("tensor `lm_head.weight` [151936, 1024] takes 594.0 MiB as f32, over the device's limit"));
    }
}
