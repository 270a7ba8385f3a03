//! `tiqu merge`: base + adapter → a standalone Hugging Face folder that transformers loads.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use tiqu_core::folder::{load_config, open_adapter, open_weights};
use tiqu_core::merge::merge_into;

use crate::checkpoint::resolve;

#[derive(Args)]
pub struct MergeArgs {
    /// Base checkpoint folder or Hub id.
    #[arg(long)]
    pub model: String,
    /// Adapter folder (PEFT layout).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Files a checkpoint folder carries besides its weights, copied as they are.
const SIDE_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
];

pub fn run(args: &MergeArgs) -> Result<()> {
    let base = resolve(&args.model)?;
    let config = load_config(&base)?;
    let (lora, mut adapter) = open_adapter(&args.adapter)?;
    let mut weights = open_weights(&base)?;
    if args.out.exists() && fs::read_dir(&args.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: already exists and is not empty; merge writes a new folder", args.out.display());
    }
    // Written under a temporary name, renamed when complete: a crash leaves no half model.
    let tmp = args.out.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| anyhow!("{}: {e}", tmp.display()))?;
    let target = tmp.join("model.safetensors");
    let mut out = BufWriter::new(File::create(&target).map_err(|e| anyhow!("{}: {e}", target.display()))?);
    let merged = merge_into(&mut weights, &lora, &mut adapter, config.num_hidden_layers, &mut out)?;
    std::io::Write::flush(&mut out).map_err(|e| anyhow!("{}: {e}", target.display()))?;
    drop(out);
    for name in SIDE_FILES {
        copy_if_present(&base.join(name), &tmp.join(name))?;
    }
    if args.out.exists() {
        fs::remove_dir(&args.out).map_err(|e| anyhow!("{}: {e}", args.out.display()))?;
    }
    fs::rename(&tmp, &args.out).map_err(|e| anyhow!("{}: {e}", args.out.display()))?;
    println!(
        "merged {merged} weight matrices (r={}, scaling {}) into {}",
        lora.r,
        lora.scaling(),
        args.out.display()
    );
    Ok(())
}

fn copy_if_present(from: &Path, to: &Path) -> Result<()> {
    if from.exists() {
        // Follows symlinks: the merged folder stands alone.
        fs::copy(from, to).map_err(|e| anyhow!("{}: {e}", from.display()))?;
    }
    Ok(())
}
