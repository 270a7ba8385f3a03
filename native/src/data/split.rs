//! `tiqu data split`: records into a training and an evaluation file by a seed, with no text on
//! both sides.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use tiqu_core::dataset::records::record_text;
use tiqu_core::dataset::{read_records, split};

use super::files::{self, beside, check_target};

#[derive(Args)]
pub struct SplitArgs {
    /// SFT records: a JSON array or JSONL.
    file: PathBuf,
    /// The share of records for evaluation (round(F·N), never more; duplicates stay together).
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    eval_fraction: f64,
    /// The same seed gives the same split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Training records (default: <FILE stem>.train.jsonl beside FILE).
    #[arg(long, value_name = "FILE")]
    train_out: Option<PathBuf>,
    /// Evaluation records (default: <FILE stem>.eval.jsonl beside FILE).
    #[arg(long, value_name = "FILE")]
    eval_out: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &SplitArgs) -> Result<()> {
    let source = args.file.display().to_string();
    let f = args.eval_fraction;
    if !(f > 0.0 && f < 1.0) {
        anyhow::bail!("--eval-fraction must be between 0 and 1 (exclusive), got {f:?}");
    }
    let train_out = args.train_out.clone().unwrap_or_else(|| beside(&args.file, "train.jsonl"));
    let eval_out = args.eval_out.clone().unwrap_or_else(|| beside(&args.file, "eval.jsonl"));
    if train_out == eval_out {
        anyhow::bail!("--train-out and --eval-out are the same file {}", train_out.display());
    }
    check_target(&train_out, &[args.file.as_path()], args.force, "--train-out")?;
    check_target(&eval_out, &[args.file.as_path()], args.force, "--eval-out")?;
    let records = read_records(&files::read(&args.file)?, &source)?;
    let mut values = Vec::with_capacity(records.len());
    for raw in &records {
        let line = raw.line;
        let value = raw.value.as_ref().map_err(|p| anyhow!("{source}:{line}: {} (tiqu data check lists every bad line)", p.message))?;
        record_text(value).ok_or_else(|| anyhow!("{source}:{line}: the record has no text (`input` or `instruction`)"))?;
        values.push(value);
    }
    let texts: Vec<&str> = values.iter().filter_map(|v| record_text(v)).collect();
    let split = split(&texts, args.eval_fraction, args.seed)?;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (value, &is_eval) in values.iter().zip(&split.eval) {
        let line = serde_json::to_string(value)?;
        if is_eval { eval.push(line) } else { train.push(line) }
    }
    files::write_lines(&train_out, &train)?;
    files::write_lines(&eval_out, &eval)?;
    println!("wrote {} training records to {}", train.len(), train_out.display());
    println!("wrote {} evaluation records to {}", eval.len(), eval_out.display());
    if split.duplicate_groups > 0 {
        println!("{} text(s) occur more than once; each stays on one side", split.duplicate_groups);
    }
    Ok(())
}
