//! `tiqu merge`: base + adapter → a standalone Hugging Face folder that transformers loads.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tiqu_core::checkpoint::save::merge_folder;
use tiqu_core::files::Folder;

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

pub fn run(args: &MergeArgs) -> Result<()> {
    if let Some(name) = crate::backend::given_dtype() {
        // Accepted, it was ignored: the output kept the base's dtype whatever was asked.
        anyhow::bail!("--dtype {name}: merge writes each weight in the base checkpoint's own dtype; drop --dtype");
    }
    let base = crate::checkpoint::resolve(&args.model)?;
    let (merged, lora) = merge_folder(&base, &Folder::new(&args.adapter), &args.out)?;
    println!("merged {merged} weight matrices (r={}, scaling {}) into {}", lora.r, lora.scaling(), args.out.display());
    Ok(())
}
