//! A file of JSON records — a JSON array of objects, or JSONL — read leniently: each record
//! comes with the line it starts on, and a JSONL line that is not UTF-8 or not JSON is kept as a
//! problem of that line instead of ending the read, so that a check can list every bad line.
//! A broken JSON array cannot be resumed after its error, so that is an error of the file.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use super::decode::{decode_line, decode_utf8};
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
    read_records_as(bytes, source)
}

/// [`read_records`] with each record's text kept as written.
pub fn read_raw_records(bytes: &[u8], source: &str) -> Result<Vec<RawRecord<Box<RawValue>>>> {
    read_records_as(bytes, source)
}

fn read_records_as<T: DeserializeOwned>(bytes: &[u8], source: &str) -> Result<Vec<RawRecord<T>>> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let first = body.iter().find(|b| !b" \t\r\n".contains(b));
    let records = if first == Some(&b'[') {
        read_array(decode_utf8(bytes, source)?, source)?
    } else {
        read_jsonl(bytes)
    };
    if records.is_empty() {
        return Err(Error::Format(format!("{source}: no records")));
    }
    Ok(records)
}

fn read_jsonl<T: DeserializeOwned>(bytes: &[u8]) -> Vec<RawRecord<T>> {
    bytes.split(|&b| b == b'\n').enumerate().filter_map(|(i, line)| jsonl_record(line, i)).collect()
}

/// Line `i` (0-based, without its `\n`) of a JSONL file as a record; `None` for a blank line.
fn jsonl_record<T: DeserializeOwned>(line: &[u8], i: usize) -> Option<RawRecord<T>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (value, repeated_key) = match decode_line(line, i == 0) {
        Err(why) => (Err(Problem { kind: "encoding", message: why }), None),
        Ok(text) if text.trim().is_empty() => return None,
        Ok(text) => (
            serde_json::from_str::<T>(text).map_err(|e| Problem { kind: "invalid_json", message: format!("not valid JSON: {e}") }),
            repeated_key(text),
        ),
    };
    Some(RawRecord { line: i + 1, value, repeated_key })
}

/// The records of a JSONL stream, read a line at a time, as [`read_records`] reads them: a file
/// of millions of records is never held whole. (A JSON array has to be parsed whole: use
/// [`read_records`] for one.)
pub struct JsonlRecords<R> {
    reader: R,
    source: String,
    index: usize,
    line: Vec<u8>,
}

impl<R: std::io::BufRead> JsonlRecords<R> {
    pub fn new(reader: R, source: &str) -> Self {
        Self { reader, source: source.to_string(), index: 0, line: Vec::new() }
    }
}

impl<R: std::io::BufRead> Iterator for JsonlRecords<R> {
    type Item = Result<RawRecord>;

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

/// Walks the array element by element so that each record knows its line.
fn read_array<T: DeserializeOwned>(text: &str, source: &str) -> Result<Vec<RawRecord<T>>> {
    let line_at = |pos: usize| text[..pos].bytes().filter(|&b| b == b'\n').count() + 1;
    let skip_ws = |mut pos: usize| {
        while pos < text.len() && text.as_bytes()[pos].is_ascii_whitespace() {
            pos += 1;
        }
        pos
    };
    let broken = |pos: usize, why: String| Error::Format(format!("{source}:{}: invalid JSON array: {why}", line_at(pos)));
    let mut pos = skip_ws(0) + 1; // past '['
    let mut out = Vec::new();
    loop {
        pos = skip_ws(pos);
        match text.as_bytes().get(pos) {
            None => return Err(broken(pos, "the array is never closed (no `]`)".into())),
            Some(b']') if out.is_empty() => break,
            _ => {}
        }
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<T>();
        match stream.next() {
            Some(Ok(value)) => {
                let repeated_key = repeated_key(&text[pos..pos + stream.byte_offset()]);
                out.push(RawRecord { line: line_at(pos), value: Ok(value), repeated_key })
            }
            Some(Err(e)) => {
                let line = line_at(pos) + e.line().saturating_sub(1);
                return Err(Error::Format(format!("{source}:{line}: invalid JSON array: {e}")));
            }
            None => return Err(broken(pos, "the array is never closed (no `]`)".into())),
        }
        pos = skip_ws(pos + stream.byte_offset());
        match text.as_bytes().get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => break,
            Some(_) => return Err(broken(pos, "expected `,` or `]` after a record".into())),
            None => return Err(broken(pos, "the array is never closed (no `]`)".into())),
        }
    }
    if skip_ws(pos + 1) < text.len() {
        return Err(broken(skip_ws(pos + 1), "text after the closing `]`".into()));
    }
    Ok(out)
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
    }

    /// The streaming reader gives what the whole-file reader gives, line for line.
    #[test]
    fn streamed_jsonl_equals_whole() {
        let bytes = b"\xEF\xBB\xBF{\"a\": 1}\n\n{oops\r\n\xC4\xE3\n  \n{\"a\": 2, \"a\": 3}";
        let whole = read_records(bytes, "f").unwrap();
        let streamed: Vec<RawRecord> = JsonlRecords::new(&bytes[..], "f").collect::<Result<_>>().unwrap();
        let view = |rs: &[RawRecord]| rs.iter().map(|r| (r.line, r.value.clone().map_err(|p| p.kind), r.repeated_key.clone())).collect::<Vec<_>>();
        assert_eq!(view(&streamed), view(&whole));
        assert_eq!(streamed.len(), 4);
    }

    #[test]
    fn bad_jsonl_lines_are_problems_not_errors() {
        let recs = read_records(b"{\"a\": 1}\n\n{oops\n\xC4\xE3\n{\"a\": 2}\r\n", "f").unwrap();
        let lines: Vec<(usize, Option<&str>)> =
            recs.iter().map(|r| (r.line, r.value.as_ref().err().map(|p| p.kind))).collect();
        assert_eq!(lines, [(1, None), (3, Some("invalid_json")), (4, Some("encoding")), (5, None)]);
    }
}
