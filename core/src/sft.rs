//! SFT records in the seed's shape: `{system?, instruction, input?, output}`, and their
//! tokenization into prompt and response (files of them: [`crate::dataset::sft_records`]).

use serde::Deserialize;

use crate::chat::{ChatPrompt, IM_END};
use crate::tokenizer::Tokenizer;
use crate::Result;

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct SftRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub output: Option<String>,
}

/// The keys of a record that training reads.
pub const KEYS: [&str; 4] = ["system", "instruction", "input", "output"];

/// A key that is one of `known` but for case or surrounding spaces (`Input` among [`KEYS`]),
/// with the key it stands for: read as an unknown key, its value was dropped without a word (a
/// record trained on without its text).
pub fn misnamed_key<'a, 'k>(keys: impl IntoIterator<Item = &'a str>, known: &[&'k str]) -> Option<(&'a str, &'k str)> {
    let fold = |k: &str| k.trim().to_lowercase();
    keys.into_iter().find_map(|key| known.iter().find(|k| fold(k) == fold(key) && **k != key).map(|k| (key, *k)))
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
