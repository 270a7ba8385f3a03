//! A run's training and held-out records, read and tokenized.

use std::path::Path;

use crate::dataset::sft_records::read_lenient;
use crate::sft::{Example, Located, SftRecord};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Records of one file, tokenized and cut to the run's `max_length`.
pub struct Examples {
    pub records: Vec<Located<SftRecord>>,
    pub examples: Vec<Example>,
    /// Records longer than `max_length` tokens, cut at the end.
    pub cut: usize,
    /// Of those, records whose prompt alone fills `max_length`: they teach nothing.
    pub unlabelled: usize,
    /// Lines that are not valid records, skipped.
    pub skipped: usize,
}

/// Reads `path` (JSON array or JSONL SFT records). A line that is not a valid record is an
/// [`Error::Record`] unless `skip_bad` (then counted).
pub fn load_examples(path: &Path, tok: &Tokenizer, max_length: usize, skip_bad: bool) -> Result<Examples> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(&source, e))?;
    let (records, bad) = read_lenient(std::io::BufReader::with_capacity(1 << 20, file), &source)?;
    if let Some((line, why)) = bad.first() {
        if !skip_bad {
            return Err(Error::Record { path: source, line: *line, message: why.clone() });
        }
    }
    let mut cut = 0;
    let mut examples = Vec::with_capacity(records.len());
    let mut shortest_prompt = usize::MAX;
    for rec in &records {
        let mut ex = Example::new(&rec.value, tok)?;
        shortest_prompt = shortest_prompt.min(ex.prompt.len());
        if ex.len() > max_length {
            cut += 1;
            if ex.prompt.len() >= max_length {
                ex.prompt.truncate(max_length);
                ex.response.clear();
            } else {
                ex.response.truncate(max_length - ex.prompt.len());
            }
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(Error::Format(format!("{source}: no usable records")));
    }
    if examples.iter().all(|e| e.response.is_empty()) {
        return Err(Error::Limit(format!(
            "{source}: no record keeps a response token under max_length {max_length} (the shortest prompt takes {shortest_prompt} tokens); raise max_length"
        )));
    }
    let unlabelled = examples.iter().filter(|e| e.response.is_empty()).count();
    Ok(Examples { records, examples, cut, unlabelled, skipped: bad.len() })
}

/// A fingerprint of the tokenized training examples, in order: equal for the same records under
/// the same tokenizer, whatever the file's layout; not a security measure.
pub fn digest(examples: &[Example]) -> String {
    let mut f = crate::shard::Fingerprint::default();
    for e in examples {
        for ids in [&e.prompt, &e.response] {
            f.update(&(ids.len() as u32).to_le_bytes());
            ids.iter().for_each(|t| f.update(&t.to_le_bytes()));
        }
    }
    f.hex()
}
