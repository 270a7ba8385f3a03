//! Files of SFT records (a JSON array or JSONL) for training and evaluation, read a record at a
//! time through [`Records`]: a record is parsed alone, so a JSON array costs the same per record
//! as JSONL, and a line that is not a record is kept as `(line, reason)` beside the records.

use std::io::BufRead;

use serde_json::value::RawValue;

use super::records::{without_position, Records};
use crate::sft::{Located, SftRecord};
use crate::{Error, Result};

/// Parsed records, and `(line, reason)` for each line that is not a valid record.
pub type Lenient = (Vec<Located<SftRecord>>, Vec<(usize, String)>);

/// The records of `reader`; a JSONL line that is not UTF-8, not JSON or not a record is
/// returned beside them. Errors: a read error, no records, a broken JSON array (it cannot be
/// resumed), a record without `output`.
pub fn read_lenient<R: BufRead>(reader: R, source: &str) -> Result<Lenient> {
    let records = Records::<R, Box<RawValue>>::open(reader, source)?;
    let array = records.is_array();
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    for (i, record) in records.enumerate() {
        let record = record?;
        let raw = match record.value {
            Ok(raw) => raw,
            Err(problem) => {
                bad.push((record.line, problem.message));
                continue;
            }
        };
        let keys = serde_json::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(raw.get()).unwrap_or_default();
        if let Some((key, meant)) = crate::sft::misnamed_key(keys.keys().map(String::as_str), &crate::sft::KEYS) {
            bad.push((record.line, format!("`{key}` is not a key of a record; `{meant}` is (keys are case-sensitive)")));
            continue;
        }
        match serde_json::from_str::<SftRecord>(raw.get()) {
            Ok(value) if value.output.is_none() => return Err(Error::Format(format!("{source}:{}: record has no `output`", record.line))),
            Ok(value) => out.push(Located { line: record.line, value }),
            // serde's position counts from the record's start: made the file's line.
            Err(e) if array => bad.push((record.line + e.line().saturating_sub(1), format!("record {} of the array: {}", i + 1, without_position(&e)))),
            Err(e) => bad.push((record.line, format!("invalid record: {} (column {})", without_position(&e), e.column()))),
        }
    }
    Ok((out, bad))
}

/// [`read_lenient`] over text.
pub fn parse_records_lenient(text: &str, source: &str) -> Result<Lenient> {
    read_lenient(text.as_bytes(), source)
}

/// The records of `text`; the first bad line is the error (`source:line: why`).
pub fn parse_records(text: &str, source: &str) -> Result<Vec<Located<SftRecord>>> {
    strict(parse_records_lenient(text, source)?, source)
}

/// The records, or the first bad line as the error.
pub fn strict((records, bad): Lenient, source: &str) -> Result<Vec<Located<SftRecord>>> {
    match bad.first() {
        Some((line, why)) => Err(Error::Format(format!("{source}:{line}: {why}"))),
        None => Ok(records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that is JSON but not a record is named by the file's line (serde's own position
    /// counts from the record's start, so "line 1" would point at the wrong line), in JSONL with
    /// its column, in an array with its index; the records around it are kept.
    #[test]
    fn a_bad_record_is_named_by_the_files_line() {
        let good = r#"{"instruction": "a", "output": "{}"}"#;
        let jsonl = format!("{good}\n\n{{\"instruction\": \"b\", \"output\": 5}}\n{good}\n");
        let (records, bad) = parse_records_lenient(&jsonl, "f.jsonl").unwrap();
        assert_eq!(records.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(bad, [(3, "invalid record: invalid type: integer `5`, expected a string (column 32)".to_string())]);

        let array = format!("[\n{good},\n{{\"instruction\": \"b\",\n \"output\": 5}},\n{good}]");
        let (records, bad) = parse_records_lenient(&array, "f.json").unwrap();
        assert_eq!(records.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(bad, [(4, "record 2 of the array: invalid type: integer `5`, expected a string".to_string())]);
        assert_eq!(parse_records(&array, "f.json").unwrap_err().to_string(), "f.json:4: record 2 of the array: invalid type: integer `5`, expected a string");

        let missing = parse_records_lenient("{\"instruction\": \"a\"}\n", "f.jsonl").unwrap_err().to_string();
        assert_eq!(missing, "f.jsonl:1: record has no `output`");
    }

    /// A known key spelt with other case (`Input`) was an unknown key, dropped: the record
    /// trained without its text. Other keys (an `id`) are still read past.
    #[test]
    fn a_misnamed_key_is_a_bad_line() {
        let text = "{\"instruction\": \"a\", \"Input\": \"张伟\", \"output\": \"{}\"}\n{\"id\": 7, \"instruction\": \"a\", \"output\": \"{}\"}\n";
        let (records, bad) = parse_records_lenient(text, "f.jsonl").unwrap();
        assert_eq!(records.iter().map(|r| r.line).collect::<Vec<_>>(), [2]);
        assert_eq!(bad, [(1, "`Input` is not a key of a record; `input` is (keys are case-sensitive)".to_string())]);
    }
}
