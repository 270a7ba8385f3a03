//! `tiqu data split`: records into a training and an evaluation file by a seed, with no text on
//! both sides.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use tiqu_core::dataset::records::record_text;
use tiqu_core::dataset::split;

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
    if files::same_output(&train_out, &eval_out) {
        anyhow::bail!("--train-out {} and --eval-out {} are the same file", train_out.display(), eval_out.display());
    }
    check_target(&train_out, &[args.file.as_path()], args.force, "--train-out")?;
    check_target(&eval_out, &[args.file.as_path()], args.force, "--eval-out")?;
    if !files::is_regular(&args.file) {
        anyhow::bail!("{source}: not a regular file; data split reads its input twice, which a pipe cannot give: save it to a file first");
    }
    // Two readings, so that the file is never held whole: its texts decide the split, then each
    // record goes to its side as it is read again.
    let mut texts = Vec::new();
    for raw in files::records(&args.file)? {
        let raw = raw?;
        let line = raw.line;
        let value = raw.value.as_ref().map_err(|p| anyhow!("{source}:{line}: {} (tiqu data check lists every bad line)", p.message))?;
        let text = record_text(value).ok_or_else(|| anyhow!("{source}:{line}: the record has no text (`input` or `instruction`)"))?;
        texts.push(text.to_string());
    }
    let split = split(&texts.iter().map(String::as_str).collect::<Vec<_>>(), args.eval_fraction, args.seed)?;
    drop(texts);
    let changed = || anyhow!("{source}: changed while it was being split; run again");
    let mut records = files::records(&args.file)?;
    let (mut train_file, mut eval_file) = (files::Output::create(&train_out)?, files::Output::create(&eval_out)?);
    let (mut train, mut eval) = (0usize, 0usize);
    for &is_eval in &split.eval {
        let value = records.next().ok_or_else(changed)??.value.map_err(|_| changed())?;
        let (out, n) = if is_eval { (&mut eval_file, &mut eval) } else { (&mut train_file, &mut train) };
        out.line(serde_json::to_string(&value)?.as_bytes())?;
        *n += 1;
    }
    if records.next().is_some() {
        return Err(changed());
    }
    files::commit(vec![train_file, eval_file])?;
    println!("wrote {train} training records to {}", train_out.display());
    println!("wrote {eval} evaluation records to {}", eval_out.display());
    if split.duplicate_groups > 0 {
        println!("{} text(s) occur more than once; each stays on one side", split.duplicate_groups);
    }
    Ok(())
}
