//! The extraction API other apps embed: text in, the schema's fields out, with constrained
//! decoding on by default (see [`crate::constrain`]). Rows of a batch share one forward pass per
//! step; tokens the grammar forces (keys, punctuation) are fed in the same pass as the token the
//! model picked, without sampling.

use burn::prelude::*;

use crate::chat::chat_prompt;
use crate::constrain::{Constrain, Grammar, State, TokenTable};
use crate::model::{Positions, Qwen3ForCausalLM};
use crate::read::{read, ready, ReadMode};
use crate::schema::Schema;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractOptions {
    pub constrain: Constrain,
    /// Tokens the model may pick per record (forced tokens not counted).
    pub max_new_tokens: usize,
    /// Records per forward pass in [`Extractor::extract_batch`].
    pub batch: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { constrain: Constrain::Copy, max_new_tokens: 256, batch: 32 }
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
}

/// A model with its tokenizer, ready to extract a schema's fields. Its fields are private so
/// that the system prompt, the grammar's keys and the vocabulary table always agree with the
/// schema and the model: change them through [`Extractor::with_schema`] and
/// [`Extractor::with_options`].
pub struct Extractor<B: Backend> {
    model: Qwen3ForCausalLM<B>,
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    schema: Schema,
    options: ExtractOptions,
    system: String,
    table: TokenTable,
}

struct Row {
    /// Tokens decided but not yet fed to the model (a pick and what the grammar forces after it).
    pending: std::collections::VecDeque<u32>,
    /// Seconds spent in constrained-decoding work for this row.
    constrain_s: f64,
    grammar: Option<Grammar>,
    state: Option<State>,
    /// Free-text output in `none` mode.
    text: Vec<u32>,
    picked: usize,
    generated: usize,
    done: bool,
    truncated: bool,
    warning: Option<String>,
}

impl<B: Backend> Extractor<B> {
    pub fn new(model: Qwen3ForCausalLM<B>, tokenizer: Tokenizer, eos_token_ids: Vec<u32>, schema: Schema, options: ExtractOptions) -> Self {
        let table = TokenTable::new(&tokenizer, model.vocab_size());
        let system = schema.system_prompt();
        Self { model, tokenizer, eos_token_ids, schema, options, system, table }
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

    /// The same model extracting `schema`'s fields: the system prompt is rebuilt from it.
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.system = schema.system_prompt();
        self.schema = schema;
        self
    }

    pub fn with_options(mut self, options: ExtractOptions) -> Self {
        self.options = options;
        self
    }

    pub fn extract(&self, text: &str) -> Result<Fields> {
        self.extract_batch(&[text]).remove(0).map(|e| e.fields)
    }

    /// One result per text, in order; a text that fails does not fail the others.
    pub fn extract_batch(&self, texts: &[&str]) -> Vec<Result<Extraction>> {
        ready(self.extract_batch_with(texts, ReadMode::Blocking))
    }

    /// [`Self::extract`] for backends that cannot block (WebGPU in a browser).
    pub async fn extract_async(&self, text: &str) -> Result<Extraction> {
        self.extract_batch_async(&[text]).await.remove(0)
    }

    /// [`Self::extract_batch`] for backends that cannot block: the same decoding loop, awaiting
    /// each step's logits.
    pub async fn extract_batch_async(&self, texts: &[&str]) -> Vec<Result<Extraction>> {
        self.extract_batch_with(texts, ReadMode::Async).await
    }

    async fn extract_batch_with(&self, texts: &[&str], mode: ReadMode) -> Vec<Result<Extraction>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.options.batch.max(1)) {
            match self.run_chunk(chunk, mode).await {
                Ok(results) => out.extend(results),
                Err(e) => out.extend(chunk.iter().map(|_| Err(Error::Other(e.to_string())))),
            }
        }
        out
    }

    /// The tokens the prompt may take: the context minus the answer's budget.
    fn prompt_budget(&self) -> usize {
        let answer = self.options.max_new_tokens + 8 * self.schema.fields.len() + 8;
        self.model.max_position_embeddings.saturating_sub(answer).max(16)
    }

    /// The chat prompt for `text`, with the text cut at the end if it would not fit.
    fn prompt(&self, text: &str) -> Result<(Vec<u32>, String, Option<String>)> {
        let ids = self.tokenizer.encode(&chat_prompt(Some(&self.system), text))?;
        let budget = self.prompt_budget();
        if ids.len() <= budget {
            return Ok((ids, text.to_string(), None));
        }
        let text_ids = self.tokenizer.encode(text)?;
        let overhead = ids.len().saturating_sub(text_ids.len());
        let keep = budget.saturating_sub(overhead + 2);
        let cut = self.tokenizer.decode(&text_ids[..keep.min(text_ids.len())], false)?;
        let cut = cut.trim_end_matches('\u{FFFD}').to_string();
        let ids = self.tokenizer.encode(&chat_prompt(Some(&self.system), &cut))?;
        let warning = format!(
            "text of {} characters cut to its first {} to fit the context ({} positions)",
            text.chars().count(),
            cut.chars().count(),
            self.model.max_position_embeddings
        );
        Ok((ids, cut, Some(warning)))
    }

    async fn run_chunk(&self, texts: &[&str], read_mode: ReadMode) -> Result<Vec<Result<Extraction>>> {
        let mode = self.options.constrain;
        let mut results: Vec<Option<Result<Extraction>>> = Vec::with_capacity(texts.len());
        let mut rows: Vec<Row> = Vec::new();
        let mut initial: Vec<Vec<u32>> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                results.push(Some(Err(Error::Other("empty text".into()))));
                continue;
            }
            results.push(None);
            let (mut ids, text, warning) = self.prompt(text)?;
            let mut row = Row { pending: Default::default(), constrain_s: 0.0, grammar: None, state: None, text: Vec::new(), picked: 0, generated: 0, done: false, truncated: false, warning };
            if mode != Constrain::None {
                let grammar = Grammar::new(&self.schema, mode, &text);
                let mut state = grammar.start();
                let forced = grammar.forced(&state);
                if !forced.is_empty() {
                    ids.extend(self.tokenizer.encode(std::str::from_utf8(&forced).map_err(|e| Error::Other(e.to_string()))?)?);
                    state = grammar.step_bytes(&state, &forced).ok_or_else(|| Error::Other("grammar rejected its own literal".into()))?;
                }
                row.grammar = Some(grammar);
                row.state = Some(state);
            }
            rows.push(row);
            initial.push(ids);
            owner.push(i);
        }
        if !rows.is_empty() {
            self.generate_rows(&mut rows, initial, read_mode).await?;
        }
        for (row, i) in rows.into_iter().zip(owner) {
            results[i] = Some(self.finish(row));
        }
        Ok(results.into_iter().map(|r| r.expect("every text has a result")).collect())
    }

    fn finish(&self, row: Row) -> Result<Extraction> {
        let names: Vec<String> = self.schema.names().iter().map(|s| s.to_string()).collect();
        let values = match (&row.grammar, &row.state) {
            (Some(g), Some(s)) => g.values(s),
            _ => {
                let text = self.tokenizer.decode(&row.text, true)?;
                let value: serde_json::Value = serde_json::from_str(text.trim())
                    .map_err(|e| Error::Other(format!("output is not valid JSON ({e}): {}", text.chars().take(200).collect::<String>())))?;
                let obj = value.as_object().ok_or_else(|| Error::Other("output is not a JSON object".into()))?;
                names
                    .iter()
                    .map(|n| match obj.get(n) {
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(serde_json::Value::Null) | None => Ok(None),
                        Some(other) => Ok(Some(other.to_string())),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Extraction {
            fields: Fields { names, values },
            warning: row.warning,
            tokens: row.generated,
            truncated: row.truncated,
            constrain_s: row.constrain_s,
        })
    }

    /// Decodes all rows together: one forward pass per step over every unfinished row.
    async fn generate_rows(&self, rows: &mut [Row], initial: Vec<Vec<u32>>, mode: ReadMode) -> Result<()> {
        let batch = rows.len();
        let seq = initial.iter().map(Vec::len).max().unwrap_or(1);
        let pad = self.eos_token_ids.first().copied().unwrap_or(0);
        let lengths: Vec<usize> = initial.iter().map(Vec::len).collect();
        let mut ids = Vec::with_capacity(batch * seq);
        for p in &initial {
            ids.extend(std::iter::repeat_n(pad, seq - p.len()));
            ids.extend_from_slice(p);
        }
        let mut pos = Positions::left_padded(&lengths, seq);
        let mut next_pos = lengths.clone();
        // Each row's newest tokens sit in the first `count` columns of a step.
        let mut counts: Vec<usize> = lengths.clone();
        let mut offsets: Vec<usize> = (0..batch).map(|r| seq - lengths[r]).collect();
        let capacity = (seq + 2 * self.options.max_new_tokens + 16 * self.schema.fields.len()).min(self.model.max_position_embeddings.max(seq));
        let mut cache = self.model.new_cache(batch, capacity.max(seq))?;
        let vocab = self.model.vocab_size();
        loop {
            cache.reserve(pos.past + pos.seq);
            let hidden = self.model.hidden(&ids, &pos, Some(&mut cache))?;
            let [_, t, d] = hidden.dims();
            // Rows that fed their last decided token now pick the next one.
            let active: Vec<usize> = (0..batch).filter(|&r| !rows[r].done && counts[r] > 0 && rows[r].pending.is_empty()).collect();
            if active.is_empty() && rows.iter().all(|r| r.done || r.pending.is_empty()) {
                break;
            }
            // Logits at each active row's last new token.
            let picks: Vec<i64> = active.iter().map(|&r| (r * t + offsets[r] + counts[r] - 1) as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(picks, [active.len()]), &hidden.device());
            let logits = self.model.logits(hidden.reshape([batch * t, d]).select(0, idx));
            let logits: Vec<f32> = read(logits, mode)
                .await?
                .convert::<f32>()
                .to_vec()
                .map_err(|e| Error::Other(format!("reading logits: {e:?}")))?;
            for (k, &r) in active.iter().enumerate() {
                let row_logits = &logits[k * vocab..(k + 1) * vocab];
                let chunk = self.advance(&mut rows[r], row_logits)?;
                rows[r].pending.extend(chunk);
            }
            // Forced tokens go in with the pick in one pass when few rows decode (the pass costs
            // about the same for 1 or 5 tokens); with many rows, a longer chunk for one row
            // would cost every row a padded column, so each row feeds one token per pass.
            let unfinished = rows.iter().filter(|r| !r.done).count();
            let cap = if unfinished <= 4 { usize::MAX } else { 1 };
            let chunks: Vec<Vec<u32>> = rows
                .iter_mut()
                .map(|row| {
                    let n = row.pending.len().min(cap);
                    row.pending.drain(..n).collect()
                })
                .collect();
            let t_next = chunks.iter().map(Vec::len).max().unwrap_or(0);
            if t_next == 0 {
                break;
            }
            let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
            let mut step_ids = Vec::with_capacity(batch * t_next);
            for chunk in &chunks {
                step_ids.extend(chunk.iter().copied().chain(std::iter::repeat_n(pad, t_next - chunk.len())));
            }
            let step_pos = pos.next(&lens, &next_pos, t_next);
            for r in 0..batch {
                next_pos[r] += lens[r];
                counts[r] = lens[r];
                offsets[r] = 0;
            }
            if next_pos.iter().any(|&p| p >= self.model.max_position_embeddings) {
                for (r, row) in rows.iter_mut().enumerate() {
                    if !row.done && next_pos[r] >= self.model.max_position_embeddings {
                        row.done = true;
                        row.truncated = true;
                        counts[r] = 0;
                    }
                }
                if rows.iter().all(|r| r.done) {
                    break;
                }
            }
            ids = step_ids;
            pos = step_pos;
        }
        Ok(())
    }

    /// Picks one row's next token from its logits and returns what to feed next: the pick and
    /// any tokens the grammar then forces. An empty result finishes the row.
    fn advance(&self, row: &mut Row, logits: &[f32]) -> Result<Vec<u32>> {
        if row.picked >= self.options.max_new_tokens {
            row.done = true;
            row.truncated = true;
            return Ok(Vec::new());
        }
        row.picked += 1;
        let (Some(grammar), Some(state)) = (&row.grammar, &mut row.state) else {
            let best = argmax(logits, 0..logits.len() as u32);
            if self.eos_token_ids.contains(&best) {
                row.done = true;
                return Ok(Vec::new());
            }
            row.text.push(best);
            row.generated += 1;
            return Ok(vec![best]);
        };
        let started = web_time_now();
        let allowed = grammar.allowed(&self.table, state);
        if allowed.is_empty() {
            row.done = true;
            row.truncated = true;
            return Ok(Vec::new());
        }
        let best = argmax(logits, allowed.into_iter());
        let bytes = self.table.bytes(best).expect("allowed tokens have bytes");
        *state = grammar.step_bytes(state, bytes).expect("allowed tokens step");
        row.generated += 1;
        if grammar.is_done(state) {
            row.done = true;
            row.constrain_s += elapsed_s(started);
            return Ok(Vec::new());
        }
        let mut chunk = vec![best];
        let forced = grammar.forced(state);
        if !forced.is_empty() {
            let text = std::str::from_utf8(&forced).map_err(|e| Error::Other(e.to_string()))?;
            let tokens = self.tokenizer.encode(text)?;
            *state = grammar.step_bytes(state, &forced).expect("forced bytes step");
            row.generated += tokens.len();
            chunk.extend(tokens);
        }
        row.constrain_s += elapsed_s(started);
        Ok(chunk)
    }
}

impl<B: Backend> crate::checkpoint::Loaded<B> {
    /// An extractor over the loaded model (which needs an eos token).
    pub fn into_extractor(self, schema: Schema, options: ExtractOptions) -> Result<Extractor<B>> {
        self.require_eos()?;
        Ok(Extractor::new(self.model, self.tokenizer, self.eos_token_ids, schema, options))
    }
}

fn argmax(logits: &[f32], candidates: impl Iterator<Item = u32>) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for id in candidates {
        let v = logits[id as usize];
        if v > best.0 || (v == best.0 && id < best.1) {
            best = (v, id);
        }
    }
    best.1
}

// std's clock is not available in wasm32-unknown-unknown; there the timing reads zero.
#[cfg(not(target_arch = "wasm32"))]
fn web_time_now() -> Option<std::time::Instant> {
    Some(std::time::Instant::now())
}

#[cfg(target_arch = "wasm32")]
fn web_time_now() -> Option<()> {
    None
}

#[cfg(not(target_arch = "wasm32"))]
fn elapsed_s(start: Option<std::time::Instant>) -> f64 {
    start.map_or(0.0, |s| s.elapsed().as_secs_f64())
}

#[cfg(target_arch = "wasm32")]
fn elapsed_s(_: Option<()>) -> f64 {
    0.0
}
