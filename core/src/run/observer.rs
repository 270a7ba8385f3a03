//! What a run tells the outside world while it trains. The command line's progress bar is one
//! observer, the run folder's `metrics.jsonl` another ([`MetricsFile`]), a test's collector a
//! third.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result};

/// One optimizer step, as `metrics.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub label_tokens: usize,
    pub tokens_per_s: f64,
    pub step_s: f64,
    pub elapsed_s: f64,
}

/// The held-out evaluation at a checkpoint: the loss over every record, and extraction quality
/// on a bounded sample (`eval_records` of them) when the run asks for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    pub eval_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_records: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_all_fields_exact: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_json_valid: Option<f64>,
    /// Share of predicted values that are not substrings of their text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_hallucinated: Option<f64>,
    /// `{field: {exact, f1}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_per_field: Option<Value>,
}

/// Something that happened in a run.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Training starts (or resumes) at `start_step` of `total_steps`.
    Started { start_step: usize, total_steps: usize, trainable: &'a str, resumed: bool },
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
    /// A checkpoint was written.
    Saved { step: usize, dir: &'a Path },
    /// Something a person should know (records cut, a damaged checkpoint skipped…).
    Note(&'a str),
}

pub trait Observer {
    fn event(&mut self, event: &Event) -> Result<()>;
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _: &Event) -> Result<()> {
        Ok(())
    }
}

/// Appends steps and evaluations to `metrics.jsonl`, one JSON object a line.
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    /// Opens `path` for appending, first dropping lines of steps after `keep_through` (a resumed
    /// run computes those steps again).
    pub fn open(path: &Path, keep_through: Option<usize>) -> Result<Self> {
        if let Some(step) = keep_through {
            let kept: String = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step))
                .map(|l| format!("{l}\n"))
                .collect();
            super::super::checkpoint::save::write_atomically(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path.display(), e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    fn line<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let text = serde_json::to_string(record).map_err(|e| Error::Other(e.to_string()))?;
        writeln!(self.file, "{text}").map_err(|e| Error::io(self.path.display(), e))
    }
}

impl Observer for MetricsFile {
    fn event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Step(r) => self.line(r),
            Event::Eval(r) => self.line(r),
            _ => Ok(()),
        }
    }
}

/// Steps `1..=through` that have no step line (one with a `loss` key) in the metrics file.
pub fn missing_steps(path: &Path, through: usize) -> Vec<usize> {
    let mut seen = vec![false; through + 1];
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if let (Some(step), true) = (v["step"].as_u64(), v.get("loss").is_some()) {
            if let Some(s) = seen.get_mut(step as usize) {
                *s = true;
            }
        }
    }
    (1..=through).filter(|&s| !seen[s]).collect()
}

/// Every event to each observer in turn.
pub struct Both<'a>(pub &'a mut dyn Observer, pub &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn event(&mut self, event: &Event) -> Result<()> {
        self.0.event(event)?;
        self.1.event(event)
    }
}
