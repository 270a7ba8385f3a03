//! A file of JSON records — a JSON array of objects, or JSONL — read leniently: each record
//! comes with the line it starts on, and a JSONL line that is not UTF-8 or not JSON is kept as a
//! problem of that line instead of ending the read, so that a check can list every bad line.
//! A broken JSON array cannot be resumed after its error, so that is an error of the file.

use std::io::BufRead;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use super::decode::{decode_line, line_breaks, not_utf8_reason, skip_bom};
use crate::entries::Entries;
use crate::{Error, Result};

/// One record of the file, or why its line is not one. `T` is the record as parsed: a [`Value`],
/// or the record's own text ([`RawValue`]) where numbers must keep their digits as written.
#[derive(Debug, Clone)]
pub struct RawRecord<T = Value> {
    /// 1-based line on which the record starts.
    pub line: usize,
    pub value: std::result::Result<T, Problem>,
    /// A key the record's object holds twice (the first such): parsed, one of the values is
    /// silently kept, while training's reader refuses the record.
    pub repeated_key: Option<String>,
}

/// A line that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `encoding` or `invalid_json`.
    pub kind: &'static str,
    pub message: String,
}

/// The file's records in order. Errors: an empty file, a JSON array that is broken or not
/// UTF-8 (naming the line).
pub fn read_records(bytes: &[u8], source: &str) -> Result<Vec<RawRecord>> {
    Records::open(bytes, source)?.collect()
}

/// [`read_records`] with each record's text kept as written.
pub fn read_raw_records(bytes: &[u8], source: &str) -> Result<Vec<RawRecord<Box<RawValue>>>> {
    Records::open(bytes, source)?.collect()
}

/// The records of a JSON array or JSONL stream, read a record at a time: a file of millions of
/// records is never held whole. Which form it is, the first character that is not whitespace
/// says (after a byte-order mark): `[` opens an array.
pub struct Records<R, T = Value> {
    form: Form<std::io::Chain<std::io::Cursor<Vec<u8>>, R>, T>,
    /// The first record, read by [`Records::open`] to refuse a file without one.
    first: Option<RawRecord<T>>,
}

enum Form<R, T> {
    Jsonl(JsonlRecords<R, T>),
    Array(ArrayRecords<R, T>),
}

impl<R: BufRead, T: DeserializeOwned> Records<R, T> {
    /// Errors: a read error, a file without a record, a JSON array whose first record is broken.
    pub fn open(reader: R, source: &str) -> Result<Self> {
        let cannot = |e: std::io::Error| Error::io(source, e);
        let mut reader = skip_bom(reader, source)?;
        // Whitespace before the first character is consumed a buffer at a time, and its line
        // breaks counted, so that records keep their lines.
        let mut newlines = 0;
        let first = loop {
            let buf = reader.fill_buf().map_err(cannot)?;
            if buf.is_empty() {
                break None;
            }
            match buf.iter().position(|b| !b" \t\r\n".contains(b)) {
                Some(i) => {
                    newlines += line_breaks(&buf[..i]);
                    let first = buf[i];
                    reader.consume(i + usize::from(first == b'['));
                    break Some(first);
                }
                None => {
                    let n = buf.len();
                    newlines += line_breaks(buf);
                    reader.consume(n);
                }
            }
        };
        let mut form = match first {
            Some(b'[') => Form::Array(ArrayRecords::new(reader, source, newlines + 1)),
            _ => Form::Jsonl(JsonlRecords { reader, source: source.to_string(), index: newlines, line: Vec::new(), _t: PhantomData }),
        };
        let first = match &mut form {
            Form::Jsonl(r) => r.next(),
            Form::Array(r) => r.next(),
        };
        match first {
            None => Err(Error::Format(format!("{source}: no records"))),
            Some(first) => Ok(Self { form, first: Some(first?) }),
        }
    }
}

impl<R, T> Records<R, T> {
    /// The file is a JSON array (else JSONL).
    pub fn is_array(&self) -> bool {
        matches!(self.form, Form::Array(_))
    }
}

impl<R: BufRead, T: DeserializeOwned> Iterator for Records<R, T> {
    type Item = Result<RawRecord<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        match &mut self.form {
            Form::Jsonl(r) => r.next(),
            Form::Array(r) => r.next(),
        }
    }
}


/// Line `i` (0-based, without its `\n`) of a JSONL file as a record; `None` for a blank line.
fn jsonl_record<T: DeserializeOwned>(line: &[u8], i: usize) -> Option<RawRecord<T>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (value, repeated_key) = match decode_line(line, i == 0) {
        Err(why) => (Err(Problem { kind: "encoding", message: why }), None),
        Ok(text) if text.trim().is_empty() => return None,
        // Where files were joined (`cat a.jsonl b.jsonl`), the second one's mark starts a line.
        Ok(text) if text.starts_with('\u{feff}') => {
            (Err(Problem { kind: "invalid_json", message: "a byte-order mark starts the line (files joined together?); remove it".into() }), None)
        }
        Ok(text) => (
            serde_json::from_str::<T>(text).map_err(|e| {
                let mut message = format!("not valid JSON: {} (column {})", without_position(&e), e.column());
                // A file saved with old Mac line endings is one line of records joined by `\r`.
                if text.trim_end().contains('\r') {
                    message.push_str("; the line holds a carriage return: are its records separated by \\r alone? JSONL separates them with \\n (tr '\\r' '\\n' converts)");
                }
                Problem { kind: "invalid_json", message }
            }),
            repeated_key(text),
        ),
    };
    Some(RawRecord { line: i + 1, value, repeated_key })
}

/// JSONL, a line at a time; a line that is not UTF-8 or not JSON is a [`Problem`] of that line.
struct JsonlRecords<R, T> {
    reader: R,
    source: String,
    index: usize,
    line: Vec<u8>,
    _t: PhantomData<T>,
}

impl<R: BufRead, T: DeserializeOwned> Iterator for JsonlRecords<R, T> {
    type Item = Result<RawRecord<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(Error::io(&self.source, e))),
            }
            let i = self.index;
            self.index += 1;
            if let Some(record) = jsonl_record(self.line.strip_suffix(b"\n").unwrap_or(&self.line), i) {
                return Some(Ok(record));
            }
        }
    }
}

/// The elements of a JSON array (its `[` already read), each read as far as its end (strings,
/// escapes and nesting followed byte by byte) and then parsed alone, so that the array is never
/// held whole and each record knows its line. A broken array cannot be resumed after its error:
/// the error ends the reading.
struct ArrayRecords<R, T> {
    reader: R,
    source: String,
    /// The line the reader is on.
    line: usize,
    /// Nothing is read after the closing `]`'s check or an error.
    done: bool,
    /// A record has been read: a `,` or the `]` comes next.
    after_record: bool,
    record: Vec<u8>,
    _t: PhantomData<T>,
}

/// How a record's bytes end.
enum End {
    /// With this byte (a container's or string's closing character).
    With,
    /// Before this byte (a number or literal ends where a `,`, `]` or whitespace begins).
    Before,
}

impl<R: BufRead, T: DeserializeOwned> ArrayRecords<R, T> {
    fn new(reader: R, source: &str, line: usize) -> Self {
        Self { reader, source: source.to_string(), line, done: false, after_record: false, record: Vec::new(), _t: PhantomData }
    }

    fn broken(&self, line: usize, why: &str) -> Error {
        Error::Format(format!("{}:{line}: invalid JSON array: {why}", self.source))
    }

    /// The next byte that is not whitespace, consumed (`None` at the end of the file).
    fn next_token(&mut self) -> Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf().map_err(|e| Error::io(&self.source, e))?;
            if buf.is_empty() {
                return Ok(None);
            }
            let i = buf.iter().position(|b| !b" \t\r\n".contains(b));
            let skipped = i.unwrap_or(buf.len());
            let found = i.map(|i| buf[i]);
            self.line += line_breaks(&buf[..skipped]);
            self.reader.consume(skipped + usize::from(found.is_some()));
            if found.is_some() {
                return Ok(found);
            }
        }
    }

    /// Reads the record that begins with `first` (already consumed) into `self.record`.
    fn read_record(&mut self, first: u8) -> Result<()> {
        self.record.clear();
        self.record.push(first);
        let (mut depth, mut in_string, mut escaped) = (0usize, first == b'"', false);
        if matches!(first, b'{' | b'[') {
            depth = 1;
        }
        let scalar = !in_string && depth == 0;
        let opened = self.line;
        loop {
            let buf = self.reader.fill_buf().map_err(|e| Error::io(&self.source, e))?;
            if buf.is_empty() {
                if scalar {
                    return Ok(());
                }
                return Err(self.broken(opened, "the record that opens here is never closed"));
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 && !scalar {
                            end = Some((i, End::With));
                            break;
                        }
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => {
                        depth -= 1;
                        if depth == 0 && !scalar {
                            end = Some((i, End::With));
                            break;
                        }
                    }
                    b',' | b']' | b' ' | b'\t' | b'\r' | b'\n' if depth == 0 => {
                        end = Some((i, End::Before));
                        break;
                    }
                    _ => {}
                }
            }
            let taken = match end {
                Some((i, End::With)) => i + 1,
                Some((i, End::Before)) => i,
                None => buf.len(),
            };
            self.record.extend_from_slice(&buf[..taken]);
            self.line += line_breaks(&buf[..taken]);
            self.reader.consume(taken);
            if end.is_some() {
                return Ok(());
            }
        }
    }

    /// The record in `self.record`, which starts on `line`, parsed.
    fn parse(&self, line: usize) -> Result<RawRecord<T>> {
        let text = std::str::from_utf8(&self.record).map_err(|e| {
            let at = e.valid_up_to();
            let line = line + line_breaks(&self.record[..at]);
            Error::Format(format!("{}:{line}: {}", self.source, not_utf8_reason(self.record[at])))
        })?;
        let value = serde_json::from_str::<T>(text).map_err(|e| self.broken(line + e.line().saturating_sub(1), &without_position(&e)))?;
        Ok(RawRecord { line, value: Ok(value), repeated_key: repeated_key(text) })
    }

    fn step(&mut self) -> Result<Option<RawRecord<T>>> {
        let mut token = self.next_token()?;
        if self.after_record {
            match token {
                Some(b',') => {
                    token = self.next_token()?;
                    if token == Some(b']') {
                        return Err(self.broken(self.line, "a `,` before the closing `]` (a trailing comma)"));
                    }
                }
                Some(b']') => return self.closed(),
                Some(_) => return Err(self.broken(self.line, "expected `,` or `]` after a record")),
                None => {}
            }
        }
        match token {
            None => Err(self.broken(self.line, "the array is never closed (no `]`)")),
            Some(b']') => self.closed(),
            Some(first) => {
                let line = self.line;
                self.read_record(first)?;
                self.after_record = true;
                self.parse(line).map(Some)
            }
        }
    }

    /// After the closing `]`: nothing but whitespace may follow.
    fn closed(&mut self) -> Result<Option<RawRecord<T>>> {
        self.done = true;
        match self.next_token()? {
            None => Ok(None),
            Some(_) => Err(self.broken(self.line, "text after the closing `]`")),
        }
    }
}

impl<R: BufRead, T: DeserializeOwned> Iterator for ArrayRecords<R, T> {
    type Item = Result<RawRecord<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.step();
        if step.is_err() {
            self.done = true;
        }
        step.transpose()
    }
}

/// serde's message without its position, which counts from the start of the text it was given
/// (a record, a cell): the caller names the file's line instead.
pub fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    message.rsplit_once(" at line ").map_or(message.clone(), |(m, _)| m.to_string())
}

/// The first key that the JSON object `text` holds twice at its top level (`None` for text that
/// is not a JSON object: its reader says why). Nested objects are not a record's or an output's
/// fields, so they are not looked into.
pub fn repeated_key(text: &str) -> Option<String> {
    let entries = serde_json::from_str::<Entries<serde::de::IgnoredAny>>(text).ok()?;
    entries.repeated().map(str::to_string)
}

/// The text a record's values are copied from: `input` when it holds text, else `instruction`
/// (the user message is instruction + input, and in the seed's records `input` is the text).
pub fn record_text(record: &Value) -> Option<&str> {
    let get = |key: &str| record.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
    get("input").or_else(|| get("instruction"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key repeated at the top level is found, in JSONL and in arrays; keys of nested or
    /// sibling objects are not repeats.
    #[test]
    fn repeated_keys_are_found() {
        assert_eq!(repeated_key(r#"{"a": 1, "b": {"c": 1, "c": 2}}"#), None, "nested objects are not fields");
        assert_eq!(repeated_key(r#"{"input": "x", "input": "y"}"#), Some("input".into()));
        assert_eq!(repeated_key(r#"[{"a": 1}, {"a": 2}]"#), None);
        assert_eq!(repeated_key("{oops"), None);
        let recs = read_records(b"{\"a\": 1}\n{\"a\": 1, \"a\": 2}\n", "f").unwrap();
        assert_eq!(recs.iter().map(|r| r.repeated_key.clone()).collect::<Vec<_>>(), [None, Some("a".to_string())]);
        let recs = read_records(b"[{\"a\": 1, \"b\": 2}, {\"b\": 1, \"b\": 2}]", "f").unwrap();
        assert_eq!(recs.iter().map(|r| r.repeated_key.clone()).collect::<Vec<_>>(), [None, Some("b".to_string())]);
    }

    /// Records separated by `\r` alone read as one line: its error says so, and how to convert;
    /// a lone bad line (or one ending in `\r\n`) gets no such hint.
    #[test]
    fn records_joined_by_carriage_returns_are_named() {
        let recs = read_records(b"{\"a\": 1}\r{\"a\": 2}\r", "f").unwrap();
        let problem = recs[0].value.as_ref().unwrap_err();
        assert!(problem.message.starts_with("not valid JSON: trailing characters (column 10); the line holds a carriage return"), "{}", problem.message);
        assert!(problem.message.contains("tr '\\r' '\\n'"), "{}", problem.message);
        let recs = read_records(b"{oops\r\n", "f").unwrap();
        assert!(!recs[0].value.as_ref().unwrap_err().message.contains("carriage"));
    }

    #[test]
    fn array_records_know_their_lines() {
        let text = "[\n  {\"a\": 1},\n  {\"a\":\n 2}, {\"a\": 3}\n]\n";
        let recs = read_records(text.as_bytes(), "f").unwrap();
        assert_eq!(recs.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(recs[1].value.as_ref().unwrap()["a"], 2);
        assert_eq!(read_records(b" [ ] ", "f").unwrap_err().to_string(), "f: no records");
        // A spreadsheet's byte-order mark before the array.
        assert_eq!(read_records(b"\xEF\xBB\xBF[{\"a\": 1}]", "f").unwrap().len(), 1);
    }

    #[test]
    fn broken_arrays_name_the_line() {
        let e = read_records(b"[\n{\"a\": 1},\n{\"a\": }\n]", "f").unwrap_err().to_string();
        assert!(e.starts_with("f:3: invalid JSON array"), "{e}");
        let e = read_records(b"[\n{\"a\": 1},\n{\"a\": 2}\n", "f").unwrap_err().to_string();
        assert!(e.starts_with("f:4: invalid JSON array: the array is never closed"), "{e}");
        let e = read_records(b"[{\"a\": 1} {\"a\": 2}]", "f").unwrap_err().to_string();
        assert!(e.contains("expected `,` or `]`"), "{e}");
        let e = read_records(b"[{\"a\": 1}]\n[]", "f").unwrap_err().to_string();
        assert!(e.starts_with("f:2:") && e.contains("after the closing"), "{e}");
        let e = read_records(b"[\n{\"a\": 1},\n\n  {\"a\":\n   }]", "f").unwrap_err().to_string();
        assert_eq!(e, "f:5: invalid JSON array: expected value", "the file's line, not the record's");
        let e = read_records(b"[\n{\"a\": 1},\n]", "f").unwrap_err().to_string();
        assert!(e.starts_with("f:3: invalid JSON array: a `,` before the closing `]`"), "{e}");
        let e = read_records(b"[\n{\"a\": 1},\n{\"a\": \"x]}\n", "f").unwrap_err().to_string();
        assert_eq!(e, "f:3: invalid JSON array: the record that opens here is never closed");
        let e = read_records(b"[\n{\"a\": 1},\n{\"a\":\n\"\xC4\xE3\"}]", "f").unwrap_err().to_string();
        assert!(e.starts_with("f:4: not valid UTF-8 (byte 0xC4)"), "{e}");
        // Records before the break have been read, one by one, when it is found.
        let mut records = Records::<_, Value>::open(&b"[{\"a\": 1}, {\"a\": 2} {\"a\": 3}]"[..], "f").unwrap();
        assert_eq!(records.by_ref().take(2).filter(|r| r.is_ok()).count(), 2);
        assert!(records.next().unwrap().is_err());
        assert!(records.next().is_none(), "nothing is read after the error");
    }

    /// A record is read the same whatever the reader's buffer cuts it into: a buffer of one byte
    /// splits every string, escape, bracket and byte-order mark.
    #[test]
    fn records_do_not_depend_on_where_reads_end() {
        let files: [&[u8]; 3] = [
            b"\xEF\xBB\xBF{\"a\": 1}\n\n{oops\r\n\xC4\xE3\n  \n{\"a\": 2, \"a\": 3}",
            b"\n \n[ {\"a\": \"x]\\\"}{,\"}, {\"b\": [1, {\"c\": \"\\\\\"}]},\n\"s\",\n-1.5e3 ,true,null,[]\n]\n",
            b"\xEF\xBB\xBF  [{\"k\": \"\xE4\xBD\xA0\"}]",
        ];
        let view = |rs: &[RawRecord]| rs.iter().map(|r| (r.line, r.value.clone().map_err(|p| p.kind), r.repeated_key.clone())).collect::<Vec<_>>();
        for bytes in files {
            let whole = read_records(bytes, "f").unwrap();
            for capacity in 1..8 {
                let reader = std::io::BufReader::with_capacity(capacity, bytes);
                let streamed: Vec<RawRecord> = Records::open(reader, "f").unwrap().collect::<Result<_>>().unwrap();
                assert_eq!(view(&streamed), view(&whole), "capacity {capacity}");
            }
        }
        let array = read_records(files[1], "f").unwrap();
        assert_eq!(array.iter().map(|r| r.line).collect::<Vec<_>>(), [3, 3, 4, 5, 5, 5, 5]);
        assert_eq!(array[0].value.as_ref().unwrap()["a"], "x]\"}{,");
        assert_eq!(array[3].value.as_ref().unwrap(), &serde_json::json!(-1500.0));
        assert_eq!(read_records(files[0], "f").unwrap().len(), 4);
    }

    #[test]
    fn bad_jsonl_lines_are_problems_not_errors() {
        let recs = read_records(b"{\"a\": 1}\n\n{oops\n\xC4\xE3\n{\"a\": 2}\r\n\xEF\xBB\xBF{\"a\": 3}\n", "f").unwrap();
        let lines: Vec<(usize, Option<&str>)> =
            recs.iter().map(|r| (r.line, r.value.as_ref().err().map(|p| p.kind))).collect();
        assert_eq!(lines, [(1, None), (3, Some("invalid_json")), (4, Some("encoding")), (5, None), (6, Some("invalid_json"))]);
        assert!(recs[4].value.as_ref().unwrap_err().message.contains("byte-order mark"));
    }
}
