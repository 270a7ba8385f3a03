//! A table of labelled texts — CSV, TSV, or JSON records (an array or JSONL) — turned into the
//! SFT records training reads, through a mapping of columns: which column holds the text and
//! which holds each label. The records are those `tiqu data synth` writes: the schema's system
//! prompt, the text as the user message and the labels as a JSON object (empty cells as null),
//! which is exactly the prompt the extractor sends at inference.
//!
//! CSV follows RFC 4180 through the `csv` crate (quoted delimiters, doubled quotes and line
//! breaks inside quotes). The crate reads an unterminated quote to the end of the file without
//! complaint, swallowing every later row into one field, so the quotes are scanned as the crate
//! reads the bytes and an unterminated one is an error naming the line it opens on.
//!
//! A table is read a row at a time, and each record handed on as it is made.

use std::collections::VecDeque;
use std::io::{BufRead, Read};

use serde_json::value::RawValue;

use super::decode::{not_utf8_reason, skip_bom};
use super::output::python_json_fields;
use super::records::{without_position, Records};
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

/// What an import made, and the rows it left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    pub records: usize,
    /// Rows whose text is empty (left out).
    pub empty_text: usize,
    /// The lines of the first ten of those.
    pub empty_text_lines: Vec<usize>,
    /// Labels that are not substrings of their text (kept; `tiqu data check` lists them).
    pub not_verbatim: usize,
}

/// Reads the table a row at a time and hands each record to `write` as it is made, so that a
/// table of millions of rows is never held whole. An error can come after some records were
/// handed on (a broken row, a column no record holds): write them where a failure discards them.
pub fn import<R: BufRead>(
    reader: R,
    format: Format,
    mapping: &Mapping,
    source: &str,
    mut write: impl FnMut(&SftRecord) -> Result<()>,
) -> Result<Imported> {
    if mapping.fields.is_empty() {
        return Err(Error::Format("give at least one --field NAME=COLUMN".into()));
    }
    let fields = mapping.fields.iter().map(|(n, _)| Field::named(n)).collect();
    let schema = Schema::new(fields, "--field")?;
    let columns = mapping.columns();
    let system = schema.system_prompt();
    let names = schema.names();
    let mut out = Imported::default();
    let mut row = |line: usize, cells: Vec<Option<String>>| -> Result<()> {
        let Some(text) = cells[0].clone().filter(|t| !t.trim().is_empty()) else {
            out.empty_text += 1;
            if out.empty_text_lines.len() < 10 {
                out.empty_text_lines.push(line);
            }
            return Ok(());
        };
        let labels: Vec<Option<&str>> = cells[1..].iter().map(|c| c.as_deref().map(str::trim).filter(|v| !v.is_empty())).collect();
        out.not_verbatim += labels.iter().flatten().filter(|v| nearest(v, &text).is_some()).count();
        let pairs: Vec<(&str, Option<&str>)> = names.iter().copied().zip(labels).collect();
        out.records += 1;
        write(&SftRecord {
            system: Some(system.clone()),
            instruction: String::new(),
            output: Some(python_json_fields(&pairs)),
            input: Some(text),
        })
    };
    match format {
        Format::Csv => read_table(reader, b',', &columns, source, &mut row)?,
        Format::Tsv => read_table(reader, b'\t', &columns, source, &mut row)?,
        Format::Json => read_objects(reader, &columns, source, &mut row)?,
    }
    if out.records == 0 {
        return Err(Error::Format(format!("{source}: no rows with a text in column `{}`", mapping.text)));
    }
    Ok(out)
}

/// Where each row goes: its line and the mapped cells in [`Mapping::columns`] order (`None`: null).
type RowSink<'a> = dyn FnMut(usize, Vec<Option<String>>) -> Result<()> + 'a;

fn read_table<R: BufRead>(reader: R, delimiter: u8, columns: &[&str], source: &str, row: &mut RowSink) -> Result<()> {
    let watched = Watched::new(skip_bom(reader, source)?, delimiter);
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).from_reader(watched);
    let mut record = csv::ByteRecord::new();
    let next = |reader: &mut csv::Reader<Watched<_>>, record: &mut csv::ByteRecord| -> Result<Option<usize>> {
        let read = reader.read_byte_record(record);
        let watched = reader.get_mut();
        // The quotes are scanned ahead of the rows (an unterminated one makes the crate read to
        // the end): a quoting error is said once the rows reach its line, so that the first
        // problem in the file is the one named, however the reads cut it.
        let quote_error = watched.quotes.error;
        let quoting = |upto: usize| match quote_error {
            Some((line, why)) if line <= upto => Err(Error::Format(format!("{source}:{line}: {why}"))),
            _ => Ok(()),
        };
        match read {
            Ok(true) => {
                let line = watched.line_of(record.position().map_or(0, csv::Position::byte));
                quoting(line + line_breaks(record.as_slice()))?;
                Ok(Some(line))
            }
            Ok(false) => quoting(usize::MAX).map(|()| None),
            Err(e) => {
                let line = e.position().map(|p| watched.line_of(p.byte()));
                quoting(line.unwrap_or(usize::MAX))?;
                let line = line.map_or(String::new(), |l| format!(":{l}"));
                Err(match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => Error::Format(format!(
                        "{source}{line}: the row has {len} field(s), the header {expected_len} (an unquoted delimiter in a value?)"
                    )),
                    _ => Error::Format(format!("{source}{line}: {e}")),
                })
            }
        }
    };
    let Some(line) = next(&mut reader, &mut record)? else {
        return Err(Error::Format(format!("{source}: empty (no header row)")));
    };
    let names: Vec<String> = fields(&record, line, source)?.iter().map(|h| h.trim().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let index = columns
        .iter()
        .map(|&col| match names.iter().filter(|&&h| h == col).count() {
            0 => Err(no_column(col, &names, source)),
            1 => Ok(names.iter().position(|&h| h == col).unwrap_or_default()),
            n => Err(Error::Format(format!("{source}:{line}: column `{}` appears {n} times in the header", col.escape_debug()))),
        })
        .collect::<Result<Vec<usize>>>()?;
    // The crate holds every row to the header's count of fields (UnequalLengths above).
    while let Some(line) = next(&mut reader, &mut record)? {
        let cells = fields(&record, line, source)?;
        row(line, index.iter().map(|&i| cells.get(i).map(|c| c.to_string())).collect())?;
    }
    Ok(())
}

/// A row's fields as text; the line of the first byte that is not UTF-8 (a row starting on
/// `line` may span lines inside quotes).
fn fields<'a>(record: &'a csv::ByteRecord, line: usize, source: &str) -> Result<Vec<&'a str>> {
    let mut at = line;
    record
        .iter()
        .map(|field| {
            let text = std::str::from_utf8(field).map_err(|e| {
                let bad = e.valid_up_to();
                Error::Format(format!("{source}:{}: {}", at + line_breaks(&field[..bad]), not_utf8_reason(field[bad])))
            })?;
            at += line_breaks(field);
            Ok(text)
        })
        .collect()
}

/// Names come from the file, where a quoted header may hold a line break: shown escaped, so the
/// error stays one line.
fn no_column(col: &str, names: &[&str], source: &str) -> Error {
    let shown: Vec<String> = names.iter().take(20).map(|n| format!("`{}`", n.escape_debug())).collect();
    let more = if names.len() > 20 { ", …" } else { "" };
    Error::Format(format!("{source}: no column `{}` (columns: {}{more})", col.escape_debug(), shown.join(", ")))
}


/// Whether byte `b` after `last` ends a line as an editor shows lines: `\n`, `\r\n` (once) and
/// a lone `\r` (old Mac files, which the csv crate reads as rows too).
fn ends_line(last: u8, b: u8) -> bool {
    b == b'\r' || (b == b'\n' && last != b'\r')
}

/// The lines `bytes` moves over, as [`ends_line`] counts them.
fn line_breaks(bytes: &[u8]) -> usize {
    let mut last = 0;
    bytes
        .iter()
        .filter(|&&b| {
            let ends = ends_line(last, b);
            last = b;
            ends
        })
        .count()
}

/// The table's bytes on their way to the csv crate, watched: where its line breaks are, since
/// the crate counts records and not the lines an editor shows, and the quoting the crate reads
/// past without complaint.
struct Watched<R> {
    inner: R,
    /// Bytes read so far: the crate's byte positions count the same bytes.
    at: u64,
    newlines: usize,
    /// Runs of `\r` and `\n` not yet behind a row's start: (first byte, end, newlines up to end).
    breaks: VecDeque<(u64, u64, usize)>,
    /// Newlines before the first run kept.
    behind: usize,
    /// The byte before (a `\n` after a `\r` ends no second line).
    last: u8,
    quotes: QuoteScan,
}

impl<R> Watched<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        Self { inner, at: 0, newlines: 0, breaks: VecDeque::new(), behind: 0, last: 0, quotes: QuoteScan::new(delimiter) }
    }

    /// The line of the row the crate places at byte `pos`: the crate skips blank lines before a
    /// row and ends a row at the `\r` of a CRLF, so a row starts after the run of line breaks
    /// `pos` is in. Positions asked for never go back.
    fn line_of(&mut self, pos: u64) -> usize {
        while let Some(&(_, end, newlines)) = self.breaks.front() {
            if end > pos {
                break;
            }
            self.behind = newlines;
            self.breaks.pop_front();
        }
        match self.breaks.front() {
            Some(&(start, _, newlines)) if start <= pos => 1 + newlines,
            _ => 1 + self.behind,
        }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.quotes.finish();
        }
        for &b in &buf[..n] {
            self.quotes.feed(b);
            if b == b'\r' || b == b'\n' {
                self.newlines += usize::from(ends_line(self.last, b));
                match self.breaks.back_mut() {
                    Some(run) if run.1 == self.at => (run.1, run.2) = (self.at + 1, self.newlines),
                    _ => self.breaks.push_back((self.at, self.at + 1, self.newlines)),
                }
            }
            self.at += 1;
            self.last = b;
        }
        Ok(n)
    }
}

/// Quoting as the csv crate reads it, a byte at a time: a quote opens a field only at its start,
/// a doubled quote inside is a literal one. Finds a quoted field that never closes (the line it
/// opens on) and text after a closing quote before the next delimiter (`"a"b`, which the crate
/// silently reads as `ab`).
struct QuoteScan {
    delimiter: u8,
    line: usize,
    state: Quoting,
    /// The line the open quoted field opened on.
    opened: usize,
    last: u8,
    error: Option<(usize, &'static str)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Quoting {
    /// Outside quotes; whether a field starts here.
    Outside { field_start: bool },
    Inside,
    /// Inside, just after a quote: a doubled quote or the closing one.
    Quote,
}

impl QuoteScan {
    fn new(delimiter: u8) -> Self {
        Self { delimiter, line: 1, state: Quoting::Outside { field_start: true }, opened: 0, last: 0, error: None }
    }

    fn feed(&mut self, c: u8) {
        if self.error.is_some() {
            return;
        }
        self.line += usize::from(ends_line(self.last, c));
        self.last = c;
        if self.state == Quoting::Quote {
            if c == b'"' {
                self.state = Quoting::Inside;
                return;
            }
            if c != self.delimiter && c != b'\r' && c != b'\n' {
                self.error = Some((self.line, "text after a closing quote (quote the whole value and double quotes inside it: \"a \"\"b\"\" c\")"));
                return;
            }
            self.state = Quoting::Outside { field_start: false };
        }
        match self.state {
            Quoting::Outside { field_start } => {
                self.state = if c == b'"' && field_start {
                    self.opened = self.line;
                    Quoting::Inside
                } else {
                    // The crate ends a row at `\r` as at `\n` (old Mac files have no other).
                    Quoting::Outside { field_start: c == b'\n' || c == b'\r' || c == self.delimiter }
                };
            }
            Quoting::Inside if c == b'"' => self.state = Quoting::Quote,
            _ => {}
        }
    }

    fn finish(&mut self) {
        if self.error.is_none() && self.state == Quoting::Inside {
            self.error = Some((self.opened, "a quoted field opens here and is never closed (unterminated `\"`)"));
        }
    }
}

/// JSON records: each key a column. A number or boolean is taken as written (`4.50` stays
/// `4.50`, as it reads in the text), hence the records' raw text.
fn read_objects<R: BufRead>(reader: R, columns: &[&str], source: &str, row: &mut RowSink) -> Result<()> {
    let mut keys: Vec<String> = Vec::new();
    for raw in Records::<R, Box<RawValue>>::open(reader, source)? {
        let raw = raw?;
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
            return Err(Error::Format(format!("{source}:{line}: `{}` appears twice in the record", key.escape_debug())));
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
                let Some((_, cell)) = obj.iter().find(|(k, _)| k == col) else {
                    // `Name` where the column is `name` is a label spelt another way, not a
                    // record without one: read as absent, it became null without a word.
                    let unmapped = obj.iter().map(|(k, _)| k.as_str()).filter(|k| !columns.contains(k));
                    if let Some((key, _)) = crate::sft::misnamed_key(unmapped, &[col]) {
                        return Err(Error::Format(format!(
                            "{source}:{line}: key `{}` where the column is `{}` (keys are matched exactly: case and spaces count)",
                            key.escape_debug(),
                            col.escape_debug()
                        )));
                    }
                    return Ok(None);
                };
                let text = cell.get().trim();
                match text.as_bytes().first() {
                    Some(b'"') => serde_json::from_str::<String>(text)
                        .map(Some)
                        .map_err(|e| Error::Format(format!("{source}:{line}: `{}`: {}", col.escape_debug(), without_position(&e)))),
                    Some(b'[' | b'{') => Err(Error::Format(format!("{source}:{line}: `{}` holds an array or object, not text", col.escape_debug()))),
                    _ if text == "null" => Ok(None),
                    _ => Ok(Some(text.to_string())),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        row(line, cells)?;
    }
    if let Some(col) = columns.iter().find(|c| !keys.iter().any(|k| k == *c)) {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        return Err(no_column(col, &names, source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_all(bytes: &[u8], format: Format, mapping: &Mapping, source: &str) -> Result<(Vec<SftRecord>, Imported)> {
        let mut records = Vec::new();
        let imported = import(bytes, format, mapping, source, |r| {
            records.push(r.clone());
            Ok(())
        })?;
        assert_eq!(imported.records, records.len());
        Ok((records, imported))
    }

    fn quote_error(text: &str, delimiter: u8) -> Option<(usize, &'static str)> {
        let mut scan = QuoteScan::new(delimiter);
        text.bytes().for_each(|b| scan.feed(b));
        scan.finish();
        scan.error
    }

    fn mapping(text: &str, fields: &[&str]) -> Mapping {
        Mapping { text: text.into(), fields: fields.iter().map(|f| Mapping::parse_field(f).unwrap()).collect() }
    }

    #[test]
    fn csv_with_quotes_becomes_the_synth_shape() {
        let csv = "id,内容,姓名,mail\n1,\"龙琳，邮箱 a@b.cn, 说\"\"你好\"\"\n第二行\",龙琳,a@b.cn\n2,张伟投诉,张伟,\n";
        let m = mapping("内容", &["name=姓名", "email=mail"]);
        let (records, got) = import_all(csv.as_bytes(), Format::Csv, &m, "t.csv").unwrap();
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(r.input.as_deref(), Some("龙琳，邮箱 a@b.cn, 说\"你好\"\n第二行"));
        assert_eq!(r.output.as_deref(), Some(r#"{"name": "龙琳", "email": "a@b.cn"}"#));
        assert_eq!(r.system.as_deref(), Some(Schema::from_names(&["name", "email"]).unwrap().system_prompt().as_str()));
        assert_eq!(records[1].output.as_deref(), Some(r#"{"name": "张伟", "email": null}"#));
        assert_eq!(got.not_verbatim, 0);
    }

    /// A key that is a mapped column spelt with other case is named, not read as a null label;
    /// a key that is itself mapped is not taken for another column's.
    #[test]
    fn a_column_spelt_another_way_is_named() {
        let json = "{\"text\": \"a\", \"name\": \"x\"}\n{\"text\": \"b\", \"Name\": \"y\"}\n";
        let e = import_all(json.as_bytes(), Format::Json, &mapping("text", &["name"]), "r.jsonl").unwrap_err().to_string();
        assert_eq!(e, "r.jsonl:2: key `Name` where the column is `name` (keys are matched exactly: case and spaces count)");
        // Two columns of those names mapped: each is its own label.
        let (records, _) = import_all(json.as_bytes(), Format::Json, &mapping("text", &["name", "other=Name"]), "r.jsonl").unwrap();
        assert_eq!(records[1].output.as_deref(), Some(r#"{"name": null, "other": "y"}"#));
    }

    /// A number label is the digits in the file (`4.50`, as the text has it), not serde's reprint
    /// (`4.5`, which no longer occurs in the text); strings are unescaped; members keep their order.
    #[test]
    fn json_numbers_are_taken_as_written() {
        let json = "{\"text\": \"价格 4.50 元, 1E3 件\", \"price\": 4.50, \"n\": 1E3, \"ok\": true, \"note\": \"a\\u00e9\", \"gone\": null}\n";
        let (records, got) = import_all(json.as_bytes(), Format::Json, &mapping("text", &["price", "n", "ok", "note", "gone"]), "t.jsonl").unwrap();
        assert_eq!(records[0].output.as_deref(), Some(r#"{"price": "4.50", "n": "1E3", "ok": "true", "note": "aé", "gone": null}"#));
        assert_eq!(got.not_verbatim, 2, "`true` and `aé` are not in the text; the numbers are");
        let e = import_all(b"{\"text\": \"x\", \"name\": [1]}", Format::Json, &mapping("text", &["name"]), "t.jsonl").unwrap_err().to_string();
        assert_eq!(e, "t.jsonl:1: `name` holds an array or object, not text");
        let e = import_all(b"{\"text\": \"x\", \"text\": \"y\", \"name\": null}", Format::Json, &mapping("text", &["name"]), "t.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:1: `text` appears twice in the record"), "{e}");
    }

    /// Rows know the lines an editor shows (blank lines, CRLF, line breaks inside quotes),
    /// however the reads cut the bytes: the rows left out for an empty text name them.
    #[test]
    fn rows_know_their_lines_across_reads() {
        let csv = b"text,name\r\n,e1\r\n\r\n\"multi\nline\",x\r\n,e2\n\n\n\"\",e3\n,e4";
        let m = mapping("text", &["name"]);
        for capacity in [1, 2, 3, 5, 8, 1 << 16] {
            let mut records = Vec::new();
            let reader = std::io::BufReader::with_capacity(capacity, &csv[..]);
            let got = import(reader, Format::Csv, &m, "t.csv", |r| {
                records.push(r.clone());
                Ok(())
            })
            .unwrap();
            assert_eq!((got.records, got.empty_text, got.empty_text_lines.as_slice()), (1, 4, &[2, 6, 9, 10][..]), "capacity {capacity}");
            assert_eq!(records[0].input.as_deref(), Some("multi\nline"));
            let bad = b"text,name\n\"a\nb\",x\nc,\xC4\xE3\n";
            let e = import(std::io::BufReader::with_capacity(capacity, &bad[..]), Format::Csv, &m, "t.csv", |_| Ok(())).unwrap_err().to_string();
            assert!(e.starts_with("t.csv:4: not valid UTF-8 (byte 0xC4)"), "{e}");
            let wide = b"text,name\r\n\"a\r\n\r\nb\",x\r\n1,2,3\r\n";
            let e = import(std::io::BufReader::with_capacity(capacity, &wide[..]), Format::Csv, &m, "t.csv", |_| Ok(())).unwrap_err().to_string();
            assert!(e.starts_with("t.csv:5: the row has 3 field(s), the header 2"), "{e}");
            // Old Mac line endings: `\r` alone ends a line (it was counted as none: every row
            // and error on line 1).
            let mac = b"text,name\r,e1\r\r\"multi\rline\",x\r,e2\r";
            let got = import(std::io::BufReader::with_capacity(capacity, &mac[..]), Format::Csv, &m, "t.csv", |_| Ok(())).unwrap();
            assert_eq!((got.records, got.empty_text_lines.as_slice()), (1, &[2, 6][..]), "capacity {capacity}");
            let open = b"text,name\rx,y\r\"a,b\r";
            let e = import(std::io::BufReader::with_capacity(capacity, &open[..]), Format::Csv, &m, "t.csv", |_| Ok(())).unwrap_err().to_string();
            assert!(e.starts_with("t.csv:3: a quoted field opens here"), "{e}");
        }
    }

    /// The line of the first byte that is not UTF-8: "投" in UTF-8 on line 2, "投诉" in GBK
    /// (CD B6 CB DF) on line 3, where CD B6 happens to be a valid UTF-8 pair and CB is the
    /// first byte that is not.
    #[test]
    fn names_the_line_of_the_first_foreign_byte() {
        let e = import_all(b"text,name\nfine \xE6\x8A\x95,x\n\xCD\xB6\xCB\xDF,x\n", Format::Csv, &mapping("text", &["name"]), "f.csv").unwrap_err().to_string();
        assert!(e.starts_with("f.csv:3: not valid UTF-8 (byte 0xCB)"), "{e}");
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
        let e = import_all(b"text,name\n\"a,b\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: a quoted field opens here"), "{e}");
        let e = import_all(b"text,name\nx,y,z\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: the row has 3 field(s), the header 2"), "{e}");
        let e = import_all(b"txt,name\nx,y\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert_eq!(e, "t.csv: no column `text` (columns: `txt`, `name`)");
        let e = import_all(b"[{\"text\": \"x\", \"nom\": 1}]", Format::Json, &m, "t.json").unwrap_err().to_string();
        assert_eq!(e, "t.json: no column `name` (columns: `text`, `nom`)");
        let e = import_all(b"{\"text\": \"x\"}\n[1]\n", Format::Json, &m, "t.jsonl").unwrap_err().to_string();
        assert_eq!(e, "t.jsonl:2: the record is not a JSON object");
        let e = import_all(b"text,name\n\"x\" y,z\n", Format::Csv, &m, "t.csv").unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: text after a closing quote"), "{e}");
        let e = import_all(b"text,name\nx,y\n", Format::Csv, &mapping("text", &[]), "t.csv").unwrap_err().to_string();
        assert!(e.contains("--field"), "{e}");
    }
}
