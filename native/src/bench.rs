//! `tiqu bench …`: throughput on random weights. Figures for BENCHMARKS.md, not tests.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use burn::prelude::*;
use clap::{Args, Subcommand};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tiqu_core::model::Positions;
use tiqu_core::{Qwen3Config, Qwen3ForCausalLM, RandomInit};

use crate::backend::BackendName;
use crate::memory::peak_rss_mb;
use crate::with_backend;

mod serve;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode throughput of batched greedy generation.
    Generate(BenchGenerateArgs),
    /// LoRA training throughput with the seed recipe.
    Train(BenchTrainArgs),
    /// Extraction throughput (constrained decoding included).
    Extract(BenchExtractArgs),
    /// What speculative decoding's verifying pass costs: one pass over 1, 2, 4… new positions
    /// per row after a cache of --cache tokens, logits read back, and the speed-up this implies
    /// for an acceptance rate.
    Verify(BenchVerifyArgs),
    /// Load on a running `tiqu serve`: C concurrent clients, records/s, p50/p99 latency, errors.
    Serve(serve::BenchServeArgs),
}

#[derive(Args)]
pub struct BenchExtractArgs {
    #[command(flatten)]
    quant: crate::checkpoint::QuantArgs,
    /// A config.json, or a preset: qwen3-0.6b, qwen3-1.7b, qwen3-4b.
    #[arg(long)]
    config: String,
    /// The Qwen3 tokenizer folder (default: the repository's assets/qwen3-tokenizer, found from
    /// the working directory or from where this binary was built).
    #[arg(long)]
    tokenizer: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Records to extract (default: one batch).
    #[arg(long)]
    records: Option<usize>,
    /// Characters per record (the seed's example, repeated).
    #[arg(long, default_value_t = 120)]
    text_chars: usize,
    /// Tokens picked per record; random weights rarely close the object, so this fixes lengths.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, default_value = "copy")]
    constrain: tiqu_core::Constrain,
    /// Speculative decoding (off, auto, or a draft length 1-16).
    #[arg(long, default_value = "auto")]
    speculate: tiqu_core::Speculate,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchTrainArgs {
    /// A config.json, or a preset: qwen3-0.6b, qwen3-1.7b, qwen3-4b.
    #[arg(long)]
    config: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row: the first half is prompt (no loss), the second half response.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// What backward recomputes, as `tiqu train --gradient-checkpointing`: none, balanced (burn's
    /// strategy; also `true`, the default as in training) or layer (each layer's input kept).
    #[arg(long, default_value = "balanced")]
    gradient_checkpointing: tiqu_core::train::Checkpointing,
    /// Split the batch into this many micro-batches (gradient accumulation), computed at once on
    /// their own threads; on the cpu backend kernels then run single-threaded. Default: as
    /// `tiqu train` does, one per core on the cpu backend (the most cores that divide --batch),
    /// else 1.
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchVerifyArgs {
    #[command(flatten)]
    quant: crate::checkpoint::QuantArgs,
    /// A config.json, or a preset: qwen3-0.6b, qwen3-1.7b, qwen3-4b.
    #[arg(long)]
    config: String,
    /// Rows decoding together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens already in each row's cache.
    #[arg(long, default_value_t = 200)]
    cache: usize,
    /// New positions per row and pass (the pick and its draft).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    positions: Vec<usize>,
    /// Timed passes per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Share of drafted tokens the model keeps (measured by `tiqu extract`), for the implied
    /// tokens per pass: each drafted token is kept with this probability until one is not.
    #[arg(long, default_value_t = 0.8)]
    acceptance: f64,
    /// Logits of this many vocabulary tokens only (spread over the vocabulary), as copy mode
    /// computes them when a pass's allowed tokens are few; default: the whole output layer.
    #[arg(long)]
    gather: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchGenerateArgs {
    #[command(flatten)]
    quant: crate::checkpoint::QuantArgs,
    /// A config.json, or a preset: qwen3-0.6b, qwen3-1.7b, qwen3-4b.
    #[arg(long)]
    config: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Print one JSON object: {"prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb", …}.
    #[arg(long)]
    json: bool,
}

pub fn load_bench_config(spec: &str) -> Result<Qwen3Config> {
    if let Some(cfg) = Qwen3Config::preset(spec) {
        return Ok(cfg);
    }
    let bytes = std::fs::read(spec).map_err(|e| anyhow!("--config {spec}: not a preset (qwen3-0.6b, qwen3-1.7b, qwen3-4b) nor a readable file: {e}"))?;
    Ok(Qwen3Config::from_json(&bytes, spec)?)
}

/// Refuses a size whose host memory is known, before anything is built, to exceed what the
/// machine has (asked of the allocator, it aborts the process instead); `at_least` is a lower
/// bound of what the run needs, so nothing that would fit is refused.
fn check_host_memory(backend: BackendName, at_least: u128, what: &str, flags: &str) -> Result<()> {
    if backend != BackendName::Cpu {
        return Ok(());
    }
    Ok(tiqu_core::weights::check_available(at_least, &format!("{what} takes at least"), &format!(" (lower {flags})"))?)
}

/// Bytes of a KV cache of `rows` × `positions` at 2 bytes a value, the smallest dtype.
fn kv_cache_bytes(cfg: &Qwen3Config, rows: usize, positions: usize) -> u128 {
    2 * (cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim) as u128 * rows as u128 * positions as u128 * 2
}

pub fn run(backend: BackendName, cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Generate(args) => with_backend!(backend, |B, device| bench_generate::<B>(&device, backend, args)),
        BenchCommand::Extract(args) => with_backend!(backend, |B, device| bench_extract::<B>(&device, backend, args)),
        BenchCommand::Verify(args) => with_backend!(backend, |B, device| bench_verify::<B>(&device, backend, args)),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Train(args) => with_backend!(backend, |B, device| {
            use tiqu_core::train::Checkpointing;
            match args.gradient_checkpointing {
                Checkpointing::Balanced => {
                    type C = burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
                    bench_train::<burn::backend::Autodiff<B, C>>(&device, backend, args)
                }
                Checkpointing::None | Checkpointing::Layer => bench_train::<burn::backend::Autodiff<B>>(&device, backend, args),
            }
        }),
    }
}

fn bench_generate<B: Backend>(device: &B::Device, backend: BackendName, args: &BenchGenerateArgs) -> Result<()> {
    if args.batch == 0 || args.prompt_len == 0 || args.new_tokens == 0 {
        bail!("--batch, --prompt-len and --new-tokens must be at least 1");
    }
    crate::check_rows("--batch", args.batch)?;
    let cfg = load_bench_config(&args.config)?;
    if args.prompt_len.saturating_add(args.new_tokens) > cfg.max_position_embeddings {
        bail!("--prompt-len {} + --new-tokens {} exceed the config's max_position_embeddings ({})", args.prompt_len, args.new_tokens, cfg.max_position_embeddings);
    }
    let positions = args.prompt_len + args.new_tokens;
    check_host_memory(backend, kv_cache_bytes(&cfg, args.batch, positions), &format!("a KV cache of {} rows × {positions} positions", args.batch), "--batch or --prompt-len")?;
    let load_start = Instant::now();
    let model: Qwen3ForCausalLM<B> = args.quant.random_model(&cfg, device)?;
    let dtype = model.dtype();
    let load_s = load_start.elapsed().as_secs_f64();
    let mut rng = StdRng::seed_from_u64(7);
    let (b, p, t) = (args.batch, args.prompt_len, args.new_tokens);
    let ids: Vec<u32> = (0..b * p).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect();
    let read = |x: Tensor<B, 1, Int>| -> Result<Vec<u32>> {
        let v = x.into_data().convert::<i64>().to_vec::<i64>().map_err(|e| anyhow!("{e:?}"))?;
        Ok(v.into_iter().map(|i| i as u32).collect())
    };

    // Greedy as `generate` picks: through the int8 screen of the output layer where the model has one.
    let greedy = |h: Tensor<B, 2>| -> Result<Vec<u32>> {
        match model.screened_argmax(&h) {
            Some(token) => Ok(vec![token]),
            None => read(model.logits(h).argmax(1).reshape([b])),
        }
    };

    // Warm-up: kernels compile (GPU backends) and allocators settle before timing.
    {
        let mut cache = model.new_cache(b, 8 + 1)?;
        let pos = Positions::left_padded(&vec![8; b], 8);
        let h = model.hidden(&vec![1; b * 8], &pos, Some(&mut cache))?;
        let d = h.dims()[2];
        greedy(h.narrow(1, 7, 1).reshape([b, d]))?;
    }

    let mut cache = model.new_cache(b, p + t)?;
    let start = Instant::now();
    let pos = Positions::left_padded(&vec![p; b], p);
    let hidden = model.hidden(&ids, &pos, Some(&mut cache))?;
    let d = hidden.dims()[2];
    let mut next = greedy(hidden.narrow(1, p - 1, 1).reshape([b, d]))?;
    let prefill_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut pos = pos;
    for step in 0..t.saturating_sub(1) {
        pos = pos.next(&vec![1; b], &vec![p + step; b], 1);
        let h = model.hidden(&next, &pos, Some(&mut cache))?;
        next = greedy(h.reshape([b, d]))?;
    }
    let decode_s = start.elapsed().as_secs_f64();
    let decode_tokens = b * t.saturating_sub(1);
    let out = serde_json::json!({
        "backend": backend.name(),
        "dtype": tiqu_core::dtype::name(dtype),
        "quantize": args.quant.describe(),
        "config": args.config,
        "batch": b,
        "prompt_len": p,
        "new_tokens": t,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": (b * p) as f64 / prefill_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": if decode_s > 0.0 { decode_tokens as f64 / decode_s } else { 0.0 },
        "peak_rss_mb": peak_rss_mb(),
        "device_reserved_mb": crate::backend::device_reserved_mb(backend),
    });
    print_result(&out, args.json)
}

fn bench_verify<B: Backend>(device: &B::Device, backend: BackendName, args: &BenchVerifyArgs) -> Result<()> {
    use tiqu_core::model::RowPass;
    let longest = args.positions.iter().copied().max().unwrap_or(0);
    if args.batch == 0 || args.cache == 0 || args.repeats == 0 || args.positions.contains(&0) || longest == 0 {
        bail!("--batch, --cache, --repeats and every --positions entry must be at least 1");
    }
    crate::check_rows("--batch", args.batch)?;
    if !(0.0..=1.0).contains(&args.acceptance) {
        bail!("--acceptance must be a share from 0 to 1, got {:?}", args.acceptance);
    }
    let cfg = load_bench_config(&args.config)?;
    if args.cache.saturating_add(longest) > cfg.max_position_embeddings {
        bail!("--cache {} + {longest} positions exceed the model's context ({})", args.cache, cfg.max_position_embeddings);
    }
    let positions = args.cache + longest;
    check_host_memory(backend, kv_cache_bytes(&cfg, args.batch, positions), &format!("a KV cache of {} rows × {positions} positions", args.batch), "--batch or --cache")?;
    if args.gather.is_some_and(|g| g == 0 || g > cfg.vocab_size) {
        bail!("--gather must be from 1 to the vocabulary's {} tokens", cfg.vocab_size);
    }
    let model: Qwen3ForCausalLM<B> = args.quant.random_model(&cfg, device)?;
    let dtype = model.dtype();
    let (b, vocab) = (args.batch, cfg.vocab_size as u32);
    let gathered: Option<Vec<u32>> = args.gather.map(|g| (0..g).map(|i| (i * cfg.vocab_size / g) as u32).collect());
    let mut rng = StdRng::seed_from_u64(7);
    let mut cache = model.new_cache(b, args.cache + longest)?;
    // The prompt, in the engine's chunks.
    let mut at = 0;
    while at < args.cache {
        let n = (args.cache - at).min(tiqu_core::engine::PREFILL_CHUNK);
        let ids: Vec<u32> = (0..b * n).map(|_| rng.random_range(0..vocab)).collect();
        let pass = RowPass { first: 0, seq: n, starts: vec![at; b], lens: vec![n; b] };
        model.hidden_rows(&ids, &pass, &mut cache)?;
        at += n;
    }
    // One verifying pass as the engine runs it: every new position's logits, read back. Its
    // columns are written after the cache again each time, as after a rejected draft.
    let mut verify = |n: usize| -> Result<f64> {
        let ids: Vec<u32> = (0..b * n).map(|_| rng.random_range(0..vocab)).collect();
        let pass = RowPass { first: 0, seq: n, starts: vec![args.cache; b], lens: vec![n; b] };
        let start = Instant::now();
        let hidden = model.hidden_rows(&ids, &pass, &mut cache)?;
        let d = hidden.dims()[2];
        let hidden = hidden.reshape([b * n, d]);
        let logits = match &gathered {
            Some(ids) => model.logits_of(hidden, ids),
            None => model.logits(hidden),
        };
        logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        Ok(start.elapsed().as_secs_f64())
    };
    verify(1)?;
    let mut sizes = Vec::new();
    for &n in &args.positions {
        let mut times: Vec<f64> = (0..args.repeats).map(|_| verify(n)).collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        sizes.push((n, times[times.len() / 2]));
    }
    let one = sizes.iter().find(|(n, _)| *n == 1).map(|&(_, s)| s);
    let a = args.acceptance;
    let rows: Vec<serde_json::Value> = sizes
        .iter()
        .map(|&(n, secs)| {
            // A pick plus n - 1 drafted tokens, each kept with probability a until one is not:
            // 1 + a + a² + … + a^(n-1) tokens per row and pass.
            let tokens = (0..n).map(|i| a.powi(i as i32)).sum::<f64>();
            serde_json::json!({
                "positions": n,
                "pass_s": secs,
                "cost_vs_one_position": one.map(|o| secs / o),
                "tokens_per_pass": tokens,
                "tokens_per_s": (b as f64) * tokens / secs,
                "speedup_vs_no_draft": one.map(|o| tokens * o / secs),
            })
        })
        .collect();
    let out = serde_json::json!({
        "backend": backend.name(),
        "dtype": tiqu_core::dtype::name(dtype),
        "quantize": args.quant.describe(),
        "config": args.config,
        "batch": b,
        "cache": args.cache,
        "acceptance": a,
        "gathered_logits": args.gather,
        "sizes": rows,
        "peak_rss_mb": peak_rss_mb(),
    });
    print_result(&out, args.json)
}

fn bench_train<B: burn::tensor::backend::AutodiffBackend>(device: &B::Device, backend: BackendName, args: &BenchTrainArgs) -> Result<()> {
    use tiqu_core::lora::LoraConfig;
    use tiqu_core::sft::Example;
    use tiqu_core::train::{AdamWConfig, Method, Trainer};
    let threads = match args.threads {
        Some(t) => t,
        None if backend == BackendName::Cpu => (1..=crate::backend::cores().min(args.batch).max(1)).rev().find(|t| args.batch.is_multiple_of(*t)).unwrap_or(1),
        None => 1,
    };
    if args.batch == 0 || args.seq < 2 || args.steps == 0 || threads == 0 || !args.batch.is_multiple_of(threads) {
        bail!("--batch, --steps and --threads must be at least 1, --seq at least 2, and --threads must divide --batch");
    }
    crate::check_rows("--batch", args.batch)?;
    if threads > 1 && backend == BackendName::Cpu {
        crate::backend::single_threaded_kernels();
    }
    let cfg = load_bench_config(&args.config)?;
    if args.seq > cfg.max_position_embeddings {
        bail!("--seq {} exceeds the config's max_position_embeddings ({})", args.seq, cfg.max_position_embeddings);
    }
    // Far below what training keeps (a handful of f32 activations of every layer per token, and
    // the weights at 2 bytes), so only what cannot fit is refused.
    let tokens = args.batch as u128 * args.seq as u128;
    let at_least = tokens * (4 * cfg.num_hidden_layers * cfg.hidden_size * 4) as u128 + 2 * u128::from(cfg.num_parameters());
    check_host_memory(backend, at_least, &format!("training on {} rows × {} tokens", args.batch, args.seq), "--batch or --seq")?;
    let dtype = crate::backend::dtype::<B>(device, crate::backend::Use::TrainLora)?;
    let load = tiqu_core::LoadOptions { dtype: Some(dtype), ..Default::default() };
    let mut model = Qwen3ForCausalLM::<B>::load_with(&cfg, &mut RandomInit::new(42, 0.02), device, &load)?;
    model.add_lora(&LoraConfig::default(), 42)?;
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 1.0, 42)?;
    trainer.threads = threads;
    trainer.recompute_layers = args.gradient_checkpointing == tiqu_core::train::Checkpointing::Layer;
    let mut rng = StdRng::seed_from_u64(7);
    let half = args.seq / 2;
    let rows: Vec<Example> = (0..args.batch)
        .map(|_| Example {
            prompt: (0..half).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect(),
            response: (0..args.seq - half).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect(),
        })
        .collect();
    let micro: Vec<&[Example]> = rows.chunks(args.batch / threads).collect();
    trainer.step(&micro, 1e-4)?;
    let mut device_mb = crate::backend::device_reserved_mb(backend);
    let start = Instant::now();
    for _ in 0..args.steps {
        trainer.step(&micro, 1e-4)?;
        device_mb = match (device_mb, crate::backend::device_reserved_mb(backend)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let step_s = start.elapsed().as_secs_f64() / args.steps as f64;
    let out = serde_json::json!({
        "backend": backend.name(),
        "dtype": tiqu_core::dtype::name(dtype),
        "config": args.config,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing.name(),
        "threads": threads,
        "step_s": step_s,
        "tokens_per_s": (args.batch * args.seq) as f64 / step_s,
        "peak_rss_mb": peak_rss_mb(),
        "device_reserved_mb": device_mb,
    });
    print_result(&out, args.json)
}

fn bench_extract<B: Backend>(device: &B::Device, backend: BackendName, args: &BenchExtractArgs) -> Result<()> {
    use tiqu_core::{ExtractOptions, Extractor, Schema};
    if args.batch == 0 || args.text_chars == 0 || args.max_new_tokens == 0 || args.records == Some(0) {
        bail!("--batch, --text-chars, --max-new-tokens and --records must be at least 1");
    }
    crate::check_rows("--batch", args.batch)?;
    // The texts are made up front: bounded so that a typo is an error, not an abort.
    if args.records.is_some_and(|n| n > 1_000_000) || args.text_chars > 1_000_000 {
        bail!("--records and --text-chars are at most 1000000");
    }
    let cfg = load_bench_config(&args.config)?;
    let tokenizer = tiqu_core::Checkpoint::tokenizer_in(&tiqu_core::Folder::new(crate::quickstart::find_tokenizer(args.tokenizer.as_deref())?))?;
    let model: Qwen3ForCausalLM<B> = args.quant.random_model(&cfg, device)?;
    let dtype = model.dtype();
    let options = ExtractOptions {
        constrain: args.constrain,
        max_new_tokens: args.max_new_tokens,
        batch: args.batch,
        speculate: args.speculate,
        ..Default::default()
    };
    let eos = if cfg.eos_token_ids.is_empty() { vec![151645] } else { cfg.eos_token_ids.clone() };
    let extractor = Extractor::new(model, tokenizer, eos, Schema::default(), options);
    let seed = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业不管，臭气熏天！！";
    let n = args.records.unwrap_or(args.batch);
    let texts: Vec<String> = (0..n)
        .map(|i| format!("{i} {}", seed.chars().cycle().skip(i % 7).take(args.text_chars).collect::<String>()))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // A whole batch: GPU kernels compile and autotune for the timed shapes.
    extractor.extract_batch(&refs[..args.batch.min(n)]);
    let start = Instant::now();
    let results = extractor.extract_batch(&refs);
    let secs = start.elapsed().as_secs_f64();
    // In `none` mode random weights rarely produce JSON: such records count, their tokens don't.
    let tokens: usize = results.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.tokens).sum();
    let failed = results.iter().filter(|r| r.is_err()).count();
    // Records that failed are no measurement: all of them failing is an error; some, a warning
    // with the first reason (figures over the rest). Not in `none` mode, where random weights
    // failing to write JSON is what is expected.
    let first_failure = results.iter().find(|r| r.is_err()).filter(|_| args.constrain != tiqu_core::Constrain::None);
    if let Some(Err(first)) = first_failure {
        let why = first.to_string().replace('\n', " ");
        if failed == n {
            bail!("every record failed, so there is nothing to measure: {why}");
        }
        eprintln!("warning: {failed} of {n} records failed (the figures count the others' tokens); the first: {why}");
    }
    let constrain_s: f64 = results.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.constrain_s).sum();
    let drafted: usize = results.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.drafted).sum();
    let accepted: usize = results.iter().filter_map(|r| r.as_ref().ok()).map(|e| e.accepted).sum();
    let out = serde_json::json!({
        "backend": backend.name(),
        "dtype": tiqu_core::dtype::name(dtype),
        "quantize": args.quant.describe(),
        "config": args.config,
        "constrain": format!("{:?}", args.constrain).to_lowercase(),
        "speculate": args.speculate.to_string(),
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "batch": args.batch,
        "records": n,
        "text_chars": args.text_chars,
        "max_new_tokens": args.max_new_tokens,
        "seconds": secs,
        "records_per_s": n as f64 / secs,
        "tokens_per_s": tokens as f64 / secs,
        "failed_records": failed,
        "constrain_s": constrain_s,
        "constrain_share": constrain_s / secs,
        "peak_rss_mb": peak_rss_mb(),
        "device_reserved_mb": crate::backend::device_reserved_mb(backend),
    });
    print_result(&out, args.json)
}

/// One JSON line with `--json`, else the same object pretty-printed.
fn print_result(out: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(out)?);
    }
    Ok(())
}
