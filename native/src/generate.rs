//! `tiqu generate`: a chat prompt in, the model's reply out.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use tiqu_core::generate::{generate, GenerateOptions, Sampling};
use tiqu_core::chat::ChatPrompt;

use crate::backend::BackendName;
use crate::{checkpoint, with_backend, ModelArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message (none by default).
    #[arg(long)]
    system: Option<String>,
    /// User message; repeat the flag to generate for several prompts in one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object per prompt: {"text", "tokens", "prompt_tokens", "tokens_per_s"}.
    #[arg(long)]
    json: bool,
}

/// A number as f32 that does not round to 0 or infinity on the way (`1e-300` would read as 0,
/// and then be refused as "not positive, got 0").
fn f32_as_typed(s: &str) -> Result<f32, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    let f = v as f32;
    if v > 0.0 && v.is_finite() && f == 0.0 {
        return Err(format!("{v:?} is too small for f32 (it rounds to 0)"));
    }
    if v.is_finite() && f.is_infinite() {
        return Err(format!("{v:?} is too large for f32 (at most {:?})", f32::MAX));
    }
    Ok(f)
}

/// Greedy decoding unless one of these is given.
#[derive(Args, Clone, Copy)]
pub struct SamplingArgs {
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long, value_parser = f32_as_typed)]
    temperature: Option<f32>,
    /// Sample from the k most likely tokens (implies sampling).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p (implies sampling).
    #[arg(long)]
    top_p: Option<f32>,
}

impl SamplingArgs {
    /// What these flags ask for, drawing from `seed` (`--seed`).
    pub fn sampling(&self, seed: u64) -> Sampling {
        if self.temperature.is_none() && self.top_k.is_none() && self.top_p.is_none() {
            return Sampling::Greedy;
        }
        Sampling::Sample { temperature: self.temperature.unwrap_or(1.0), top_k: self.top_k, top_p: self.top_p, seed }
    }
}

pub fn run(backend: BackendName, args: &GenerateArgs) -> Result<()> {
    with_backend!(backend, |B, device| run_on::<B>(&device, args))
}

fn run_on<B: burn::prelude::Backend>(device: &B::Device, args: &GenerateArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if let Some(i) = args.prompt.iter().position(|p| p.trim().is_empty()) {
        bail!("--prompt number {} is empty: the user message needs text (as /v1/chat/completions asks)", i + 1);
    }
    let sampling = args.sampling.sampling(args.model.seed);
    sampling.check()?;
    let loaded = checkpoint::load::<B>(&args.model.load_options(), device)?;
    let prompts = args
        .prompt
        .iter()
        .map(|p| ChatPrompt::new(args.system.as_deref(), p).encode(&loaded.tokenizer).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        pad_token_id: loaded.require_eos()?[0],
        eos_token_ids: loaded.eos_token_ids.clone(),
    };
    let context = loaded.model.max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // (A prompt that fills the context is refused by `generate` itself.)
    if longest < context && longest.saturating_add(args.max_new_tokens) > context {
        eprintln!(
            "warning: the context ({context} positions) leaves the longest prompt ({longest} tokens) {} new tokens, not --max-new-tokens {}",
            context.saturating_sub(longest),
            args.max_new_tokens
        );
    }
    let start = Instant::now();
    let outputs = generate(&loaded.model, &prompts, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    let total: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    let tokens_per_s = if secs > 0.0 { total as f64 / secs } else { 0.0 };
    for (prompt, out) in prompts.iter().zip(&outputs) {
        let text = loaded.tokenizer.decode(&out.tokens, true)?;
        if args.json {
            let line = serde_json::json!({
                "text": text,
                "tokens": out.tokens,
                "prompt_tokens": prompt.len(),
                "tokens_per_s": tokens_per_s,
            });
            println!("{line}");
        } else {
            println!("{text}");
        }
    }
    if !args.json {
        eprintln!("{total} tokens in {secs:.2}s ({tokens_per_s:.1} tokens/s)");
    }
    Ok(())
}
