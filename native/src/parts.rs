//! `tiqu extract --shard I/N` writes one part of a job array's output; `tiqu parts merge`
//! checks the parts and writes the single output (core's [`tiqu_core::shard`] does the work).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::Value;
use tiqu_core::checkpoint::save::{write_atomically, PartialFile};
use tiqu_core::shard::{self, check_part_line, MergeReport, PartMarker, PartSource, ShardSpec};

use crate::storage::Location;

#[derive(clap::Subcommand)]
pub enum PartsCommand {
    /// Check that every part is complete and answers each input line once; with --out, write
    /// one output in input order (what one process would have written).
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct MergeArgs {
    /// The input the shards read, a file or an object (only its size is read here).
    #[arg(long)]
    input: String,
    /// The folder of the parts: the shards' --out (local or object storage).
    #[arg(long)]
    parts: String,
    /// How many shards the job had (N of --shard I/N).
    #[arg(long)]
    shards: usize,
    /// The merged output (one line per input line, in order), a file or an object; without it,
    /// only verify.
    #[arg(long)]
    out: Option<String>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

/// The parts' folder, local or on object storage, and the input they answer.
struct Parts(Location, Location);

fn core_error(e: anyhow::Error) -> tiqu_core::Error {
    tiqu_core::Error::Other(format!("{e:#}"))
}

impl PartSource for Parts {
    fn marker(&mut self, spec: ShardSpec) -> tiqu_core::Result<Option<Vec<u8>>> {
        self.0.join(&spec.done_name()).read().map_err(core_error)
    }

    fn part(&mut self, spec: ShardSpec) -> tiqu_core::Result<Box<dyn BufRead + '_>> {
        let (_, reader) = self.0.join(&spec.part_name()).open().map_err(core_error)?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
    }

    fn label(&self, name: &str) -> String {
        self.0.join(name).display()
    }

    fn input_fingerprint(&mut self, range: (u64, u64)) -> tiqu_core::Result<Option<String>> {
        let (_, mut reader) = self.1.open().map_err(core_error)?;
        let label = self.1.display();
        tiqu_core::shard::Fingerprint::of_range(&mut reader, range).map(Some).map_err(|e| tiqu_core::Error::io(label, e))
    }
}

pub fn run_merge(args: &MergeArgs) -> Result<()> {
    ShardSpec::new(0, args.shards)?; // a count of 0 or over the limit, named before any part is read
    let input = Location::parse(&args.input)?;
    let size = input.size()?.ok_or_else(|| anyhow!("{}: no such file", args.input))?;
    let parts = Location::parse(&args.parts)?;
    if let Location::Local(dir) = &parts {
        // Named once for the folder, not as each part's OS error.
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => bail!("--parts {}: not a folder (the shards' --out folder)", args.parts),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("--parts {}: no such folder", args.parts),
            Err(e) => bail!("--parts {}: {e}", args.parts),
            Ok(_) => {}
        }
    }
    let mut source = Parts(parts, input.clone());
    let report = match &args.out {
        None => shard::merge(&mut source, args.shards, size, None)?,
        Some(out) => {
            let dest = Location::parse(out)?;
            // Never, even with --force: the merge reads these while it writes.
            if let (Location::Local(o), Location::Local(i)) = (&dest, &input) {
                if crate::storage::same_file(o, i) {
                    bail!("--out {out} is the --input file; choose another --out");
                }
            }
            if let (Location::Local(o), Location::Local(parts)) = (&dest, &source.0) {
                let out_dir = o.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if let (Ok(out_dir), Ok(parts)) = (out_dir.canonicalize(), parts.canonicalize()) {
                    if out_dir.starts_with(&parts) {
                        bail!("--out {out} is inside the --parts folder; choose another --out");
                    }
                }
            }
            if let Location::Local(o) = &dest {
                if o.is_dir() {
                    bail!("--out {out} is a folder: --out takes a file (the merged JSONL)");
                }
            }
            if dest.size()?.is_some() && !args.force {
                bail!("{out}: exists; pass --force to replace it");
            }
            // Written beside a local --out (renamed into place when whole), or in the cache and
            // uploaded whole: either way no reader ever sees a partial output.
            let local = match &dest {
                Location::Local(p) => p.clone(),
                Location::Remote(_) => crate::storage::spool_dir(&dest).join("merged.jsonl"),
            };
            if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|e| anyhow!("{}: {e}", parent.display()))?;
            }
            let mut partial = PartialFile::beside(&local)?;
            let report = shard::merge(&mut source, args.shards, size, Some(partial.writer()))?;
            partial.commit(&local, true)?;
            if let Location::Remote(_) = dest {
                dest.put_file(&local)?;
                let _ = fs::remove_file(&local);
            }
            report
        }
    };
    print_report(&report, args.out.as_deref(), args.json);
    Ok(())
}

fn print_report(r: &MergeReport, out: Option<&str>, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let answered = r.lines - r.errors;
    println!("{} parts complete: {} lines, {answered} answered, {} errors", r.shards, r.lines, r.errors);
    for (name, set, null) in &r.fields {
        let pct = if answered > 0 { 100.0 * *set as f64 / answered as f64 } else { 0.0 };
        println!("  {name:<16} {set:>10} set ({pct:.1}%)  {null:>10} null");
    }
    match out {
        Some(out) => println!("wrote {out}"),
        None => println!("verified (no --out: nothing written)"),
    }
}

/// One shard's part in `dir` (the shard's --out): where it resumes and how it is finished.
pub struct PartWriter {
    spec: ShardSpec,
    path: PathBuf,
    done_path: PathBuf,
    out: std::io::BufWriter<File>,
    /// Lines already answered (by an earlier attempt) plus those written now.
    pub lines: u64,
}

/// What a shard task should do with its part.
pub enum PartState {
    /// Finished by an earlier attempt: nothing to do (a retried task exits at once).
    Done(PartMarker),
    /// To be written, resuming after `lines` answered lines.
    Open(PartWriter),
}

impl PartWriter {
    /// Opens shard `spec`'s part in `dir` for a run over `[start, end)` of an input of
    /// `input_size` bytes. A part left by a killed attempt is resumed (each kept line checked to be
    /// this shard's answer, a torn last line cut); a part of another input or split is refused.
    pub fn open(dir: &Path, spec: ShardSpec, input_size: u64, range: (u64, u64), fingerprint: &str, names: &[&str]) -> Result<PartState> {
        if fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            bail!("--out {}: a file; with --shard, --out is the folder the parts go to", dir.display());
        }
        fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        let path = dir.join(spec.part_name());
        let done_path = dir.join(spec.done_name());
        // A part records, as it starts, the fingerprint of the bytes it answers (the marker only
        // comes at the end) and the schema's fields: a killed part must not resume over an input
        // edited in place, nor under another schema (its lines would mix two sets of keys).
        let started_path = dir.join(format!("{}.start", spec.part_name()));
        let started: Option<Value> = match fs::read(&started_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: {e}", started_path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("{}: {e}", started_path.display()),
        };
        if let Some(was) = started.as_ref().and_then(|s| s.get("fields")).and_then(Value::as_array) {
            if !was.iter().map(Value::as_str).eq(names.iter().map(|&n| Some(n))) {
                let was: Vec<&str> = was.iter().filter_map(Value::as_str).collect();
                bail!("{}: made under another schema (fields {}, not {}); choose another --out", path.display(), was.join(", "), names.join(", "));
            }
        }
        if let Ok(bytes) = fs::read(&done_path) {
            let marker = finished_marker(&bytes, &done_path.display().to_string(), spec, input_size, range, fingerprint)?;
            // A retried task skips its work only for the part its marker describes: one cut,
            // removed or edited since would stay wrong for ever, found only by the merge.
            if let (Some(was_bytes), Some(was)) = (marker.part_bytes, &marker.part_fingerprint) {
                let now = part_digest(&path).ok();
                if now.as_ref().is_none_or(|(b, f)| *b != was_bytes || f != was) {
                    bail!(
                        "{}: changed or removed since this shard finished ({} records other bytes); remove both to extract the shard again",
                        path.display(),
                        done_path.display()
                    );
                }
            }
            return Ok(PartState::Done(marker));
        }
        let has_lines = fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if has_lines && started.as_ref().and_then(|s| s.get("fingerprint")).and_then(Value::as_str).is_some_and(|f| f != fingerprint) {
            return Err(other_bytes(&path.display().to_string(), range));
        }
        // The record is written before the part's first line: answers without it cannot be
        // told from another input's answers (a plain-text input's lines carry no ids).
        if has_lines && started.is_none() {
            bail!(
                "{}: has answers but no {} saying which input bytes they answer; remove the part to extract the shard again",
                path.display(),
                started_path.display()
            );
        }
        let lines = resume_point(&path, names)?;
        if !has_lines {
            let record = serde_json::json!({"input_size": input_size, "start": range.0, "end": range.1, "fingerprint": fingerprint, "fields": names});
            write_atomically(&started_path, format!("{record}\n").as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(PartState::Open(PartWriter { spec, path, done_path, out: std::io::BufWriter::new(file), lines }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn spec(&self) -> ShardSpec {
        self.spec
    }

    /// Writes the answer to the next line of the shard.
    pub fn write(&mut self, id: Option<&Value>, answer: (&str, Value)) -> Result<()> {
        self.lines += 1;
        writeln!(self.out, "{}", shard::part_line(self.lines, id, answer)).map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }

    /// Syncs the part, then writes its marker: a part without a marker is never taken as done.
    pub fn finish(mut self, input_size: u64, range: (u64, u64), fingerprint: &str) -> Result<PartMarker> {
        self.flush()?;
        self.out.get_ref().sync_all().map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let (bytes, part) = part_digest(&self.path)?;
        let marker = PartMarker {
            shard: self.spec,
            input_size,
            start: range.0,
            end: range.1,
            lines: self.lines,
            fingerprint: Some(fingerprint.to_string()),
            part_bytes: Some(bytes),
            part_fingerprint: Some(part),
        };
        write_atomically(&self.done_path, &marker.to_bytes())?;
        Ok(marker)
    }
}

/// A part file's size and [`shard::Fingerprint`], as its marker records them.
fn part_digest(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| anyhow!("{}: {e}", path.display()))?.len();
    let digest = shard::Fingerprint::of_range(&mut file, (0, size)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((size, digest))
}

/// A finished part's marker, checked to be this shard's of this input: a retried task may skip
/// its work only then; anything else is another job's folder.
pub fn finished_marker(bytes: &[u8], label: &str, spec: ShardSpec, input_size: u64, range: (u64, u64), fingerprint: &str) -> Result<PartMarker> {
    let marker = PartMarker::parse(bytes, label)?;
    if marker.shard != spec || marker.input_size != input_size || (marker.start, marker.end) != range {
        bail!(
            "{label}: made for another input or split (shard {}/{}, bytes {}..{} of {}); choose another --out",
            marker.shard.index, marker.shard.count, marker.start, marker.end, marker.input_size
        );
    }
    if marker.fingerprint.as_deref().is_some_and(|f| f != fingerprint) {
        return Err(other_bytes(label, range));
    }
    Ok(marker)
}

/// A part (or its marker) whose input bytes' fingerprint is not this input's.
fn other_bytes(label: &str, range: (u64, u64)) -> anyhow::Error {
    anyhow!("{label}: made from other input bytes {}..{} (the size is the same, the content is not); choose another --out", range.0, range.1)
}

/// Lines of a part already answered, each checked (and its fields to be the schema's, `names`);
/// a torn last line (a kill mid-write) is cut.
fn resume_point(path: &Path, names: &[&str]) -> Result<u64> {
    kept_lines(path, &["{\"line\":"], "not this shard's part (choose another --out)", &mut |n, line| {
        let not_ours = |why: String| anyhow!("{}:{n}: {why}; not this shard's part (choose another --out)", path.display());
        let answer = check_part_line(line, n).map_err(not_ours)?;
        match answer.get("fields").and_then(Value::as_object) {
            Some(fields) if !fields.keys().map(String::as_str).eq(names.iter().copied()) => {
                Err(not_ours(format!("answers with the fields {}, not this schema's {}", fields.keys().cloned().collect::<Vec<_>>().join(", "), names.join(", "))))
            }
            _ => Ok(()),
        }
    })
}

/// The complete lines of a partial output, each passed to `check` with its number (from 1) so
/// that a file which is not this command's is refused as it is; only then is a torn last line
/// (a kill mid-write) cut off, and only if it starts like one of `torn_prefixes` (else `foreign`
/// is the error). A file that does not exist has no lines.
pub fn kept_lines(path: &Path, torn_prefixes: &[&str], foreign: &str, check: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    let mut reader = BufReader::new(file);
    let (mut done, mut complete, mut line) = (0u64, 0u64, Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        check(done + 1, &line[..n - 1])?;
        done += 1;
        complete += n as u64;
    }
    if !line.is_empty() {
        if !torn_prefixes.iter().any(|p| line.starts_with(p.as_bytes())) {
            bail!("{}:{}: {foreign}", path.display(), done + 1);
        }
        let f = OpenOptions::new().write(true).open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        f.set_len(complete).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    Ok(done)
}
