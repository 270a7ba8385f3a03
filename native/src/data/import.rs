//! `tiqu data import`: a CSV, TSV or JSON table of labelled texts → SFT JSONL for `tiqu train`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tiqu_core::dataset::{import, Format, Mapping};
use tiqu_core::sft::SftRecord;

use super::files::{self, check_target};

#[derive(Args)]
pub struct ImportArgs {
    /// The table: .csv, .tsv (or .tab), .json (an array of objects) or .jsonl.
    file: PathBuf,
    /// The column holding the text.
    #[arg(long, value_name = "COLUMN")]
    text: String,
    /// A label and its column, in output order (repeat): --field name=姓名 --field email.
    #[arg(long = "field", value_name = "NAME=COLUMN")]
    fields: Vec<String>,
    /// Where to write the SFT records (JSONL).
    #[arg(long)]
    out: PathBuf,
    /// csv, tsv or json (default: from FILE's extension).
    #[arg(long)]
    format: Option<String>,
    /// Replace an existing --out file.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let source = args.file.display().to_string();
    let format = match &args.format {
        Some(name) => Format::from_name(name).ok_or_else(|| anyhow::anyhow!("--format {name}: expected csv, tsv or json"))?,
        None => {
            let ext = args.file.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            match Format::from_name(&ext) {
                Some(f) => f,
                None => bail!("{source}: cannot tell the format from the extension; pass --format csv|tsv|json"),
            }
        }
    };
    let fields = args.fields.iter().map(|f| Mapping::parse_field(f)).collect::<Result<Vec<_>, _>>()?;
    let mapping = Mapping { text: args.text.clone(), fields };
    check_target(&args.out, &[args.file.as_path()], args.force, "--out")?;
    let reader = files::open(&args.file)?;
    // Each record is written as its row is read; a failure leaves `--out` as it was.
    let mut out = files::Output::create(&args.out)?;
    let write = |record: &SftRecord| -> tiqu_core::Result<()> {
        let line = serde_json::to_string(record).map_err(|e| tiqu_core::Error::Other(e.to_string()))?;
        out.line(line.as_bytes()).map_err(|e| tiqu_core::Error::Other(e.to_string()))
    };
    let imported = import(reader, format, &mapping, &source, write)?;
    files::commit(vec![out])?;
    println!("wrote {} records to {}", imported.records, args.out.display());
    if imported.empty_text > 0 {
        let shown: Vec<String> = imported.empty_text_lines.iter().map(usize::to_string).collect();
        let more = if imported.empty_text > shown.len() { ", …" } else { "" };
        println!("left out {} row(s) with an empty text (line {}{more})", imported.empty_text, shown.join(", "));
    }
    if imported.not_verbatim > 0 {
        println!(
            "note: {} label(s) are not verbatim in their text, which copy-constrained extraction cannot produce: tiqu data check {}",
            imported.not_verbatim,
            args.out.display()
        );
    }
    Ok(())
}
