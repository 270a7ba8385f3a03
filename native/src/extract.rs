//! `tiqu extract`: records in (text lines or JSONL `{"id", "text"}`), one JSONL line out per input
//! line, in order — `{"id", "fields"}` or `{"id", "error"}` — so no record is ever lost.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tiqu_core::{Constrain, ExtractOptions, Schema};

use crate::backend::BackendName;
use crate::{checkpoint, with_backend, ModelArgs};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExtractArgs {
    #[command(subcommand)]
    command: Option<ExtractCommand>,
    #[command(flatten)]
    model: ModelArgs,
    /// Fields to extract: a list of names or {"fields": [{"name", "description"?, "nullable"?}]}
    /// (default: the seed's name, address, email, question).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Input file, or - for stdin: one text per line, or JSONL {"id", "text"}.
    #[arg(long, default_value = "-")]
    input: String,
    /// Output JSONL file, or - for stdout.
    #[arg(long, default_value = "-")]
    out: String,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// none: free generation; json: always a valid object; copy: values copied from the text.
    #[arg(long, default_value = "copy")]
    constrain: Constrain,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Continue a partial --out file: skip the input lines it already answers.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Subcommand)]
enum ExtractCommand {
    /// Check the parts of a sharded extraction (--shard I/N) and write one output in input order.
    Merge(crate::parts::MergeArgs),
}

/// One input line: its id and its text, or why it has none.
struct Record {
    id: Value,
    text: Result<String, String>,
}

fn read_input(spec: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if spec == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(|e| anyhow!("stdin: {e}"))?;
    } else {
        bytes = fs::read(spec).map_err(|e| anyhow!("{spec}: {e}"))?;
    }
    Ok(bytes)
}

/// Splits the input into records; JSONL when its first non-empty line is an object with "text".
fn parse_records(bytes: &[u8]) -> Vec<Record> {
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // A final newline ends the last line; it does not start another.
    let lines = match lines.split_last() {
        Some((&[], rest)) => rest,
        _ => &lines[..],
    };
    let jsonl = lines
        .iter()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .and_then(|l| serde_json::from_slice::<Value>(l).ok())
        .is_some_and(|v| v.get("text").is_some());
    lines
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let line_no = json!(i + 1);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = match std::str::from_utf8(raw) {
                Err(e) => Err(format!("line {} is not valid UTF-8 (byte {})", i + 1, e.valid_up_to())),
                Ok(s) if s.trim().is_empty() => Err("empty text".to_string()),
                Ok(s) => Ok(s.to_string()),
            };
            if !jsonl {
                return Record { id: line_no, text };
            }
            match text {
                Err(e) => Record { id: line_no, text: Err(e) },
                Ok(s) => match serde_json::from_str::<Value>(&s) {
                    Ok(v) => {
                        let id = v.get("id").cloned().unwrap_or(line_no);
                        match v.get("text").and_then(Value::as_str) {
                            Some(t) if !t.trim().is_empty() => Record { id, text: Ok(t.to_string()) },
                            Some(_) => Record { id, text: Err("empty text".into()) },
                            None => Record { id, text: Err("no \"text\" string in this record".into()) },
                        }
                    }
                    Err(e) => Record { id: line_no, text: Err(format!("invalid JSON: {e}")) },
                },
            }
        })
        .collect()
}

pub fn run(backend: BackendName, args: &ExtractArgs) -> Result<()> {
    if let Some(ExtractCommand::Merge(merge)) = &args.command {
        return crate::parts::run_merge(merge);
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let schema = match &args.schema {
        Some(p) => Schema::from_json(&fs::read(p).map_err(|e| anyhow!("{}: {e}", p.display()))?, &p.display().to_string())?,
        None => Schema::default(),
    };
    with_backend!(backend, |B, device| run_on::<B>(&device, args, schema))
}

fn run_on<B: burn::prelude::Backend>(device: &B::Device, args: &ExtractArgs, schema: Schema) -> Result<()> {
    if args.input != "-" && args.out != "-" && same_file(Path::new(&args.input), Path::new(&args.out)) {
        bail!("{}: --out is the input file; choose another --out", args.out);
    }
    let records = parse_records(&read_input(&args.input)?);
    let mut done = 0usize;
    let mut out: Box<dyn Write> = if args.out == "-" {
        if args.resume {
            bail!("--resume needs --out FILE");
        }
        Box::new(std::io::stdout().lock())
    } else {
        if args.resume {
            done = answered_lines(&args.out, &mut records.iter().map(|r| &r.id))?;
        } else if fs::metadata(&args.out).is_ok_and(|m| m.len() > 0) {
            bail!("{}: exists; pass --resume to continue it, or choose another --out", args.out);
        }
        let file = OpenOptions::new().create(true).append(args.resume).write(true).truncate(!args.resume).open(&args.out)
            .map_err(|e| anyhow!("{}: {e}", args.out))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let loaded = checkpoint::load::<B>(&args.model.load_options(), device)?;
    let options = ExtractOptions { constrain: args.constrain, max_new_tokens: args.max_new_tokens, batch: args.batch };
    let extractor = loaded.into_extractor(schema, options)?;

    let bar = indicatif::ProgressBar::new(records.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} records  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done as u64);
    let start = Instant::now();
    for chunk in records[done..].chunks(args.batch) {
        let texts: Vec<&str> = chunk.iter().filter_map(|r| r.text.as_deref().ok()).collect();
        let mut results = extractor.extract_batch(&texts).into_iter();
        for rec in chunk {
            let line = match &rec.text {
                Err(why) => json!({"id": rec.id, "error": why}),
                Ok(_) => match results.next().expect("one result per text") {
                    Ok(ex) => {
                        if let Some(w) = &ex.warning {
                            bar.suspend(|| eprintln!("warning: record {}: {w}", rec.id));
                        }
                        json!({"id": rec.id, "fields": ex.fields.to_json()})
                    }
                    Err(e) => json!({"id": rec.id, "error": e.to_string()}),
                },
            };
            writeln!(out, "{line}").map_err(|e| anyhow!("{}: {e}", args.out))?;
        }
        out.flush().map_err(|e| anyhow!("{}: {e}", args.out))?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let n = records.len() - done;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{n} records in {secs:.1}s ({:.2} records/s)", n as f64 / secs.max(1e-9));
    Ok(())
}

/// Whether two paths name one file (hard links and symlinks included), so `--out` can never
/// overwrite or append to the input it reads.
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        fs::canonicalize(a).ok().is_some_and(|ca| fs::canonicalize(b).ok() == Some(ca))
    }
}

/// Whether `line` is one `tiqu extract` wrote for the record with id `expected`: an object of
/// `id` and exactly one of `fields` (an object) or `error` (a string).
fn is_answer(line: &[u8], expected: &Value) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else { return false };
    let answer = matches!((obj.get("fields"), obj.get("error")), (Some(Value::Object(_)), None) | (None, Some(Value::String(_))));
    obj.len() == 2 && answer && obj.get("id") == Some(expected)
}

/// Complete lines already in a partial output, each checked to be this command's answer to the
/// input record at its place (ids in `input_ids`' order): a file that is not (an unrelated
/// file, another input's output) is refused and left as it is. Only then is a torn last line
/// (a crash mid-write) cut off.
fn answered_lines(path: &str, input_ids: &mut dyn Iterator<Item = &Value>) -> Result<usize> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => bail!("{path}: {e}"),
    };
    let mut reader = BufReader::new(file);
    let (mut done, mut complete, mut line) = (0usize, 0u64, Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| anyhow!("{path}: {e}"))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Some(id) = input_ids.next() else {
            bail!("{path}: has more lines than the input; not this input's output (choose another --out)");
        };
        if !is_answer(&line[..n - 1], id) {
            bail!(
                "{path}:{}: not tiqu extract's answer to input record {id}; refusing to resume into it (choose another --out)",
                done + 1
            );
        }
        done += 1;
        complete += n as u64;
    }
    if !line.is_empty() {
        // Only the start of one of our lines may be cut: anything else is someone's file.
        if !["{\"id\"", "{\"fields\"", "{\"error\""].iter().any(|p| line.starts_with(p.as_bytes())) {
            bail!("{path}:{}: not tiqu extract's output; refusing to resume into it (choose another --out)", done + 1);
        }
        let f = OpenOptions::new().write(true).open(path).map_err(|e| anyhow!("{path}: {e}"))?;
        f.set_len(complete).map_err(|e| anyhow!("{path}: {e}"))?;
    }
    Ok(done)
}
