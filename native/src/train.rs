//! `tiqu train`: the seed notebook's LoRA recipe (transformers + PEFT Trainer) in one loop, or
//! with `--method full` every parameter trained by the same loop (small models, training from
//! scratch). Reproducible (same seed and backend → same curve), resumable from its last
//! checkpoint, and crash-safe (checkpoints are written under a temporary name, then renamed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tiqu_core::lora::{trainable_line, LoraConfig};
use tiqu_core::loss::total_nll;
use tiqu_core::folder::{load_config, load_eos, load_tokenizer, open_adapter, open_weights};
use tiqu_core::params::base_tensors;
use tiqu_core::sft::{parse_records_lenient, Example};
use tiqu_core::train::{epoch_order, linear_lr, step_micro_batches, steps_per_epoch, trainable_names, AdamWConfig, Method, Trainer};
use tiqu_core::vocab::VocabMap;
use tiqu_core::weights::{encode, write_safetensors, Dtype, TensorEntry};
use tiqu_core::{Error as CoreError, Qwen3Config, Qwen3ForCausalLM, RandomInit, SafetensorsFile, Tokenizer};

use crate::backend::BackendName;
use crate::{checkpoint, report, ModelArgs};

/// Every knob of a run; defaults are the seed notebook's recipe. Saved as `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub model: String,
    /// `lora` (the seed's recipe) or `full` (every parameter trainable).
    pub method: String,
    /// Start from config.json's architecture with seeded random weights.
    pub random_weights: bool,
    /// Train over the tokens the training data uses only; saved models use Qwen3 ids again
    /// (`tiqu_core::vocab`).
    pub restrict_vocab: bool,
    /// Standard deviation of the normal init with random weights (transformers' initializer_range).
    pub init_std: f64,
    /// Initial query/key RMSNorm weight with random weights: Qwen3 normalises queries and keys,
    /// which caps attention logits at √head_dim until these weights grow; copying wants sharp
    /// attention early.
    pub qk_norm_init: f64,
    pub data: String,
    pub eval_data: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Optimizer steps of linear warmup before the linear decay.
    pub warmup_steps: usize,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (0: the epochs decide).
    pub max_steps: usize,
    pub save_steps: usize,
    pub max_length: usize,
    pub gradient_checkpointing: bool,
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        let lora = LoraConfig::default();
        Self {
            model: String::new(),
            method: "lora".into(),
            random_weights: false,
            restrict_vocab: false,
            init_std: 0.02,
            qk_norm_init: 1.0,
            data: String::new(),
            eval_data: None,
            r: lora.r,
            lora_alpha: lora.lora_alpha,
            lora_dropout: lora.lora_dropout,
            target_modules: lora.target_modules,
            use_rslora: false,
            learning_rate: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            per_device_train_batch_size: 4,
            gradient_accumulation_steps: 4,
            num_train_epochs: 3,
            max_steps: 0,
            save_steps: 50,
            max_length: 1024,
            gradient_checkpointing: true,
            seed: 42,
        }
    }
}

impl RunConfig {
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
        }
    }

    pub fn method(&self) -> Result<Method> {
        self.method.parse().map_err(|e: String| anyhow!("{e}"))
    }

    pub fn validate(&self) -> Result<()> {
        if self.method()? == Method::Lora {
            self.lora().validate()?;
        }
        Ok(())
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.adam_beta1, beta2: self.adam_beta2, eps: self.adam_epsilon, weight_decay: self.weight_decay }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// SFT records {system?, instruction, input?, output}: JSON array or JSONL.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out records: eval loss at every checkpoint and at the end.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// The run folder (checkpoints, metrics.jsonl, report.html, the final adapter).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file of knobs (the names of config.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, with its saved config.
    #[arg(long)]
    resume: bool,
    /// Print the trainable-parameter line and exit.
    #[arg(long)]
    dry_run: bool,
    /// Skip records that are not valid JSON (counted and reported) instead of stopping.
    #[arg(long)]
    skip_bad_records: bool,
    /// lora (default; the seed's recipe) or full (every parameter trainable: small models,
    /// training from scratch with --random-weights).
    #[arg(long)]
    method: Option<String>,
    /// Train over the tokens the training data uses only (a small model's output layer would
    /// otherwise cost more than the rest); saved models use Qwen3 ids again.
    #[arg(long)]
    restrict_vocab: Option<bool>,
    /// Optimizer steps of linear warmup before the linear decay.
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Standard deviation of the normal init with --random-weights.
    #[arg(long)]
    init_std: Option<f64>,
    /// Initial query/key RMSNorm weight with --random-weights (transformers: 1).
    #[arg(long)]
    qk_norm_init: Option<f64>,
    /// Micro-batches (of --grad-accum) computed at once, each on its own thread; the numbers do
    /// not change. Default: the CPU's cores (up to --grad-accum) on the cpu backend, else 1.
    #[arg(long)]
    threads: Option<usize>,
    /// Data-parallel training over these devices of --backend, comma-separated: cuda:0,cuda:1 or
    /// wgpu:0,wgpu:1 (discrete GPUs), wgpu:default, wgpu:cpu. Each step's micro-batches
    /// (--grad-accum) are spread over them; the numbers are those of one device. Default: one.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    #[arg(long)]
    r: Option<usize>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    #[arg(long)]
    use_rslora: Option<bool>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    adam_beta1: Option<f64>,
    #[arg(long)]
    adam_beta2: Option<f64>,
    #[arg(long)]
    adam_epsilon: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: no clipping).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    save_steps: Option<usize>,
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long)]
    gradient_checkpointing: Option<bool>,
}

impl TrainArgs {
    /// Defaults, then `--config`, then flags.
    fn effective(&self) -> Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?
            }
            None => RunConfig::default(),
        };
        cfg.model = self.model.model.clone();
        cfg.random_weights = cfg.random_weights || self.model.random_weights;
        if let Some(d) = &self.data {
            cfg.data = d.display().to_string();
        }
        if let Some(d) = &self.eval_data {
            cfg.eval_data = Some(d.display().to_string());
        }
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {$(if let Some(v) = &self.$flag { cfg.$field = v.clone(); })*};
        }
        set!(r => r, lora_alpha => lora_alpha, lora_dropout => lora_dropout, target_modules => target_modules,
             use_rslora => use_rslora, lr => learning_rate, adam_beta1 => adam_beta1, adam_beta2 => adam_beta2,
             adam_epsilon => adam_epsilon, weight_decay => weight_decay, max_grad_norm => max_grad_norm,
             batch_size => per_device_train_batch_size, grad_accum => gradient_accumulation_steps,
             epochs => num_train_epochs, max_steps => max_steps, save_steps => save_steps,
             max_length => max_length, gradient_checkpointing => gradient_checkpointing, method => method,
             restrict_vocab => restrict_vocab, warmup_steps => warmup_steps, init_std => init_std, qk_norm_init => qk_norm_init);
        cfg.seed = self.model.seed;
        if cfg.per_device_train_batch_size == 0 || cfg.gradient_accumulation_steps == 0 {
            bail!("batch size and gradient accumulation must be at least 1");
        }
        if cfg.max_length < 2 {
            bail!("--max-length must be at least 2");
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What a run needs besides its [`RunConfig`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// Read tokenizer.json from this folder instead of the model folder.
    pub tokenizer: Option<PathBuf>,
    /// Continue training this LoRA adapter instead of starting fresh pairs.
    pub adapter: Option<PathBuf>,
    pub skip_bad_records: bool,
    /// Micro-batches computed at once on their own threads (default: on the CPU, as many as
    /// there are cores, up to the accumulation steps; elsewhere 1). Results do not depend on it.
    pub threads: Option<usize>,
    /// `--devices` as given (empty: the backend's default device).
    pub devices: Vec<String>,
}

/// Where a finished run left its results.
pub struct Finished {
    /// The adapter folder (LoRA) or the standalone model folder (full).
    pub output: PathBuf,
    pub report: PathBuf,
    pub summary: serde_json::Value,
}

pub fn run(backend: BackendName, args: &TrainArgs) -> Result<()> {
    if args.dry_run {
        return dry_run(args);
    }
    if args.model.quant.get().is_some() {
        bail!("--quantize is for generate, eval and extract: training keeps the base weights unquantized (use --dtype bf16 for a lighter base)");
    }
    let out = args.out.as_ref().context("--out is required (the run folder)")?;
    let cfg = if args.resume {
        let path = out.join("config.toml");
        let text = fs::read_to_string(&path).map_err(|e| anyhow!("--resume: {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?
    } else {
        if args.data.is_none() && args.config.is_none() {
            bail!("--data is required");
        }
        if out.exists() && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{}: run folder exists and is not empty; pass --resume to continue it, or another --out", out.display());
        }
        args.effective()?
    };
    let opts = RunOptions {
        resume: args.resume,
        tokenizer: args.model.tokenizer.clone(),
        adapter: args.model.adapter.clone(),
        skip_bad_records: args.skip_bad_records,
        threads: args.threads,
        devices: args.devices.clone(),
    };
    let done = execute(backend, &cfg, &opts, out)?;
    let what = if cfg.method()? == Method::Full { "model" } else { "adapter" };
    println!("{what}: {}", done.output.display());
    println!("report: {}", done.report.display());
    Ok(())
}

/// Runs (or resumes) training into the run folder `out`.
pub fn execute(backend: BackendName, cfg: &RunConfig, opts: &RunOptions, out: &Path) -> Result<Finished> {
    if cfg.data.is_empty() {
        bail!("no training data: pass --data or set `data` in the config");
    }
    cfg.validate()?;
    let auto = if backend == BackendName::Cpu { crate::backend::cores().min(cfg.gradient_accumulation_steps) } else { 1 };
    let opts = &RunOptions { threads: Some(opts.threads.unwrap_or(auto).max(1)), ..opts.clone() };
    if backend == BackendName::Cpu && opts.threads > Some(1) {
        // Measured on a quickstart-sized model: 0.35 s/step this way, 0.52 s with 2-way kernels too.
        crate::backend::single_threaded_kernels();
    }
    if opts.devices.len() > cfg.gradient_accumulation_steps {
        bail!(
            "--devices: {} devices need --grad-accum {} or more (each device takes whole micro-batches of a step)",
            opts.devices.len(),
            opts.devices.len()
        );
    }
    macro_rules! go {
        ($B:ty, $devices:expr) => {{
            let devices = $devices;
            let (main, more) = devices.split_first().expect("at least one device");
            if cfg.gradient_checkpointing {
                train_on::<burn::backend::Autodiff<$B, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>>(main, more, opts, cfg, out)
            } else {
                train_on::<burn::backend::Autodiff<$B>>(main, more, opts, cfg, out)
            }
        }};
    }
    match backend {
        #[cfg(feature = "flex")]
        BackendName::Cpu => go!(burn::backend::Flex, crate::backend::cpu_devices(&opts.devices)?),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => go!(burn::backend::Wgpu, crate::backend::wgpu_devices(&opts.devices)?),
        #[cfg(feature = "cuda")]
        BackendName::Cuda => go!(burn::backend::Cuda, crate::backend::cuda_devices(&opts.devices)?),
        #[allow(unreachable_patterns)]
        other => bail!("backend {} is not compiled in", other.name()),
    }
}

fn dry_run(args: &TrainArgs) -> Result<()> {
    let cfg = args.effective()?;
    let dir = checkpoint::resolve(&cfg.model)?;
    let model_cfg = tiqu_core::folder::load_config(&dir)?;
    if cfg.method()? == Method::Full {
        let all = model_cfg.num_parameters();
        println!("{}", trainable_line(all, all));
        return Ok(());
    }
    let lora = cfg.lora();
    let trainable = lora.trainable_params(&model_cfg);
    println!("{}", trainable_line(trainable, model_cfg.num_parameters() + trainable));
    Ok(())
}

/// Records → examples, cut at the end to `max_length` tokens. Returns (examples, records cut).
fn load_examples(path: &Path, tok: &Tokenizer, max_length: usize, skip_bad: bool) -> Result<(Vec<Example>, usize, usize)> {
    let source = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| anyhow!("{source}: {e}"))?;
    let (records, bad) = parse_records_lenient(&text, &source)?;
    if let Some((line, why)) = bad.first() {
        if !skip_bad {
            bail!("{source}:{line}: {why} (pass --skip-bad-records to skip such records)");
        }
    }
    let mut cut = 0;
    let mut out = Vec::with_capacity(records.len());
    for rec in &records {
        let mut ex = Example::new(&rec.value, tok)?;
        if ex.len() > max_length {
            cut += 1;
            if ex.prompt.len() >= max_length {
                ex.prompt.truncate(max_length);
                ex.response.clear();
            } else {
                ex.response.truncate(max_length - ex.prompt.len());
            }
        }
        out.push(ex);
    }
    if out.is_empty() {
        bail!("{source}: no usable records");
    }
    Ok((out, cut, bad.len()))
}

fn eval_loss<B: Backend>(model: &tiqu_core::Qwen3ForCausalLM<B>, examples: &[Example]) -> Result<f64> {
    let (nll, tokens) = total_nll(model, examples, 8)?;
    Ok(nll / tokens.max(1) as f64)
}

/// Where the run stands; saved beside every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    global_step: usize,
    total_steps: usize,
    elapsed_s: f64,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| anyhow!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

fn tensors_file(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let entries: Vec<TensorEntry> =
        tensors.iter().map(|(n, s, _)| TensorEntry { name: n.clone(), dtype: Dtype::F32, shape: s.clone() }).collect();
    let mut bytes = Vec::new();
    write_safetensors(&mut bytes, &entries, &[("format", "pt")], |i| Ok(encode(&tensors[i].2, Dtype::F32)))?;
    Ok(bytes)
}

/// Writes `adapter_config.json` + `adapter_model.safetensors` into `dir` (PEFT's layout).
fn save_adapter<B: Backend>(dir: &Path, model: &tiqu_core::Qwen3ForCausalLM<B>, cfg: &RunConfig) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        model.adapter_tensors()?.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
    write_atomically(&dir.join("adapter_model.safetensors"), &tensors_file(&tensors)?)?;
    let config = serde_json::to_vec_pretty(&cfg.lora().to_peft_json(&cfg.model))?;
    write_atomically(&dir.join("adapter_config.json"), &config)?;
    Ok(())
}

fn to_vec<B: Backend>(t: Tensor<B, 2>) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = t.dims().to_vec();
    let values = t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?;
    Ok((shape, values))
}

/// Files a model folder carries besides weights and config, copied into saved models.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

/// What a saved full model needs to be a standalone Hugging Face folder.
struct ModelFolder<'a> {
    config: &'a Qwen3Config,
    eos_token_ids: &'a [u32],
    /// Where tokenizer.json and tokenizer_config.json come from.
    tokenizer_dir: &'a Path,
    vocab: Option<&'a VocabMap>,
}

impl ModelFolder<'_> {
    /// Writes config.json, generation_config.json, the tokenizer files and model.safetensors (f32,
    /// the full Qwen3 vocabulary) into `dir`.
    fn save<B: Backend>(&self, dir: &Path, model: &Qwen3ForCausalLM<B>) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        let mut tensors = base_tensors(model)?;
        if let Some(vocab) = self.vocab {
            for (name, shape, values) in tensors.iter_mut() {
                if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                    *values = vocab.expand_rows(values, shape[1]);
                    shape[0] = vocab.full_size();
                }
            }
        }
        write_atomically(&dir.join("model.safetensors"), &tensors_file(&tensors)?)?;
        let mut config = self.config.raw.clone();
        let key = if config.get("dtype").is_some() { "dtype" } else { "torch_dtype" };
        config[key] = json!("float32");
        write_atomically(&dir.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
        let generation = json!({"bos_token_id": self.config.bos_token_id, "eos_token_id": self.eos_token_ids});
        write_atomically(&dir.join("generation_config.json"), &serde_json::to_vec_pretty(&generation)?)?;
        for name in TOKENIZER_FILES {
            let from = self.tokenizer_dir.join(name);
            if from.exists() {
                fs::copy(&from, dir.join(name)).map_err(|e| anyhow!("{}: {e}", from.display()))?;
            }
        }
        Ok(())
    }
}

fn save_checkpoint<B: AutodiffBackend>(run: &Path, trainer: &Trainer<B>, cfg: &RunConfig, folder: &ModelFolder, state: &TrainerState) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.global_step);
    let tmp = run.join(format!(".{name}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    match trainer.method {
        Method::Lora => save_adapter(&tmp, &trainer.model, cfg)?,
        Method::Full => folder.save(&tmp, &trainer.model)?,
    }
    let names = trainable_names(&trainer.model, trainer.method);
    let mut moments = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (s, m) = to_vec(trainer.state.exp_avg[i].clone())?;
        let (_, v) = to_vec(trainer.state.exp_avg_sq[i].clone())?;
        moments.push((format!("{name}.exp_avg"), s.clone(), m));
        moments.push((format!("{name}.exp_avg_sq"), s, v));
    }
    fs::write(tmp.join("optimizer.safetensors"), tensors_file(&moments)?)?;
    fs::write(tmp.join("trainer_state.json"), serde_json::to_vec_pretty(state)?)?;
    let dest = run.join(&name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| anyhow!("{}: {e}", dest.display()))?;
    Ok(dest)
}

/// The newest complete checkpoint of a run folder.
fn last_checkpoint(run: &Path) -> Option<(usize, PathBuf)> {
    fs::read_dir(run)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path().join("trainer_state.json").exists().then_some((step, e.path()))
        })
        .max_by_key(|(s, _)| *s)
}

fn restore<B: AutodiffBackend>(trainer: &mut Trainer<B>, dir: &Path) -> Result<TrainerState> {
    let state: TrainerState = serde_json::from_slice(&fs::read(dir.join("trainer_state.json"))?)?;
    let path = dir.join("optimizer.safetensors");
    let file = fs::File::open(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut moments = SafetensorsFile::open(vec![(path.display().to_string(), Box::new(std::io::BufReader::new(file)))])?;
    let device = trainer.model.device();
    for (i, name) in trainable_names(&trainer.model, trainer.method).iter().enumerate() {
        for (which, slot) in [("exp_avg", &mut trainer.state.exp_avg[i]), ("exp_avg_sq", &mut trainer.state.exp_avg_sq[i])] {
            let (shape, values) = moments.read_f32(&format!("{name}.{which}"))?;
            *slot = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(values, [shape[0], shape[1]]), &device).inner();
        }
    }
    trainer.state.step = state.global_step;
    Ok(state)
}

/// The model training starts from: a checkpoint's weights (full method, resuming), seeded random
/// weights, or the base checkpoint; narrowed to the compact vocabulary; with LoRA pairs added or
/// loaded (from `adapter`) for the LoRA method.
fn initial_model<B: Backend>(
    cfg: &RunConfig,
    base: &Path,
    config: &Qwen3Config,
    vocab: Option<&VocabMap>,
    resume_dir: Option<&Path>,
    adapter: Option<&Path>,
    device: &B::Device,
) -> Result<Qwen3ForCausalLM<B>> {
    let method = cfg.method()?;
    let usage = crate::backend::Use::training(method);
    // Cast layer by layer as the weights load: the whole base is never f32 in memory.
    let load = tiqu_core::LoadOptions { dtype: Some(crate::backend::dtype::<B>(device, usage)?), ..Default::default() };
    let from_checkpoint = if method == Method::Full { resume_dir } else { None };
    let mut model = match from_checkpoint {
        None if cfg.random_weights => {
            let mut compact = config.clone();
            if let Some(v) = vocab {
                compact.vocab_size = v.len();
            }
            let mut init = RandomInit::new(cfg.seed, cfg.init_std as f32);
            init.qk_norm = cfg.qk_norm_init as f32;
            return with_lora(Qwen3ForCausalLM::load_with(&compact, &mut init, device, &load)?, cfg, method, adapter);
        }
        Some(dir) => Qwen3ForCausalLM::load_with(config, &mut open_weights(dir)?, device, &load)?,
        None => Qwen3ForCausalLM::load_with(config, &mut open_weights(base)?, device, &load)?,
    };
    if let Some(v) = vocab {
        v.restrict(&mut model)?;
    }
    with_lora(model, cfg, method, adapter)
}

fn with_lora<B: Backend>(mut model: Qwen3ForCausalLM<B>, cfg: &RunConfig, method: Method, adapter: Option<&Path>) -> Result<Qwen3ForCausalLM<B>> {
    if method == Method::Lora {
        match adapter {
            Some(dir) => {
                let (lora, mut weights) = open_adapter(dir)?;
                model.load_adapter(&lora, &mut weights, &dir.display().to_string())?;
            }
            None => model.add_lora(&cfg.lora(), cfg.seed)?,
        }
    }
    Ok(model)
}

fn train_on<B: AutodiffBackend>(device: &B::Device, more: &[B::Device], opts: &RunOptions, cfg: &RunConfig, run: &Path) -> Result<Finished> {
    let method = cfg.method()?;
    let usage = crate::backend::Use::training(method);
    let dtype = crate::backend::dtype::<B>(device, usage)?;
    fs::create_dir_all(run).map_err(|e| anyhow!("{}: {e}", run.display()))?;
    let resume_from = if opts.resume {
        Some(last_checkpoint(run).ok_or_else(|| anyhow!("{}: no checkpoint to resume from", run.display()))?)
    } else {
        None
    };
    let base = checkpoint::resolve(&cfg.model)?;
    let config = load_config(&base)?;
    let tokenizer = load_tokenizer(&base, opts.tokenizer.as_deref())?;
    let eos_token_ids = load_eos(&base, &config)?;
    let (mut train, cut, bad) = load_examples(Path::new(&cfg.data), &tokenizer, cfg.max_length, opts.skip_bad_records)?;
    let mut eval = match &cfg.eval_data {
        Some(p) => Some(load_examples(Path::new(p), &tokenizer, cfg.max_length, opts.skip_bad_records)?.0),
        None => None,
    };
    if cut > 0 {
        eprintln!("note: {cut} records longer than {} tokens were cut at the end", cfg.max_length);
    }
    if bad > 0 {
        eprintln!("note: skipped {bad} records that are not valid JSON");
    }
    let vocab = if cfg.restrict_vocab {
        let v = VocabMap::from_examples(&train, &eos_token_ids, config.vocab_size)?;
        eprintln!("vocabulary restricted to the {} tokens the training data uses (of {})", v.len() - 1, config.vocab_size);
        write_atomically(&run.join("vocab.json"), &serde_json::to_vec(&json!({"full_size": v.full_size(), "ids": v.ids()}))?)?;
        train = train.iter().map(|e| v.example(e)).collect();
        eval = eval.map(|ex| ex.iter().map(|e| v.example(e)).collect());
        Some(v)
    } else {
        None
    };
    let tokenizer_dir = opts.tokenizer.clone().unwrap_or_else(|| base.clone());
    let folder = ModelFolder { config: &config, eos_token_ids: &eos_token_ids, tokenizer_dir: &tokenizer_dir, vocab: vocab.as_ref() };
    let resume_dir = resume_from.as_ref().map(|(_, dir)| dir.clone());
    let adapter = resume_dir.clone().or_else(|| opts.adapter.clone());
    let model = initial_model::<B>(cfg, &base, &config, vocab.as_ref(), resume_dir.as_deref(), adapter.as_deref(), device)?;
    if dtype != burn::tensor::FloatDType::F32 {
        eprintln!("base weights in {}, LoRA adapters and optimizer state in f32", crate::backend::dtype_name(dtype));
    }
    let line = match method {
        Method::Lora => {
            let (trainable, all) = model.lora_parameter_counts(config.num_parameters());
            trainable_line(trainable, all)
        }
        Method::Full => {
            let mut compact = config.clone();
            compact.vocab_size = model.vocab_size();
            trainable_line(compact.num_parameters(), compact.num_parameters())
        }
    };
    eprintln!("{line}");
    let mut trainer = Trainer::new(model, method, cfg.adamw(), cfg.max_grad_norm, cfg.seed)?;
    trainer.threads = opts.threads.unwrap_or(1);
    if !more.is_empty() {
        trainer.set_devices(more);
        eprintln!("data-parallel over {} devices: {}", more.len() + 1, opts.devices.join(", "));
    }

    let per_epoch = steps_per_epoch(train.len(), cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps);
    let total = if cfg.max_steps > 0 { cfg.max_steps } else { per_epoch * cfg.num_train_epochs };
    let metrics_path = run.join("metrics.jsonl");
    let mut start_step = 0;
    let mut elapsed_before = 0.0;
    if let Some((step, dir)) = &resume_from {
        let state = restore(&mut trainer, dir)?;
        start_step = *step;
        elapsed_before = state.elapsed_s;
        // Metrics past the checkpoint belong to steps that will run again.
        let kept: Vec<String> = fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= *step))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomically(&metrics_path, kept.concat().as_bytes())?;
        eprintln!("resuming {} at step {step} of {total}", run.display());
    } else {
        write_atomically(&run.join("config.toml"), toml::to_string_pretty(cfg)?.as_bytes())?;
    }
    let mut metrics = fs::OpenOptions::new().create(true).append(true).open(&metrics_path)?;

    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start_step as u64);
    let started = Instant::now();
    let mut order = Vec::new();
    let mut order_epoch = usize::MAX;
    let mut last_saved: Option<PathBuf> = resume_dir;
    for step in start_step..total {
        let epoch = step / per_epoch.max(1);
        if epoch != order_epoch {
            order = epoch_order(train.len(), cfg.seed, epoch);
            order_epoch = epoch;
        }
        let micro: Vec<Vec<Example>> = step_micro_batches(&order, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, step % per_epoch.max(1))
            .iter()
            .map(|idx| idx.iter().map(|&i| train[i].clone()).collect())
            .collect();
        let refs: Vec<&[Example]> = micro.iter().map(Vec::as_slice).collect();
        let lr = linear_lr(cfg.learning_rate, step, cfg.warmup_steps, total);
        let t0 = Instant::now();
        let stats = match trainer.step(&refs, lr) {
            Ok(s) => s,
            Err(CoreError::NonFinite { step, loss }) => {
                bar.abandon();
                let kept = last_saved.as_ref().map_or("no checkpoint was saved yet".to_string(), |d| format!("the last good checkpoint is {}", d.display()));
                bail!("loss became {loss} at step {step}; stopped, {kept}");
            }
            Err(e) => return Err(e.into()),
        };
        let step_s = t0.elapsed().as_secs_f64();
        let done = step + 1;
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let record = json!({
            "step": done, "epoch": done as f64 / per_epoch.max(1) as f64, "loss": stats.loss, "lr": lr,
            "grad_norm": stats.grad_norm, "tokens": stats.tokens, "label_tokens": stats.label_tokens,
            "tokens_per_s": stats.tokens as f64 / step_s, "step_s": step_s, "elapsed_s": elapsed,
        });
        writeln!(metrics, "{record}")?;
        let msg = format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", stats.loss, lr, stats.tokens as f64 / step_s);
        bar.suspend(|| eprintln!("step {done}/{total}  {msg}"));
        bar.set_message(msg);
        bar.set_position(done as u64);
        if done % cfg.save_steps.max(1) == 0 || done == total {
            let state = TrainerState { global_step: done, total_steps: total, elapsed_s: elapsed };
            last_saved = Some(save_checkpoint(run, &trainer, cfg, &folder, &state)?);
            if let Some(eval) = &eval {
                let eval_loss = eval_loss(&trainer.model.valid(), eval)?;
                writeln!(metrics, "{}", json!({"step": done, "eval_loss": eval_loss}))?;
                bar.suspend(|| eprintln!("step {done}/{total}  eval loss {eval_loss:.4}"));
            }
        }
    }
    bar.finish_and_clear();
    let output = match method {
        Method::Lora => {
            save_adapter(run, &trainer.model, cfg)?;
            run.to_path_buf()
        }
        Method::Full => {
            let dir = run.join("model");
            folder.save(&dir, &trainer.model)?;
            dir
        }
    };
    let elapsed = elapsed_before + started.elapsed().as_secs_f64();
    let summary = report::summarize(&metrics_path, &line, elapsed, total, cut, bad)?;
    write_atomically(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
    report::write_html(run, cfg, &metrics_path, &summary)?;
    Ok(Finished { output, report: run.join("report.html"), summary })
}
