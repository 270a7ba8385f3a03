//! SFT records in the seed's shape: `{system?, instruction, input?, output}`, as a JSON array
//! or JSONL, and their tokenization into prompt and response.

use serde::Deserialize;

use crate::chat::{ChatPrompt, IM_END};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct SftRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub output: Option<String>,
}

/// A record and where it came from, for messages.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// 1-based line: of the record in JSONL, of its first character in a JSON array.
    pub line: usize,
    pub value: T,
}

impl SftRecord {
    /// The user message: instruction followed by input.
    pub fn user_message(&self) -> String {
        format!("{}{}", self.instruction, self.input.as_deref().unwrap_or(""))
    }

    pub fn prompt(&self) -> ChatPrompt {
        ChatPrompt::new(self.system.as_deref(), &self.user_message())
    }
}

/// Parses a JSON array or JSONL file of records. `source` names the file in errors, which say
/// `file:line`. A record without `output` is an error.
pub fn parse_records(text: &str, source: &str) -> Result<Vec<Located<SftRecord>>> {
    strict(parse_records_lenient(text, source)?, source)
}

/// The records, or the first bad line as the error.
fn strict((records, bad): Lenient, source: &str) -> Result<Vec<Located<SftRecord>>> {
    match bad.first() {
        Some((line, why)) => Err(Error::Format(format!("{source}:{line}: {why}"))),
        None => Ok(records),
    }
}

/// Parsed records, and `(line, reason)` for each line that is not a valid record.
pub type Lenient = (Vec<Located<SftRecord>>, Vec<(usize, String)>);

/// [`parse_records_lenient`] over a file's bytes: a JSONL line that is not UTF-8 is a bad line
/// like any other (as `data check` counts it), not the whole file's error; a JSON array must be
/// UTF-8 throughout.
pub fn parse_records_bytes_lenient(bytes: &[u8], source: &str) -> Result<Lenient> {
    let e = match std::str::from_utf8(bytes) {
        Ok(text) => return parse_records_lenient(text, source),
        Err(e) => e,
    };
    let line_at = |at: usize| bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Error::Format(format!("{source}:{}: not valid UTF-8", line_at(e.valid_up_to()))));
    }
    let mut text = String::with_capacity(bytes.len());
    let mut bad = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(l) => text.push_str(l),
            Err(_) => bad.push((i + 1, "not valid UTF-8".to_string())),
        }
        text.push('\n');
    }
    let (records, mut more) = match parse_records_lenient(&text, source) {
        Err(_) if text.trim().is_empty() => (Vec::new(), Vec::new()),
        other => other?,
    };
    more.extend(bad);
    more.sort_by_key(|b| b.0);
    Ok((records, more))
}

/// [`parse_records`] over a file's bytes: the first bad line, a non-UTF-8 one included, is the error.
pub fn parse_records_bytes(bytes: &[u8], source: &str) -> Result<Vec<Located<SftRecord>>> {
    strict(parse_records_bytes_lenient(bytes, source)?, source)
}

/// Like [`parse_records`], but JSONL lines that are not valid records are returned as
/// `(line, reason)` instead of stopping the parse. A record without `output` is still an error.
pub fn parse_records_lenient(text: &str, source: &str) -> Result<Lenient> {
    // Editors on Windows write a byte-order mark; `data check` reads past it, and so does this.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    let mut bad = Vec::new();
    if trimmed.starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
            .map_err(|e| Error::Format(format!("{source}:{}: invalid JSON array: {e}", e.line())))?;
        for (i, item) in items.into_iter().enumerate() {
            // Records are located by the line they start on, as in JSONL (the raw value is a
            // slice of `text`), with their index in the array beside it.
            let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
            let line = text[..offset].matches('\n').count() + 1;
            match serde_json::from_str::<SftRecord>(item.get()) {
                Ok(rec) => out.push(Located { line, value: rec }),
                Err(e) => {
                    // serde's position is within the record: made the file's line instead.
                    let message = e.to_string();
                    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
                    bad.push((line + e.line().saturating_sub(1), format!("record {} of the array: {message}", i + 1)));
                }
            }
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<SftRecord>(line) {
                Ok(rec) => out.push(Located { line: i + 1, value: rec }),
                Err(e) => bad.push((i + 1, format!("invalid record: {e}"))),
            }
        }
    }
    for rec in &out {
        if rec.value.output.is_none() {
            return Err(Error::Format(format!("{source}:{}: record has no `output`", rec.line)));
        }
    }
    if out.is_empty() && bad.is_empty() {
        return Err(Error::Format(format!("{source}: no records")));
    }
    Ok((out, bad))
}

/// A record as token ids: the chat-template prompt, then `output + "<|im_end|>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl Example {
    pub fn new(rec: &SftRecord, tok: &Tokenizer) -> Result<Self> {
        let prompt = rec.prompt().encode(tok)?;
        let mut response = tok.encode(rec.output.as_deref().unwrap_or(""))?;
        response.push(tok.special_id(IM_END)?);
        Ok(Self { prompt, response })
    }

    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
