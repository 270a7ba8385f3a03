//! A training run, the whole loop in one place: load the model, read the data, take optimizer
//! steps, write checkpoints and metrics, evaluate, save the result (a PEFT adapter, or a whole
//! model folder). Reproducible (same seed and backend → same curve), resumable from its last
//! complete checkpoint, and reporting through an [`Observer`].
//!
//! ```no_run
//! # use tiqu_core::run::{Run, RunConfig, RunOptions, Quiet};
//! let settings = RunConfig { model: "Qwen/Qwen3-0.6B".into(), data: "train.jsonl".into(), ..Default::default() };
//! let run = Run::create(std::path::Path::new("runs/first"), settings)?;
//! let done = run.execute::<burn::backend::Flex>(&[Default::default()], &RunOptions::default(), &mut Quiet)?;
//! println!("adapter in {}", done.output.display());
//! # Ok::<(), tiqu_core::Error>(())
//! ```

mod config;
mod data;
mod observer;
mod state;

use std::fs;
use std::path::{Path, PathBuf};

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::FloatDType;
use serde_json::{json, Value};

pub use config::{OptimizerConfig, RunConfig, LORA_ONLY, RANDOM_ONLY, RESUMABLE};
pub use data::{load_examples, Examples};
pub use observer::{Both, EvalRecord, Event, MetricsFile, Observer, Quiet, StepRecord};
pub use state::{checkpoints, TrainerState};

use crate::checkpoint::save::{save_adapter, write_atomically, ModelFolder};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::eval::{evaluate, labelled, Labelled};
use crate::extract::{ExtractOptions, Extractor};
use crate::files::{Files, Folder};
use crate::load::{LoadOptions, RandomWeights};
use crate::lora::trainable_line;
use crate::loss::total_nll;
use crate::model::Qwen3ForCausalLM;
use crate::schema::Schema;
use crate::sft::Example;
use crate::tokenizer::Tokenizer;
use crate::train::{epoch_order, linear_lr, step_micro_batches, steps_per_epoch, Checkpointing, Method, Trainer};
use crate::vocab::VocabMap;
use crate::{Error, Result};

/// How a run executes, besides its settings: nothing here changes its numbers.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Skip records that are not valid JSON (counted) instead of stopping.
    pub skip_bad_records: bool,
    /// Micro-batches computed at once on their own threads (at least 1).
    pub threads: usize,
    /// The dtype of the frozen base (`None`: f32).
    pub dtype: Option<FloatDType>,
    /// For the summary: the backend's name and the machine (CPU model or GPU name).
    pub backend: String,
    pub machine: String,
}

/// Where a finished run left its results.
pub struct Finished {
    /// The adapter folder (LoRA) or the standalone model folder (full).
    pub output: PathBuf,
    /// What `summary.json` holds.
    pub summary: Value,
}

/// A run folder and the settings it runs under.
pub struct Run {
    dir: PathBuf,
    config: RunConfig,
    resume: bool,
}

/// The base weights' dtype as `--dtype` spells it (`None`: f32).
fn dtype_name(dtype: Option<FloatDType>) -> &'static str {
    crate::dtype::name(dtype.unwrap_or(FloatDType::F32))
}

/// `path` made absolute (without resolving links), so a resumed run finds it from any folder.
fn absolute(path: &str) -> Result<String> {
    if path.is_empty() {
        return Ok(String::new());
    }
    std::path::absolute(path).map(|p| p.display().to_string()).map_err(|e| Error::io(path, e))
}

impl Run {
    /// A new run in `dir`, which must not exist or be empty. Data paths (and a model given as
    /// a folder) are stored absolute.
    pub fn create(dir: &Path, mut config: RunConfig) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Format(format!("{}: is a file, not a run folder; choose another folder", dir.display())));
        }
        if dir.exists() && has_content(dir) {
            return Err(Error::Format(format!("{}: run folder exists and is not empty; resume it, or use another folder", dir.display())));
        }
        if config.data.is_empty() {
            return Err(Error::Format("no training data: set `data`".into()));
        }
        config.validate()?;
        config.check_new()?;
        config.data = absolute(&config.data)?;
        if let Some(e) = &config.eval_data {
            config.eval_data = Some(absolute(e)?);
        }
        if Path::new(&config.model).is_dir() {
            config.model = absolute(&config.model)?;
        }
        if let Some(a) = &config.adapter {
            config.adapter = Some(absolute(a)?);
        }
        if let Some(t) = &config.tokenizer {
            config.tokenizer = Some(absolute(t)?);
        }
        Ok(Self { dir: dir.to_path_buf(), config, resume: false })
    }

    /// The run in `dir`, to continue from its last complete checkpoint. `changes` are settings
    /// given again: equal to the stored ones, or among [`RESUMABLE`]; any other is refused by
    /// name, and so is a `config.toml` edited (outside [`RESUMABLE`]) since the run started.
    pub fn resume(dir: &Path, changes: &toml::Table) -> Result<Self> {
        let path = dir.join("config.toml");
        if !path.exists() {
            return Err(Error::Format(format!("{}: missing; {} is not a run folder to resume", path.display(), dir.display())));
        }
        let label = path.display().to_string();
        let stored = RunConfig::from_layers(&[(label.as_str(), RunConfig::parse_file(&path)?)])?;
        if let Some(started) = checkpoints(dir).iter().find_map(|(_, d)| TrainerState::read(d).ok()?.config) {
            // A checkpoint from before the tokenizer was stored says nothing about it.
            let edited: Vec<String> = stored
                .differences(&started)?
                .into_iter()
                .filter(|k| !(RESUMABLE.contains(&k.as_str()) || (k == "tokenizer" && started.tokenizer.is_none())))
                .collect();
            if !edited.is_empty() {
                return Err(Error::Unsupported(format!(
                    "{label}: {} changed since the run started; a resumed run cannot change {} (start a new run instead)",
                    edited.join(", "),
                    if edited.len() == 1 { "it" } else { "them" }
                )));
            }
        }
        // Before its first checkpoint a run has trained nothing to keep: it starts over, under
        // any settings (a loss that became NaN at step 3 wants a lower learning rate).
        let started = !checkpoints(dir).is_empty();
        let mut table = stored.to_table()?;
        let mut refused = Vec::new();
        for (key, value) in changes {
            // Runs from before the tokenizer was stored read it from the flag: given again, it
            // is recorded (the data digest still refuses one that reads the records otherwise).
            let unrecorded = key == "tokenizer" && !table.contains_key(key);
            if started && !unrecorded && table.get(key) != Some(value) && !RESUMABLE.contains(&key.as_str()) {
                refused.push(key.clone());
            }
            table.insert(key.clone(), value.clone());
        }
        if !refused.is_empty() {
            return Err(Error::Unsupported(format!(
                "a resumed run cannot change {} (only {} may change); start a new run to train with other settings",
                refused.join(", "),
                RESUMABLE.join(", ")
            )));
        }
        let mut config = RunConfig::from_layers(&[("settings", table)])?;
        // A stored 0 (runs from before the check) still resumes, as 1; a 0 given now is refused
        // as a new run refuses it.
        if changes.contains_key("save_steps") && config.save_steps == 0 {
            return Err(Error::Unsupported("save_steps must be at least 1 (a checkpoint every N optimizer steps)".into()));
        }
        if let Some(e) = &config.eval_data {
            config.eval_data = Some(absolute(e)?);
        }
        Ok(Self { dir: dir.to_path_buf(), config, resume: true })
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_resume(&self) -> bool {
        self.resume
    }

    /// Trains on `devices` of backend `B` (micro-batches spread over them; the first holds the
    /// result), with the gradient checkpointing the settings ask for.
    pub fn execute<B: Backend>(&self, devices: &[B::Device], opts: &RunOptions, observer: &mut dyn Observer) -> Result<Finished> {
        let (main, more) = devices.split_first().ok_or_else(|| Error::Other("no device to train on".into()))?;
        if devices.len() > self.config.gradient_accumulation_steps {
            return Err(Error::Unsupported(format!(
                "{} devices need gradient_accumulation_steps {} or more (each device takes whole micro-batches of a step)",
                devices.len(),
                devices.len()
            )));
        }
        match self.config.gradient_checkpointing {
            Checkpointing::Balanced => self.train::<Autodiff<B, BalancedCheckpointing>>(main, more, opts, observer),
            // Per-layer recomputation is the trainer's own; burn then keeps what it is given.
            Checkpointing::None | Checkpointing::Layer => self.train::<Autodiff<B>>(main, more, opts, observer),
        }
    }

    /// The model training starts from: a checkpoint's weights (full method, resuming), seeded
    /// random weights, or the base checkpoint; narrowed to the compact vocabulary; with LoRA pairs
    /// added, or loaded from `adapter`, for the LoRA method.
    fn initial_model<B: Backend>(
        &self,
        base: &Checkpoint,
        vocab: Option<&VocabMap>,
        resume_dir: Option<&Path>,
        adapter: Option<&Path>,
        dtype: Option<FloatDType>,
        device: &B::Device,
    ) -> Result<Qwen3ForCausalLM<B>> {
        let cfg = &self.config;
        let load = LoadOptions { dtype, ..Default::default() };
        let from_checkpoint = if cfg.method == Method::Full { resume_dir } else { None };
        let mut model = match from_checkpoint {
            None if cfg.random_weights => {
                let mut compact = base.config().clone();
                if let Some(v) = vocab {
                    compact.vocab_size = v.len();
                }
                let random = RandomWeights { seed: cfg.seed, std: cfg.init_std as f32, qk_norm: cfg.qk_norm_init as f32, previous_token: cfg.previous_token_init };
                Qwen3ForCausalLM::load_with(&compact, &mut random.source(&compact), device, &load)?
            }
            Some(dir) => Qwen3ForCausalLM::load_with(base.config(), &mut Checkpoint::open_dir(dir)?.weights()?, device, &load)?,
            None => base.load_model(&load, device)?,
        };
        let restricted = cfg.random_weights && from_checkpoint.is_none();
        if let (Some(v), false) = (vocab, restricted) {
            v.restrict(&mut model)?;
        }
        if cfg.method == Method::Lora {
            match adapter {
                Some(dir) => {
                    let adapter = Adapter::open(&Folder::new(dir))?;
                    // The run saves its adapter under cfg.lora: it must be what these weights mean.
                    if let Some((key, theirs, ours)) = adapter.config.differs_from(&cfg.lora) {
                        return Err(Error::Unsupported(format!(
                            "{}: the adapter has {key} {theirs}, the run's settings {ours}; leave {key} out (it comes from the adapter)",
                            dir.display()
                        )));
                    }
                    adapter.attach(&mut model)?;
                    // Dropout changes no weight's meaning: the run's own setting trains (the
                    // adapter file's, or a checkpoint's edited one, would be used silently).
                    for (_, _, linear) in model.projections_mut() {
                        if let Some(lora) = &mut linear.lora {
                            lora.dropout = cfg.lora.lora_dropout;
                        }
                    }
                }
                None => model.add_lora(&cfg.lora, cfg.seed)?,
            }
        }
        Ok(model)
    }

    fn train<B: AutodiffBackend>(&self, device: &B::Device, more: &[B::Device], opts: &RunOptions, observer: &mut dyn Observer) -> Result<Finished> {
        let cfg = &self.config;
        let run = self.dir.as_path();
        // A resumed folder exists: taken before anything is read, so a second trainer is told
        // at once.
        let early_lock = if self.resume { Some(RunLock::acquire(run)?) } else { None };
        let base = Checkpoint::resolve(&cfg.model)?;
        let tokenizer_dir = cfg.tokenizer.as_ref().map(Folder::new);
        let tokenizer_files: &dyn Files = match &tokenizer_dir {
            Some(f) => f,
            None => base.files(),
        };
        let tokenizer = base.tokenizer(Some(tokenizer_files))?;
        #[cfg(feature = "templates")]
        if let Some(warning) = crate::chat_template::warning(&[tokenizer_files, base.files()]) {
            observer.event(&Event::Note(&warning))?;
        }
        let eos_token_ids = base.eos_token_ids(&tokenizer, Some(tokenizer_files))?;
        let train_data = load_examples(Path::new(&cfg.data), &tokenizer, cfg.max_length, opts.skip_bad_records)?;
        let eval_data = match &cfg.eval_data {
            Some(p) => Some(load_examples(Path::new(p), &tokenizer, cfg.max_length, opts.skip_bad_records)?),
            None => None,
        };
        // A record the model cannot hold even after the cut to max_length, named where it is
        // before anything is written (it failed inside the first step that met it, unnamed).
        let positions = base.config().max_position_embeddings;
        for (data, path) in std::iter::once((&train_data, &cfg.data)).chain(eval_data.as_ref().zip(cfg.eval_data.as_ref())) {
            if let Some((rec, ex)) = data.records.iter().zip(&data.examples).find(|(_, ex)| ex.len() > positions) {
                return Err(Error::Record {
                    path: path.clone(),
                    line: rec.line,
                    message: format!(
                        "the record keeps {} tokens under max_length {}, more than the model's max_position_embeddings ({positions}): set --max-length {positions} or less",
                        ex.len(),
                        cfg.max_length
                    ),
                });
            }
        }
        if train_data.cut > 0 {
            observer.event(&Event::Note(&format!("{} records longer than {} tokens were cut at the end", train_data.cut, cfg.max_length)))?;
        }
        if train_data.unlabelled > 0 {
            observer.event(&Event::Note(&format!(
                "warning: {} records keep no response token under max_length {} (their prompts fill it): they teach nothing",
                train_data.unlabelled, cfg.max_length
            )))?;
        }
        if train_data.skipped > 0 {
            observer.event(&Event::Note(&format!("skipped {} records that are not valid JSON", train_data.skipped)))?;
        }
        // Created once the model and the data have been read: a refused run leaves no folder
        // (the weights, read below, included).
        let mut made = (!self.resume && !run.exists()).then_some(NewRunFolder { dir: run, finished: false });
        fs::create_dir_all(run).map_err(|e| Error::io(run.display(), e))?;
        // Dropped before `made`, which then sees the folder as the run left it.
        let _lock = match early_lock {
            Some(lock) => lock,
            None => RunLock::acquire(run)?,
        };
        // Of the ids before the vocabulary narrows them; checked before anything is written.
        let digest = data::digest(&train_data.examples);
        let found = if self.resume { checkpoints(run) } else { Vec::new() };
        let saved = found.iter().find_map(|(step, dir)| Some((*step, TrainerState::read(dir).ok()?.data_digest?)));
        if let Some((step, _)) = saved.filter(|(_, was)| *was != digest) {
            return Err(Error::Unsupported(format!(
                "{}: the training records differ from those checkpoint-{step} was trained on (the file changed, or another tokenizer reads it); restore the file, or start a new run",
                cfg.data
            )));
        }
        let mut train = train_data.examples;
        let mut eval = eval_data.as_ref().map(|e| e.examples.clone());
        let vocab = if cfg.restrict_vocab {
            if eos_token_ids.is_empty() {
                return Err(Error::Format(format!("{}: no eos token, which a restricted vocabulary must keep", base.files().label())));
            }
            let v = VocabMap::from_examples(&train, &eos_token_ids, base.config().vocab_size)?;
            observer.event(&Event::Note(&format!(
                "vocabulary restricted to the {} tokens the training data uses (of {})",
                v.len() - 1,
                base.config().vocab_size
            )))?;
            let ids = serde_json::to_vec(&json!({"full_size": v.full_size(), "ids": v.ids()})).map_err(|e| Error::Other(e.to_string()))?;
            write_atomically(&run.join("vocab.json"), &ids)?;
            train = train.iter().map(|e| v.example(e)).collect();
            eval = eval.map(|ex| ex.iter().map(|e| v.example(e)).collect());
            Some(v)
        } else {
            None
        };
        let folder = ModelFolder { config: base.config(), eos_token_ids: &eos_token_ids, tokenizer: tokenizer_files, vocab: vocab.as_ref() };
        let per_epoch = steps_per_epoch(train.len(), cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps).max(1);
        let total = if cfg.max_steps > 0 { cfg.max_steps } else { per_epoch * cfg.num_train_epochs };

        // The trainer, from the newest checkpoint that restores whole (a damaged one is skipped
        // with a note), or fresh.
        let mut resumed: Option<(usize, PathBuf, TrainerState)> = None;
        let mut trainer = None;
        if self.resume {
            if found.is_empty() {
                observer.event(&Event::Note(&format!("{}: no checkpoint yet; starting the run over from step 0", run.display())))?;
            }
            let mut first_error = None;
            for (step, dir) in found {
                let attempt = (|| -> Result<(Trainer<B>, TrainerState)> {
                    let state = TrainerState::read(&dir)?;
                    // The folder's name says where training continues; the state says what the
                    // weights are. A renamed or copied folder would resume other weights at
                    // another step.
                    if state.global_step != step {
                        return Err(Error::Format(format!(
                            "{}: global_step is {}, but the folder is checkpoint-{step} (renamed or copied?)",
                            dir.join(state::STATE_FILE).display(),
                            state.global_step
                        )));
                    }
                    let model = self.initial_model::<B>(&base, vocab.as_ref(), Some(&dir), Some(&dir), opts.dtype, device)?;
                    let mut t = Trainer::new(model, cfg.method, cfg.optimizer.adamw, cfg.optimizer.max_grad_norm, cfg.seed)?;
                    state::restore_moments(&mut t, &dir, step)?;
                    Ok((t, state))
                })();
                match attempt {
                    Ok((t, state)) => {
                        let now = dtype_name(opts.dtype);
                        if let Some(then) = state.dtype.as_deref().filter(|then| *then != now) {
                            return Err(Error::Unsupported(format!(
                                "{} was trained with the base weights in {then}; this resume would hold them in {now} (--dtype, or another backend's default): resume with --dtype {then}, on a device that holds it",
                                dir.display()
                            )));
                        }
                        trainer = Some(t);
                        resumed = Some((step, dir, state));
                        break;
                    }
                    Err(e) => {
                        observer.event(&Event::Note(&format!("warning: {} is damaged ({e}); trying the checkpoint before it", dir.display())))?;
                        first_error.get_or_insert(e);
                    }
                }
            }
            if trainer.is_none() && first_error.is_some() {
                return Err(Error::Format(format!(
                    "{}: no checkpoint restores ({})",
                    run.display(),
                    first_error.map(|e| e.to_string()).unwrap_or_default()
                )));
            }
        }
        let mut trainer = match trainer {
            Some(t) => t,
            None => {
                let model = self.initial_model::<B>(&base, vocab.as_ref(), None, cfg.adapter.as_deref().map(Path::new), opts.dtype, device)?;
                Trainer::new(model, cfg.method, cfg.optimizer.adamw, cfg.optimizer.max_grad_norm, cfg.seed)?
            }
        };
        trainer.threads = opts.threads.max(1);
        trainer.recompute_layers = cfg.gradient_checkpointing == Checkpointing::Layer;
        if !more.is_empty() {
            trainer.set_devices(more);
        }
        let line = match cfg.method {
            Method::Lora => {
                let (trainable, all) = trainer.model.lora_parameter_counts(base.config().num_parameters());
                trainable_line(trainable, all)
            }
            Method::Full => {
                let mut compact = base.config().clone();
                compact.vocab_size = trainer.model.vocab_size();
                trainable_line(compact.num_parameters(), compact.num_parameters())
            }
        };
        let start_step = resumed.as_ref().map_or(0, |(s, _, _)| *s);
        let elapsed_before = resumed.as_ref().map_or(0.0, |(_, _, st)| st.elapsed_s);
        if !self.resume {
            let text = toml::to_string_pretty(cfg).map_err(|e| Error::Other(e.to_string()))?;
            write_atomically(&run.join("config.toml"), text.as_bytes())?;
        } else {
            // Settings that may change on resume (save_steps, eval data) are saved as changed.
            let text = toml::to_string_pretty(cfg).map_err(|e| Error::Other(e.to_string()))?;
            write_atomically(&run.join("config.toml"), text.as_bytes())?;
        }
        // A resumed run keeps the lines up to its checkpoint: none when it starts over.
        let metrics_path = run.join("metrics.jsonl");
        let mut metrics = MetricsFile::open(&metrics_path, self.resume.then_some(start_step))?;
        if self.resume && start_step > 0 {
            let missing = observer::missing_steps(&metrics_path, start_step);
            if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
                let which = if first == last { format!("step {first}") } else { format!("{} of steps {first}..={last}", missing.len()) };
                let note = format!("warning: {} lacks {which} (damaged or edited): the curve, report and summary will miss them", metrics_path.display());
                observer.event(&Event::Note(&note))?;
            }
        }
        let mut observer = Both(&mut metrics, observer);
        observer.event(&Event::Started { start_step, total_steps: total, trainable: &line, resumed: resumed.is_some() })?;

        // The held-out sample scored at each checkpoint.
        let sample: Vec<Labelled> = match (&eval_data, cfg.eval_sample) {
            (Some(e), n) if n > 0 => {
                let schema = Schema::default();
                let sample: Vec<Labelled> = labelled(&e.records, &schema.names()).0.into_iter().take(n).collect();
                if sample.is_empty() {
                    // Said, not dropped in silence: the report would just lack the extraction score.
                    let note = format!(
                        "warning: no eval record has an output with the fields {} as a JSON object: checkpoints get the eval loss only (tiqu data check lists why)",
                        schema.names().join(", ")
                    );
                    observer.event(&Event::Note(&note))?;
                }
                sample
            }
            _ => Vec::new(),
        };

        let started = crate::clock::now();
        let mut order = Vec::new();
        let mut order_epoch = usize::MAX;
        let mut last_saved = resumed.as_ref().map(|(_, d, _)| d.clone());
        for step in start_step..total {
            let epoch = step / per_epoch;
            if epoch != order_epoch {
                order = epoch_order(train.len(), cfg.seed, epoch);
                order_epoch = epoch;
            }
            let micro: Vec<Vec<Example>> = step_micro_batches(&order, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, step % per_epoch)
                .iter()
                .map(|idx| idx.iter().map(|&i| train[i].clone()).collect())
                .collect();
            let refs: Vec<&[Example]> = micro.iter().map(Vec::as_slice).collect();
            let lr = linear_lr(cfg.optimizer.learning_rate, step, cfg.optimizer.warmup_steps, total);
            let t0 = crate::clock::now();
            let stats = match trainer.step(&refs, lr) {
                Ok(s) => s,
                Err(Error::NonFinite { step: failed, loss }) => {
                    // Weights that were never finite are the cause to name, not the step; after a
                    // finite step of this process they were finite, and training made them not.
                    let kept = last_saved.as_ref().map_or("no checkpoint was saved yet (--resume starts the run over, and may change its settings)".to_string(), |d| format!("the last good checkpoint is {}", d.display()));
                    if let Some(name) = crate::params::first_non_finite(&trainer.model) {
                        if step == start_step {
                            return Err(Error::Tensor(format!("loss became {loss} at step {failed}: the weight `{name}` holds NaN or infinite values (a damaged checkpoint or adapter?)")));
                        }
                        return Err(Error::Tensor(format!(
                            "loss became {loss} at step {failed}: the weight `{name}` became NaN or infinite in training (learning rate {lr:e} too high?); stopped, {kept}"
                        )));
                    }
                    return Err(Error::Other(format!("loss became {loss} at step {failed}; stopped, {kept}")));
                }
                Err(e) => return Err(e),
            };
            let step_s = crate::clock::elapsed_s(t0);
            let done = step + 1;
            let record = StepRecord {
                step: done,
                epoch: done as f64 / per_epoch as f64,
                // A step without a labelled token has no loss (0 would plot as a perfect step);
                // NaN is written as null.
                loss: if stats.label_tokens == 0 { f64::NAN } else { stats.loss },
                lr,
                grad_norm: stats.grad_norm,
                tokens: stats.tokens,
                label_tokens: stats.label_tokens,
                tokens_per_s: stats.tokens as f64 / step_s.max(1e-9),
                step_s,
                elapsed_s: elapsed_before + crate::clock::elapsed_s(started),
            };
            observer.event(&Event::Step(&record))?;
            if done % cfg.save_steps.max(1) == 0 || done == total {
                // A step can overflow the weights while its loss was finite (a learning rate
                // far too high): such weights are never saved as a checkpoint or the result.
                let broken = match cfg.method {
                    Method::Lora => crate::params::first_non_finite_lora(&trainer.model),
                    Method::Full => crate::params::first_non_finite(&trainer.model),
                };
                if let Some(name) = broken {
                    let kept = last_saved.as_ref().map_or("no checkpoint was saved".to_string(), |d| format!("the last good checkpoint is {}", d.display()));
                    return Err(Error::Other(format!(
                        "the weight `{name}` became NaN or infinite by step {done} (learning rate {lr:e} too high?); stopped, {kept}"
                    )));
                }
                let state = TrainerState {
                    global_step: done,
                    total_steps: total,
                    elapsed_s: record.elapsed_s,
                    config: Some(cfg.clone()),
                    data_digest: Some(digest.clone()),
                    dtype: Some(dtype_name(opts.dtype).to_string()),
                };
                let dir = state::save(run, &trainer, cfg, &folder, &state)?;
                observer.event(&Event::Saved { step: done, dir: &dir })?;
                last_saved = Some(dir);
                if let Some(eval) = &eval {
                    let inference = trainer.model.valid();
                    let record = self.evaluate(&inference, eval, &sample, vocab.as_ref(), &tokenizer, &eos_token_ids, done)?;
                    observer.event(&Event::Eval(&record))?;
                }
            }
        }
        let output = match cfg.method {
            Method::Lora => {
                save_adapter(run, &trainer.model, &cfg.lora, &cfg.model)?;
                run.to_path_buf()
            }
            Method::Full => {
                let dir = run.join("model");
                folder.save(&dir, &trainer.model)?;
                dir
            }
        };
        let elapsed = elapsed_before + crate::clock::elapsed_s(started);
        let summary = summarize(&run.join("metrics.jsonl"), cfg, opts, &line, elapsed, total, train_data.cut, train_data.skipped)?;
        let bytes = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Other(e.to_string()))?;
        write_atomically(&run.join("summary.json"), &bytes)?;
        if let Some(made) = &mut made {
            made.finished = true;
        }
        Ok(Finished { output, summary })
    }

    /// The held-out loss, and extraction quality on `sample` when there is one.
    #[allow(clippy::too_many_arguments)]
    fn evaluate<B: Backend>(
        &self,
        model: &Qwen3ForCausalLM<B>,
        eval: &[Example],
        sample: &[Labelled],
        vocab: Option<&VocabMap>,
        tokenizer: &Tokenizer,
        eos: &[u32],
        step: usize,
    ) -> Result<EvalRecord> {
        let (nll, tokens) = total_nll(model, eval, 8)?;
        let mut record = EvalRecord {
            step,
            eval_loss: nll / tokens.max(1) as f64,
            eval_records: None,
            eval_all_fields_exact: None,
            eval_json_valid: None,
            eval_hallucinated: None,
            eval_per_field: None,
        };
        if sample.is_empty() || eos.is_empty() {
            return Ok(record);
        }
        // Extraction runs on Qwen3's ids: a compact-vocabulary model is widened back first.
        let model = match vocab {
            Some(v) => v.widen(model)?,
            None => model.clone(),
        };
        let options = ExtractOptions { batch: 16, ..Default::default() };
        let extractor = Extractor::new(model, tokenizer.clone(), eos.to_vec(), Schema::default(), options);
        let result = evaluate(&extractor, sample, 16, 1, &|_| {})?;
        let s = &result.scores;
        let per_field: serde_json::Map<String, Value> =
            s.fields().into_iter().map(|(n, exact, f1)| (n.to_string(), json!({"exact": exact, "f1": f1}))).collect();
        record.eval_records = Some(s.records);
        record.eval_all_fields_exact = Some(s.all_fields_exact());
        record.eval_json_valid = Some(s.json_valid_rate());
        record.eval_hallucinated = Some(s.hallucination_rate());
        record.eval_per_field = Some(Value::Object(per_field));
        Ok(record)
    }
}

/// What `summary.json` holds: final and summary figures of the run, and where it ran.
#[allow(clippy::too_many_arguments)]
fn summarize(metrics: &Path, cfg: &RunConfig, opts: &RunOptions, trainable: &str, elapsed_s: f64, steps: usize, cut: usize, skipped: usize) -> Result<Value> {
    let text = fs::read_to_string(metrics).map_err(|e| Error::io(metrics.display(), e))?;
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str| -> Vec<f64> { lines.iter().filter_map(|m| m[key].as_f64()).collect() };
    let (loss, eval) = (series("loss"), series("eval_loss"));
    let tokens: f64 = series("tokens").iter().sum();
    let step_time: f64 = series("step_s").iter().sum();
    let dtype = dtype_name(opts.dtype);
    Ok(json!({
        "steps": steps,
        "final_loss": loss.last(),
        "first_loss": loss.first(),
        "final_eval_loss": eval.last(),
        "final_eval_all_fields_exact": series("eval_all_fields_exact").last(),
        "tokens_per_s": if step_time > 0.0 { tokens / step_time } else { 0.0 },
        "elapsed_s": elapsed_s,
        "trainable": trainable,
        "records_cut": cut,
        "records_skipped": skipped,
        "method": cfg.method.name(),
        "backend": opts.backend,
        "machine": opts.machine,
        "dtype": dtype,
        "tiqu_version": env!("CARGO_PKG_VERSION"),
    }))
}

/// A run folder a fresh run made: removed again if the run fails before writing anything in it
/// (weights that do not load are found only after it is made). A run that failed later keeps
/// its config.toml, so that `--resume` starts it over with its settings.
struct NewRunFolder<'a> {
    dir: &'a Path,
    finished: bool,
}

impl Drop for NewRunFolder<'_> {
    fn drop(&mut self) {
        if !self.finished && !has_content(self.dir) {
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = fs::remove_dir(self.dir);
        }
    }
}

/// Whether `dir` holds anything but a lock a failed run left (or cannot be read): an empty
/// folder is one a new run may take.
pub fn has_content(dir: &Path) -> bool {
    fs::read_dir(dir).map(|entries| entries.flatten().any(|e| e.file_name() != LOCK_FILE)).unwrap_or(true)
}

/// Whether a process is training in `run` now (it holds the folder's lock).
pub fn in_use(run: &Path) -> bool {
    let Ok(file) = fs::OpenOptions::new().write(true).open(run.join(LOCK_FILE)) else { return false };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

/// Held while a process trains in a run folder: a second `--resume` of the same folder would
/// write the same checkpoints and metrics from another point of the run. The operating system
/// releases it when the process ends, however it ends; the file stays.
const LOCK_FILE: &str = ".lock";

struct RunLock(fs::File);

impl RunLock {
    fn acquire(run: &Path) -> Result<Self> {
        let path = run.join(LOCK_FILE);
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(path.display(), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Unsupported(format!(
                "{}: another process is training in this run folder (it holds {LOCK_FILE}); wait for it to end or stop it",
                run.display()
            ))),
            // Where files cannot be locked (some network file systems), training goes on unguarded.
            Err(fs::TryLockError::Error(_)) => Ok(Self(file)),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}
