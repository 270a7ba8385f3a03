//! Extraction quality over labelled records: each record's text is extracted and scored by field
//! against its reference output ([`crate::score`]), with a list of the mistakes. Used by the
//! `eval` command, by training runs at each checkpoint (on a bounded sample) and by apps.

use burn::prelude::Backend;
use serde_json::{json, Map, Value};

use crate::extract::Extractor;
use crate::score::{reference_fields, Scores};
use crate::sft::{Located, SftRecord};

/// A record whose reference can be scored: its text and the reference value of each field.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub line: usize,
    pub text: String,
    pub reference: Vec<Option<String>>,
}

/// The records whose reference output is usable for the fields `names`, and `(line, why)` for
/// the others (counted, not scored).
pub fn labelled(records: &[Located<SftRecord>], names: &[&str]) -> (Vec<Labelled>, Vec<(usize, String)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for rec in records {
        let r = &rec.value;
        // The text values are copied from, as `data check` takes it: `input`, else `instruction`.
        let blank = |s: &&String| s.trim().is_empty();
        let Some(text) = r.input.as_ref().filter(|s| !blank(s)).or(Some(&r.instruction).filter(|s| !blank(s))) else {
            bad.push((rec.line, "empty text: neither `input` nor `instruction` holds one".to_string()));
            continue;
        };
        match reference_fields(r.output.as_deref().unwrap_or(""), names) {
            Ok(reference) => good.push(Labelled { line: rec.line, text: text.clone(), reference }),
            Err(why) => bad.push((rec.line, why)),
        }
    }
    (good, bad)
}

/// Scores and mistakes of one evaluation.
pub struct Evaluation {
    pub scores: Scores,
    /// One JSON object per wrong record: line, text, expected, wrong fields, predicted or error.
    pub mistakes: Vec<Value>,
    pub seconds: f64,
}

impl Evaluation {
    /// `{records, all_fields_exact, json_valid, hallucinated, per_field: {name: {exact, char_f1}}, records_per_s}`.
    pub fn to_json(&self) -> Value {
        let s = &self.scores;
        let per_field: Map<String, Value> = s.fields().into_iter().map(|(n, exact, f1)| (n.to_string(), json!({"exact": exact, "char_f1": f1}))).collect();
        json!({
            "records": s.records,
            "all_fields_exact": s.all_fields_exact(),
            "json_valid": s.json_valid_rate(),
            "hallucinated": s.hallucination_rate(),
            "per_field": per_field,
            "records_per_s": s.records as f64 / self.seconds.max(1e-9),
        })
    }
}

/// Extracts every record's text (`batch` records per pass, chunks spread over `workers`
/// threads, results in input order) and scores it; `progress` is told how many records each
/// finished chunk held.
/// A record labelled under another schema than the extractor's (another number of fields) is
/// an error before anything is extracted.
pub fn evaluate<B: Backend>(
    extractor: &Extractor<B>,
    records: &[Labelled],
    batch: usize,
    workers: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> crate::Result<Evaluation> {
    let fields = extractor.schema().fields.len();
    if let Some(r) = records.iter().find(|r| r.reference.len() != fields) {
        return Err(crate::Error::Unsupported(format!(
            "the record of line {} is labelled with {} fields, the extractor's schema has {fields}: label the records with the schema's names",
            r.line,
            r.reference.len()
        )));
    }
    let started = crate::clock::now();
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let chunks: Vec<&[&str]> = texts.chunks(batch.max(1)).collect();
    let workers = workers.clamp(1, chunks.len().max(1));
    let chunks = &chunks;
    let run = |i: usize| {
        let r = extractor.extract_batch(chunks[i]);
        progress(chunks[i].len());
        r
    };
    let results: Vec<_> = if workers == 1 {
        (0..chunks.len()).flat_map(run).collect()
    } else {
        // Worker w takes chunks w, w + workers, …; results are put back in input order.
        let mut done: Vec<_> = std::thread::scope(|scope| {
            let run = &run;
            let handles: Vec<_> =
                (0..workers).map(|w| scope.spawn(move || (w..chunks.len()).step_by(workers).map(|i| (i, run(i))).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().flat_map(|(_, r)| r).collect()
    };
    let names: Vec<&str> = extractor.schema().names();
    let mut scores = Scores::new(&names);
    let mut mistakes = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let result = results.get(i);
        let predicted = result.and_then(|r| r.as_ref().ok()).map(|e| &e.fields);
        let wrong = scores.add(&record.text, &record.reference, predicted);
        if !wrong.is_empty() {
            let expected: Map<String, Value> =
                names.iter().zip(&record.reference).map(|(k, v)| (k.to_string(), v.clone().map_or(Value::Null, Value::String))).collect();
            let mut entry = json!({"line": record.line, "text": record.text, "expected": expected, "wrong": wrong});
            match result {
                Some(Ok(e)) => entry["predicted"] = e.fields.to_json(),
                Some(Err(e)) => entry["error"] = json!(e.to_string()),
                None => entry["error"] = json!("an extraction thread failed"),
            }
            mistakes.push(entry);
        }
    }
    Ok(Evaluation { scores, mistakes, seconds: crate::clock::elapsed_s(started) })
}

/// How [`evaluate_sft`] runs.
#[derive(Debug, Clone, Copy)]
pub struct SftEvalOptions {
    pub extract: crate::extract::ExtractOptions,
    /// Threads that extract batches side by side.
    pub workers: usize,
    /// The loss alone, no extraction.
    pub loss_only: bool,
}

/// A model's loss (mean NLL per response token, as transformers computes the eval loss) on SFT
/// records and, unless `loss_only`, its extraction quality on them: the JSON result and the
/// mistakes (bad lines and unusable references included). A record longer than the model's
/// context is an error naming its line; `bad_lines` (unparsable lines) are counted.
pub fn evaluate_sft<B: Backend>(
    loaded: crate::checkpoint::Loaded<B>,
    records: &[Located<SftRecord>],
    bad_lines: &[(usize, String)],
    source: &str,
    opts: &SftEvalOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> crate::Result<(Value, Vec<Value>)> {
    let limit = loaded.config.max_position_embeddings;
    let mut examples = Vec::with_capacity(records.len());
    for rec in records {
        let ex = crate::sft::Example::new(&rec.value, &loaded.tokenizer)?;
        if ex.len() > limit {
            return Err(crate::Error::Record {
                path: source.to_string(),
                line: rec.line,
                message: format!("record has {} tokens, more than max_position_embeddings ({limit})", ex.len()),
            });
        }
        examples.push(ex);
    }
    let (nll, tokens) = crate::loss::total_nll(&loaded.model, &examples, opts.extract.batch)?;
    let loss = if tokens > 0 { nll / tokens as f64 } else { f64::NAN };
    // A NaN loss is a broken model (or config), not a measurement: it must not pass as one.
    if tokens > 0 && !loss.is_finite() {
        if let Some(name) = crate::params::first_non_finite(&loaded.model) {
            return Err(crate::Error::Tensor(format!("the model's loss on {source} is {loss}: the weight `{name}` holds NaN or infinite values")));
        }
        return Err(crate::Error::Other(format!("{source}: the model's loss is {loss} (broken weights or config.json?)")));
    }
    if opts.loss_only {
        return Ok((json!({"loss": loss, "tokens": tokens, "records": records.len()}), Vec::new()));
    }
    let schema = crate::schema::Schema::default();
    let mut mistakes: Vec<Value> = bad_lines.iter().map(|(line, why)| json!({"line": line, "error": why})).collect();
    let (scored, bad_references) = labelled(records, &schema.names());
    mistakes.extend(bad_references.iter().map(|(line, why)| json!({"line": line, "error": why})));
    let extractor = loaded.into_extractor(schema, opts.extract)?;
    let evaluation = evaluate(&extractor, &scored, opts.extract.batch, opts.workers, progress)?;
    mistakes.extend(evaluation.mistakes.iter().cloned());
    let mut result = evaluation.to_json();
    result["loss"] = json!(loss);
    result["bad_records"] = json!(bad_lines.len() + bad_references.len());
    result["constrain"] = json!(opts.extract.constrain.to_string());
    Ok((result, mistakes))
}
