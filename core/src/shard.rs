//! Sharded extraction for job arrays (Kubernetes Indexed Jobs, Slurm arrays): the input is split
//! into N parts by byte range aligned to line starts, as Hadoop's input splits are, so a task
//! reads only its part (two seeks and one line past each boundary), never the whole input. A
//! shard's answers go to its own part file; a `.done` marker written last records its byte range
//! and line count, and [`merge`] checks the markers against each other and the input's size
//! before it writes one output in input order, so every input line is answered exactly once.
//!
//! A task cannot know how many lines precede its range without reading them, so a part numbers
//! its lines from 1 (`"line"`); [`merge`] turns them into the global line numbers a
//! single-process run gives as ids. Records that carry their own id keep it (`"id"`).

use std::io::{BufRead, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The most shards one job may have: part names have five digits.
pub const MAX_SHARDS: usize = 99_999;

/// Shard `index` (from 0) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || count > MAX_SHARDS {
            return Err(Error::Limit(format!("shard count {count} must be between 1 and {MAX_SHARDS}")));
        }
        if index >= count {
            return Err(Error::Limit(format!("shard {index} does not exist in {count} shards (indices start at 0)")));
        }
        Ok(Self { index, count })
    }

    /// `I/N`, or `auto`: the job engine's own variables (see [`ShardSpec::from_env`]).
    pub fn parse(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if spec == "auto" {
            return Self::from_env(env);
        }
        let bad = || Error::Format(format!("--shard {spec}: expected I/N (shard I of N, I from 0) or auto"));
        let (i, n) = spec.split_once('/').ok_or_else(bad)?;
        // A number of digits too long for usize is still a number: say which limit it breaks.
        let number = |s: &str| -> Result<usize> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| Error::Limit(format!("--shard {spec}: {s} is beyond the {MAX_SHARDS} shards allowed")))
        };
        Self::new(number(i)?, number(n)?)
    }

    /// A Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` with its completion count (which
    /// Kubernetes does not export: the manifest sets `JOB_COMPLETIONS`), or a Slurm array's
    /// `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| Error::Format(format!("${name} = `{v}` is not a number"))),
            }
        };
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = number("JOB_COMPLETIONS")?.ok_or_else(|| {
                Error::Format("--shard auto: JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not (set it to the Job's completions)".into())
            })?;
            return Self::new(index, count);
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?
                .ok_or_else(|| Error::Format("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into()))?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let offset = id.checked_sub(min).ok_or_else(|| Error::Format(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")))?;
            // `--array=1-7:2` runs tasks 1, 3, 5, 7: the shard is the task's place in that list.
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            if !offset.is_multiple_of(step) {
                return Err(Error::Format(format!("SLURM_ARRAY_TASK_ID {id} is not on the array's steps ({min} + a multiple of {step})")));
            }
            return Self::new(offset / step, count);
        }
        Err(Error::Format(
            "--shard auto: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set".into(),
        ))
    }

    /// `part-00003-of-00016.jsonl`.
    pub fn part_name(&self) -> String {
        format!("part-{:05}-of-{:05}.jsonl", self.index, self.count)
    }

    /// The marker written when the part is complete.
    pub fn done_name(&self) -> String {
        format!("{}.done", self.part_name())
    }

    /// The shard's nominal byte range of an input of `size` bytes (before alignment to lines).
    pub fn nominal(&self, size: u64) -> (u64, u64) {
        let at = |i: usize| (size as u128 * i as u128 / self.count as u128) as u64;
        (at(self.index), at(self.index + 1))
    }
}

/// The first line start at or after `at`: 0, or the byte after a `\n`. Reads from `at - 1` to
/// the next newline only.
pub fn line_start_from<R: Read + Seek>(reader: &mut R, at: u64, size: u64) -> std::io::Result<u64> {
    if at == 0 || at >= size {
        return Ok(at.min(size));
    }
    reader.seek(SeekFrom::Start(at - 1))?;
    let mut skipped = Vec::new();
    let n = std::io::BufReader::new(reader.take(size - (at - 1))).read_until(b'\n', &mut skipped)?;
    Ok(at - 1 + n as u64)
}

/// The byte range `[start, end)` of the lines shard `spec` answers: the lines that start inside
/// its nominal range. Consecutive shards' ranges abut and cover the input.
pub fn line_range<R: Read + Seek>(reader: &mut R, size: u64, spec: ShardSpec) -> std::io::Result<(u64, u64)> {
    let (a, b) = spec.nominal(size);
    let start = line_start_from(reader, a, size)?;
    let end = if spec.index + 1 == spec.count { size } else { line_start_from(reader, b, size)? };
    Ok((start, end.max(start)))
}

/// FNV-1a (64 bits) of a byte stream: a fingerprint that tells an edited input from the one a
/// part was made from (not a security measure).
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// Of bytes `[start, end)` of `reader`.
    pub fn of_range<R: Read + Seek>(reader: &mut R, range: (u64, u64)) -> std::io::Result<String> {
        Self::copy_range(reader, range, &mut std::io::sink())
    }

    /// Of bytes `[start, end)` of `reader`, written to `copy` as they are read (so that an input
    /// on object storage is downloaded once, not once for the fingerprint and again for its lines).
    pub fn copy_range<R: Read + Seek>(reader: &mut R, (start, end): (u64, u64), copy: &mut dyn Write) -> std::io::Result<String> {
        reader.seek(SeekFrom::Start(start))?;
        let mut f = Self::default();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = end.saturating_sub(start);
        while left > 0 {
            let n = reader.read(&mut buf[..left.min(1 << 16) as usize])?;
            if n == 0 {
                break;
            }
            f.update(&buf[..n]);
            copy.write_all(&buf[..n])?;
            left -= n as u64;
        }
        copy.flush()?;
        Ok(f.hex())
    }
}

/// What a finished part records about itself (`part-….jsonl.done`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartMarker {
    pub shard: ShardSpec,
    /// The input's size in bytes when the part was made.
    pub input_size: u64,
    pub start: u64,
    pub end: u64,
    /// Lines answered: one output line per input line in `[start, end)`.
    pub lines: u64,
    /// The [`Fingerprint`] of input bytes `[start, end)` (absent in older markers): an input
    /// edited in place, its size kept, is another input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The part's own size and [`Fingerprint`] when it finished (absent in older markers): a part
    /// damaged or edited since is not taken as this shard's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_fingerprint: Option<String>,
}

impl PartMarker {
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::json(source, e))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a marker serialises");
        out.push(b'\n');
        out
    }
}

/// One part line: `{"line": n, "id"?: …, "fields" | "error": …}`.
pub fn part_line(line: u64, id: Option<&Value>, answer: (&str, Value)) -> String {
    let mut obj = Map::new();
    obj.insert("line".into(), Value::from(line));
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    obj.insert(answer.0.into(), answer.1);
    Value::Object(obj).to_string()
}

/// Checks that `line` is a part line with number `expected` (what a resumed task and [`merge`]
/// both need: a part holds its own answers, in order, nothing else).
pub fn check_part_line(line: &[u8], expected: u64) -> std::result::Result<Map<String, Value>, String> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else {
        return Err("not a JSON object".into());
    };
    match obj.get("line").and_then(Value::as_u64) {
        Some(line) if line == expected => {}
        Some(line) if line < expected => return Err(format!("answers line {line} again where line {expected} of the shard was expected")),
        Some(line) => return Err(format!("answers line {line} where line {expected} of the shard was expected (answers are missing)")),
        None => return Err(format!("has no \"line\" number (expected line {expected} of the shard)")),
    }
    // Every value the model writes is a string or null.
    let answer = match (obj.get("fields"), obj.get("error")) {
        (Some(Value::Object(fields)), None) => fields.values().all(|v| v.is_string() || v.is_null()),
        (None, Some(Value::String(_))) => true,
        _ => false,
    };
    let known = obj.keys().all(|k| ["line", "id", "fields", "error"].contains(&k.as_str()));
    if !answer || !known {
        return Err("not an answer (one of \"fields\", of strings or nulls, or \"error\")".into());
    }
    Ok(obj)
}

/// Counts of what a merge saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MergeReport {
    pub shards: usize,
    pub lines: u64,
    pub errors: u64,
    /// Per field: (non-null values, nulls), in first-seen order.
    pub fields: Vec<(String, u64, u64)>,
}

/// Where merge reads one shard's part: its marker's bytes and its lines.
pub trait PartSource {
    /// The marker's bytes, `None` when the part has none (not finished).
    fn marker(&mut self, spec: ShardSpec) -> Result<Option<Vec<u8>>>;
    /// The part's lines, as a reader.
    fn part(&mut self, spec: ShardSpec) -> Result<Box<dyn BufRead + '_>>;
    /// How a part or marker is named in messages.
    fn label(&self, name: &str) -> String;
    /// The [`Fingerprint`] of the input's bytes `[start, end)`, where the source can read them.
    fn input_fingerprint(&mut self, _range: (u64, u64)) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Checks every part of a `count`-shard run over an input of `input_size` bytes and writes, when
/// `out` is given, the single-process output (`{"id", "fields" | "error"}` per input line, in
/// order, ids the records' own or their global line numbers). A missing, unfinished, torn or
/// foreign part is named, and nothing is written for it being absent: the caller writes `out`
/// to a temporary name and commits it only on success.
pub fn merge(src: &mut dyn PartSource, count: usize, input_size: u64, mut out: Option<&mut dyn Write>) -> Result<MergeReport> {
    let mut report = MergeReport { shards: count, ..Default::default() };
    let mut next_start = 0u64;
    let mut schema: Option<Vec<String>> = None;
    for index in 0..count {
        let spec = ShardSpec::new(index, count)?;
        let marker_name = src.label(&spec.done_name());
        let marker = src
            .marker(spec)?
            .ok_or_else(|| Error::Format(format!("{marker_name}: missing: shard {index} of {count} has not finished")))?;
        let marker = PartMarker::parse(&marker, &marker_name)?;
        let foreign = |why: String| Error::Format(format!("{marker_name}: {why}"));
        if marker.shard != spec {
            return Err(foreign(format!("made by shard {}/{}, not {index}/{count}", marker.shard.index, marker.shard.count)));
        }
        if marker.input_size != input_size {
            return Err(foreign(format!("made from an input of {} bytes; this input has {input_size}", marker.input_size)));
        }
        if marker.start != next_start || marker.end < marker.start {
            return Err(foreign(format!("covers bytes {}..{}, but the previous part ends at {next_start}", marker.start, marker.end)));
        }
        next_start = marker.end;
        if let Some(was) = &marker.fingerprint {
            if src.input_fingerprint((marker.start, marker.end))?.is_some_and(|now| now != *was) {
                return Err(foreign(format!("made from other input bytes {}..{} (the size is the same, the content is not)", marker.start, marker.end)));
            }
        }
        let part_name = src.label(&spec.part_name());
        let mut reader = src.part(spec)?;
        let (mut n, mut buf) = (0u64, Vec::new());
        let (mut bytes, mut part_fingerprint) = (0u64, Fingerprint::default());
        loop {
            buf.clear();
            let read = reader.read_until(b'\n', &mut buf).map_err(|e| Error::io(&part_name, e))?;
            if read == 0 {
                break;
            }
            bytes += read as u64;
            part_fingerprint.update(&buf);
            if buf.last() != Some(&b'\n') {
                return Err(Error::Format(format!("{part_name}:{}: torn last line (no newline)", n + 1)));
            }
            if n == marker.lines {
                return Err(Error::Format(format!("{part_name}:{}: a line beyond the {} its marker records", n + 1, marker.lines)));
            }
            let obj = check_part_line(&buf[..read - 1], n + 1)
                .map_err(|why| Error::Record { path: part_name.clone(), line: n as usize + 1, message: why })?;
            n += 1;
            let global = report.lines + n;
            let id = obj.get("id").cloned().unwrap_or(Value::from(global));
            let mut line = Map::new();
            line.insert("id".into(), id);
            if let Some(Value::Object(fields)) = obj.get("fields") {
                // Every answer under one schema: parts extracted with different ones (or edited)
                // would make a file whose lines disagree.
                match &schema {
                    None => schema = Some(fields.keys().cloned().collect::<Vec<_>>()),
                    Some(keys) if !fields.keys().eq(keys.iter()) => {
                        return Err(Error::Record {
                            path: part_name.clone(),
                            line: n as usize,
                            message: format!(
                                "answered with the keys {} where the parts before have {}: extracted under another schema",
                                fields.keys().cloned().collect::<Vec<_>>().join(","),
                                keys.join(",")
                            ),
                        });
                    }
                    Some(_) => {}
                }
                for (name, v) in fields {
                    let at = match report.fields.iter().position(|(f, _, _)| f == name) {
                        Some(at) => at,
                        None => {
                            report.fields.push((name.clone(), 0, 0));
                            report.fields.len() - 1
                        }
                    };
                    if v.is_null() {
                        report.fields[at].2 += 1;
                    } else {
                        report.fields[at].1 += 1;
                    }
                }
                line.insert("fields".into(), Value::Object(fields.clone()));
            } else if let Some(e) = obj.get("error") {
                report.errors += 1;
                line.insert("error".into(), e.clone());
            }
            if let Some(w) = out.as_mut() {
                writeln!(w, "{}", Value::Object(line)).map_err(|e| Error::io("merged output", e))?;
            }
        }
        if n != marker.lines {
            return Err(Error::Format(format!("{part_name}: has {n} lines; its marker says {}", marker.lines)));
        }
        let changed = marker.part_bytes.is_some_and(|b| b != bytes) || marker.part_fingerprint.as_ref().is_some_and(|f| *f != part_fingerprint.hex());
        if changed {
            return Err(Error::Format(format!(
                "{part_name}: changed since its shard finished ({marker_name} records other bytes); extract shard {index}/{count} again (remove both)"
            )));
        }
        report.lines += n;
    }
    if next_start != input_size {
        return Err(Error::Format(format!("the parts cover bytes 0..{next_start} of an input of {input_size} bytes")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn specs_from_flags_and_job_engines() {
        assert_eq!(ShardSpec::parse("3/16", env(&[])).unwrap(), ShardSpec { index: 3, count: 16 });
        assert_eq!(ShardSpec::parse("auto", env(&[("JOB_COMPLETION_INDEX", "2"), ("JOB_COMPLETIONS", "8")])).unwrap(), ShardSpec { index: 2, count: 8 });
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "8")];
        assert_eq!(ShardSpec::parse("auto", env(&slurm)).unwrap(), ShardSpec { index: 4, count: 8 });
        // `--array=1-3:2`: tasks 1 and 3 are shards 0 and 1 of 2 (task 3 was "shard 2 of 2").
        let stepped = [("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_STEP", "2")];
        assert_eq!(ShardSpec::parse("auto", env(&stepped)).unwrap(), ShardSpec { index: 1, count: 2 });
        for (spec, needle) in [("16/16", "does not exist"), ("0/0", "between 1"), ("a/3", "expected I/N"), ("3", "expected I/N")] {
            let err = ShardSpec::parse(spec, env(&[])).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
        assert!(ShardSpec::parse("auto", env(&[])).unwrap_err().to_string().contains("neither JOB_COMPLETION_INDEX"));
        // A count too long for a machine word is named with the limit, not called malformed.
        let huge = ShardSpec::parse("0/99999999999999999999", env(&[])).unwrap_err().to_string();
        assert!(huge.contains("99999999999999999999 is beyond the 99999 shards"), "{huge}");
        assert!(ShardSpec::parse("0/-1", env(&[])).unwrap_err().to_string().contains("expected I/N"));
        assert!(ShardSpec::parse("auto", env(&[("JOB_COMPLETION_INDEX", "1")])).unwrap_err().to_string().contains("JOB_COMPLETIONS"));
        assert_eq!(ShardSpec::new(3, 16).unwrap().part_name(), "part-00003-of-00016.jsonl");
    }

    /// Every line of the input belongs to exactly one shard, whatever N and line lengths, and a
    /// shard's range starts and ends at line starts.
    #[test]
    fn ranges_abut_cover_the_input_and_start_at_lines() {
        let texts = ["", "a\n", "a\nbb\nccc\n", "one very long line without a newline", "x\n\n\ny\nzz", "\n\n\n\n"];
        for text in texts {
            let bytes = text.as_bytes();
            let size = bytes.len() as u64;
            for count in 1..=7 {
                let mut cursor = Cursor::new(bytes);
                let mut prev = 0;
                for index in 0..count {
                    let (s, e) = line_range(&mut cursor, size, ShardSpec::new(index, count).unwrap()).unwrap();
                    assert_eq!(s, prev, "{text:?} {index}/{count}");
                    assert!(s == 0 || s == size || bytes[s as usize - 1] == b'\n', "{text:?} {index}/{count}: {s}");
                    prev = e;
                }
                assert_eq!(prev, size, "{text:?} /{count}");
            }
        }
    }

    /// The copy a shard reads its lines from is exactly the range fingerprinted, and the
    /// fingerprint is the same whether or not it is copied.
    #[test]
    fn a_range_copied_is_the_range_fingerprinted() {
        let input = b"line one\nline two\nthree\n".to_vec();
        let mut copy = Vec::new();
        let copied = Fingerprint::copy_range(&mut Cursor::new(&input), (9, 18), &mut copy).unwrap();
        assert_eq!(copy, b"line two\n");
        assert_eq!(copied, Fingerprint::of_range(&mut Cursor::new(&input), (9, 18)).unwrap());
        assert_ne!(copied, Fingerprint::of_range(&mut Cursor::new(&input), (0, 9)).unwrap());
    }

    struct Parts(Vec<(Option<Vec<u8>>, Vec<u8>)>);

    impl PartSource for Parts {
        fn marker(&mut self, spec: ShardSpec) -> Result<Option<Vec<u8>>> {
            Ok(self.0[spec.index].0.clone())
        }
        fn part(&mut self, spec: ShardSpec) -> Result<Box<dyn BufRead + '_>> {
            Ok(Box::new(Cursor::new(&self.0[spec.index].1)))
        }
        fn label(&self, name: &str) -> String {
            name.to_string()
        }
    }

    fn part(spec: (usize, usize), range: (u64, u64), lines: &[&str]) -> (Option<Vec<u8>>, Vec<u8>) {
        let marker = PartMarker { shard: ShardSpec::new(spec.0, spec.1).unwrap(), input_size: 10, start: range.0, end: range.1, lines: lines.len() as u64, fingerprint: None, part_bytes: None, part_fingerprint: None };
        (Some(marker.to_bytes()), lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes())
    }

    #[test]
    fn merge_gives_global_ids_and_names_every_broken_part() {
        let good = || {
            Parts(vec![
                part((0, 2), (0, 4), &[r#"{"line":1,"fields":{"name":"a","email":null}}"#, r#"{"line":2,"error":"empty text"}"#]),
                part((1, 2), (4, 10), &[r#"{"line":1,"id":"r9","fields":{"name":null,"email":"e"}}"#, r#"{"line":2,"fields":{"name":"b","email":null}}"#]),
            ])
        };
        let mut out = Vec::new();
        let report = merge(&mut good(), 2, 10, Some(&mut out)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":1,\"fields\":{\"name\":\"a\",\"email\":null}}\n{\"id\":2,\"error\":\"empty text\"}\n\
             {\"id\":\"r9\",\"fields\":{\"name\":null,\"email\":\"e\"}}\n{\"id\":4,\"fields\":{\"name\":\"b\",\"email\":null}}\n"
        );
        assert_eq!((report.lines, report.errors), (4, 1));
        assert_eq!(report.fields, vec![("name".to_string(), 2, 1), ("email".to_string(), 1, 2)]);

        let broken = |edit: &dyn Fn(&mut Parts)| {
            let mut parts = good();
            edit(&mut parts);
            merge(&mut parts, 2, 10, None).unwrap_err().to_string()
        };
        assert!(broken(&|p| p.0[1].0 = None).contains("part-00001-of-00002.jsonl.done: missing"));
        let tear = |p: &mut Parts| {
            let n = p.0[1].1.len();
            p.0[1].1.truncate(n - 3);
        };
        assert!(broken(&tear).contains("part-00001-of-00002.jsonl:2: torn"));
        let extra = broken(&|p| p.0[0].1.extend_from_slice(b"{\"line\":3,\"error\":\"x\"}\n"));
        assert!(extra.contains("part-00000-of-00002.jsonl:3: a line beyond the 2 its marker records"), "{extra}");
        let short = broken(&|p| p.0[0].1 = b"{\"line\":1,\"error\":\"x\"}\n".to_vec());
        assert!(short.contains("part-00000-of-00002.jsonl: has 1 lines; its marker says 2"), "{short}");
        assert!(broken(&|p| p.0[1] = part((1, 2), (5, 10), &[])).contains("covers bytes 5..10, but the previous part ends at 4"));
        assert!(broken(&|p| p.0[1] = part((1, 3), (4, 10), &[])).contains("made by shard 1/3"));
        assert!(broken(&|p| p.0[1] = part((1, 2), (4, 9), &[])).contains("cover bytes 0..9 of an input of 10"));
        // Lines out of order are named for what they are: skipped, repeated, unnumbered.
        let skipped = broken(&|p| p.0[0].1 = b"{\"line\":2,\"error\":\"x\"}\n{\"line\":2,\"error\":\"x\"}\n".to_vec());
        assert!(skipped.contains("part-00000-of-00002.jsonl:1: answers line 2 where line 1 of the shard was expected (answers are missing)"), "{skipped}");
        let repeated = broken(&|p| p.0[0].1 = b"{\"line\":1,\"error\":\"x\"}\n{\"line\":1,\"error\":\"x\"}\n".to_vec());
        assert!(repeated.contains("part-00000-of-00002.jsonl:2: answers line 1 again where line 2"), "{repeated}");
        let unnumbered = broken(&|p| p.0[0].1 = b"{\"error\":\"x\"}\n".to_vec());
        assert!(unnumbered.contains(":1: has no \"line\" number"), "{unnumbered}");
        // The line that breaks the schema is the one named.
        let schema = broken(&|p| p.0[1].1 = b"{\"line\":1,\"fields\":{\"name\":null,\"email\":null}}\n{\"line\":2,\"fields\":{\"mail\":null}}\n".to_vec());
        assert!(schema.contains("part-00001-of-00002.jsonl:2: answered with the keys mail"), "{schema}");
        assert!(merge(&mut good(), 2, 11, None).unwrap_err().to_string().contains("made from an input of 10 bytes; this input has 11"));
    }
}
