//! `tiqu data check`: a summary table of what is wrong with a file of SFT records, the findings
//! as JSONL, and with `--fix` a copy whose fixable labels are replaced by their text spans.
//! Exit status: 0 when the file could be read (findings or not), 1 when it could not, and with
//! `--strict` 2 when there is any finding.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::json;
use tiqu_core::dataset::check::eval_texts;
use tiqu_core::dataset::{check, CheckOptions, Report};
use tiqu_core::{Schema, Tokenizer};

use super::files::{self, beside, check_target};

#[derive(Args)]
pub struct CheckArgs {
    /// SFT records: a JSON array or JSONL of {system?, instruction, input?, output}.
    file: PathBuf,
    /// Evaluation records: training texts also found there are findings.
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// The labels every output must hold: a schema file (default: name, address, email, question).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Measure token lengths with this model's tokenizer.json (a folder or a Hub id in the cache).
    #[arg(long, conflicts_with = "tokenizer")]
    model: Option<String>,
    /// Measure token lengths with the tokenizer.json in this folder (or this file).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Records longer than this (in tokens, as training counts them) are findings.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Where to write the findings, one JSON object per line (default: <FILE stem>.findings.jsonl
    /// beside FILE). An existing file is only replaced when it holds findings, or with --force.
    #[arg(long, value_name = "FILE")]
    findings: Option<PathBuf>,
    /// Write the records with every fixable label (whitespace or punctuation width apart from
    /// its text) replaced by the text's span to --out, as JSONL.
    #[arg(long)]
    fix: bool,
    /// The fixed file (with --fix); never the input.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit with status 2 when there is any finding.
    #[arg(long)]
    strict: bool,
    /// Replace an existing --out or --findings file.
    #[arg(long)]
    force: bool,
    /// Print the summary as one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let source = args.file.display().to_string();
    let out = match (args.fix, &args.out) {
        (true, Some(out)) => Some(out.as_path()),
        (true, None) => bail!("--fix needs --out FILE for the fixed records (the input is never overwritten)"),
        (false, Some(_)) => bail!("--out is the file --fix writes: pass --fix too"),
        (false, None) => None,
    };
    if args.max_length < 2 {
        bail!("--max-length must be at least 2, got {}", args.max_length);
    }
    let findings_path = args.findings.clone().unwrap_or_else(|| beside(&args.file, "findings.jsonl"));
    let mut inputs = vec![args.file.as_path()];
    inputs.extend(args.eval.as_deref());
    check_target(&findings_path, &inputs, args.force || holds_findings(&findings_path), "--findings")?;
    if let Some(out) = out {
        check_target(out, &inputs, args.force, "--out")?;
        if files::same_output(out, &findings_path) {
            bail!("--out and --findings are the same file {}", out.display());
        }
    }
    let schema = match &args.schema {
        Some(p) => Schema::from_json(&files::read(p).map_err(|e| anyhow!("--schema: {e}"))?, &p.display().to_string())?,
        None => Schema::default(),
    };
    let tokenizer = load_tokenizer(args)?;
    let records = files::records(&args.file)?;
    let eval = match &args.eval {
        Some(p) => {
            let eval = eval_texts(files::records(p)?, &p.display().to_string())?;
            if let Some((line, why)) = &eval.first_unusable {
                eprintln!("warning: {}:{line}: {why}; {} record(s) of the evaluation file have no text to compare against", p.display(), eval.unusable);
            }
            Some(eval.texts)
        }
        None => None,
    };
    let names = schema.names();
    let opts = CheckOptions { fields: &names, tokenizer: tokenizer.as_ref(), max_length: args.max_length, eval: eval.as_ref() };
    // The fixed copy is written as the records are checked, the findings after; both are put in
    // place together, so a failure leaves each path as it was.
    let mut fixed = out.map(files::Output::create).transpose()?;
    let report = match &mut fixed {
        None => check(records, &opts, None)?,
        Some(file) => {
            let mut sink = |line: &str| file.line(line.as_bytes()).map_err(|e| tiqu_core::Error::Other(e.to_string()));
            check(records, &opts, Some(&mut sink))?
        }
    };
    let mut findings = files::Output::create(&findings_path)?;
    for finding in &report.findings {
        findings.line(serde_json::to_string(finding)?.as_bytes())?;
    }
    files::commit(std::iter::once(findings).chain(fixed).collect())?;
    if args.json {
        println!("{}", summary_json(&report, &findings_path, out));
    } else {
        print_table(&report, &source, &findings_path, out, tokenizer.is_some());
    }
    if args.strict && !report.findings.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}

/// A file a previous check wrote: empty, or every line a JSON object with `line` and `kind`.
fn holds_findings(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    text.lines().filter(|l| !l.trim().is_empty()).all(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.get("line").is_some() && v.get("kind").is_some())
    })
}

fn load_tokenizer(args: &CheckArgs) -> Result<Option<Tokenizer>> {
    let place = match (&args.tokenizer, &args.model) {
        (Some(t), _) => t.clone(),
        (None, Some(model)) => return Ok(Some(crate::checkpoint::resolve(model)?.tokenizer(None)?)),
        (None, None) => return Ok(None),
    };
    let path = if place.is_dir() { place.join("tokenizer.json") } else { place };
    let bytes = std::fs::read(&path).map_err(|e| anyhow!("cannot read the tokenizer {}: {}", path.display(), files::short(&e)))?;
    Ok(Some(Tokenizer::from_bytes(&bytes, &path.display().to_string())?))
}

fn summary_json(report: &Report, findings: &Path, out: Option<&Path>) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> =
        report.counts().into_iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect();
    json!({
        "records": report.records,
        "usable": report.usable,
        "labelled": report.labelled,
        "findings": report.findings.len(),
        "fixable": report.findings.iter().filter(|f| f.fixable).count(),
        "by_kind": counts,
        "fields": report.fields,
        "lengths": report.lengths,
        "findings_file": findings.display().to_string(),
        "fixed_file": out.map(|o| o.display().to_string()),
        "fixes": report.fixes,
        "dropped": report.dropped,
    })
}

fn print_table(report: &Report, source: &str, findings: &Path, out: Option<&Path>, measured: bool) {
    println!("{source}: {} records, {} usable for training, {} with a label object", report.records, report.usable, report.labelled);
    let fixable = report.findings.iter().filter(|f| f.fixable).count();
    println!("findings: {} ({fixable} fixable with --fix)", report.findings.len());
    for (kind, n) in report.counts() {
        println!("  {:<22}{n:>8}", kind.name());
    }
    let pct = |n: usize| if report.labelled == 0 { 0.0 } else { 100.0 * n as f64 / report.labelled as f64 };
    println!("{:<24}{:>8}{:>8}", "label", "null", "empty");
    for f in &report.fields {
        println!("{:<24}{:>7.1}%{:>7.1}%", f.field, pct(f.null), pct(f.empty));
    }
    match (&report.lengths, measured) {
        (Some(l), _) => println!(
            "tokens (prompt + answer): min {}, median {}, p95 {}, max {}, mean {:.0}; {} over --max-length {} (training cuts them)",
            l.min, l.median, l.p95, l.max, l.mean, l.over, l.max_length
        ),
        (None, true) => println!("tokens: no usable record to measure"),
        (None, false) => println!("tokens: not measured (pass --model or --tokenizer for length statistics)"),
    }
    println!("findings written to {}", findings.display());
    if let Some(out) = out {
        let dropped = if report.dropped > 0 { format!("; {} line(s) that are not JSON left out", report.dropped) } else { String::new() };
        println!("fixed file: {} ({} label(s) replaced{dropped})", out.display(), report.fixes);
    }
}
