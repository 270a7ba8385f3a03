//! The extraction API other apps embed: text in, the schema's fields out, with constrained
//! decoding on by default (see [`crate::constrain`]). The extracting methods
//! (`Extractor::extract_batch` and the rest) are in [`crate::engine`], whose continuous-batching
//! loop they run: a batch is requests submitted together and collected in order.

use std::sync::Arc;

use burn::prelude::*;

use crate::chat::ChatPrompt;
use crate::constrain::{Constrain, TokenTable};
use crate::generate::Sampling;
use crate::model::Qwen3ForCausalLM;
use crate::schema::Schema;
use crate::speculate::Speculate;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractOptions {
    pub constrain: Constrain,
    /// Tokens the model may pick per record (forced tokens not counted).
    pub max_new_tokens: usize,
    /// Records decoding at once (rows of the engine's KV cache).
    pub batch: usize,
    /// Prompt tokens a record may take (chat template and schema included); a longer text is
    /// cut, with a warning, so one record's work and memory stay bounded.
    pub max_input_tokens: usize,
    /// Draft tokens copied from the text and verified in one pass ([`Speculate`]); greedy
    /// output is the same either way, and so is sampled output for a seed.
    pub speculate: Speculate,
    /// Greedy (the default) or sampled picks; a sampled record draws from `seed` plus its
    /// engine id (the order it was submitted in).
    pub sampling: Sampling,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { constrain: Constrain::Copy, max_new_tokens: 256, batch: 32, max_input_tokens: 2048, speculate: Speculate::Auto, sampling: Sampling::Greedy }
    }
}

/// The extracted values, in schema order; `None` is JSON null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub names: Vec<String>,
    pub values: Vec<Option<String>>,
}

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| n == name)?;
        self.values[i].as_deref()
    }

    /// A JSON object with the schema's keys in order.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(serde_json::Value::Null, |s| s.clone().into())))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// One record's result and what happened on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    pub fields: Fields,
    /// Set when the text was cut to fit the context.
    pub warning: Option<String>,
    /// Tokens generated (picked and forced).
    pub tokens: usize,
    /// Whether the token budget ran out before the object closed.
    pub truncated: bool,
    /// Seconds spent computing allowed tokens and stepping the grammar.
    pub constrain_s: f64,
    /// Tokens of the text proposed by speculative decoding, and how many of them the model's
    /// own picks kept.
    pub drafted: usize,
    pub accepted: usize,
}

/// A model with its tokenizer, ready to extract a schema's fields. Its fields are private so
/// that the system prompt, the grammar's keys and the vocabulary table always agree with the
/// schema and the model: change them through [`Extractor::with_schema`] and
/// [`Extractor::with_options`].
pub struct Extractor<B: Backend> {
    model: Qwen3ForCausalLM<B>,
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    schema: Arc<Schema>,
    options: ExtractOptions,
    table: TokenTable,
}

impl<B: Backend> Extractor<B> {
    pub fn new(model: Qwen3ForCausalLM<B>, tokenizer: Tokenizer, eos_token_ids: Vec<u32>, schema: Schema, options: ExtractOptions) -> Self {
        let table = TokenTable::new(&tokenizer, model.vocab_size());
        Self { model, tokenizer, eos_token_ids, schema: Arc::new(schema), options, table }
    }

    /// Loads a checkpoint folder (and optionally a LoRA adapter folder) with the default schema.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(model: &std::path::Path, adapter: Option<&std::path::Path>, device: &B::Device) -> Result<Self> {
        let adapter = adapter.map(crate::files::Folder::new);
        let opts = crate::LoadOptions { adapter: adapter.as_ref().map(|a| a as &dyn crate::files::Files), ..Default::default() };
        crate::checkpoint::Checkpoint::open_dir(model)?.load(&opts, device)?.into_extractor(Schema::default(), ExtractOptions::default())
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn options(&self) -> &ExtractOptions {
        &self.options
    }

    pub fn model(&self) -> &Qwen3ForCausalLM<B> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The schema, shared with the requests made from it.
    pub(crate) fn shared_schema(&self) -> Arc<Schema> {
        self.schema.clone()
    }

    pub(crate) fn table(&self) -> &TokenTable {
        &self.table
    }

    /// The same model extracting `schema`'s fields (its system prompt is built from it).
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = Arc::new(schema);
        self
    }

    pub fn with_options(mut self, options: ExtractOptions) -> Self {
        self.options = options;
        self
    }

    /// The tokens a prompt may take: `max_input_tokens`, and at most the context minus the
    /// answer's budget; with the limit's name and what would give a prompt more room.
    fn prompt_budget(&self, schema: &Schema) -> (usize, String, String) {
        let answer = self.options.max_new_tokens.saturating_add(8 * schema.fields.len() + 8);
        let context = self.model.max_position_embeddings.saturating_sub(answer).max(16);
        if self.options.max_input_tokens < context {
            (self.options.max_input_tokens, format!("max_input_tokens ({})", self.options.max_input_tokens), "raise --max-input-tokens or use fewer fields".into())
        } else {
            let ctx = self.model.max_position_embeddings;
            let kept = ctx - context.min(ctx);
            let room = format!("{kept} positions are kept for the answer (--max-new-tokens {} and the fields' keys): lower --max-new-tokens or use fewer fields", self.options.max_new_tokens);
            (context, format!("the context ({ctx} positions)"), room)
        }
    }

    /// The chat prompt for `text` under `schema`, with the text cut at the end if it would not
    /// fit; also the text the prompt holds and a warning when it was cut.
    pub(crate) fn prompt(&self, schema: &Schema, text: &str) -> Result<(Vec<u32>, String, Option<String>)> {
        let (budget, limit, room) = self.prompt_budget(schema);
        let system = schema.system_prompt();
        // A token is at least one byte: past this many, the text is cut before tokenizing so a
        // line of gigabytes costs no more than one that just fits (tokens this far from the
        // cut are unaffected by it).
        let head = stable_boundary(text, budget.saturating_mul(64));
        let ids = ChatPrompt::new(Some(&system), &text[..head]).encode(&self.tokenizer)?;
        if ids.len() <= budget && head == text.len() {
            return Ok((ids, text.to_string(), None));
        }
        let text_ids = self.tokenizer.encode(&text[..head])?;
        let overhead = ids.len().saturating_sub(text_ids.len());
        if overhead + 2 >= budget {
            return Err(Error::Limit(format!(
                "the prompt takes {overhead} tokens before any text, leaving none under {limit}; {room}"
            )));
        }
        let keep = budget - overhead - 2;
        let cut = self.tokenizer.decode(&text_ids[..keep.min(text_ids.len())], false)?;
        let cut = cut.trim_end_matches('\u{FFFD}').to_string();
        let ids = ChatPrompt::new(Some(&system), &cut).encode(&self.tokenizer)?;
        let warning = format!(
            "text of {} characters cut to its first {} to fit {limit}",
            text.chars().count(),
            cut.chars().count(),
        );
        Ok((ids, cut, Some(warning)))
    }
}

/// The largest index `<= at` on a character boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// The largest index ≤ `at` where `s` may be cut without changing how what comes before
/// normalises: before a character that composes with nothing before it (canonical combining
/// class 0, NFC quick check Yes), so the head's NFC is a prefix of the whole text's. Cut between
/// a letter and its accent, the head normalised to `é` + `e` where the text reads `é` + `é`, and a
/// value copied from it was in neither the text nor its NFC.
fn stable_boundary(s: &str, at: usize) -> usize {
    use unicode_normalization::{char::canonical_combining_class, is_nfc_quick, IsNormalized};
    let mut i = floor_char_boundary(s, at);
    while i > 0 && i < s.len() {
        let c = s[i..].chars().next().expect("i < len is a character's start");
        if c.is_ascii() || (canonical_combining_class(c) == 0 && is_nfc_quick(std::iter::once(c)) == IsNormalized::Yes) {
            break;
        }
        i = floor_char_boundary(s, i - 1);
    }
    i
}

impl<B: Backend> crate::checkpoint::Loaded<B> {
    /// An extractor over the loaded model (which needs an eos token). Whatever would fail every
    /// record is an error here, once: an eos id outside the vocabulary, a schema whose prompt
    /// leaves no room for text.
    pub fn into_extractor(self, schema: Schema, options: ExtractOptions) -> Result<Extractor<B>> {
        self.require_eos()?;
        // (A tokenizer larger than the vocabulary was refused as the checkpoint loaded.)
        let vocab = self.model.vocab_size();
        if let Some(id) = self.eos_token_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Format(format!("eos token id {id} is outside the model's vocabulary of {vocab}")));
        }
        let ex = Extractor::new(self.model, self.tokenizer, self.eos_token_ids, schema, options);
        ex.prompt(&ex.schema, "x")?;
        Ok(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::stable_boundary;
    use crate::tokenizer::nfc;

    /// A cut never falls between a letter and its accent, nor between a Hangul syllable and the
    /// final consonant it composes with: the head's NFC is a prefix of the whole text's.
    #[test]
    fn a_cut_text_normalises_as_the_start_of_the_whole() {
        let text = "e\u{301}e\u{301}x 가\u{11A8}각 ñ";
        for at in 0..=text.len() + 1 {
            let head = stable_boundary(text, at);
            assert!(head <= at && text.is_char_boundary(head), "{at}: {head}");
            assert!(nfc(text).starts_with(&nfc(&text[..head])), "cut at {at} → {head}: {:?}", &text[..head]);
        }
        assert_eq!(stable_boundary(text, 2), 0, "before the first accent there is only the letter it belongs to");
        assert_eq!(stable_boundary("abc", 10), 3);
    }
}
