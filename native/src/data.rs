//! `tiqu data`: synthetic complaint records as SFT JSONL (`synth`; see `tiqu_core::synth` for
//! what they hold and how they are labelled), and tools for real labelled data: `check`,
//! `import`, `split` (see `tiqu_core::dataset`).

mod check;
pub(crate) mod files;
mod import;
mod split;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use tiqu_core::synth::{Style, Synth};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write N synthetic complaint records ({system, instruction, input, output}) as JSONL,
    /// the same records for the same seed.
    Synth(SynthArgs),
    /// Check a file of SFT records before training: bad records and labels, duplicates,
    /// train/eval overlap, token lengths, null rates; findings as JSONL; --fix, --strict.
    Check(Box<check::CheckArgs>),
    /// Turn a CSV, TSV or JSON table into SFT JSONL: --text COLUMN --field NAME=COLUMN ….
    Import(import::ImportArgs),
    /// Split SFT records into training and evaluation files by a seed, duplicates on one side.
    Split(split::SplitArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// How many records.
    #[arg(long)]
    n: usize,
    /// Seed: the same seed gives the same records.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write them (JSONL).
    #[arg(long)]
    out: PathBuf,
    /// Write this fraction of the records (the first round(F·N)) to --out and the rest to
    /// <out stem>.heldout.jsonl beside it.
    #[arg(long, value_name = "F")]
    split: Option<f64>,
    /// Only these text styles (comma-separated: seed, form, free, letter, english, bracket, row).
    #[arg(long, default_value = "all")]
    styles: String,
    /// Replace --out (and the held-out file) when they exist.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(args) => synth(args),
        DataCommand::Check(args) => check::run(args),
        DataCommand::Import(args) => import::run(args),
        DataCommand::Split(args) => split::run(args),
    }
}

/// `runs/x.jsonl` → `runs/x.heldout.jsonl`.
pub fn heldout_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}.heldout.jsonl"))
}

fn synth(args: &SynthArgs) -> Result<()> {
    // Ten million records are some 3 GB: a larger --n is a typo that would fill the disk.
    const MAX_N: usize = 10_000_000;
    if args.n == 0 || args.n > MAX_N {
        bail!("--n must be between 1 and {MAX_N}, got {}", args.n);
    }
    let train = match args.split {
        None => args.n,
        Some(f) if !(f > 0.0 && f < 1.0) => bail!("--split must be between 0 and 1 (exclusive), got {f:?}"),
        Some(f) => {
            let train = (f * args.n as f64).round() as usize;
            if train == 0 || train == args.n {
                bail!(
                    "--split {f} of --n {} leaves the {} set empty",
                    args.n,
                    if train == 0 { "training" } else { "held-out" }
                );
            }
            train
        }
    };
    let styles = Style::parse_list(&args.styles).map_err(|e| anyhow::anyhow!("--styles: {e}"))?;
    if styles.is_empty() {
        bail!("--styles: name at least one style");
    }
    files::check_target(&args.out, &[], args.force, "--out")?;
    if train < args.n {
        files::check_target(&heldout_path(&args.out), &[], args.force, "the held-out file")?;
    }
    let mut records = Synth::with_styles(args.seed, &styles).map(|r| r.to_sft());
    // Both files are put in place together, when both are whole.
    let mut outputs = vec![files::Output::create(&args.out)?];
    write_records(&mut outputs[0], records.by_ref().take(train))?;
    let heldout = heldout_path(&args.out);
    if train < args.n {
        outputs.push(files::Output::create(&heldout)?);
        write_records(&mut outputs[1], records.take(args.n - train))?;
    }
    files::commit(outputs)?;
    println!("wrote {train} records to {}", args.out.display());
    if train < args.n {
        println!("wrote {} held-out records to {}", args.n - train, heldout.display());
    }
    Ok(())
}

/// Writes `records` as JSONL to `path` through a temporary file beside it, renamed when
/// complete: a failed or interrupted run leaves the file as it was, never a clean-looking prefix.
pub fn write(path: &Path, records: impl Iterator<Item = tiqu_core::sft::SftRecord>) -> Result<()> {
    let mut out = files::Output::create(path)?;
    write_records(&mut out, records)?;
    files::commit(vec![out])
}

fn write_records(out: &mut files::Output, records: impl Iterator<Item = tiqu_core::sft::SftRecord>) -> Result<()> {
    for record in records {
        out.line(serde_json::to_string(&record)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heldout_sits_beside_the_output() {
        assert_eq!(heldout_path(Path::new("runs/x.jsonl")), Path::new("runs/x.heldout.jsonl"));
        assert_eq!(heldout_path(Path::new("data")), Path::new("data.heldout.jsonl"));
        assert_eq!(heldout_path(Path::new("a.b.json")), Path::new("a.b.heldout.jsonl"));
    }
}
