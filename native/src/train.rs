//! `tiqu train`: flags and printing over core's training run ([`tiqu_core::run`]), which holds
//! the loop, checkpoints, resume and saving.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tiqu_core::lora::trainable_line;
use tiqu_core::run::{Event, Finished, Observer, Run, RunConfig, RunOptions};
use tiqu_core::train::{Checkpointing, Method};

use crate::backend::BackendName;
use crate::report;

/// Flags that set a [`RunConfig`] setting, each with the setting's `config.toml` name: the flag
/// and the name are written once, here.
macro_rules! setting_flags {
    ($($(#[$attr:meta])* $flag:ident: $ty:ty => $key:literal),* $(,)?) => {
        #[derive(Args)]
        pub struct SettingFlags {
            $($(#[$attr])* #[arg(long)] $flag: Option<$ty>,)*
        }

        impl SettingFlags {
            /// The settings given, by their `config.toml` names.
            fn table(&self) -> Result<toml::Table> {
                let mut t = toml::Table::new();
                $(if let Some(v) = &self.$flag {
                    t.insert($key.into(), toml::Value::try_from(v).map_err(|e| anyhow!("--{}: {e}", stringify!($flag).replace('_', "-")))?);
                })*
                Ok(t)
            }
        }
    };
}

setting_flags! {
    /// A checkpoint folder or a Hub id such as Qwen/Qwen3-0.6B (not needed with --resume).
    model: String => "model",
    /// Seed of the LoRA init, dropout masks, record order and random weights.
    seed: u64 => "seed",
    /// SFT records {system?, instruction, input?, output}: JSON array or JSONL.
    data: PathBuf => "data",
    /// Held-out records: eval loss (and extraction on --eval-sample of them) at every checkpoint.
    eval_data: PathBuf => "eval_data",
    /// Held-out records extracted and scored at each checkpoint (0: the loss alone).
    eval_sample: usize => "eval_sample",
    /// lora (default; the seed's recipe) or full (every parameter trainable: small models,
    /// training from scratch with --random-weights).
    method: String => "method",
    /// Train over the tokens the training data uses only; saved models use Qwen3 ids again.
    restrict_vocab: bool => "restrict_vocab",
    warmup_steps: usize => "warmup_steps",
    /// Standard deviation of the normal init with --random-weights.
    init_std: f64 => "init_std",
    /// Initial query/key RMSNorm weight with --random-weights (transformers: 1).
    qk_norm_init: f64 => "qk_norm_init",
    /// With --random-weights, start layer 0 with a previous-token head (copying is learned
    /// sooner; the quickstart uses it).
    previous_token_init: bool => "previous_token_init",
    r: usize => "r",
    lora_alpha: f64 => "lora_alpha",
    lora_dropout: f64 => "lora_dropout",
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(value_delimiter = ',')]
    target_modules: Vec<String> => "target_modules",
    use_rslora: bool => "use_rslora",
    lr: f64 => "learning_rate",
    adam_beta1: f64 => "adam_beta1",
    adam_beta2: f64 => "adam_beta2",
    adam_epsilon: f64 => "adam_epsilon",
    weight_decay: f64 => "weight_decay",
    /// Clip the global gradient norm (0: no clipping).
    max_grad_norm: f64 => "max_grad_norm",
    batch_size: usize => "per_device_train_batch_size",
    grad_accum: usize => "gradient_accumulation_steps",
    epochs: usize => "num_train_epochs",
    max_steps: usize => "max_steps",
    save_steps: usize => "save_steps",
    max_length: usize => "max_length",
    /// none, balanced (burn's strategy; also `true`) or layer (each layer's input kept, the layer
    /// recomputed in backward, as transformers' gradient checkpointing; the least memory).
    gradient_checkpointing: Checkpointing => "gradient_checkpointing",
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    settings: SettingFlags,
    /// Start from config.json's architecture with seeded random weights.
    #[arg(long)]
    random_weights: bool,
    /// Read tokenizer.json from this folder instead of the model folder.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Continue training this LoRA adapter (PEFT layout) instead of fresh pairs.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The run folder (checkpoints, metrics.jsonl, report.html, the final adapter).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file of settings (the names of config.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its last complete checkpoint, with its saved settings
    /// (only --save-steps, --eval-data and --eval-sample may change).
    #[arg(long)]
    resume: bool,
    /// Print the trainable-parameter line and exit.
    #[arg(long)]
    dry_run: bool,
    /// Skip records that are not valid JSON (counted and reported) instead of stopping.
    #[arg(long)]
    skip_bad_records: bool,
    /// Micro-batches (of --grad-accum) computed at once, each on its own thread; the numbers do
    /// not change. Default: the CPU's cores (up to --grad-accum) on the cpu backend, else 1.
    #[arg(long, value_parser = crate::backend::threads_arg())]
    threads: Option<usize>,
    /// Data-parallel training over these devices of --backend, comma-separated: cuda:0,cuda:1 or
    /// wgpu:0,wgpu:1 (discrete GPUs), wgpu:default, wgpu:cpu. Default: one.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Refused with a reason (training keeps the base weights unquantized), so not in --help:
    /// clap's "unexpected argument" would not say why.
    #[arg(long, hide = true, num_args = 0..=1)]
    quantize: Option<Option<String>>,
    #[arg(long, hide = true)]
    quantize_block: Option<String>,
}

impl TrainArgs {
    fn flags(&self) -> Result<toml::Table> {
        let mut t = self.settings.table()?;
        if self.random_weights {
            t.insert("random_weights".into(), true.into());
        }
        if let Some(a) = &self.adapter {
            t.insert("adapter".into(), a.display().to_string().into());
        }
        if let Some(dir) = &self.tokenizer {
            t.insert("tokenizer".into(), dir.display().to_string().into());
        }
        Ok(t)
    }

    /// Defaults, then `--config`, then flags.
    fn settings(&self) -> Result<RunConfig> {
        let file = self.config.as_ref().map(|p| Ok::<_, anyhow::Error>((p.display().to_string(), RunConfig::parse_file(p)?))).transpose()?;
        let mut layers: Vec<(&str, toml::Table)> = file.iter().map(|(s, t)| (s.as_str(), t.clone())).collect();
        layers.push(("flags", self.flags()?));
        let plain = RunConfig::from_layers(&layers)?;
        match plain.adapter.clone() {
            // From --adapter or the file: the adapter's LoRA settings are the run's.
            Some(dir) => {
                let dir = Path::new(&dir);
                let adapter = tiqu_core::checkpoint::Adapter::open(&tiqu_core::Folder::new(dir))?;
                let source = dir.join("adapter_config.json").display().to_string();
                Ok(plain.continuing(&layers, &adapter.config, &source)?)
            }
            None => Ok(plain),
        }
    }
}

/// Progress on stderr: a bar, a line per step, notes.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Observer for Progress {
    fn event(&mut self, event: &Event) -> tiqu_core::Result<()> {
        match event {
            Event::Started { start_step, total_steps, trainable, resumed } => {
                eprintln!("{trainable}");
                self.bar.set_length(*total_steps as u64);
                self.bar.set_position(*start_step as u64);
                if *resumed {
                    self.bar.suspend(|| eprintln!("resuming at step {start_step} of {total_steps}"));
                }
            }
            Event::Step(r) => {
                let loss = if r.loss.is_nan() { "- (no labelled token)".to_string() } else { format!("{:.4}", r.loss) };
                let msg = format!("loss {loss}  lr {:.2e}  {:.0} tok/s", r.lr, r.tokens_per_s);
                // Read before `suspend`, which holds the bar's lock while it runs the closure.
                let total = self.bar.length().unwrap_or(0);
                self.bar.suspend(|| eprintln!("step {}/{total}  {msg}", r.step));
                self.bar.set_message(msg);
                self.bar.set_position(r.step as u64);
            }
            Event::Eval(r) => {
                let exact = r.eval_all_fields_exact.map(|x| format!("  all fields exact {:.1}% of {}", 100.0 * x, r.eval_records.unwrap_or(0))).unwrap_or_default();
                self.bar.suspend(|| eprintln!("step {}  eval loss {:.4}{exact}", r.step, r.eval_loss));
            }
            Event::Saved { .. } => {}
            Event::Note(n) => self.bar.suspend(|| eprintln!("{n}")),
        }
        Ok(())
    }
}

pub fn run(backend: BackendName, args: &TrainArgs) -> Result<()> {
    if args.quantize.is_some() || args.quantize_block.is_some() {
        bail!("--quantize is for generate, eval and extract: training keeps the base weights unquantized (use --dtype bf16 for a lighter base)");
    }
    if args.dry_run && !args.resume {
        return dry_run(&args.settings()?);
    }
    let out = args.out.as_ref().context("--out is required (the run folder)")?;
    let run = if args.resume {
        let mut flags = args.flags()?;
        if args.config.is_some() {
            bail!("--config cannot be given with --resume: the run keeps the settings in {}", out.join("config.toml").display());
        }
        // Paths given again are compared as the run stored them: absolute.
        for key in ["data", "eval_data", "model", "adapter", "tokenizer"] {
            if let Some(toml::Value::String(p)) = flags.get(key) {
                if Path::new(p).exists() {
                    let abs = std::path::absolute(p).map_err(|e| anyhow!("{p}: {e}"))?;
                    flags.insert(key.into(), abs.display().to_string().into());
                }
            }
        }
        let run = Run::resume(out, &flags)?;
        if args.dry_run {
            // The run's own settings, as a resume would train them.
            return dry_run(run.config());
        }
        run
    } else {
        if args.settings.data.is_none() && args.config.is_none() {
            bail!("--data is required");
        }
        if args.settings.model.is_none() && args.config.is_none() {
            bail!("--model is required (or --resume with --out)");
        }
        if out.exists() && !out.is_dir() {
            bail!("{}: is a file, not a run folder; choose another --out", out.display());
        }
        if !out.exists() && out.symlink_metadata().is_ok() {
            bail!("{}: a symbolic link to nothing (a folder moved or removed?); remove it or choose another --out", out.display());
        }
        if out.exists() && tiqu_core::run::has_content(out) {
            bail!("{}: run folder exists and is not empty; pass --resume to continue it, or another --out", out.display());
        }
        Run::create(out, args.settings()?)?
    };
    let accumulation = run.config().gradient_accumulation_steps;
    if args.devices.len() > accumulation {
        bail!("--devices: {} devices need --grad-accum {} or more (each device takes whole micro-batches of a step)", args.devices.len(), args.devices.len());
    }
    let opts = RunOptions { skip_bad_records: args.skip_bad_records, threads: args.threads.unwrap_or(0), ..Default::default() };
    let done = execute(backend, &run, opts, &args.devices)?;
    let what = if run.config().method == Method::Full { "model" } else { "adapter" };
    println!("{what}: {}", done.output.display());
    println!("report: {}", run.dir().join("report.html").display());
    Ok(())
}

/// Runs `run` on `backend` (threads, dtype and devices chosen as the command line does), then
/// writes its report.
pub fn execute(backend: BackendName, run: &Run, mut opts: RunOptions, specs: &[String]) -> Result<Finished> {
    let cfg = run.config();
    if opts.threads == 0 {
        opts.threads = if backend == BackendName::Cpu { crate::backend::cores().min(cfg.gradient_accumulation_steps) } else { 1 };
    }
    if backend == BackendName::Cpu && opts.threads > 1 {
        // Measured on a quickstart-sized model: 0.35 s/step this way, 0.52 s with 2-way kernels too.
        crate::backend::single_threaded_kernels();
    }
    opts.backend = backend.name().to_string();
    opts.machine = crate::backend::machine(backend);
    let mut progress = Progress { bar: indicatif::ProgressBar::new(0) };
    progress.bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    macro_rules! go {
        ($B:ty, $devices:expr) => {{
            let devices = $devices;
            let dtype = crate::backend::dtype::<$B>(&devices[0], crate::backend::Use::training(cfg.method))?;
            if dtype != burn::tensor::FloatDType::F32 {
                eprintln!("base weights in {}, LoRA adapters and optimizer state in f32", tiqu_core::dtype::name(dtype));
            }
            if devices.len() > 1 {
                eprintln!("data-parallel over {} devices: {}", devices.len(), specs.join(", "));
            }
            opts.dtype = Some(dtype);
            run.execute::<$B>(&devices, &opts, &mut progress)
        }};
    }
    let done = match backend {
        #[cfg(feature = "flex")]
        BackendName::Cpu => go!(burn::backend::Flex, crate::backend::cpu_devices(specs)?),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => go!(burn::backend::Wgpu, crate::backend::wgpu_devices(specs)?),
        #[cfg(feature = "cuda")]
        BackendName::Cuda => go!(burn::backend::Cuda, crate::backend::cuda_devices(specs)?),
        #[allow(unreachable_patterns)]
        other => bail!("backend {} is not compiled in", other.name()),
    };
    progress.bar.finish_and_clear();
    let done = done.map_err(|e| match e {
        tiqu_core::Error::Record { .. } => anyhow!("{e} (pass --skip-bad-records to skip such records)"),
        e => e.into(),
    })?;
    report::write_report(run.dir())?;
    Ok(done)
}

fn dry_run(cfg: &RunConfig) -> Result<()> {
    let model_cfg = crate::checkpoint::resolve(&cfg.model)?.config().clone();
    let base = model_cfg.num_parameters();
    let line = match cfg.method {
        Method::Full => trainable_line(base, base),
        Method::Lora => {
            let trainable = cfg.lora.trainable_params(&model_cfg);
            trainable_line(trainable, base.saturating_add(trainable))
        }
    };
    println!("{line}");
    Ok(())
}
