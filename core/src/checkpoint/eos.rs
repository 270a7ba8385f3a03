//! The end-of-sequence ids, found as transformers finds them: `generation_config.json`'s
//! `eos_token_id`, then `config.json`'s, then the tokenizer's `eos_token` named by
//! `tokenizer_config.json`, then the chat template's `<|im_end|>`. A `null` in a JSON file
//! counts as unset (a folder saved by transformers from a fresh `Qwen3Config` has
//! `"eos_token_id": null` in both files).

use serde_json::Value;

use crate::config::{token_ids, Qwen3Config};
use crate::files::Files;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The eos ids, or an empty list when nothing names one; `tokenizer_files` (if given) is
/// searched for `tokenizer_config.json` before `files`.
pub fn eos_token_ids(files: &dyn Files, tokenizer_files: Option<&dyn Files>, config: &Qwen3Config, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if files.exists("generation_config.json") {
        let path = files.path("generation_config.json");
        let value: Value = serde_json::from_slice(&files.read("generation_config.json")?).map_err(|e| Error::json(&path, e))?;
        if !value.is_object() {
            return Err(Error::Format(format!("{path}: not a JSON object")));
        }
        let ids = value.get("eos_token_id").map(|v| token_ids(v, &path)).transpose()?.unwrap_or_default();
        if !ids.is_empty() {
            return in_vocabulary(ids, config, &path);
        }
    }
    if !config.eos_token_ids.is_empty() {
        return in_vocabulary(config.eos_token_ids.clone(), config, &files.path("config.json"));
    }
    for source in tokenizer_files.into_iter().chain([files]) {
        if !source.exists("tokenizer_config.json") {
            continue;
        }
        let path = source.path("tokenizer_config.json");
        let value: Value = serde_json::from_slice(&source.read("tokenizer_config.json")?).map_err(|e| Error::json(&path, e))?;
        let token = match value.get("eos_token") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(token) = token {
            let id = tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::Format(format!("{path}: eos_token `{token}` is not in the tokenizer's vocabulary")))?;
            return Ok(vec![id]);
        }
        break;
    }
    Ok(tokenizer.token_to_id("<|im_end|>").into_iter().collect())
}

/// An eos id past the embedding would end no answer (generation ran on to its limit): named
/// with the file that gives it.
fn in_vocabulary(ids: Vec<u32>, config: &Qwen3Config, path: &str) -> Result<Vec<u32>> {
    match ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        Some(id) => Err(Error::Format(format!("{path}: eos_token_id {id} is outside the model's vocabulary of {} tokens", config.vocab_size))),
        None => Ok(ids),
    }
}
