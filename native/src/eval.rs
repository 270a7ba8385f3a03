//! `tiqu eval`: extraction quality on SFT records whose output is the fields' JSON object —
//! JSON validity, exact match and character F1 per field, all-fields-exact, hallucinated values,
//! records/s — and the loss (mean NLL per response token, as transformers computes the eval
//! loss). `--loss-only` skips extraction.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tiqu_core::loss::total_nll;
use tiqu_core::score::{reference_fields, Scores};
use tiqu_core::sft::{parse_records, parse_records_lenient, Example};
use tiqu_core::{Constrain, ExtractOptions, Extractor, Schema};

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
    /// Report only the loss (no extraction).
    #[arg(long)]
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
    #[arg(long)]
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

/// Runs the evaluation and returns its JSON result.
pub fn evaluate<B: burn::prelude::Backend>(device: &B::Device, args: &EvalArgs) -> Result<Value> {
    let source = args.data.display().to_string();
    let text = fs::read_to_string(&args.data).map_err(|e| anyhow!("{source}: {e}"))?;
    // The loss alone needs every record: a bad line is an error there. Extraction counts it.
    let (records, bad_lines) = if args.loss_only { (parse_records(&text, &source)?, Vec::new()) } else { parse_records_lenient(&text, &source)? };
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
    if args.loss_only {
        println!("loss {loss:.6} over {tokens} response tokens in {} records", records.len());
        return Ok(json!({"loss": loss, "tokens": tokens, "records": records.len()}));
    }

    let schema = Schema::default();
    // Owned: the schema moves into the extractor.
    let names: Vec<String> = schema.names().into_iter().map(String::from).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mistakes_path = args.mistakes.clone().unwrap_or_else(|| default_mistakes(&args.data));
    let mut mistakes = fs::File::create(&mistakes_path).map_err(|e| anyhow!("cannot write {}: {e}", mistakes_path.display()))?;
    for (line, why) in &bad_lines {
        writeln!(mistakes, "{}", json!({"line": line, "error": why}))?;
    }
    // Records whose reference is unusable are counted and listed, not scored.
    let mut scored = Vec::new();
    let mut bad_references = 0;
    for rec in &records {
        let r = &rec.value;
        match reference_fields(r.output.as_deref().unwrap_or(""), &names) {
            Ok(reference) => scored.push((rec.line, r.input.clone().unwrap_or_else(|| r.instruction.clone()), reference)),
            Err(why) => {
                bad_references += 1;
                writeln!(mistakes, "{}", json!({"line": rec.line, "error": why}))?;
            }
        }
    }
    let options = ExtractOptions { constrain: args.constrain, max_new_tokens: args.max_new_tokens, batch: args.batch };
    let extractor = Extractor::new(loaded.model, loaded.tokenizer, loaded.eos_token_ids, schema, options);
    let texts: Vec<&str> = scored.iter().map(|(_, t, _)| t.as_str()).collect();
    let bar = indicatif::ProgressBar::new(texts.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} records  ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    let started = Instant::now();
    let chunks: Vec<&[&str]> = texts.chunks(args.batch).collect();
    let workers = args.threads.unwrap_or(1).clamp(1, chunks.len().max(1));
    // Worker w takes chunks w, w + workers, …; results go back in input order.
    let mut done: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (extractor, chunks, bar) = (&extractor, &chunks, &bar);
                scope.spawn(move || {
                    (w..chunks.len())
                        .step_by(workers)
                        .map(|i| {
                            let r = extractor.extract_batch(chunks[i]);
                            bar.inc(chunks[i].len() as u64);
                            (i, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    if done.len() != chunks.len() {
        bail!("an extraction thread failed");
    }
    done.sort_by_key(|(i, _)| *i);
    let results: Vec<_> = done.into_iter().flat_map(|(_, r)| r).collect();
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut scores = Scores::new(&names);
    for ((line, text, reference), result) in scored.iter().zip(&results) {
        let predicted = result.as_ref().ok().map(|e| &e.fields);
        let wrong = scores.add(text, reference, predicted);
        if !wrong.is_empty() {
            let expected: serde_json::Map<String, Value> =
                names.iter().zip(reference).map(|(k, v)| (k.to_string(), v.clone().map_or(Value::Null, Value::String))).collect();
            let got = match result {
                Ok(e) => json!({"predicted": e.fields.to_json()}),
                Err(e) => json!({"error": e.to_string()}),
            };
            let mut entry = json!({"line": line, "text": text, "expected": expected, "wrong": wrong});
            entry.as_object_mut().into_iter().for_each(|o| o.extend(got.as_object().cloned().unwrap_or_default()));
            writeln!(mistakes, "{entry}")?;
        }
    }
    let per_field: serde_json::Map<String, Value> =
        scores.fields().into_iter().map(|(n, exact, f1)| (n.to_string(), json!({"exact": exact, "char_f1": f1}))).collect();
    Ok(json!({
        "records": scores.records,
        "all_fields_exact": scores.all_fields_exact(),
        "json_valid": scores.json_valid_rate(),
        "hallucinated": scores.hallucination_rate(),
        "per_field": per_field,
        "records_per_s": scores.records as f64 / seconds.max(1e-9),
        "loss": loss,
        "bad_records": bad_lines.len() + bad_references,
        "constrain": args.constrain.to_string(),
        "mistakes": mistakes_path.display().to_string(),
    }))
}

/// The human-readable table of an [`evaluate`] result.
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
