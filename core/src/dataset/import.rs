//! A table of labelled texts — CSV, TSV, or JSON records (an array or JSONL) — turned into the
//! SFT records training reads, through a mapping of columns: which column holds the text and
//! which holds each label. The records are those `tiqu data synth` writes: the schema's system
//! prompt, the text as the user message and the labels as a JSON object (empty cells as null),
//! which is exactly the prompt the extractor sends at inference.
//!
//! CSV follows RFC 4180 through the `csv` crate (quoted delimiters, doubled quotes and line
//! breaks inside quotes). The crate reads an unterminated quote to the end of the file without
//! complaint, swallowing every later row into one field, so the quotes are scanned first and an
//! unterminated one is an error naming the line it opens on.

use serde_json::value::RawValue;

use super::decode::decode_utf8;
use super::output::python_json_fields;
use super::records::read_raw_records;
use super::span::nearest;
use crate::entries::Entries;
use crate::schema::{Field, Schema};
use crate::sft::SftRecord;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Tsv,
    /// A JSON array of objects, or JSONL: one object per line.
    Json,
}

impl Format {
    /// `csv`, `tsv`, `json` (also the file extensions `tab` and `jsonl`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "json" | "jsonl" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Which column holds the text, and which holds each label (in output order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub text: String,
    /// (label name, column).
    pub fields: Vec<(String, String)>,
}

impl Mapping {
    /// One `--field`: `name=column`, or `name` for a column of that name.
    pub fn parse_field(spec: &str) -> Result<(String, String)> {
        let (name, column) = spec.split_once('=').unwrap_or((spec, spec));
        let (name, column) = (name.trim(), column.trim());
        if name.is_empty() || column.is_empty() {
            return Err(Error::Format(format!("--field `{spec}`: expected NAME=COLUMN (or NAME for a column of that name)")));
        }
        Ok((name.to_string(), column.to_string()))
    }

    fn columns(&self) -> Vec<&str> {
        std::iter::once(self.text.as_str()).chain(self.fields.iter().map(|(_, c)| c.as_str())).collect()
    }
}

/// The records, and the rows left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub records: Vec<SftRecord>,
    /// Lines of rows whose text is empty (left out).
    pub empty_text: Vec<usize>,
    /// Labels that are not substrings of their text (kept; `tiqu data check` lists them).
    pub not_verbatim: usize,
}

/// A row: its line and the mapped cells in [`Mapping::columns`] order (`None`: null).
type Row = (usize, Vec<Option<String>>);

pub fn import(bytes: &[u8], format: Format, mapping: &Mapping, source: &str) -> Result<Imported> {
    if mapping.fields.is_empty() {
        return Err(Error::Format("give at least one --field NAME=COLUMN".into()));
    }
    let fields = mapping.fields.iter().map(|(n, _)| Field::named(n)).collect();
    let schema = Schema::new(fields, "--field")?;
    let columns = mapping.columns();
    let rows = match format {
        Format::Csv => read_table(decode_utf8(bytes, source)?, b',', &columns, source)?,
        Format::Tsv => read_table(decode_utf8(bytes, source)?, b'\t', &columns, source)?,
        Format::Json => read_objects(bytes, &columns, source)?,
    };
    let system = schema.system_prompt();
    let names = schema.names();
    let mut out = Imported { records: Vec::with_capacity(rows.len()), empty_text: Vec::new(), not_verbatim: 0 };
    for (line, cells) in rows {
        let Some(text) = cells[0].clone().filter(|t| !t.trim().is_empty()) else {
            out.empty_text.push(line);
            continue;
        };
        let labels: Vec<Option<&str>> = cells[1..].iter().map(|c| c.as_deref().map(str::trim).filter(|v| !v.is_empty())).collect();
        out.not_verbatim += labels.iter().flatten().filter(|v| nearest(v, &text).is_some()).count();
        let pairs: Vec<(&str, Option<&str>)> = names.iter().copied().zip(labels).collect();
        out.records.push(SftRecord {
            system: Some(system.clone()),
            instruction: String::new(),
            output: Some(python_json_fields(&pairs)),
            input: Some(text),
        });
    }
    if out.records.is_empty() {
        return Err(Error::Format(format!("{source}: no rows with a text in column `{}`", mapping.text)));
    }
    Ok(out)
}

fn read_table(text: &str, delimiter: u8, columns: &[&str], source: &str) -> Result<Vec<Row>> {
    if let Some((line, why)) = quote_error(text, delimiter) {
        return Err(Error::Format(format!("{source}:{line}: {why}")));
    }
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| csv_error(&e, text, source))?.clone();
    let names: Vec<&str> = header.iter().map(str::trim).collect();
    let index = columns
        .iter()
        .map(|&col| match names.iter().filter(|&&h| h == col).count() {
            0 => Err(no_column(col, &names, source)),
            1 => Ok(names.iter().position(|&h| h == col).unwrap_or_default()),
            n => Err(Error::Format(format!("{source}:1: column `{col}` appears {n} times in the header"))),
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut rows = Vec::new();
    let (mut counted, mut line) = (0usize, 1usize);
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&e, text, source))?;
        // The line an editor shows: the csv crate counts records, not line breaks inside quotes.
        let start = record.position().map_or(counted, |p| byte_in(text, p)).min(text.len());
        line += bytecount(&text.as_bytes()[counted.min(start)..start]);
        counted = counted.max(start);
        rows.push((line, index.iter().map(|&i| record.get(i).map(str::to_string)).collect()));
    }
    Ok(rows)
}

fn no_column(col: &str, names: &[&str], source: &str) -> Error {
    let shown: Vec<String> = names.iter().take(20).map(|n| format!("`{n}`")).collect();
    let more = if names.len() > 20 { ", …" } else { "" };
    Error::Format(format!("{source}: no column `{col}` (columns: {}{more})", shown.join(", ")))
}

/// Where the record at a csv position starts in `text`: the csv crate ends a record at the `\r`
/// of a CRLF and counts its `\n` into the next record's position.
fn byte_in(text: &str, p: &csv::Position) -> usize {
    let bytes = text.as_bytes();
    let mut at = (p.byte() as usize).min(bytes.len());
    while at < bytes.len() && matches!(bytes[at], b'\r' | b'\n') {
        at += 1;
    }
    at
}

fn bytecount(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn csv_error(e: &csv::Error, text: &str, source: &str) -> Error {
    let line = e
        .position()
        .map_or(String::new(), |p| format!(":{}", 1 + bytecount(&text.as_bytes()[..byte_in(text, p).min(text.len())])));
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => Error::Format(format!(
            "{source}{line}: the row has {len} field(s), the header {expected_len} (an unquoted delimiter in a value?)"
        )),
        _ => Error::Format(format!("{source}{line}: {e}")),
    }
}

/// A quoted field that never closes (the line it opens on), or text after a closing quote before
/// the next delimiter (`"a"b`, which the `csv` crate silently reads as `ab`), reading quotes as the
/// crate does: a quote opens a field only at its start, a doubled quote inside is a literal one.
fn quote_error(text: &str, delimiter: u8) -> Option<(usize, &'static str)> {
    let b = text.as_bytes();
    let (mut i, mut line, mut field_start) = (0, 1, true);
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c == b'"' && field_start {
            let opened = line;
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (None, _) => return Some((opened, "a quoted field opens here and is never closed (unterminated `\"`)")),
                    (Some(b'"'), Some(b'"')) => i += 2,
                    (Some(b'"'), next) => {
                        if next.is_some_and(|&c| c != delimiter && c != b'\r' && c != b'\n') {
                            return Some((line, "text after a closing quote (quote the whole value and double quotes inside it: \"a \"\"b\"\" c\")"));
                        }
                        i += 1;
                        break;
                    }
                    (Some(b'\n'), _) => {
                        line += 1;
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
            field_start = false;
        } else if c == b'\n' {
            line += 1;
            field_start = true;
        } else {
            field_start = c == delimiter || (c == b'\r' && field_start);
        }
    }
    None
}

/// JSON records: each key a column. A number or boolean is taken as written (`4.50` stays
/// `4.50`, as it reads in the text), hence the records' raw text.
fn read_objects(bytes: &[u8], columns: &[&str], source: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for raw in read_raw_records(bytes, source)? {
        let line = raw.line;
        // The reader has found any key written twice.
        let raw_key = raw.repeated_key;
        let raw = raw.value.map_err(|p| Error::Format(format!("{source}:{line}: {}", p.message)))?;
        let entries: Entries<Box<RawValue>> = match raw.get().trim_start().starts_with('{') {
            true => serde_json::from_str(raw.get()).map_err(|e| Error::Format(format!("{source}:{line}: {e}")))?,
            false => return Err(Error::Format(format!("{source}:{line}: the record is not a JSON object"))),
        };
        if let Some(key) = &raw_key {
            // Which of the two is the label is a guess no import should make.
            return Err(Error::Format(format!("{source}:{line}: `{key}` appears twice in the record")));
        }
        let obj = entries.0;
        for (k, _) in &obj {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        let cells = columns
            .iter()
            .map(|&col| {
                let Some((_, cell)) = obj.iter().find(|(k, _)| k == col) else { return Ok(None) };
                let text = cell.get().trim();
                match text.as_bytes().first() {
                    Some(b'"') => serde_json::from_str::<String>(text).map(Some).map_err(|e| Error::Format(format!("{source}:{line}: `{col}`: {e}"))),
                    Some(b'[' | b'{') => Err(Error::Format(format!("{source}:{line}: `{col}` holds an array or object, not text"))),
                    _ if text == "null" => Ok(None),
                    _ => Ok(Some(text.to_string())),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push((line, cells));
    }
    if let Some(col) = columns.iter().find(|c| !keys.iter().any(|k| k == *c)) {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        return Err(no_column(col, &names, source));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(text: &str, fields: &[&str]) -> Mapping {
        Mapping { text: text.into(), fields: fields.iter().map(|f| Mapping::parse_field(f).unwrap()).collect() }
    }

    #[test]
    fn csv_with_quotes_becomes_the_synth_shape() {
        let csv = "id,内容,姓名,mail\n1,\"龙琳，邮箱 a@b.cn, 说\"\"你好\"\"\n第二行\",龙琳,a@b.cn\n2,张伟投诉,张伟,\n";
        let m = mapping("内容", &["name=姓名", "email=mail"]);
        let got = import(csv.as_bytes(), Format::Csv, &m, "t.csv").unwrap();
        assert_eq!(got.records.len(), 2);
        let r = &got.records[0];
        assert_eq!(r.input.as_deref(), Some("龙琳，邮箱 a@b.cn, 说\"你好\"\n第二行"));
        assert_eq!(r.output.as_deref(), Some(r#"{"name": "龙琳", "email": "a@b.cn"}"#));
        assert_eq!(r.system.as_deref(), Some(Schema::from_names(&["name", "email"]).unwrap().system_prompt().as_str()));
        assert_eq!(got.records[1].output.as_deref(), Some(r#"{"name": "张伟", "email": null}"#));
        assert_eq!(got.not_verbatim, 0);
    }

    /// A number label is the digits in the file (`4.50`, as the text has it), not serde's reprint
    /// (`4.5`, which no longer occurs in the text); strings are unescaped; members keep their order.
    #[test]
    fn json_numbers_are_taken_as_written() {
        let json = "{\"text\": \"价格 4.50 元, 1E3 件\", \"price\": 4.50, \"n\": 1E3, \"ok\": true, \"note\": \"a\\u00e9\", \"gone\": null}\n";
        let got = import(json.as_bytes(), Format::Json, &mapping("text", &["price", "n", "ok", "note", "gone"]), "t.jsonl").unwrap();
        assert_eq!(got.records[0].output.as_deref(), Some(r#"{"price": "4.50", "n": "1E3", "ok": "true", "note": "aé", "gone": null}"#));
        assert_eq!(got.not_verbatim, 2, "`true` and `aé` are not in the text; the numbers are");
        let e = import(b"{\"text\": \"x\", \"name\": [1]}", Format::Json, &mapping("text", &["name"]), "t.jsonl").unwrap_err().to_string();
        assert_eq!(e, "t.jsonl:1: `name` holds an array or object, not text");
        let e = import(b"{\"text\": \"x\", \"text\": \"y\", \"name\": null}", Format::Json, &mapping("text", &["name"]), "t.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:1: `text` appears twice in the record"), "{e}");
    }

    #[test]
    fn unterminated_quotes_are_found_where_they_open() {
        let line = |text: &str, delimiter: u8| quote_error(text, delimiter).map(|(line, _)| line);
        assert_eq!(line("a,b\n\"x\"\"y\",z\r\n\"q\"\n", b','), None);
        assert_eq!(line("a,b\n1,\"ok\nstill\"\n2,\"never\n3,x\n", b','), Some(4));
        // A quote inside an unquoted field is a literal character, as the csv crate reads it.
        assert_eq!(line("a,b\n1,他说\"好\n", b','), None);
        assert_eq!(line("a\tb\n1\t\"x\n", b'\t'), Some(2));
        // Text after the closing quote (the crate would read `"a"b` as `ab`), on the line it is on.
        assert_eq!(quote_error("a,b\n1,\"x\ny\"z,2\n", b','), Some((3, quote_error("\"a\"b", b',').unwrap().1)));
        assert!(quote_error("\"a\"b", b',').unwrap().1.starts_with("text after a closing quote"));
    }

    #[test]
    fn bad_tables_are_one_line_naming_the_line() {
        let m = mapping("text", &["name"]);
        let e = import(b"text,name\n\"a,b\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: a quoted field opens here"), "{e}");
        let e = import(b"text,name\nx,y,z\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: the row has 3 field(s), the header 2"), "{e}");
        let e = import(b"txt,name\nx,y\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert_eq!(e, "t.csv: no column `text` (columns: `txt`, `name`)");
        let e = import(b"[{\"text\": \"x\", \"nom\": 1}]", Format::Json, &m, "t.json").unwrap_err().to_string();
        assert_eq!(e, "t.json: no column `name` (columns: `text`, `nom`)");
        let e = import(b"{\"text\": \"x\"}\n[1]\n", Format::Json, &m, "t.jsonl").unwrap_err().to_string();
        assert_eq!(e, "t.jsonl:2: the record is not a JSON object");
        let e = import(b"text,name\n\"x\" y,z\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: text after a closing quote"), "{e}");
        let e = import(b"text,name\nx,y\n", Format::Csv, &mapping("text", &[]), "t.csv").unwrap_err().to_string();
        assert!(e.contains("--field"), "{e}");
    }
}
