//! Is a file of SFT records usable for training extraction? [`check`] reads every record and
//! lists what is wrong with it as [`Finding`]s — one per problem, with the record's line — and
//! sums the file up: how many records are usable, how often each field is null, and how long the
//! records are in tokens, measured as training measures them (the chat-templated prompt plus the
//! answer, [`Example::len`]) so the count of records over `max_length` is the count training cuts.
//!
//! Labels are checked for what copy-constrained decoding can produce: a string that is a
//! substring of the record's text, or null. A label that differs from its text only in
//! whitespace or punctuation width gets the text's span as a fix, which [`check`] applies to the
//! fixed copy it writes when asked.
//!
//! Records come one at a time (a file of millions is not held whole): what stays in memory are
//! the texts seen (for duplicates), the findings and the token lengths.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::output::python_json_value;
use super::records::{record_text, repeated_key, RawRecord};
use super::span::{fold, nearest};
use crate::sft::{Example, SftRecord};
use crate::tokenizer::Tokenizer;
use crate::Result;

/// What a finding is about; its JSON name is the snake_case of the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The line is not UTF-8.
    Encoding,
    /// The line is not JSON.
    InvalidJson,
    /// The record is JSON but not an object.
    NotAnObject,
    /// The record lacks `instruction` or `output`, or has no text at all.
    MissingField,
    /// A record key holds the wrong type (an `output` that is an object, not a string…).
    BadField,
    /// `output` is not a JSON object.
    OutputNotJson,
    /// `output` lacks a field of the schema.
    OutputMissingField,
    /// A label that is neither a string nor null.
    NotAString,
    /// A label that is not a substring of the text.
    NotVerbatim,
    /// The same text (up to whitespace and width) with the same labels as an earlier record.
    Duplicate,
    /// The same text as an earlier record with different labels.
    ConflictingLabels,
    /// The text is also in the evaluation file.
    EvalOverlap,
    /// More tokens than training keeps.
    TooLong,
    /// A key twice in the record or in its `output`: readers keep one value, training refuses it.
    RepeatedKey,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Encoding => "encoding",
            Kind::InvalidJson => "invalid_json",
            Kind::NotAnObject => "not_an_object",
            Kind::MissingField => "missing_field",
            Kind::BadField => "bad_field",
            Kind::OutputNotJson => "output_not_json",
            Kind::OutputMissingField => "output_missing_field",
            Kind::NotAString => "not_a_string",
            Kind::NotVerbatim => "not_verbatim",
            Kind::Duplicate => "duplicate",
            Kind::ConflictingLabels => "conflicting_labels",
            Kind::EvalOverlap => "eval_overlap",
            Kind::TooLong => "too_long",
            Kind::RepeatedKey => "repeated_key",
        }
    }
}

/// One problem of one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub line: usize,
    pub kind: Kind,
    /// The record key or label concerned, if any.
    pub field: Option<String>,
    pub message: String,
    /// What to write instead (for `not_verbatim`: the nearest span of the text).
    pub suggestion: Option<String>,
    /// Whether the fixed copy [`check`] writes replaces the value by `suggestion`.
    pub fixable: bool,
}

/// What to check against.
pub struct CheckOptions<'a> {
    /// The labels every output must hold (the schema's names).
    pub fields: &'a [&'a str],
    /// For token lengths; without one there are no length statistics.
    pub tokenizer: Option<&'a Tokenizer>,
    pub max_length: usize,
    /// The evaluation set's texts ([`eval_texts`]), which must not be in the checked file.
    pub eval: Option<&'a HashMap<String, usize>>,
}

/// An evaluation file's texts, folded as the check compares them, each with the first line it is
/// on; and the records without a text.
pub struct EvalTexts {
    pub texts: HashMap<String, usize>,
    pub unusable: usize,
    /// The first record without a text: its line and why.
    pub first_unusable: Option<(usize, String)>,
}

/// The texts of an evaluation file's records ([`EvalTexts`]). Errors: no record has a text (the
/// overlap check would compare against nothing, silently).
pub fn eval_texts(records: impl IntoIterator<Item = Result<RawRecord>>, source: &str) -> Result<EvalTexts> {
    let mut texts = HashMap::new();
    let (mut unusable, mut first) = (0, None);
    for raw in records {
        let raw = raw?;
        let why = match &raw.value {
            Ok(value) => match record_text(value) {
                Some(text) => {
                    texts.entry(fold(text)).or_insert(raw.line);
                    continue;
                }
                None => "no text (`input` and `instruction` are missing, empty or not strings)".to_string(),
            },
            Err(problem) => problem.message.clone(),
        };
        unusable += 1;
        first.get_or_insert((raw.line, why));
    }
    if texts.is_empty() {
        let (line, why) = first.unwrap_or((1, "no records".into()));
        return Err(crate::Error::Format(format!("{source}:{line}: {why}; the evaluation file has no record with a text to compare against")));
    }
    Ok(EvalTexts { texts, unusable, first_unusable: first })
}

/// Token lengths of the usable records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lengths {
    pub min: usize,
    pub median: usize,
    pub p95: usize,
    pub max: usize,
    pub mean: f64,
    /// Records longer than `max_length`, which training cuts.
    pub over: usize,
    pub max_length: usize,
}

/// How often a label is missing from the text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldRates {
    pub field: String,
    /// Outputs where the label is null.
    pub null: usize,
    /// Outputs where the label is the empty string.
    pub empty: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Records and bad lines read.
    pub records: usize,
    /// Records training can read (an object with string `instruction` and `output`, and a text).
    pub usable: usize,
    /// Usable records whose output is a JSON object: the base of the null rates.
    pub labelled: usize,
    pub fields: Vec<FieldRates>,
    pub lengths: Option<Lengths>,
    pub findings: Vec<Finding>,
    /// Labels replaced in the fixed copy.
    pub fixes: usize,
    /// Lines left out of the fixed copy.
    pub dropped: usize,
}

impl Report {
    /// Findings counted by kind, in the order of [`Kind`].
    pub fn counts(&self) -> Vec<(Kind, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for f in &self.findings {
            *counts.entry(f.kind).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }
}

struct Checker<'a> {
    opts: &'a CheckOptions<'a>,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn add(&mut self, line: usize, kind: Kind, field: Option<&str>, message: String, suggestion: Option<String>, fixable: bool) {
        let field = field.map(str::to_string);
        self.findings.push(Finding { line, kind, field, message, suggestion, fixable });
    }

    /// The record as training reads it, or the findings that say why it cannot.
    fn record(&mut self, line: usize, value: &Value) -> Option<(SftRecord, String)> {
        let Some(obj) = value.as_object() else {
            let what = json_type(value);
            self.add(line, Kind::NotAnObject, None, format!("the record is {what}, not an object"), None, false);
            return None;
        };
        let mut ok = true;
        if let Some((key, meant)) = crate::sft::misnamed_key(obj.keys().map(String::as_str), &crate::sft::KEYS) {
            let msg = format!("`{key}` is not a key of a record; `{meant}` is (keys are case-sensitive): training refuses the record");
            self.add(line, Kind::BadField, Some(key), msg, Some(meant.to_string()), false);
            ok = false;
        }
        for (key, required) in [("instruction", true), ("output", true), ("input", false), ("system", false)] {
            match obj.get(key) {
                None if required => {
                    self.add(line, Kind::MissingField, Some(key), format!("the record has no `{key}`"), None, false);
                    ok = false;
                }
                None | Some(Value::String(_)) => {}
                Some(Value::Null) if !required => {}
                Some(Value::Null) => {
                    self.add(line, Kind::MissingField, Some(key), format!("`{key}` is null"), None, false);
                    ok = false;
                }
                Some(Value::Object(_)) if key == "output" => {
                    let suggestion = python_json_value(&obj[key]);
                    let msg = "`output` is an object; training refuses it, as it reads a string holding the JSON object (the suggestion)".to_string();
                    self.add(line, Kind::BadField, Some(key), msg, Some(suggestion), false);
                    ok = false;
                }
                Some(other) => {
                    let msg = format!("`{key}` is {}, not a string", json_type(other));
                    self.add(line, Kind::BadField, Some(key), msg, None, false);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let Some(text) = record_text(value) else {
            let msg = "the record has no text: `input` and `instruction` are both empty".to_string();
            self.add(line, Kind::MissingField, Some("input"), msg, None, false);
            return None;
        };
        let text = text.to_string();
        // Every key was checked above, so this cannot fail; a failure would still be reported.
        match serde_json::from_value::<SftRecord>(value.clone()) {
            Ok(rec) => Some((rec, text)),
            Err(e) => {
                self.add(line, Kind::BadField, None, format!("not a record: {e}"), None, false);
                None
            }
        }
    }

    /// Checks the labels; returns the output object with fixable labels replaced, the labels as
    /// a comparable key, and how many were replaced.
    fn labels(&mut self, line: usize, output: &str, text: &str, rates: &mut [FieldRates]) -> (Option<Map<String, Value>>, String, usize) {
        if let Some(key) = repeated_key(output.trim()) {
            let msg = format!("`output` holds `{key}` twice: which value is the label depends on the reader (eval keeps the last)");
            self.add(line, Kind::RepeatedKey, Some("output"), msg, None, false);
        }
        let parsed = serde_json::from_str::<Value>(output.trim());
        let mut obj = match parsed {
            Ok(Value::Object(obj)) => obj,
            Ok(other) => {
                let msg = format!("`output` is {}, not a JSON object", json_type(&other));
                self.add(line, Kind::OutputNotJson, Some("output"), msg, None, false);
                return (None, output.trim().to_string(), 0);
            }
            Err(e) => {
                self.add(line, Kind::OutputNotJson, Some("output"), format!("`output` is not valid JSON: {e}"), None, false);
                return (None, output.trim().to_string(), 0);
            }
        };
        let mut fixed = 0;
        let mut key = Vec::new();
        for (i, &field) in self.opts.fields.iter().enumerate() {
            let value = obj.get(field).cloned();
            key.push(value.clone().unwrap_or(Value::Null));
            match value {
                None => {
                    let msg = format!("`output` has no `{field}` (write null when the text does not hold it)");
                    self.add(line, Kind::OutputMissingField, Some(field), msg, None, false);
                }
                Some(Value::Null) => rates[i].null += 1,
                Some(Value::String(s)) if s.is_empty() => rates[i].empty += 1,
                Some(Value::String(s)) => {
                    let Some(near) = nearest(&s, text) else { continue };
                    let how = if near.fixable {
                        "differs from the text only in whitespace or punctuation width".to_string()
                    } else {
                        format!("is not in the text; nearest span {} edit(s) away", near.edits)
                    };
                    let msg = format!("`{field}` value {} {how}", quoted(&s));
                    self.add(line, Kind::NotVerbatim, Some(field), msg, Some(near.span.clone()), near.fixable);
                    if near.fixable {
                        obj.insert(field.to_string(), Value::String(near.span));
                        fixed += 1;
                    }
                }
                Some(other) => {
                    let msg = format!("`{field}` is {}; copy-constrained decoding writes a string or null", json_type(&other));
                    let suggestion = Some(other.to_string()).filter(|s| text.contains(s.as_str()));
                    self.add(line, Kind::NotAString, Some(field), msg, suggestion, false);
                }
            }
        }
        (Some(obj), serde_json::to_string(&key).unwrap_or_default(), fixed)
    }
}

/// Where [`check`] hands each line of the fixed copy.
pub type FixedLine<'a> = dyn FnMut(&str) -> Result<()> + 'a;

/// Checks every record of `records` (as [`super::read_records`] or [`super::Records`] read
/// a file). With `fixed`, each record is handed to it as a JSONL line with every fixable label
/// replaced by its span (lines that are not JSON, and records holding a key twice, left out).
pub fn check(
    records: impl IntoIterator<Item = Result<RawRecord>>,
    opts: &CheckOptions,
    mut fixed: Option<&mut FixedLine>,
) -> Result<Report> {
    let mut c = Checker { opts, findings: Vec::new() };
    let mut rates: Vec<FieldRates> =
        opts.fields.iter().map(|f| FieldRates { field: f.to_string(), null: 0, empty: 0 }).collect();
    let no_eval = HashMap::new();
    let eval_texts = opts.eval.unwrap_or(&no_eval);
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    let (mut read, mut usable, mut labelled, mut fixes, mut dropped) = (0, 0, 0, 0, 0);
    let mut lengths = Vec::new();
    let mut over = 0;
    for raw in records {
        let raw = raw?;
        read += 1;
        let line = raw.line;
        let value = match &raw.value {
            Ok(v) => v,
            Err(p) => {
                let kind = if p.kind == "encoding" { Kind::Encoding } else { Kind::InvalidJson };
                c.add(line, kind, None, p.message.clone(), None, false);
                dropped += 1;
                continue;
            }
        };
        if let Some(key) = &raw.repeated_key {
            if ["system", "instruction", "input", "output"].contains(&key.as_str()) {
                // Training refuses such a record: so does the check, and --fix leaves it out.
                let msg = format!("the record holds `{key}` twice; training refuses it (which value is meant?)");
                c.add(line, Kind::RepeatedKey, Some(key), msg, None, false);
                dropped += 1;
                continue;
            }
            let msg = format!("the record holds `{key}` twice (JSON readers keep one of the values)");
            c.add(line, Kind::RepeatedKey, Some(key), msg, None, false);
        }
        let mut out_value = fixed.is_some().then(|| value.clone());
        if let Some((rec, text)) = c.record(line, value) {
            usable += 1;
            let output = rec.output.as_deref().unwrap_or("");
            let (obj, label_key, fixed) = c.labels(line, output, &text, &mut rates);
            if let Some(obj) = obj {
                labelled += 1;
                if fixed > 0 {
                    fixes += fixed;
                    if let Some(v) = &mut out_value {
                        v["output"] = Value::String(python_json_value(&Value::Object(obj)));
                    }
                }
            }
            let key = fold(&text);
            if let Some(&eval_line) = eval_texts.get(&key) {
                c.add(line, Kind::EvalOverlap, None, format!("the text is also in the eval file (its line {eval_line})"), None, false);
            }
            match seen.get(&key) {
                Some((first, labels)) if *labels == label_key => {
                    c.add(line, Kind::Duplicate, None, format!("same text and labels as line {first}"), None, false);
                }
                Some((first, _)) => {
                    let msg = format!("same text as line {first} but different labels");
                    c.add(line, Kind::ConflictingLabels, None, msg, None, false);
                }
                None => {
                    seen.insert(key, (line, label_key));
                }
            }
            if let Some(tok) = opts.tokenizer {
                let ex = Example::new(&rec, tok)?;
                let n = ex.len();
                if n > opts.max_length {
                    over += 1;
                    let m = opts.max_length;
                    let msg = if ex.prompt.len() >= m {
                        format!("{n} tokens; the prompt alone is {} >= --max-length {m}, so training keeps no token of the answer", ex.prompt.len())
                    } else {
                        format!("{n} tokens > --max-length {m}: training cuts the last {} token(s) of the answer", n - m)
                    };
                    c.add(line, Kind::TooLong, None, msg, Some(format!("--max-length {n}")), false);
                }
                lengths.push(n);
            }
        }
        if let (Some(sink), Some(v)) = (fixed.as_mut(), &out_value) {
            sink(&serde_json::to_string(v).map_err(|e| crate::Error::Other(e.to_string()))?)?;
        }
    }
    c.findings.sort_by_key(|f| f.line);
    Ok(Report {
        records: read,
        usable,
        labelled,
        fields: rates,
        lengths: stats(&mut lengths, over, opts.max_length),
        findings: c.findings,
        fixes,
        dropped,
    })
}

fn stats(lengths: &mut [usize], over: usize, max_length: usize) -> Option<Lengths> {
    if lengths.is_empty() {
        return None;
    }
    lengths.sort_unstable();
    // Nearest rank: the smallest length with at least q of the records at or below it.
    let rank = |q: f64| lengths[((q * lengths.len() as f64).ceil() as usize).clamp(1, lengths.len()) - 1];
    Some(Lengths {
        min: lengths[0],
        median: rank(0.5),
        p95: rank(0.95),
        max: lengths[lengths.len() - 1],
        mean: lengths.iter().sum::<usize>() as f64 / lengths.len() as f64,
        over,
        max_length,
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for a one-line message: JSON-quoted (so line breaks show as `\n`), cut at 80 chars.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let more = if cut.len() < s.len() { "…" } else { "" };
    format!("{}{more}", Value::String(cut))
}
