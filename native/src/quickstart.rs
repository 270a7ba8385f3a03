//! `tiqu quickstart`: the whole job on a laptop CPU in minutes — synthesise complaint records,
//! train a small Qwen3-architecture model on them from scratch (every parameter, the vocabulary
//! restricted to the data's tokens), save it as a standalone Qwen3 folder, and evaluate
//! extraction on held-out records. It shows the pipeline, not Qwen3-0.6B's quality; with
//! `--model Qwen/Qwen3-0.6B` it runs the seed's LoRA recipe instead, then merges.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tiqu_core::synth::{Style, Synth, SynthRecord};

use tiqu_core::checkpoint::save::merge_folder;
use tiqu_core::checkpoint::TOKENIZER_FILES;
use tiqu_core::eval::{evaluate_sft, SftEvalOptions};
use tiqu_core::files::Folder;
use tiqu_core::run::{OptimizerConfig, Run, RunConfig, RunOptions};
use tiqu_core::dataset::sft_records::parse_records_lenient;
use tiqu_core::train::{AdamWConfig, Method};
use tiqu_core::{Checkpoint, ExtractOptions};

use crate::backend::BackendName;
use crate::eval::print_table;
use crate::{data, with_backend};

/// Optimizer steps from scratch: what fits the 10-minute budget on a 2-core CPU (BENCHMARKS.md).
const DEFAULT_STEPS: usize = 2000;

/// The from-scratch model: Qwen3's architecture at a size a 2-core CPU trains in minutes.
const SMALL_CONFIG: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "model_type": "qwen3",
  "vocab_size": 151936,
  "hidden_size": 128,
  "intermediate_size": 512,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 32,
  "max_position_embeddings": 512,
  "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "hidden_act": "silu",
  "torch_dtype": "float32",
  "bos_token_id": 151643,
  "eos_token_id": 151645
}"#;

#[derive(Args)]
pub struct QuickstartArgs {
    /// The quickstart folder (data, base config, training run, evaluation).
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Folder holding the Qwen3 tokenizer.json (default: the repository's assets/qwen3-tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Fine-tune this checkpoint with the seed's LoRA recipe instead (e.g. Qwen/Qwen3-0.6B; wants
    /// a GPU), then merge it.
    #[arg(long, conflicts_with_all = ["base_config", "lr", "plain_init"])]
    model: Option<String>,
    /// A config.json for the from-scratch model instead of the built-in small one.
    #[arg(long)]
    base_config: Option<PathBuf>,
    /// Optimizer steps (default: 2000 from scratch, 3 epochs of the records with --model).
    #[arg(long)]
    steps: Option<usize>,
    /// Training records (default: batch × steps from scratch, so no record is seen twice; 1000
    /// with --model).
    #[arg(long)]
    records: Option<usize>,
    /// Peak learning rate from scratch (after 50 warmup steps, then a linear decay to 0).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Train from the plain random init, without the previous-token head the quickstart starts
    /// layer 0 with (to compare; BENCHMARKS.md).
    #[arg(long)]
    plain_init: bool,
    /// Held-out records to evaluate on.
    #[arg(long, default_value_t = 200)]
    heldout: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Text styles kept out of training and measured separately (comma-separated, `none` to train
    /// on every style): seed, form, free, letter, english, bracket, row.
    #[arg(long, default_value = "bracket,row")]
    hold_out: String,
    /// Make the last stdout line the evaluation's JSON object.
    #[arg(long)]
    json: bool,
}

/// Where the Qwen3 tokenizer is when `--tokenizer` is not given: the repository's copy, found
/// from the working directory or from where this binary was built.
pub fn find_tokenizer(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if !dir.join("tokenizer.json").is_file() {
            bail!("{}: no tokenizer.json in this folder", dir.display());
        }
        return Ok(dir.to_path_buf());
    }
    let candidates = [PathBuf::from("assets/qwen3-tokenizer"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/qwen3-tokenizer")];
    candidates.iter().find(|d| d.join("tokenizer.json").is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "no Qwen3 tokenizer found (looked in {}); pass --tokenizer DIR, a folder holding Qwen3's tokenizer.json",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

pub fn run(backend: BackendName, args: &QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    // 16 records per step as two micro-batches of 8, computed on two threads.
    let (micro, accumulation): (usize, usize) = (8, 2);
    let batch = micro * accumulation;
    let steps = args.steps.unwrap_or(DEFAULT_STEPS);
    if steps == 0 || args.heldout == 0 || args.records == Some(0) {
        bail!("--steps, --records and --heldout must be at least 1");
    }
    // Everything that can be refused is, before an earlier quickstart's folder is replaced.
    const MOST_RECORDS: usize = 10_000_000;
    let records = match args.records {
        Some(n) => n,
        None if args.model.is_some() => 1000,
        None => batch.checked_mul(steps).filter(|&n| n <= MOST_RECORDS).ok_or_else(|| {
            anyhow!("--steps {steps}: {batch} new records a step would be over {MOST_RECORDS} records (give --records, or fewer --steps)")
        })?,
    };
    for (flag, value) in [("--records", records), ("--heldout", args.heldout)] {
        if value > MOST_RECORDS {
            bail!("{flag} {value} is above the limit of {MOST_RECORDS}");
        }
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    if args.model.is_none() {
        // Trained from scratch with every weight: f32 only, as `train --method full`.
        crate::backend::refuse_half_for_full_training()?;
    }
    // The from-scratch model's config.json as written into the folder, and its shape.
    let (base_config, shape) = match &args.base_config {
        Some(path) => {
            let bytes = fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let shape = tiqu_core::Qwen3Config::from_json(&bytes, &path.display().to_string())?;
            (bytes, shape)
        }
        None => (SMALL_CONFIG.as_bytes().to_vec(), tiqu_core::Qwen3Config::from_json(SMALL_CONFIG.as_bytes(), "the built-in config")?),
    };
    // The evaluation keeps 296 positions for the answer (256 new tokens and the four keys) after
    // prompts of up to about 200 tokens: a model holding fewer positions failed after training,
    // or first advised a --max-length the quickstart does not have.
    const LEAST_POSITIONS: usize = 512;
    if let Some(path) = &args.base_config {
        if shape.max_position_embeddings < LEAST_POSITIONS {
            bail!(
                "{}: max_position_embeddings {} is too few for the quickstart's records and answers; it needs at least {LEAST_POSITIONS}",
                path.display(),
                shape.max_position_embeddings
            );
        }
    }
    let held_out = Style::parse_list(&args.hold_out).map_err(|e| anyhow!("--hold-out: {e}"))?;
    let trained: Vec<Style> = Style::ALL.into_iter().filter(|s| !held_out.contains(s)).collect();
    if trained.is_empty() {
        bail!("--hold-out: every style is held out; keep at least one to train on");
    }
    let tokenizer = find_tokenizer(args.tokenizer.as_deref())?;
    // The tokenizer and the weights' headers are read now: each failed only once the earlier
    // folder was gone and the data written.
    match &args.model {
        Some(model) => {
            // Core's lookup, as the training and the merge below use: a folder on object storage,
            // which only the CLI's loaders fetch, is refused here as there.
            let checkpoint = Checkpoint::resolve(model)?;
            checkpoint.tokenizer(args.tokenizer.as_ref().map(Folder::new).as_ref().map(|f| f as &dyn tiqu_core::files::Files))?;
            checkpoint.checked_weights()?;
        }
        None => {
            let tok = Checkpoint::tokenizer_in(&Folder::new(&tokenizer))?;
            let config = args.base_config.as_ref().map_or("the built-in config".to_string(), |p| p.display().to_string());
            tiqu_core::checkpoint::check_vocabulary(&tok, &shape, &tokenizer.join("tokenizer.json").display().to_string())
                .map_err(|e| anyhow!("{e} (the model's config: {config})"))?;
        }
    }
    let out = &args.out;
    let train_path = out.join("data/train.jsonl");
    let heldout_path = out.join("data/heldout.jsonl");
    let unseen_path = out.join("data/heldout-styles.jsonl");
    let seed_path = out.join("data/seed-example.jsonl");
    let run_dir = out.join("run");
    let base = out.join("base");
    let (cfg, opts) = match &args.model {
        None => {
            let cfg = RunConfig {
                model: base.display().to_string(),
                method: Method::Full,
                random_weights: true,
                previous_token_init: !args.plain_init,
                restrict_vocab: true,
                data: train_path.display().to_string(),
                eval_data: Some(heldout_path.display().to_string()),
                optimizer: OptimizerConfig {
                    learning_rate: args.lr,
                    warmup_steps: 50,
                    adamw: AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() },
                    ..OptimizerConfig::default()
                },
                per_device_train_batch_size: micro,
                gradient_accumulation_steps: accumulation,
                num_train_epochs: 1,
                max_steps: steps,
                save_steps: steps.div_ceil(4),
                gradient_checkpointing: tiqu_core::train::Checkpointing::None,
                seed: args.seed,
                ..RunConfig::default()
            };
            (cfg, RunOptions::default())
        }
        Some(model) => {
            let cfg = RunConfig {
                model: model.clone(),
                data: train_path.display().to_string(),
                eval_data: Some(heldout_path.display().to_string()),
                max_steps: args.steps.unwrap_or(0),
                seed: args.seed,
                tokenizer: args.tokenizer.as_ref().map(|t| t.display().to_string()),
                ..RunConfig::default()
            };
            (cfg, RunOptions::default())
        }
    };
    cfg.validate()?;
    // A quickstart still training in this folder holds its run's lock: its folder is not ours
    // to replace.
    if tiqu_core::run::in_use(&run_dir) {
        bail!("{}: another process is training in this quickstart folder; wait for it or pass another --out", out.display());
    }
    // A previous quickstart folder is replaced; anything else is not ours to delete.
    if out.exists() {
        let ours = out.join("quickstart.json").exists() || out.join(".quickstart").exists();
        if !ours && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{}: exists and is not a quickstart folder; pass another --out", out.display());
        }
        fs::remove_dir_all(out).map_err(|e| anyhow!("{}: {e}", out.display()))?;
    }
    fs::create_dir_all(out).map_err(|e| anyhow!("cannot create {}: {e}", out.display()))?;
    fs::write(out.join(".quickstart"), b"").map_err(|e| anyhow!("cannot write in {}: {e}", out.display()))?;

    data::write(&train_path, Synth::with_styles(args.seed, &trained).take(records).map(|r| r.to_sft()))?;
    // Different streams: held-out records are not drawn from the training sequence.
    let heldout: Vec<SynthRecord> = Synth::with_styles(args.seed ^ 0x0004_E1D0_u64, &trained).take(args.heldout).collect();
    data::write(&heldout_path, heldout.iter().map(SynthRecord::to_sft))?;
    let unseen: Vec<SynthRecord> = if held_out.is_empty() {
        Vec::new()
    } else {
        Synth::with_styles(args.seed ^ 0x0005_7E1E_u64, &held_out).take(args.heldout.div_ceil(2)).collect()
    };
    data::write(&unseen_path, unseen.iter().map(SynthRecord::to_sft))?;
    data::write(&seed_path, std::iter::once(seed_example().to_sft()))?;
    let handwritten_path = out.join("data/handwritten.jsonl");
    fs::write(&handwritten_path, HANDWRITTEN).map_err(|e| anyhow!("{}: {e}", handwritten_path.display()))?;
    eprintln!(
        "synthesised {records} training and {} held-out records in the styles {}, and {} in the held-out styles {}, in {}",
        heldout.len(),
        names(&trained),
        unseen.len(),
        if held_out.is_empty() { "(none)".to_string() } else { names(&held_out) },
        out.join("data").display()
    );

    match &args.model {
        None => {
            fs::create_dir_all(&base).map_err(|e| anyhow!("{}: {e}", base.display()))?;
            let config = base.join("config.json");
            fs::write(&config, &base_config).map_err(|e| anyhow!("{}: {e}", config.display()))?;
            for name in TOKENIZER_FILES {
                if tokenizer.join(name).exists() {
                    let to = base.join(name);
                    fs::copy(tokenizer.join(name), &to).map_err(|e| anyhow!("copying {} to {}: {e}", tokenizer.join(name).display(), to.display()))?;
                }
            }
            eprintln!(
                "training a small Qwen3-architecture model ({} layers, hidden {}) from scratch: it shows the pipeline, not Qwen3-0.6B's quality",
                shape.num_hidden_layers, shape.hidden_size
            );
        }
        Some(model) => eprintln!("fine-tuning {model} with the seed's LoRA recipe"),
    }
    let training = Instant::now();
    let run = Run::create(&run_dir, cfg)?;
    let finished = crate::train::execute(backend, &run, opts, &[])?;
    let train_s = training.elapsed().as_secs_f64();
    let model_dir = match &args.model {
        None => finished.output.clone(),
        Some(model) => {
            let merged = out.join("merged");
            let (n, lora) = merge_folder(&Checkpoint::resolve(model)?, &Folder::new(&finished.output), &merged)?;
            eprintln!("merged {n} weight matrices (r={}, scaling {}) into {}", lora.r, lora.scaling(), merged.display());
            merged
        }
    };
    let mut sets = vec![(heldout_path.clone(), "mistakes.jsonl")];
    if !unseen.is_empty() {
        sets.push((unseen_path.clone(), "mistakes-heldout-styles.jsonl"));
    }
    sets.push((seed_path.clone(), "mistakes-seed-example.jsonl"));
    sets.push((handwritten_path.clone(), "mistakes-handwritten.jsonl"));
    let sets: Vec<(PathBuf, PathBuf)> = sets.into_iter().map(|(data, mistakes)| (data, out.join(mistakes))).collect();
    let mut evaluations = with_backend!(backend, |B, device| evaluate_on::<B>(&device, backend, &model_dir, &sets))?.into_iter();
    let mut next = || evaluations.next().ok_or_else(|| anyhow!("an evaluation went missing"));
    let (mut result, wrong) = next()?;
    result["styles"] = by_style(&heldout, &wrong);
    if !unseen.is_empty() {
        let (mut other, wrong) = next()?;
        other["styles"] = by_style(&unseen, &wrong);
        result["held_out_styles"] = other;
    }
    let (seed, wrong) = next()?;
    result["seed_example"] = json!({
        "text": seed_example().text,
        "exact": seed["all_fields_exact"] == json!(1.0),
        "predicted": wrong.first().and_then(|m| m.get("predicted")).cloned().unwrap_or(Value::Null),
    });
    let (mut hand, _) = next()?;
    if let Some((outside, total, kept)) = outside_vocabulary(&run_dir.join("vocab.json"), &tokenizer)? {
        hand["value_tokens"] = json!(total);
        hand["value_tokens_outside_vocabulary"] = json!(outside);
        hand["vocabulary"] = json!(kept);
    }
    result["handwritten"] = hand;
    let report = run_dir.join("report.html");
    let total_s = started.elapsed().as_secs_f64();
    result["train_s"] = json!(train_s);
    result["total_s"] = json!(total_s);
    result["model"] = json!(model_dir.display().to_string());
    result["report"] = json!(report.display().to_string());
    result["train_loss"] = finished.summary["final_loss"].clone();
    result["train_tokens_per_s"] = finished.summary["tokens_per_s"].clone();
    fs::write(out.join("quickstart.json"), serde_json::to_vec_pretty(&result)?)?;
    println!("held-out extraction ({} records in the trained styles, copy-constrained decoding):", heldout.len());
    print_table(&result);
    print_styles(&result["styles"]);
    if let Some(other) = result.get("held_out_styles") {
        println!("styles never trained on ({} records): all fields exact {:.1}%", unseen.len(), 100.0 * other["all_fields_exact"].as_f64().unwrap_or(f64::NAN));
        print_styles(&other["styles"]);
    }
    let seed = &result["seed_example"];
    if seed["exact"] == json!(true) {
        println!("the seed's example: all four fields exact");
    } else {
        println!("the seed's example: wrong; predicted {}", seed["predicted"]);
    }
    let hand = &result["handwritten"];
    let pct = |v: &Value| 100.0 * v.as_f64().unwrap_or(f64::NAN);
    print!(
        "{} complaints written by hand, not by the synthesiser: all fields exact {:.1}% (name {:.0}%, address {:.0}%, email {:.0}%, question {:.0}%)",
        hand["records"],
        pct(&hand["all_fields_exact"]),
        pct(&hand["per_field"]["name"]["exact"]),
        pct(&hand["per_field"]["address"]["exact"]),
        pct(&hand["per_field"]["email"]["exact"]),
        pct(&hand["per_field"]["question"]["exact"]),
    );
    match (hand["value_tokens_outside_vocabulary"].as_u64(), hand["value_tokens"].as_u64(), hand["vocabulary"].as_u64()) {
        (Some(outside), Some(total), Some(kept)) => println!(
            "; {outside} of their {total} value tokens are outside the {kept} tokens of its vocabulary (those of its training data), which it cannot write"
        ),
        _ => println!(),
    }
    println!("model: {}", model_dir.display());
    println!("report: {}", report.display());
    println!("total {:.0} s (training {:.0} s)", total_s, train_s);
    if args.model.is_none() {
        println!("This small model was trained from scratch on synthetic data: it shows the pipeline, not Qwen3-0.6B's quality.");
        println!("With a GPU, run the real recipe next: tiqu quickstart --model Qwen/Qwen3-0.6B");
    }
    if args.json {
        println!("{result}");
    }
    Ok(())
}

/// Complaints written by hand in layouts and words the synthesiser does not produce (real
/// street and place names, forms, letters, an English message, tags, a missing email, a phone
/// number beside the email), labelled by the synthesiser's rules: how far the quickstart model
/// is from text in the wild. `tiqu data check --strict` passes on it (`native/tests/data.rs`).
const HANDWRITTEN: &str = include_str!("../../assets/handwritten-complaints.jsonl");

/// For a model trained on a restricted vocabulary (`vocab.json` in its run): how many tokens of
/// the hand-written records' values lie outside it, of how many, and the vocabulary's size.
/// `None` without a restriction (a pretrained model keeps its whole vocabulary).
fn outside_vocabulary(vocab: &Path, tokenizer: &Path) -> Result<Option<(usize, usize, usize)>> {
    let Ok(bytes) = fs::read(vocab) else { return Ok(None) };
    let map: Value = serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: {e}", vocab.display()))?;
    let kept: std::collections::HashSet<u64> =
        map["ids"].as_array().ok_or_else(|| anyhow!("{}: no ids", vocab.display()))?.iter().filter_map(Value::as_u64).collect();
    let file = tokenizer.join("tokenizer.json");
    let tok = tiqu_core::Tokenizer::from_bytes(&fs::read(&file).map_err(|e| anyhow!("{}: {e}", file.display()))?, &file.display().to_string())?;
    let (mut outside, mut total) = (0, 0);
    for line in HANDWRITTEN.lines() {
        let record: Value = serde_json::from_str(line)?;
        let label: Value = serde_json::from_str(record["output"].as_str().unwrap_or("{}"))?;
        for value in label.as_object().into_iter().flat_map(|o| o.values()).filter_map(Value::as_str) {
            let ids = tok.encode(value)?;
            total += ids.len();
            outside += ids.iter().filter(|&&id| !kept.contains(&u64::from(id))).count();
        }
    }
    Ok(Some((outside, total, kept.len())))
}

/// The README's first text, the seed dataset's style, with the fields the labelling rules give
/// (the question runs through its trailing `…`).
fn seed_example() -> SynthRecord {
    SynthRecord {
        text: "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山…".to_string(),
        name: "龙琳".to_string(),
        address: "宁夏回族自治区璐市城东林街g座 955491".to_string(),
        email: "nafan@example.com".to_string(),
        question: "小区垃圾堆积成山…".to_string(),
        style: Style::Seed,
    }
}

fn names(styles: &[Style]) -> String {
    styles.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

/// All-fields-exact by style: `records[i]` is the file's line `i + 1`; a record is wrong when a
/// mistake names its line.
fn by_style(records: &[SynthRecord], mistakes: &[Value]) -> Value {
    let wrong: std::collections::HashSet<u64> = mistakes.iter().filter_map(|m| m["line"].as_u64()).collect();
    let mut out = serde_json::Map::new();
    for style in Style::ALL {
        let lines: Vec<u64> = records.iter().enumerate().filter(|(_, r)| r.style == style).map(|(i, _)| i as u64 + 1).collect();
        if lines.is_empty() {
            continue;
        }
        let exact = lines.iter().filter(|l| !wrong.contains(l)).count();
        out.insert(style.name().to_string(), json!({"records": lines.len(), "all_fields_exact": exact as f64 / lines.len() as f64}));
    }
    Value::Object(out)
}

fn print_styles(styles: &Value) {
    if let Some(styles) = styles.as_object() {
        let cells: Vec<String> = styles
            .iter()
            .map(|(name, s)| format!("{name} {:.1}% of {}", 100.0 * s["all_fields_exact"].as_f64().unwrap_or(f64::NAN), s["records"]))
            .collect();
        println!("by style: {}", cells.join(", "));
    }
}

/// Extraction quality and loss of the trained model on each `(records, mistakes file)` set, as
/// `tiqu eval` computes them, and its mistakes (also written to the set's file); the model is
/// loaded once for all of them.
fn evaluate_on<B: burn::prelude::Backend>(device: &B::Device, backend: BackendName, model: &Path, sets: &[(PathBuf, PathBuf)]) -> Result<Vec<(Value, Vec<Value>)>> {
    let dtype = crate::backend::dtype::<B>(device, crate::backend::Use::Inference)?;
    let loaded = Checkpoint::open_dir(model)?.load::<B>(&tiqu_core::LoadOptions { dtype: Some(dtype), ..Default::default() }, device)?;
    let workers = if backend == BackendName::Cpu {
        crate::backend::single_threaded_kernels();
        crate::backend::cores()
    } else {
        1
    };
    let opts = SftEvalOptions { extract: ExtractOptions { batch: 32, ..Default::default() }, workers, loss_only: false };
    let mut out = Vec::with_capacity(sets.len());
    for (data, mistakes) in sets {
        let source = data.display().to_string();
        let text = fs::read_to_string(data).map_err(|e| anyhow!("{source}: {e}"))?;
        let (records, bad_lines) = parse_records_lenient(&text, &source)?;
        let (mut result, wrong) = evaluate_sft(loaded.clone(), &records, &bad_lines, &source, &opts, &|_| {})?;
        let lines: String = wrong.iter().map(|m| format!("{m}\n")).collect();
        fs::write(mistakes, lines).map_err(|e| anyhow!("{}: {e}", mistakes.display()))?;
        result["mistakes"] = json!(mistakes.display().to_string());
        out.push((result, wrong));
    }
    Ok(out)
}
