//! The `tiqu` command line: a thin layer over tiqu-core.

mod backend;
mod bench;
mod checkpoint;
mod data;
mod eval;
mod extract;
mod generate;
mod merge;
mod quickstart;
mod report;
mod runs;
mod serve;
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
    /// LoRA fine-tuning with the seed notebook's recipe as defaults.
    Train(Box<train::TrainArgs>),
    /// Fold an adapter into the base: a standalone Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Inspect training runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Make training data: synthetic complaint records.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Benchmarks on random weights (figures, not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// List the compiled backends and whether each initialises here.
    Doctor,
    /// Serve the browser demo (wasm/www) and a model folder's files on localhost.
    ServeDemo(serve::ServeArgs),
}

fn doctor() -> anyhow::Result<()> {
    println!("tiqu {}", env!("CARGO_PKG_VERSION"));
    for name in [BackendName::Cpu, BackendName::Wgpu, BackendName::Cuda] {
        match backend::probe(name) {
            Ok(device) => println!("{:5} ok       {device}", name.name()),
            Err(why) => println!("{:5} missing  {why}", name.name()),
        }
    }
    match backend::choose(None) {
        Ok(name) => println!("default backend: {}", name.name()),
        Err(e) => println!("default backend: none ({e})"),
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    backend::set_dtype(cli.dtype);
    match cli.command {
        Command::Doctor => doctor(),
        Command::ServeDemo(args) => serve::run(&args),
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

fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let first = msg.lines().next().unwrap_or("");
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal failure: {first}{at}");
    }));
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}
