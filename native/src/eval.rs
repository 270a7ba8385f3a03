//! `tiqu eval --loss-only`: mean NLL per response token over an SFT file, as transformers
//! computes the eval loss with labels -100 on the prompt.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use tiqu_core::loss::total_nll;
use tiqu_core::sft::{parse_records, Example};

use crate::backend::BackendName;
use crate::{checkpoint, with_backend, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// SFT records `{system?, instruction, input?, output}`: a JSON array or JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Report only the loss (no extraction).
    #[arg(long)]
    loss_only: bool,
    /// Records per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Make the last stdout line a JSON object {"loss", "tokens", "records"}.
    #[arg(long)]
    json: bool,
}

pub fn run(backend: BackendName, args: &EvalArgs) -> Result<()> {
    if !args.loss_only {
        bail!("eval currently measures the loss only: pass --loss-only");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    with_backend!(backend, |B, device| run_on::<B>(&device, args))
}

fn run_on<B: burn::prelude::Backend>(device: &B::Device, args: &EvalArgs) -> Result<()> {
    let source = args.data.display().to_string();
    let text = std::fs::read_to_string(&args.data).map_err(|e| anyhow!("{source}: {e}"))?;
    let records = parse_records(&text, &source)?;
    let loaded = checkpoint::load::<B>(&args.model.load_options(), device)?;
    let limit = loaded.config.max_position_embeddings;
    let mut examples = Vec::with_capacity(records.len());
    for rec in &records {
        let ex = Example::new(&rec.value, &loaded.tokenizer)?;
        if ex.len() > limit {
            bail!("{source}:{}: record has {} tokens, more than max_position_embeddings ({limit})", rec.line, ex.len());
        }
        examples.push(ex);
    }
    let (nll, tokens) = total_nll(&loaded.model, &examples, args.batch)?;
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    println!("loss {loss:.6} over {tokens} response tokens in {} records", records.len());
    if args.json {
        println!("{}", serde_json::json!({"loss": loss, "tokens": tokens, "records": records.len()}));
    }
    Ok(())
}
