//! `tiqu extract`: records in (text lines or JSONL `{"id", "text"}`), one JSONL line out per input
//! line, in order — `{"id", "fields"}` or `{"id", "error"}` — so no record is ever lost.
//!
//! The input is streamed: lines are read as rows of the continuous-batching engine free up, and
//! results, which finish in any order, wait in a reorder buffer of a few batches until every
//! line before them is written. Memory stays flat whatever the number of lines.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tiqu_core::{Constrain, ExtractOptions, Schema, Speculate};

use crate::backend::BackendName;
use crate::parts::{PartState, PartWriter};
use crate::storage::Location;
use tiqu_core::shard::{Fingerprint, ShardSpec};
use crate::{checkpoint, with_backend, ModelArgs};

#[derive(Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Fields to extract: a list of names or {"fields": [{"name", "description"?, "nullable"?}]}
    /// (default: the seed's name, address, email, question).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Input file, or - for stdin: one text per line, or JSONL {"id", "text"}. With --shard,
    /// a file or an object (s3://, gs://, az://, https://) read only in the shard's byte range.
    #[arg(long, default_value = "-")]
    input: String,
    /// Output JSONL file, or - for stdout. With --shard, the folder of the parts (local or
    /// object storage), where this shard writes part-I-of-N.jsonl and, when complete, its marker.
    #[arg(long, default_value = "-")]
    out: String,
    /// Answer only shard I of N of the input (I from 0): the lines that start in its N-th of the
    /// bytes. `auto` reads a Kubernetes Indexed Job's or Slurm array's variables. A part left by
    /// a killed task is resumed; a finished one is left alone. `tiqu parts merge` joins them.
    #[arg(long)]
    shard: Option<String>,
    /// Records decoding at once (rows of the KV cache); a record joins as soon as one is free.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Prompt tokens per record; a longer text is cut to fit, with a warning.
    #[arg(long, default_value_t = 2048)]
    max_input_tokens: usize,
    /// none: free generation; json: always a valid object; copy: values copied from the text.
    #[arg(long, default_value = "copy")]
    constrain: Constrain,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Speculative decoding in copy mode: draft the text that follows a value being copied and
    /// verify the draft in the same pass (off, auto, or a fixed draft length 1-16). The fields
    /// are the same either way.
    #[arg(long, default_value = "auto")]
    speculate: Speculate,
    /// Picks are greedy unless these ask for sampling (from `--seed` plus the record's order
    /// among those this run reads); a seed gives the same records with or without --speculate.
    #[command(flatten)]
    sampling: crate::generate::SamplingArgs,
    /// For benchmarks: admit records a batch at a time, when the previous batch has finished
    /// (the schedule of the lock-step loop that preceded the engine), to compare with
    /// continuous batching on the same texts.
    #[arg(long, hide = true)]
    lock_step: bool,
    /// Continue a partial --out file: skip the input lines it already answers.
    #[arg(long)]
    resume: bool,
}

/// One input line: its id and its text, or why it has none.
struct Record {
    id: Value,
    /// Whether `id` is the record's own (JSONL) rather than its line number.
    own_id: bool,
    text: Result<String, String>,
}

/// Longest input line kept; a longer one gets an error line (and is skipped without being held
/// in memory). Texts far shorter than this are already cut to `--max-input-tokens`.
const MAX_LINE_BYTES: usize = 64 << 20;

/// Input lines, read one at a time; knows whether the input is JSONL once it has seen its first
/// line that is not blank (blank lines before it read the same either way).
struct Input {
    reader: Box<dyn BufRead>,
    name: String,
    line_no: usize,
    jsonl: Option<bool>,
    buf: Vec<u8>,
    /// Whether the reader starts at the file's first byte, where a byte-order mark may stand.
    at_start: bool,
}

impl Input {
    fn open(spec: &str) -> Result<Self> {
        if spec == "-" {
            return Self::stream(Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())), "stdin".into());
        }
        let mut file = File::open(spec).map_err(|e| anyhow!("{spec}: {e}"))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Self::stream(Box::new(BufReader::with_capacity(1 << 20, file)), spec.to_string());
        }
        // A file's form is decided before any output is opened, so that a first line that
        // cannot be read leaves no output behind.
        let jsonl = first_line_is_jsonl(&mut file, spec)?;
        file.seek(SeekFrom::Start(0)).map_err(|e| anyhow!("{spec}: {e}"))?;
        let reader = Box::new(BufReader::with_capacity(1 << 20, file));
        Ok(Self { reader, name: spec.to_string(), line_no: 0, jsonl: Some(jsonl), buf: Vec::new(), at_start: true })
    }

    /// A pipe cannot be read twice: its lines up to the first non-blank one are read and kept to
    /// be read again ([`first_form`]), so that its form is decided, and a first line that cannot
    /// be read stops the run, before any output is opened.
    fn stream(mut reader: Box<dyn BufRead>, name: String) -> Result<Self> {
        let mut kept = Vec::new();
        let jsonl = first_form(&mut reader, &name, Some(&mut kept))?;
        let reader = Box::new(std::io::Cursor::new(kept).chain(reader));
        Ok(Self { reader, name, line_no: 0, jsonl, buf: Vec::new(), at_start: true })
    }

    /// Lines of one shard, read as the whole input reads (`jsonl` decided from its first line).
    fn shard(reader: Box<dyn BufRead>, name: String, jsonl: bool, at_start: bool) -> Self {
        Self { reader, name, line_no: 0, jsonl: Some(jsonl), buf: Vec::new(), at_start }
    }

    /// The next line as a record, `None` at the end of the input.
    fn next_record(&mut self) -> Result<Option<Record>> {
        self.buf.clear();
        let n = (&mut self.reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut self.buf).map_err(|e| anyhow!("{}: {e}", self.name))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let line_no = self.line_no;
        if self.buf.last() != Some(&b'\n') && self.buf.len() > MAX_LINE_BYTES {
            self.skip_rest_of_line()?;
            // No line number in the message: a shard knows only its own, and the id has it.
            let why = format!("the line is longer than {} MiB", MAX_LINE_BYTES >> 20);
            return Ok(Some(Record { id: json!(line_no), own_id: false, text: Err(why) }));
        }
        let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A spreadsheet's or editor's byte-order mark is not part of the first text.
        let raw = if self.at_start && line_no == 1 { raw.strip_prefix(BOM).unwrap_or(raw) } else { raw };
        if self.jsonl.is_none() && !raw.iter().all(u8::is_ascii_whitespace) {
            self.jsonl = Some(is_jsonl_line(raw).map_err(|why| anyhow!("{}:{line_no}: {why}", self.name))?);
        }
        Ok(Some(parse_record(raw, line_no, self.jsonl.unwrap_or(false))))
    }

    fn skip_rest_of_line(&mut self) -> Result<()> {
        skip_rest_of_line(&mut self.reader).map_err(|e| anyhow!("{}: {e}", self.name))
    }
}

/// Past the next line end (or to the end of the input), without holding the line.
fn skip_rest_of_line(reader: &mut dyn BufRead) -> std::io::Result<()> {
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether the input's first non-blank line makes it JSONL: an object with "text". A line that
/// plainly means to be a JSONL record (`{"key": …`) but is not one with "text" is an error: read
/// as plain text, every line's JSON would go to the model as the text and the file's ids would be
/// lost. Any other line, braces or not (`{紧急} 订单未到`), is a text.
fn is_jsonl_line(raw: &[u8]) -> std::result::Result<bool, String> {
    let trimmed = raw.trim_ascii();
    let parsed = serde_json::from_slice::<Value>(trimmed);
    if let Ok(Value::Object(obj)) = &parsed {
        if obj.contains_key("text") {
            return Ok(true);
        }
    }
    let key_first = trimmed.strip_prefix(b"{").is_some_and(|rest| rest.trim_ascii_start().starts_with(b"\""));
    if !(key_first && trimmed.contains(&b':')) {
        return Ok(false);
    }
    const FORMS: &str = "give one text per line, or JSONL {\"id\", \"text\"}";
    match parsed {
        Ok(Value::Object(obj)) => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
            Err(format!("a JSON object without \"text\" (its keys: {}); {FORMS}", keys.join(", ")))
        }
        Ok(_) => Ok(false),
        Err(e) => Err(format!("the first line looks like JSON but is not valid JSON ({e}); {FORMS}")),
    }
}

/// An id written as an integer that serde_json could only keep as a float (beyond i64 and u64):
/// written back, it would be another number, and two such ids could become one.
fn too_long_integer(id: &Value, line: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
    }
    if !id.as_number().is_some_and(serde_json::Number::is_f64) {
        return false;
    }
    serde_json::from_str::<Id>(line).is_ok_and(|r| !r.id.get().contains(['.', 'e', 'E']))
}

/// One line (without its line end) as a record; ids are line numbers unless JSONL gives one.
fn parse_record(raw: &[u8], line: usize, jsonl: bool) -> Record {
    let line_no = json!(line);
    let text = match std::str::from_utf8(raw) {
        Err(e) => Err(format!("the line is not valid UTF-8 (byte {})", e.valid_up_to())),
        Ok(s) if s.trim().is_empty() => Err("empty text".to_string()),
        Ok(s) => Ok(s.to_string()),
    };
    let numbered = |text| Record { id: line_no.clone(), own_id: false, text };
    if !jsonl {
        return numbered(text);
    }
    match text {
        Err(e) => numbered(Err(e)),
        Ok(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v) => {
                let (id, own_id) = match v.get("id") {
                    Some(id) if too_long_integer(id, &s) => {
                        let why = "the id is an integer beyond 64 bits, which JSON readers round (100000000000000000001 becomes 1e+20): give it as a string";
                        return numbered(Err(why.into()));
                    }
                    Some(id) => (id.clone(), true),
                    None => (line_no.clone(), false),
                };
                let text = match v.get("text").and_then(Value::as_str) {
                    Some(t) if !t.trim().is_empty() => Ok(t.to_string()),
                    Some(_) => Err("empty text".into()),
                    None => Err("no \"text\" string in this record".into()),
                };
                Record { id, own_id, text }
            }
            Err(e) => numbered(Err(format!("invalid JSON: {e}"))),
        },
    }
}

pub fn run(backend: BackendName, args: &ExtractArgs) -> Result<()> {
    crate::check_rows("--batch", args.batch)?;
    if args.max_input_tokens == 0 || args.max_new_tokens == 0 {
        bail!("--max-input-tokens and --max-new-tokens must be at least 1");
    }
    args.sampling.sampling(args.model.seed).check()?;
    for (flag, value) in [("--input", &args.input), ("--out", &args.out)] {
        if value.trim().is_empty() {
            bail!("{flag} is empty: give a file, or - for standard {}", if flag == "--input" { "input" } else { "output" });
        }
    }
    // As `train --out`: a link to nothing is a folder moved or removed, not a name to create.
    if args.out != "-" && fs::metadata(&args.out).is_err() && fs::symlink_metadata(&args.out).is_ok() {
        bail!("--out {}: a symbolic link to nothing (a file moved or removed?); remove it or choose another --out", args.out);
    }
    if args.shard.is_none() && args.out != "-" && fs::metadata(&args.out).is_ok_and(|m| m.is_dir()) {
        bail!("--out {} is a folder: --out takes a file (a folder only with --shard)", args.out);
    }
    let schema = match &args.schema {
        Some(p) => Schema::from_json(&fs::read(p).map_err(|e| anyhow!("--schema {}: {e}", p.display()))?, &p.display().to_string())?,
        None => Schema::default(),
    };
    with_backend!(backend, |B, device| run_on::<B>(&device, args, schema))
}

fn run_on<B: burn::prelude::Backend>(device: &B::Device, args: &ExtractArgs, schema: Schema) -> Result<()> {
    if args.input != "-" && args.out != "-" && crate::storage::same_file(Path::new(&args.input), Path::new(&args.out)) {
        bail!("{}: --out is the input file; choose another --out", args.out);
    }
    let made_out = args.shard.is_none() && args.out != "-" && fs::symlink_metadata(&args.out).is_err();
    let (mut input, mut sink, done) = match &args.shard {
        Some(spec) => {
            let spec = ShardSpec::parse(spec, |k| std::env::var(k).ok())?;
            match open_shard(args, spec, &schema.names())? {
                Some(opened) => opened,
                None => return Ok(()),
            }
        }
        None => open_whole(args, &schema.names())?,
    };
    let options = ExtractOptions {
        constrain: args.constrain,
        max_new_tokens: args.max_new_tokens,
        batch: args.batch,
        max_input_tokens: args.max_input_tokens,
        speculate: args.speculate,
        sampling: args.sampling.sampling(args.model.seed),
    };
    let extractor = match checkpoint::load::<B>(&args.model.load_options(), device).and_then(|loaded| Ok(loaded.into_extractor(schema, options)?)) {
        Ok(extractor) => extractor,
        Err(e) => {
            // The output was opened first (a resume checks it before the model loads): one made
            // for this run is still empty, and goes with the run.
            if made_out && fs::metadata(&args.out).is_ok_and(|m| m.len() == 0) {
                drop(sink);
                let _ = fs::remove_file(&args.out);
            }
            return Err(e);
        }
    };
    let mut engine = extractor.engine(args.batch);

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} records  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_position(done as u64);
    let start = Instant::now();
    // Results by input line (0-based), until every line before them is written. Lines in the
    // engine are at most `batch`; error lines read meanwhile are bounded here too.
    let reorder_limit = 4 * args.batch + 1024;
    let mut ready: BTreeMap<usize, Answer> = BTreeMap::new();
    let mut lines_of: HashMap<usize, (usize, Value, bool)> = HashMap::new();
    let (mut read, mut written) = (done, done);
    let (mut drafted, mut accepted, mut cut) = (0, 0, 0usize);
    let mut at_end = false;
    let mut flushed = Instant::now();
    // Records whose line holds an error instead of fields, and the first of them.
    let (mut failed, mut first_failure) = (0usize, None::<(Value, String)>);
    loop {
        let admit = !args.lock_step || engine.is_idle();
        while admit && !at_end && engine.in_flight() < args.batch && ready.len() < reorder_limit {
            let Some(rec) = input.next_record()? else {
                at_end = true;
                break;
            };
            match rec.text {
                Err(why) => {
                    ready.insert(read, Answer { id: rec.id, own_id: rec.own_id, kind: "error", value: json!(why) });
                }
                Ok(text) => {
                    let id = engine.submit(extractor.request(&text));
                    lines_of.insert(id, (read, rec.id, rec.own_id));
                }
            }
            read += 1;
        }
        while let Some(answer) = ready.remove(&written) {
            if answer.kind == "error" {
                failed += 1;
                if first_failure.is_none() {
                    first_failure = Some((answer.id.clone(), answer.value.as_str().unwrap_or_default().to_string()));
                }
            }
            sink.write(answer)?;
            written += 1;
            bar.inc(1);
        }
        if flushed.elapsed() >= Duration::from_secs(1) {
            sink.flush()?;
            flushed = Instant::now();
        }
        if engine.is_idle() {
            if at_end {
                break;
            }
            continue;
        }
        for (id, result) in engine.step() {
            let Some((line, rec_id, own_id)) = lines_of.remove(&id) else { continue };
            let (kind, value) = match result {
                Ok(ex) => {
                    drafted += ex.drafted;
                    accepted += ex.accepted;
                    if let Some(w) = &ex.warning {
                        bar.suspend(|| eprintln!("warning: record {rec_id}: {w}"));
                    }
                    if ex.truncated {
                        // Its last value may be cut short: the line is written, the user told.
                        cut += 1;
                        bar.suspend(|| eprintln!("warning: record {rec_id}: the answer reached --max-new-tokens {} before it closed", args.max_new_tokens));
                    }
                    ("fields", ex.fields.to_json())
                }
                // A fault of the model (NaN logits), not of the record: every record would get
                // it, so the job stops (the lines written so far are kept, and --resume goes on).
                Err(e @ tiqu_core::Error::Tensor(_)) => {
                    bar.finish_and_clear();
                    sink.finish()?;
                    return Err(e.into());
                }
                Err(e) => ("error", json!(e.to_string())),
            };
            ready.insert(line, Answer { id: rec_id, own_id, kind, value });
        }
    }
    bar.finish_and_clear();
    sink.finish()?;
    let n = written - done;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{n} records in {secs:.1}s ({:.2} records/s)", n as f64 / secs.max(1e-9));
    if let Some((id, why)) = &first_failure {
        // Every record failing is a job that did nothing (a UTF-16 file, a wrong --input-format):
        // not exit 0. The lines stay written, each saying why. Judged over the whole input only:
        // a resume's last few lines, or a shard of blank lines, may all fail in a sound job
        // (and a failed shard task would hold back the merge that waits for every task).
        if failed == n && done == 0 && args.shard.is_none() {
            bail!("every record failed ({n}), record {id} first: {why}");
        }
        eprintln!("warning: {failed} of {n} records failed (their lines hold \"error\"), record {id} first: {why}");
    }
    if cut > 0 {
        eprintln!("{cut} answers reached --max-new-tokens {} (their last value may be cut short; raise it)", args.max_new_tokens);
    }
    if drafted > 0 {
        eprintln!(
            "speculation {}: {accepted} of {drafted} drafted tokens kept ({:.0}%); {} forward passes",
            args.speculate,
            100.0 * accepted as f64 / drafted as f64,
            engine.passes()
        );
    }
    Ok(())
}

/// One input line's answer, before it is written.
struct Answer {
    id: Value,
    own_id: bool,
    kind: &'static str,
    value: Value,
}

/// Where answers go: a JSONL file or stdout, or one shard's part.
enum Sink {
    Lines { out: Box<dyn Write>, name: String },
    Part { part: PartWriter, finish: PartFinish },
}

/// What completes a part: its byte range for the marker, and where it is uploaded.
struct PartFinish {
    input_size: u64,
    range: (u64, u64),
    fingerprint: String,
    remote: Option<Location>,
}

impl Sink {
    fn write(&mut self, a: Answer) -> Result<()> {
        match self {
            Self::Lines { out, name } => {
                let mut line = serde_json::Map::new();
                line.insert("id".into(), a.id);
                line.insert(a.kind.into(), a.value);
                writeln!(out, "{}", Value::Object(line)).map_err(|e| anyhow!("{name}: {e}"))
            }
            Self::Part { part, .. } => part.write(a.own_id.then_some(&a.id), (a.kind, a.value)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Self::Lines { out, name } => out.flush().map_err(|e| anyhow!("{name}: {e}")),
            Self::Part { part, .. } => part.flush(),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Self::Lines { mut out, name } => out.flush().map_err(|e| anyhow!("{name}: {e}")),
            Self::Part { part, finish } => {
                let spec = part.spec();
                let local = part.path().to_path_buf();
                let marker = part.finish(finish.input_size, finish.range, &finish.fingerprint)?;
                if let Some(remote) = finish.remote {
                    // The part first, its marker last: a marker always means a whole part.
                    remote.join(&spec.part_name()).put_file(&local)?;
                    remote.join(&spec.done_name()).put(&marker.to_bytes())?;
                }
                eprintln!("shard {}/{}: {} lines done", spec.index, spec.count, marker.lines);
                Ok(())
            }
        }
    }
}

/// The whole input and a plain output (a file, resumable, or stdout).
fn open_whole(args: &ExtractArgs, names: &[&str]) -> Result<(Input, Sink, usize)> {
    let mut input = Input::open(&args.input)?;
    let mut done = 0usize;
    let out: Box<dyn Write> = if args.out == "-" {
        if args.resume {
            bail!("--resume needs --out FILE");
        }
        Box::new(std::io::stdout().lock())
    } else {
        if args.resume {
            // Each answered line is checked against the input record at its place, which is read
            // (and so skipped) as it is checked.
            let copy = args.constrain == Constrain::Copy;
            done = answered_lines(&args.out, names, &mut || {
                Ok(input.next_record()?.map(|r| Expected { id: r.id, copied_from: r.text.ok().filter(|_| copy) }))
            })?;
        } else if fs::metadata(&args.out).is_ok_and(|m| m.len() > 0) {
            bail!("{}: exists; pass --resume to continue it, or choose another --out", args.out);
        }
        let file = OpenOptions::new().create(true).append(args.resume).write(true).truncate(!args.resume).open(&args.out)
            .map_err(|e| anyhow!("{}: {e}", args.out))?;
        Box::new(std::io::BufWriter::new(file))
    };
    Ok((input, Sink::Lines { out, name: args.out.clone() }, done))
}

/// Shard `spec`'s lines of the input and its part; `None` when an earlier attempt finished it.
/// Parts on object storage are written in a local folder first (resumable there) and uploaded
/// whole when complete.
fn open_shard(args: &ExtractArgs, spec: ShardSpec, names: &[&str]) -> Result<Option<(Input, Sink, usize)>> {
    if args.input == "-" || args.out == "-" {
        bail!("--shard needs --input FILE and --out FOLDER (the shards' parts go there)");
    }
    let source = Location::parse(&args.input)?;
    let (size, mut reader) = source.open()?;
    let range = tiqu_core::shard::line_range(&mut reader, size, spec).map_err(|e| anyhow!("{}: {e}", args.input))?;
    // JSONL or text is the whole input's property: decided from its first non-blank line, as a
    // single process does, whatever this shard's first line looks like.
    let jsonl = first_line_is_jsonl(&mut reader, &args.input)?;
    // Recorded in the marker and checked against it: an input edited in place, its size kept,
    // must not pass for the one a finished part answers. An object on storage is fetched once:
    // its range goes to a local file as it is fingerprinted, and the lines are read from there.
    let read_err = |e: std::io::Error| anyhow!("{}: {e}", args.input);
    let (fingerprint, mut reader, lines_at) = match &source {
        Location::Local(_) => (Fingerprint::of_range(&mut reader, range).map_err(read_err)?, reader, range.0),
        Location::Remote(_) => {
            let mut spool = crate::storage::spool_file()?;
            let fingerprint = Fingerprint::copy_range(&mut reader, range, &mut std::io::BufWriter::new(&mut spool)).map_err(read_err)?;
            (fingerprint, Box::new(spool) as Box<dyn crate::storage::ReadSeekSend>, 0)
        }
    };
    let out = Location::parse(&args.out)?;
    let (dir, remote) = match &out {
        Location::Local(dir) => (dir.clone(), None),
        Location::Remote(_) => {
            let done = out.join(&spec.done_name());
            if let Some(bytes) = done.read()? {
                let marker = crate::parts::finished_marker(&bytes, &done.display(), spec, size, range, &fingerprint)?;
                eprintln!("shard {}/{}: already complete ({} lines) in {}", spec.index, spec.count, marker.lines, out.display());
                return Ok(None);
            }
            (crate::storage::spool_dir(&out), Some(out.clone()))
        }
    };
    let mut part = match PartWriter::open(&dir, spec, size, range, &fingerprint, names)? {
        PartState::Done(marker) => {
            // Finished here but not uploaded (the upload failed, or the task was killed during
            // it): upload now, the part before its marker.
            if let Some(remote) = &remote {
                remote.join(&spec.part_name()).put_file(&dir.join(spec.part_name()))?;
                remote.join(&spec.done_name()).put(&marker.to_bytes())?;
            }
            eprintln!("shard {}/{}: already complete ({} lines)", spec.index, spec.count, marker.lines);
            return Ok(None);
        }
        PartState::Open(part) => part,
    };
    reader.seek(SeekFrom::Start(lines_at)).map_err(read_err)?;
    let lines: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 20, reader.take(range.1 - range.0)));
    let mut input = Input::shard(lines, args.input.clone(), jsonl, range.0 == 0);
    let done = part.lines;
    for seen in 0..done {
        if input.next_record()?.is_none() {
            bail!("{}: has {done} lines but the shard only {seen}", part.path().display());
        }
    }
    part.flush()?;
    Ok(Some((input, Sink::Part { part, finish: PartFinish { input_size: size, range, fingerprint, remote } }, done as usize)))
}

/// Whether the input is JSONL, from its first non-blank line (read from the start).
fn first_line_is_jsonl(reader: &mut dyn crate::storage::ReadSeekSend, name: &str) -> Result<bool> {
    reader.seek(SeekFrom::Start(0)).map_err(|e| anyhow!("{name}: {e}"))?;
    Ok(first_form(&mut BufReader::new(reader), name, None)?.unwrap_or(false))
}

/// The form the input's first non-blank line gives (JSONL or not, [`is_jsonl_line`]), read from
/// `reader`'s start; `None` when no line decides it. A line over the limit is an error line of
/// its own whatever the form, so the next one decides. With `kept` (a pipe, which cannot be read
/// twice) every byte read is kept to be read again, and the search stops instead at an over-long
/// line or once the kept blank lines pass the limit: the lines decide as they come then.
fn first_form(reader: &mut dyn BufRead, name: &str, mut kept: Option<&mut Vec<u8>>) -> Result<Option<bool>> {
    let io = |e: std::io::Error| anyhow!("{name}: {e}");
    let mut line = Vec::new();
    for line_no in 1.. {
        line.clear();
        if reader.take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        if let Some(kept) = kept.as_deref_mut() {
            kept.extend_from_slice(&line);
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE_BYTES {
            if kept.is_some() {
                break;
            }
            skip_rest_of_line(reader).map_err(io)?;
            continue;
        }
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if line_no == 1 { raw.strip_prefix(BOM).unwrap_or(raw) } else { raw };
        if !raw.iter().all(u8::is_ascii_whitespace) {
            return is_jsonl_line(raw).map(Some).map_err(|why| anyhow!("{name}:{line_no}: {why}"));
        }
        if kept.as_ref().is_some_and(|k| k.len() > MAX_LINE_BYTES) {
            break;
        }
    }
    Ok(None)
}

/// The input record an answered line is checked against: its id, and in copy mode its text
/// (every value copied must be in it).
struct Expected {
    id: Value,
    copied_from: Option<String>,
}

/// Whether `line` is one `tiqu extract` wrote for `expected` under a schema of `names`: an
/// object of `id` and exactly one of `fields` (the schema's keys, in order) or `error` (a
/// string). In copy mode a value that is not in the record's text means another input.
fn is_answer(line: &[u8], expected: &Expected, names: &[&str]) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else { return false };
    let fields_fit = match (obj.get("fields"), obj.get("error")) {
        (Some(Value::Object(fields)), None) => {
            // Every value the model writes is a string or null.
            fields.keys().map(String::as_str).eq(names.iter().copied())
                && fields.values().all(|v| v.is_string() || v.is_null())
                && expected.copied_from.as_ref().is_none_or(|text| {
                    // A text cut to fit is copied from in NFC (it was decoded from its tokens).
                    let mut normalized = None;
                    fields.values().all(|v| {
                        v.as_str().is_none_or(|v| text.contains(v) || normalized.get_or_insert_with(|| tiqu_core::tokenizer::nfc(text)).contains(v))
                    })
                })
        }
        (None, Some(Value::String(_))) => true,
        _ => false,
    };
    obj.len() == 2 && fields_fit && obj.get("id") == Some(&expected.id)
}

/// Complete lines already in a partial output, each checked to be this command's answer to the
/// input record at its place (as `next` reads them: id, and text in copy mode) under a schema of
/// `names`: a file that is not (an unrelated file, another input's or schema's output) is refused
/// and left as it is. Only then is a torn last line
/// (a crash mid-write) cut off.
fn answered_lines(path: &str, names: &[&str], next: &mut dyn FnMut() -> Result<Option<Expected>>) -> Result<usize> {
    let foreign = "not tiqu extract's output; refusing to resume into it (choose another --out)";
    let done = crate::parts::kept_lines(Path::new(path), &["{\"id\"", "{\"fields\"", "{\"error\""], foreign, &mut |n, line| {
        let Some(expected) = next()? else {
            bail!("{path}: has more lines than the input; not this input's output (choose another --out)");
        };
        if !is_answer(line, &expected, names) {
            bail!(
                "{path}:{n}: not tiqu extract's answer to input record {} under this schema and input; refusing to resume into it (choose another --out)",
                expected.id
            );
        }
        Ok(())
    })?;
    Ok(done as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An earlier answer is recognised by its keys and, in copy mode, by values its record's
    /// text holds as written or in NFC (a text cut to fit is copied from in NFC).
    #[test]
    fn answers_are_checked_against_their_record() {
        let decomposed = "Jose\u{301} 投诉".to_string();
        let expected = Expected { id: json!(1), copied_from: Some(decomposed) };
        let names = ["name", "city"];
        let line = |v: &str| json!({"id": 1, "fields": {"name": v, "city": null}}).to_string().into_bytes();
        assert!(is_answer(&line("Jose\u{301}"), &expected, &names));
        assert!(is_answer(&line("Jos\u{e9}"), &expected, &names), "the NFC form of the text");
        assert!(!is_answer(&line("Maria"), &expected, &names), "not in this record's text");
        assert!(!is_answer(&json!({"id": 1, "fields": {"city": null, "name": null}}).to_string().into_bytes(), &expected, &names), "keys out of order");
        assert!(is_answer(&json!({"id": 1, "error": "empty text"}).to_string().into_bytes(), &expected, &names));
        for value in [json!(5), json!(true), json!({"x": [1, 2]}), json!(["a"])] {
            assert!(!is_answer(&json!({"id": 1, "fields": {"name": value, "city": null}}).to_string().into_bytes(), &expected, &names), "{value}");
        }
        assert!(!is_answer(&line("Jose\u{301}"), &Expected { id: json!(2), copied_from: None }, &names), "another id");
    }
}
