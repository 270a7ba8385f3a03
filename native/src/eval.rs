//! `tiqu eval`: extraction quality on SFT records whose output is the fields' JSON object —
//! JSON validity, exact match and character F1 per field, all-fields-exact, hallucinated values,
//! records/s — and the loss (mean NLL per response token, as transformers computes the eval
//! loss). `--loss-only` skips extraction.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tiqu_core::eval::{evaluate_sft, SftEvalOptions};
use tiqu_core::dataset::sft_records::{read_lenient, strict};
use tiqu_core::checkpoint::save::PartialFile;
use tiqu_core::{Constrain, ExtractOptions};

use crate::backend::BackendName;
use crate::{checkpoint, with_backend, ModelArgs};

#[derive(Args, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SFT records `{system?, instruction, input?, output}`: a JSON array or JSONL. The text is
    /// `input` (or `instruction` without it); `output` holds the expected fields as JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// Report only the loss (no extraction). The extraction's settings are refused beside it:
    /// accepted, they did nothing.
    #[arg(long, conflicts_with_all = ["constrain", "max_new_tokens", "mistakes", "threads"])]
    pub loss_only: bool,
    /// Records per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// none: free generation; json: always a valid object; copy: values copied from the text.
    #[arg(long, default_value = "copy")]
    pub constrain: Constrain,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Where to write the records extraction got wrong (default: beside --data,
    /// `<name>.mistakes.jsonl`).
    #[arg(long)]
    pub mistakes: Option<PathBuf>,
    /// Make the last stdout line a JSON object of the results.
    #[arg(long)]
    pub json: bool,
    /// Batches extracted at once, each on its own thread (default: the cores on the cpu backend,
    /// else 1).
    #[arg(long, value_parser = crate::backend::threads_arg())]
    pub threads: Option<usize>,
}

pub fn run(backend: BackendName, args: &EvalArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let args = &with_default_threads(backend, args);
    let result = with_backend!(backend, |B, device| evaluate::<B>(&device, args))?;
    if !args.loss_only {
        print_table(&result);
    }
    if args.json {
        println!("{result}");
    }
    Ok(())
}

/// `args` with `threads` set to the cores on the cpu backend when not given (kernels then run
/// single-threaded).
pub fn with_default_threads(backend: BackendName, args: &EvalArgs) -> EvalArgs {
    let mut args = args.clone();
    if args.threads.is_none() && backend == BackendName::Cpu {
        args.threads = Some(crate::backend::cores());
        crate::backend::single_threaded_kernels();
    }
    args
}

/// The mistakes file for `data` when none is given: beside it.
fn default_mistakes(data: &Path) -> PathBuf {
    let stem = data.file_stem().map_or("eval".into(), |s| s.to_string_lossy().to_string());
    data.with_file_name(format!("{stem}.mistakes.jsonl"))
}

/// The mistakes file is rewritten by every eval, so only an earlier eval's mistakes file (or
/// nothing) may stand at its path: never the data, a model file or anything else a typo names.
fn check_replaceable(mistakes: &Path, data: &Path) -> Result<()> {
    let Ok(meta) = fs::metadata(mistakes) else { return Ok(()) };
    let shown = mistakes.display();
    if meta.is_dir() {
        bail!("--mistakes {shown} is a folder");
    }
    if crate::storage::same_file(mistakes, data) {
        bail!("--mistakes {shown} is the --data file: it would be overwritten");
    }
    // Only the first line decides; a large file (or one without newlines) is not read whole.
    let mut first = Vec::new();
    let file = fs::File::open(mistakes).map_err(|e| anyhow!("{shown}: {e}"))?;
    std::io::BufRead::read_until(&mut std::io::BufReader::new(std::io::Read::take(file, 1 << 24)), b'\n', &mut first)
        .map_err(|e| anyhow!("{shown}: {e}"))?;
    let first = first.strip_suffix(b"\n").unwrap_or(&first);
    let is_mistakes = first.is_empty()
        || serde_json::from_slice::<Value>(first).is_ok_and(|v| v.get("line").is_some() && (v.get("expected").is_some() || v.get("error").is_some()));
    if !is_mistakes {
        bail!("refusing to replace {shown}: it is not a mistakes file from an earlier eval (name another --mistakes)");
    }
    Ok(())
}

/// Runs the evaluation and returns its JSON result.
pub fn evaluate<B: burn::prelude::Backend>(device: &B::Device, args: &EvalArgs) -> Result<Value> {
    if args.max_new_tokens == 0 && !args.loss_only {
        bail!("--max-new-tokens must be at least 1 (every answer would be empty)");
    }
    let source = args.data.display().to_string();
    let read = read_lenient(crate::data::files::open(&args.data)?, &source)?;
    // The loss alone needs every record: a bad line is an error there. Extraction counts it.
    let (records, bad_lines) = if args.loss_only { (strict(read, &source)?, Vec::new()) } else { read };
    if records.is_empty() {
        match bad_lines.first() {
            Some((line, why)) => bail!("{source}:{line}: {why}; no usable record to evaluate ({} unusable, this the first)", bad_lines.len()),
            None => bail!("{source}: no record to evaluate"),
        }
    }
    let mistakes_path = args.mistakes.clone().unwrap_or_else(|| default_mistakes(&args.data));
    if !args.loss_only {
        check_replaceable(&mistakes_path, &args.data)?;
    }
    let loaded = checkpoint::load::<B>(&args.model.load_options(), device)?;
    let opts = SftEvalOptions {
        extract: ExtractOptions { constrain: args.constrain, max_new_tokens: args.max_new_tokens, batch: args.batch, ..Default::default() },
        workers: args.threads.unwrap_or(1),
        loss_only: args.loss_only,
    };
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    if args.loss_only {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} records  ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    // Created before the work, so an unwritable path is known at once; written under a temporary
    // name and renamed at the end, so an eval that fails leaves an earlier mistakes file as it was.
    let file = if args.loss_only {
        None
    } else {
        Some(PartialFile::beside(&mistakes_path)?)
    };
    let (mut result, mistakes) = evaluate_sft(loaded, &records, &bad_lines, &source, &opts, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let Some(mut file) = file else {
        println!("loss {:.6} over {} response tokens in {} records", result["loss"].as_f64().unwrap_or(f64::NAN), result["tokens"], records.len());
        return Ok(result);
    };
    for entry in &mistakes {
        writeln!(file.writer(), "{entry}").map_err(|e| anyhow!("{}: {e}", mistakes_path.display()))?;
    }
    file.commit(&mistakes_path, true)?;
    result["mistakes"] = json!(mistakes_path.display().to_string());
    if result["records"].as_u64() == Some(0) {
        // A score of no records is no score: 0.0% would read as a model that fails everything.
        bail!("{source}: no record has a usable reference output ({} unusable; why each is, in {})", result["bad_records"], mistakes_path.display());
    }
    // Unusable records are left out of every score: the first is named, the rest are counted.
    // (A record the model failed on has its text beside its error; an unusable one has none.)
    if let Some(first) = mistakes.iter().filter(|m| m.get("error").is_some() && m.get("text").is_none()).min_by_key(|m| m["line"].as_u64()) {
        let left_out = match result["bad_records"].as_u64().unwrap_or(1) {
            0 | 1 => "this record is left out of the scores".to_string(),
            n => format!("{n} unusable records, this the first, are left out of the scores"),
        };
        let why = first["error"].as_str().unwrap_or_default();
        eprintln!("warning: {source}:{}: {why}; {left_out} (each named in {})", first["line"], mistakes_path.display());
    }
    Ok(result)
}

pub fn print_table(r: &Value) {
    let pct = |v: &Value| format!("{:.1}%", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    println!(
        "{} records ({} unusable)  all fields exact {}  json valid {}  hallucinated {}",
        r["records"],
        r["bad_records"],
        pct(&r["all_fields_exact"]),
        pct(&r["json_valid"]),
        pct(&r["hallucinated"])
    );
    println!("{:<10} {:>8} {:>9}", "field", "exact", "char F1");
    if let Some(fields) = r["per_field"].as_object() {
        for (name, s) in fields {
            println!("{:<10} {:>8} {:>9}", name, pct(&s["exact"]), pct(&s["char_f1"]));
        }
    }
    println!(
        "loss {:.4}  {:.2} records/s ({} decoding)  mistakes: {}",
        r["loss"].as_f64().unwrap_or(f64::NAN),
        r["records_per_s"].as_f64().unwrap_or(0.0),
        r["constrain"].as_str().unwrap_or(""),
        r["mistakes"].as_str().unwrap_or("")
    );
}
