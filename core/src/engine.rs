//! Continuous batching for extraction: one decode loop over a KV cache of `max_seqs` rows. A
//! request takes a row as soon as one is free, its prompt is fed in chunks of positions, then it
//! decodes with whatever rows are decoding; it leaves when its object closes or its budget ends,
//! its row is free for the next request at once, and its result is handed back at once. A batch
//! is only requests submitted together ([`crate::Extractor::extract_batch`]).
//!
//! Every row keeps its own length in the cache ([`RowPass`]): a row's keys start at column 0 with
//! its own prompt, so nobody's padding is attended, a finished row's columns are simply
//! overwritten by the next request, and a single row decodes exactly as it would alone.
//! Constrained decoding is per row (each request has its own schema, mode and text automaton):
//! forced tokens are fed without sampling and, with few rows decoding, in the same pass as the
//! pick.

use std::collections::VecDeque;
use std::sync::Arc;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::constrain::{Constrain, Grammar, State};
use crate::extract::{Extraction, Extractor, Fields};
use crate::generate::{distribution, draw, non_finite_logits, Sampling};
use crate::model::RowPass;
use crate::read::{read, ready, ReadMode};
use crate::schema::Schema;
use crate::speculate::{draft, DraftLength, Speculate};
use crate::{Error, KvCache, Result};

/// Prompt positions one row feeds per pass: attention over a long prompt is computed a chunk
/// of queries at a time, so its scores take `chunk × context` per head, not `context²`.
pub const PREFILL_CHUNK: usize = 256;
/// Prompt tokens per prefill pass over all the rows it takes, which bounds the pass's
/// activations whatever `max_seqs` is.
pub const PREFILL_TOKENS: usize = 1024;
/// Tokens a decode pass feeds in all when its rows have more than one each to feed (a pick's
/// forced tokens, then `auto`'s drafts); every decoding row feeds at least its pick. Below this
/// a pass is bound by reading the weights and extra tokens cost little; above it they cost what
/// they compute, so feeding them sooner saves passes, not work. On the 0.6B shape (random
/// weights, 200 cached tokens, logits of 2,000 tokens: `tiqu bench verify`, AMD EPYC, 2 cores)
/// passes of 8 and 16 tokens took 99–118 ms, of 32 tokens 158–167 ms and of 64 279–307 ms. On
/// the quickstart model a pass's fixed cost is small and this is about neutral (BENCHMARKS.md).
/// A GPU's bound lies much higher; not measured.
const PASS_TOKENS: usize = 16;

/// One text to extract from, with the schema and constraint its row decodes under.
#[derive(Debug, Clone)]
pub struct Request {
    pub text: String,
    pub schema: Arc<Schema>,
    pub constrain: Constrain,
}

/// Extraction runs on the engine; these methods live here so that `extract` (the extractor's
/// parts) does not depend on the loop that uses them.
impl<B: Backend> Extractor<B> {
    /// A request for `text` under this extractor's schema and constraint.
    pub fn request(&self, text: &str) -> Request {
        Request { text: text.to_string(), schema: self.shared_schema(), constrain: self.options().constrain }
    }

    /// A continuous-batching engine over this model with `max_seqs` rows; requests may carry
    /// other schemas and constraints than this extractor's.
    pub fn engine(&self, max_seqs: usize) -> Engine<'_, B> {
        Engine::new(self, max_seqs)
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
        let mut engine = self.engine(self.options().batch.min(texts.len()));
        for text in texts {
            engine.submit(self.request(text));
        }
        let mut out: Vec<Option<Result<Extraction>>> = texts.iter().map(|_| None).collect();
        while !engine.is_idle() {
            for (id, result) in engine.step_with(mode).await {
                out[id] = Some(result);
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Other("the engine lost a request".into())))).collect()
    }
}

/// A request in a row.
struct Slot {
    id: usize,
    schema: Arc<Schema>,
    /// Tokens of this row already in the cache (the next one's column and rotary position).
    len: usize,
    /// Its prompt has not all been fed yet.
    prefilling: bool,
    /// Tokens decided but not yet fed: the prompt, then each pick and what the grammar forces.
    pending: VecDeque<u32>,
    grammar: Option<Grammar>,
    state: Option<State>,
    /// Free-text output in `none` mode.
    text: Vec<u32>,
    picked: usize,
    generated: usize,
    truncated: bool,
    warning: Option<String>,
    constrain_s: f64,
    /// Tokens of the text proposed after the pending pick (speculation), fed in its pass.
    draft: Vec<u32>,
    draft_len: DraftLength,
    drafted: usize,
    accepted: usize,
    /// The row's own draws when sampling.
    rng: Option<StdRng>,
}

/// The decode loop. Submit requests (they queue until a row is free), then call
/// [`Engine::step`] until [`Engine::is_idle`]: each step is one forward pass and returns the
/// requests that finished in it, as `(id, result)` with the id [`Engine::submit`] gave.
pub struct Engine<'a, B: Backend> {
    ex: &'a Extractor<B>,
    max_seqs: usize,
    cache: Option<KvCache<B>>,
    slots: Vec<Option<Slot>>,
    queue: VecDeque<(usize, Request)>,
    finished: Vec<(usize, Result<Extraction>)>,
    next_id: usize,
    passes: usize,
}

/// Most rows an engine decodes at once: far past what any machine runs well (the CPU's best is a
/// few dozen, a GPU's a few hundred), low enough that a typo in `--batch` gets an error instead
/// of an allocation that aborts the process.
pub const MAX_ROWS: usize = 1 << 16;

impl<'a, B: Backend> Engine<'a, B> {
    /// An engine over `ex`'s model with `max_seqs` rows (1 to [`MAX_ROWS`]). The cache is
    /// allocated on the first pass and grows with the longest row up to the model's context.
    pub fn new(ex: &'a Extractor<B>, max_seqs: usize) -> Self {
        let max_seqs = max_seqs.clamp(1, MAX_ROWS);
        Self {
            ex,
            max_seqs,
            cache: None,
            slots: (0..max_seqs).map(|_| None).collect(),
            queue: VecDeque::new(),
            finished: Vec::new(),
            next_id: 0,
            passes: 0,
        }
    }

    pub fn max_seqs(&self) -> usize {
        self.max_seqs
    }

    /// Queues `request` and returns its id (0, 1, 2… in submission order).
    pub fn submit(&mut self, request: Request) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, request));
        id
    }

    /// Drops request `id` wherever it is (queued, or decoding: its row is free for the next
    /// pass); true when it was still in flight. For a client that has gone: nothing is returned
    /// for it.
    pub fn cancel(&mut self, id: usize) -> bool {
        if let Some(i) = self.queue.iter().position(|(q, _)| *q == id) {
            self.queue.remove(i);
            return true;
        }
        if let Some(slot) = self.slots.iter_mut().find(|s| s.as_ref().is_some_and(|s| s.id == id)) {
            *slot = None;
            return true;
        }
        let before = self.finished.len();
        self.finished.retain(|(f, _)| *f != id);
        self.finished.len() < before
    }

    /// Requests submitted and not yet returned by [`Self::step`].
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.finished.len() + self.slots.iter().flatten().count()
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight() == 0
    }

    /// Forward passes run so far (prompt chunks included).
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// Rows the KV cache holds: rows are added as requests need them, up to `max_seqs`.
    pub fn cache_rows(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::rows)
    }

    /// Rows in use.
    pub fn rows_in_use(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Admits queued requests into free rows, runs one forward pass and returns what finished.
    pub fn step(&mut self) -> Vec<(usize, Result<Extraction>)> {
        ready(self.step_with(ReadMode::Blocking))
    }

    /// [`Self::step`] for backends that cannot block (WebGPU in a browser).
    pub async fn step_async(&mut self) -> Vec<(usize, Result<Extraction>)> {
        self.step_with(ReadMode::Async).await
    }

    pub(crate) async fn step_with(&mut self, mode: ReadMode) -> Vec<(usize, Result<Extraction>)> {
        self.admit();
        if let Some((first, lens)) = self.plan() {
            if let Err(e) = self.pass(first, &lens, mode).await {
                // A failed pass fails only its own rows; the others go on.
                for (r, &n) in lens.iter().enumerate() {
                    if n > 0 {
                        if let Some(slot) = self.slots[first + r].take() {
                            self.finished.push((slot.id, Err(e.clone())));
                        }
                    }
                }
            }
        }
        std::mem::take(&mut self.finished)
    }

    /// Moves queued requests into free rows, lowest first (so busy rows stay together and
    /// decode passes span few idle ones); a request that cannot start fails here.
    fn admit(&mut self) {
        for r in 0..self.max_seqs {
            if self.slots[r].is_some() {
                continue;
            }
            let Some((id, request)) = self.queue.pop_front() else { return };
            match self.prepare(id, request) {
                Ok(slot) => self.slots[r] = Some(slot),
                Err(e) => self.finished.push((id, Err(e))),
            }
        }
    }

    fn prepare(&self, id: usize, request: Request) -> Result<Slot> {
        if request.text.trim().is_empty() {
            return Err(Error::Other("empty text".into()));
        }
        self.ex.options().sampling.check()?;
        let (mut ids, text, warning) = self.ex.prompt(&request.schema, &request.text)?;
        let mut slot = Slot {
            id,
            schema: request.schema,
            len: 0,
            prefilling: true,
            pending: VecDeque::new(),
            grammar: None,
            state: None,
            text: Vec::new(),
            picked: 0,
            generated: 0,
            truncated: false,
            warning,
            constrain_s: 0.0,
            draft: Vec::new(),
            draft_len: DraftLength::new(if request.constrain == Constrain::Copy { self.ex.options().speculate } else { Speculate::Off }),
            drafted: 0,
            accepted: 0,
            rng: match self.ex.options().sampling {
                Sampling::Greedy => None,
                Sampling::Sample { seed, .. } => Some(StdRng::seed_from_u64(seed.wrapping_add(id as u64))),
            },
        };
        if request.constrain != Constrain::None {
            let grammar = Grammar::new(&slot.schema, request.constrain, &text)?;
            let mut state = grammar.start();
            let forced = grammar.forced(&state);
            if !forced.is_empty() {
                ids.extend(self.ex.tokenizer().encode(std::str::from_utf8(&forced).map_err(|e| Error::Other(e.to_string()))?)?);
                state = grammar.step_bytes(&state, &forced).ok_or_else(|| Error::Other("grammar rejected its own literal".into()))?;
            }
            slot.grammar = Some(grammar);
            slot.state = Some(state);
        }
        slot.pending = ids.into();
        Ok(slot)
    }

    /// The next pass: its first row and how many tokens each row from there feeds. Prompts go
    /// first, alone (a decoding row in a prefill pass would pay the chunk's width in padding);
    /// then every decoding row at once.
    fn plan(&mut self) -> Option<(usize, Vec<usize>)> {
        if let Some(first) = self.slots.iter().position(|s| s.as_ref().is_some_and(|s| s.prefilling)) {
            let mut lens = Vec::new();
            let mut total = 0;
            for slot in &self.slots[first..] {
                let Some(slot) = slot.as_ref().filter(|s| s.prefilling) else { break };
                let n = slot.pending.len().min(PREFILL_CHUNK);
                if !lens.is_empty() && total + n > PREFILL_TOKENS {
                    break;
                }
                total += n;
                lens.push(n);
            }
            return Some((first, lens));
        }
        let ex = self.ex;
        let limit = ex.model().max_position_embeddings;
        // A row whose next tokens would reach the context ends as the lock-step loop ended it:
        // truncated, with the grammar state its last pick left (what is pending changes nothing).
        for r in 0..self.max_seqs {
            if self.slots[r].as_ref().is_some_and(|s| s.len + s.pending.len() >= limit) {
                let mut slot = self.slots[r].take().expect("checked");
                slot.truncated = true;
                let out = self.finish(&slot);
                self.finished.push((slot.id, out));
            }
        }
        let first = self.slots.iter().position(Option::is_some)?;
        let last = self.slots.iter().rposition(Option::is_some)?;
        // Every row its pick; what the budget leaves goes to pending (forced) tokens first, which
        // are certain, then to drafts, row by row (drafted here, so that a row the budget leaves
        // out does not tokenize a draft for nothing). A fixed `--speculate K` drafts K whatever the
        // budget.
        let rows = self.slots[first..=last].iter().flatten().count();
        let mut left = PASS_TOKENS.saturating_sub(rows);
        let mut lens: Vec<usize> = self.slots[first..=last].iter().map(|s| usize::from(s.is_some())).collect();
        for (slot, n) in self.slots[first..=last].iter().zip(&mut lens) {
            let Some(slot) = slot else { continue };
            let more = slot.pending.len().saturating_sub(1).min(left);
            *n += more;
            left -= more;
        }
        for (slot, n) in self.slots[first..=last].iter_mut().zip(&mut lens) {
            let Some(slot) = slot else { continue };
            let (Some(grammar), Some(state)) = (&slot.grammar, &slot.state) else { continue };
            // Drafts follow a lone pick: forced tokens end at a literal, where nothing is copied.
            // A draft is only a guess: it stays clear of the context's end.
            let wanted = if slot.draft_len.is_auto() { slot.draft_len.get().min(left) } else { slot.draft_len.get() };
            let k = wanted.min(limit.saturating_sub(slot.len + 2));
            if slot.pending.len() != 1 || k == 0 {
                continue;
            }
            slot.draft = draft(grammar, state, ex.tokenizer(), ex.table(), k);
            *n += slot.draft.len();
            left = left.saturating_sub(slot.draft.len());
        }
        Some((first, lens))
    }

    /// Feeds `lens[r]` tokens of row `first + r` (pending ones, then its draft, which is only
    /// there when all its pending tokens fit), then lets every row whose pending tokens are all
    /// in pick its next token, verifying its draft on the way.
    async fn pass(&mut self, first: usize, lens: &[usize], mode: ReadMode) -> Result<()> {
        let ex = self.ex;
        let model = ex.model();
        let seq = lens.iter().copied().max().unwrap_or(0);
        if seq == 0 {
            return Ok(());
        }
        let pad = ex.eos_token_ids().first().copied().unwrap_or(0);
        let rows = first..first + lens.len();
        let starts: Vec<usize> = rows.clone().map(|r| self.slots[r].as_ref().map_or(0, |s| s.len)).collect();
        let mut ids = Vec::with_capacity(lens.len() * seq);
        for (r, &n) in rows.clone().zip(lens) {
            let fed = self.slots[r].as_ref().map(|s| s.pending.iter().chain(&s.draft).take(n).copied());
            ids.extend(fed.into_iter().flatten().chain(std::iter::repeat(pad)).take(seq));
        }
        let pass = RowPass { first, seq, starts, lens: lens.to_vec() };
        let needed = pass.keys();
        let limit = model.max_position_embeddings;
        // Rows up to the last busy one, doubled when more are needed: a `--batch` far above
        // the requests at hand allocates for the requests, not for the batch.
        let busy = self.slots.iter().rposition(Option::is_some).map_or(0, |r| r + 1).max(first + lens.len());
        let cache = match &mut self.cache {
            Some(cache) => {
                let rows = if busy > cache.rows() { busy.max(2 * cache.rows()).min(self.max_seqs) } else { cache.rows() };
                model.grow_cache(cache, rows, needed)?;
                cache
            }
            empty => {
                // Room for the prompts at hand and their answers; more is added when needed.
                let fields = self.slots.iter().flatten().map(|s| s.schema.fields.len()).max().unwrap_or(1);
                let answer = ex.options().max_new_tokens.saturating_mul(2).saturating_add(16 * fields);
                let longest = self.slots.iter().flatten().map(|s| s.pending.len()).max().unwrap_or(0);
                empty.insert(model.new_cache(busy, longest.saturating_add(answer).max(needed).min(limit))?)
            }
        };
        self.passes += 1;
        let hidden = model.hidden_rows(&ids, &pass, cache)?;
        let [_, t, d] = hidden.dims();
        // (row, where its last pending token's logits are, how many drafted tokens follow).
        let mut picking = Vec::new();
        for (i, (r, &n)) in rows.zip(lens).enumerate() {
            let Some(slot) = self.slots[r].as_mut() else { continue };
            let fed = n.min(slot.pending.len());
            slot.pending.drain(..fed);
            slot.len += n;
            if n > 0 && slot.pending.is_empty() {
                slot.prefilling = false;
                picking.push((r, i * t + fed - 1, n - fed));
            }
        }
        if picking.is_empty() {
            return Ok(());
        }
        // What each pick may choose from is known before its logits (the grammar's state after
        // the drafted tokens before it): when every pick is constrained and all of them together
        // allow few tokens, only those tokens' logits are computed.
        let mut allowed = Vec::with_capacity(picking.len());
        for &(r, _, _) in &picking {
            let slot = self.slots[r].as_mut().expect("picked rows are busy");
            let started = crate::clock::now();
            allowed.push(candidates(slot, self.ex.table()));
            slot.constrain_s += crate::clock::elapsed_s(started);
        }
        let vocab = model.vocab_size();
        let mut union: Vec<u32> = Vec::new();
        if allowed.iter().flatten().all(Option::is_some) {
            union = allowed.iter().flatten().flatten().flatten().copied().collect();
            union.sort_unstable();
            union.dedup();
        }
        let gather = !union.is_empty() && union.len() <= vocab / GATHER_FRACTION;
        // Logits after the last pending token and after each drafted one a pick will read.
        let at: Vec<i64> = picking
            .iter()
            .zip(&allowed)
            .flat_map(|(&(_, at, _), picks)| (at..at + picks.len()).map(|a| a as i64))
            .collect();
        let positions = at.len();
        let idx = Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(at, [positions]), &hidden.device());
        let hidden = hidden.reshape([lens.len() * t, d]).select(0, idx);
        let (logits, ids, width) = match gather {
            true => (model.logits_of(hidden, &union), Some(union.as_slice()), union.len()),
            false => (model.logits(hidden), None, vocab),
        };
        let logits: Vec<f32> =
            read(logits, mode).await?.convert::<f32>().to_vec().map_err(|e| Error::Other(format!("reading logits: {e:?}")))?;
        let mut row = 0;
        for (&(r, _, _), picks) in picking.iter().zip(allowed) {
            let slot = self.slots[r].take().expect("picked rows are busy");
            let scores: Vec<Scores> = picks
                .into_iter()
                .enumerate()
                .map(|(k, allowed)| Scores { values: &logits[(row + k) * width..(row + k + 1) * width], ids, allowed })
                .collect();
            row += scores.len();
            self.settle(r, slot, scores);
        }
        Ok(())
    }

    /// Picks a row's next tokens from the logits of its pass: `logits[0]` follows its last
    /// pending token, `logits[1 + i]` its `i`-th drafted token. Each pick is made exactly as
    /// without a draft; while it equals the drafted token, that token (already in the cache) is
    /// kept and the next logits decide the next pick. The first pick that differs, or the pick
    /// after a fully kept draft, is pending for the next pass, and the rejected drafted columns
    /// are given back.
    fn settle(&mut self, r: usize, mut slot: Slot, scores: Vec<Scores>) {
        let proposed = std::mem::take(&mut slot.draft);
        let mut kept = 0;
        let mut outcome = Ok(Vec::new());
        for (i, row) in scores.into_iter().enumerate() {
            outcome = self.advance(&mut slot, row);
            match &outcome {
                Ok(chunk) if i < proposed.len() && chunk.first() == Some(&proposed[i]) => {
                    kept += 1;
                    if chunk.len() == 1 {
                        continue;
                    }
                    // The drafted token is in; what the grammar forces after it is pending.
                    outcome = Ok(chunk[1..].to_vec());
                    break;
                }
                _ => break,
            }
        }
        slot.len -= proposed.len() - kept;
        slot.drafted += proposed.len();
        slot.accepted += kept;
        slot.draft_len.update(proposed.len(), kept);
        match outcome {
            Ok(chunk) if !chunk.is_empty() => {
                slot.pending.extend(chunk);
                self.slots[r] = Some(slot);
            }
            Ok(_) => {
                let out = self.finish(&slot);
                self.finished.push((slot.id, out));
            }
            Err(e) => self.finished.push((slot.id, Err(e))),
        }
    }

    /// Picks one row's next token from its logits and returns what to feed next: the pick and
    /// any tokens the grammar then forces. An empty result finishes the row.
    fn advance(&self, slot: &mut Slot, mut scores: Scores) -> Result<Vec<u32>> {
        if slot.picked >= self.ex.options().max_new_tokens {
            slot.truncated = true;
            return Ok(Vec::new());
        }
        slot.picked += 1;
        let (Some(grammar), Some(state)) = (&slot.grammar, &mut slot.state) else {
            let vocab = self.ex.model().vocab_size() as u32;
            let best = scores.pick(0..vocab, &self.ex.options().sampling, slot.rng.as_mut())?;
            if self.ex.eos_token_ids().contains(&best) {
                return Ok(Vec::new());
            }
            slot.text.push(best);
            slot.generated += 1;
            return Ok(vec![best]);
        };
        let started = crate::clock::now();
        let table = self.ex.table();
        let allowed = scores.allowed.take().unwrap_or_else(|| grammar.allowed(table, state));
        if allowed.is_empty() {
            slot.truncated = true;
            return Ok(Vec::new());
        }
        let best = scores.pick(allowed.into_iter(), &self.ex.options().sampling, slot.rng.as_mut())?;
        let bytes = table.bytes(best).ok_or_else(|| Error::Other(format!("token {best} has no bytes")))?;
        *state = grammar.step_bytes(state, bytes).ok_or_else(|| Error::Other(format!("token {best} breaks the grammar")))?;
        slot.generated += 1;
        if grammar.is_done(state) {
            slot.constrain_s += crate::clock::elapsed_s(started);
            return Ok(Vec::new());
        }
        let mut chunk = vec![best];
        let forced = grammar.forced(state);
        if !forced.is_empty() {
            let text = std::str::from_utf8(&forced).map_err(|e| Error::Other(e.to_string()))?;
            let tokens = self.ex.tokenizer().encode(text)?;
            *state = grammar.step_bytes(state, &forced).ok_or_else(|| Error::Other("grammar rejected its own literal".into()))?;
            slot.generated += tokens.len();
            chunk.extend(tokens);
        }
        slot.constrain_s += crate::clock::elapsed_s(started);
        Ok(chunk)
    }

    fn finish(&self, slot: &Slot) -> Result<Extraction> {
        let names: Vec<String> = slot.schema.names().iter().map(|s| s.to_string()).collect();
        let values = match (&slot.grammar, &slot.state) {
            (Some(g), Some(s)) => g.values(s),
            _ => {
                let text = self.ex.tokenizer().decode(&slot.text, true)?;
                let value: serde_json::Value = serde_json::from_str(text.trim())
                    .map_err(|e| Error::Other(format!("output is not valid JSON ({e}): {}", text.chars().take(200).collect::<String>())))?;
                let obj = value.as_object().ok_or_else(|| Error::Other("output is not a JSON object".into()))?;
                names
                    .iter()
                    .map(|n| match obj.get(n) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Null) | None => None,
                        Some(other) => Some(other.to_string()),
                    })
                    .collect()
            }
        };
        Ok(Extraction {
            fields: Fields { names, values },
            warning: slot.warning.clone(),
            tokens: slot.generated,
            truncated: slot.truncated,
            constrain_s: slot.constrain_s,
            drafted: slot.drafted,
            accepted: slot.accepted,
        })
    }
}

/// A logit no finite model computes (-inf is a masked token's).
fn broken(logit: f32) -> bool {
    logit.is_nan() || logit == f32::INFINITY
}

/// Candidates gathered for a pass's picks are at most this fraction of the vocabulary; with
/// more, the whole output layer is cheaper than gathering its rows.
const GATHER_FRACTION: usize = 8;

/// The logits one pick reads.
struct Scores<'a> {
    /// One per vocabulary token, or (with `ids`) one per id of `ids`.
    values: &'a [f32],
    /// The sorted tokens `values` belong to, when only those were computed.
    ids: Option<&'a [u32]>,
    /// The grammar's allowed tokens at this pick, when computed before the pass.
    allowed: Option<Vec<u32>>,
}

impl Scores<'_> {
    fn get(&self, id: u32) -> f32 {
        match self.ids {
            None => self.values[id as usize],
            Some(ids) => ids.binary_search(&id).map_or(f32::NEG_INFINITY, |i| self.values[i]),
        }
    }

    /// The next token among `candidates`: the argmax, or a draw from the sampled distribution
    /// over them. A NaN or +inf logit is an error: no pick from such logits means anything (a NaN
    /// compares false, so the argmax fell on a masked token, or on none; +inf wins every pick).
    /// -inf is how [`Scores::get`] masks a token the pass did not compute.
    fn pick(&self, candidates: impl Iterator<Item = u32>, sampling: &Sampling, rng: Option<&mut StdRng>) -> Result<u32> {
        match (sampling, rng) {
            (Sampling::Sample { temperature, top_k, top_p, .. }, Some(rng)) => {
                let candidates: Vec<u32> = candidates.collect();
                let logits: Vec<f32> = candidates.iter().map(|&id| self.get(id)).collect();
                if logits.iter().any(|&v| broken(v)) {
                    return Err(non_finite_logits());
                }
                let dist = distribution(&logits, *temperature, *top_k, *top_p);
                Ok(candidates[dist[draw(&dist, rng)].0])
            }
            _ => self.argmax(candidates),
        }
    }

    /// The candidate with the highest logit, the lowest id among equals.
    fn argmax(&self, candidates: impl Iterator<Item = u32>) -> Result<u32> {
        let mut best = (f32::NEG_INFINITY, u32::MAX);
        for id in candidates {
            let v = self.get(id);
            if broken(v) {
                return Err(non_finite_logits());
            }
            if v > best.0 || (v == best.0 && id < best.1) {
                best = (v, id);
            }
        }
        Ok(best.1)
    }
}

/// The allowed tokens of each pick a row makes in this pass, as far as the picks can go: the
/// first from its state, each next one assuming the drafted token before it is kept. Where the
/// draft cannot be kept (not allowed, or the grammar then ends or forces a literal, which ends
/// the row's picks in [`Engine::settle`]), the list stops; `[None]` for an unconstrained row.
fn candidates(slot: &Slot, table: &crate::constrain::TokenTable) -> Vec<Option<Vec<u32>>> {
    let (Some(grammar), Some(state)) = (&slot.grammar, &slot.state) else {
        return vec![None];
    };
    let mut state = state.clone();
    let mut out = Vec::with_capacity(slot.draft.len() + 1);
    for i in 0..=slot.draft.len() {
        let allowed = grammar.allowed(table, &state);
        let next = slot.draft.get(i).filter(|d| allowed.contains(d));
        out.push(Some(allowed));
        let Some(&token) = next else { break };
        match table.bytes(token).and_then(|b| grammar.step_bytes(&state, b)) {
            Some(s) if !grammar.is_done(&s) && grammar.forced(&s).is_empty() => state = s,
            _ => break,
        }
    }
    out
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn extractor() -> Extractor<Flex> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-untied");
        Extractor::<Flex>::load(&dir, None, &Default::default()).unwrap()
    }

    /// A row that was fed its pending pick and `draft` in one pass (100 tokens were in the cache),
    /// then settled with logits whose constrained argmax is each of `picks` in turn.
    fn settle_after(ex: &Extractor<Flex>, picks: impl Fn(&[u32]) -> Vec<u32>) -> (Slot, Vec<u32>) {
        let vocab = ex.model().vocab_size();
        settle_with(ex, 0, |drafted| {
            picks(drafted)
                .into_iter()
                .map(|p| {
                    let mut row = vec![0.0; vocab];
                    row[p as usize] = 10.0;
                    row
                })
                .collect()
        })
    }

    /// A row (engine id `id`) inside the name's value after "王", fed its pick and a draft of 3
    /// in one pass, then settled with the logits `rows` gives for that draft.
    fn settle_with(ex: &Extractor<Flex>, id: usize, rows: impl Fn(&[u32]) -> Vec<Vec<f32>>) -> (Slot, Vec<u32>) {
        let text = "王小明 上海市浦东新区世纪大道100号 xm@example.org";
        let mut engine = ex.engine(1);
        let mut slot = engine.prepare(id, ex.request(text)).unwrap();
        let (grammar, state) = (slot.grammar.as_ref().unwrap(), slot.state.as_ref().unwrap());
        // Inside the name's value after "王", as if the model had picked it.
        let state = grammar.step_bytes(state, " \"王".as_bytes()).unwrap();
        let drafted = draft(grammar, &state, ex.tokenizer(), ex.table(), 3);
        assert_eq!(drafted.len(), 3, "the text after 王 gives a draft of 3");
        slot.state = Some(state);
        slot.prefilling = false;
        slot.pending = VecDeque::new();
        slot.draft = drafted.clone();
        slot.len = 100 + 1 + drafted.len();
        let rows = rows(&drafted);
        let scores = rows.iter().map(|r| Scores { values: r, ids: None, allowed: None }).collect();
        engine.settle(0, slot, scores);
        (engine.slots[0].take().expect("the row goes on"), drafted)
    }

    /// A decode pass's budget: every row feeds its pick; forced tokens fill what is left before
    /// any draft, so rows beyond the budget feed one token; a lone pick inside a copied value gets
    /// the rest as its draft under `auto`, and a fixed `K` drafts K whatever the budget.
    #[test]
    fn a_decode_pass_feeds_picks_then_forced_tokens_then_drafts_within_its_budget() {
        let text = "王小明 上海市浦东新区世纪大道100号 xm@example.org";
        let plan_for = |speculate: Speculate, rows: usize, forced: usize| {
            let ex = extractor().with_options(crate::ExtractOptions { speculate, ..Default::default() });
            let mut engine = ex.engine(rows);
            for r in 0..rows {
                let mut slot = engine.prepare(r, ex.request(text)).unwrap();
                // Row 0 is inside the name's value after "王" with its pick alone pending; the
                // others are before the value (nothing to draft) with a pick and `forced` forced
                // tokens pending.
                if r == 0 {
                    let (grammar, state) = (slot.grammar.as_ref().unwrap(), slot.state.as_ref().unwrap());
                    slot.state = Some(grammar.step_bytes(state, " \"王".as_bytes()).unwrap());
                }
                slot.prefilling = false;
                slot.len = 100;
                slot.pending = (0..if r == 0 { 1 } else { 1 + forced } as u32).collect();
                engine.slots[r] = Some(slot);
            }
            let (first, lens) = engine.plan().expect("rows to feed");
            let drafts: Vec<usize> = engine.slots.iter().flatten().map(|s| s.draft.len()).collect();
            (first, lens, drafts)
        };
        // 3 rows, 2 forced tokens each after rows 1 and 2's picks: 3 + 4 = 7 of 16, row 0 drafts.
        let (first, lens, drafts) = plan_for(Speculate::Auto, 3, 2);
        assert_eq!((first, &lens[1..]), (0, &[3, 3][..]));
        assert!(drafts[0] > 0 && lens[0] == 1 + drafts[0] && lens.iter().sum::<usize>() <= PASS_TOKENS, "{lens:?} {drafts:?}");
        // 6 rows with 4 forced tokens each after row 0: 6 picks, then 10 forced tokens in row order.
        let (_, lens, drafts) = plan_for(Speculate::Auto, 6, 4);
        assert_eq!(lens, [1, 5, 5, 3, 1, 1]);
        assert_eq!(drafts[0], 0, "nothing left for a draft");
        // As many rows as the budget: one token each, no draft under auto; a fixed 3 still drafts 3.
        let (_, lens, drafts) = plan_for(Speculate::Auto, PASS_TOKENS, 0);
        assert!(lens.iter().all(|&n| n == 1) && drafts[0] == 0, "{lens:?}");
        let (_, lens, drafts) = plan_for(Speculate::Fixed(3), PASS_TOKENS, 0);
        assert_eq!((lens[0], drafts[0]), (4, 3));
        assert!(lens[1..].iter().all(|&n| n == 1));
    }

    /// Sampling with a draft: each drafted token is kept with the probability the model gives it
    /// at its position, and a rejection is a draw from the other tokens. How far a row follows
    /// the text is then distributed as sampling one token at a time would have it: with the
    /// drafted tokens at 0.7, 0.5 and 0.8 (the closing quote taking the rest), a row keeps 0,
    /// 1, 2 or 3 of them with probabilities 0.3, 0.35, 0.07 and 0.28, and a rejected position
    /// picks the quote. Keeping a drafted token more often than the model would pick it fails.
    #[test]
    fn a_sampled_row_keeps_each_drafted_token_at_its_probability() {
        let sampling = Sampling::Sample { temperature: 1.0, top_k: None, top_p: None, seed: 5 };
        let ex = extractor().with_options(crate::ExtractOptions { sampling, ..Default::default() });
        let quote = ex.tokenizer().encode("\"").unwrap()[0];
        let vocab = ex.model().vocab_size();
        let probs = [0.7f32, 0.5, 0.8];
        let n = 3000;
        let mut kept = [0usize; 4];
        for trial in 0..n {
            let (slot, _) = settle_with(&ex, trial, |drafted| {
                (0..=drafted.len())
                    .map(|i| {
                        let mut row = vec![f32::NEG_INFINITY; vocab];
                        match probs.get(i) {
                            Some(&p) => {
                                row[drafted[i] as usize] = p.ln();
                                row[quote as usize] = (1.0 - p).ln();
                            }
                            None => row[quote as usize] = 0.0,
                        }
                        row
                    })
                    .collect()
            });
            assert_eq!(slot.pending.front(), Some(&quote), "after the kept tokens the row picks the quote");
            kept[slot.accepted] += 1;
        }
        let expected = [0.3, 0.7 * 0.5, 0.7 * 0.5 * 0.2, 0.7 * 0.5 * 0.8];
        for (k, (&seen, &p)) in kept.iter().zip(&expected).enumerate() {
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            let seen = seen as f64 / n as f64;
            assert!((seen - p).abs() < 5.0 * sigma, "kept {k}: {seen:.3} of rows, expected {p:.3}");
        }
    }

    /// Gathered logits are the whole head's at those ids, for a tied head (the embedding's
    /// rows) and an untied one (`lm_head`'s), so a pick over them chooses as over all.
    #[test]
    fn logits_of_some_tokens_equal_the_whole_heads_at_those_tokens() {
        for fixture in ["tiny-tied", "tiny-untied"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(fixture);
            let ex = Extractor::<Flex>::load(&dir, None, &Default::default()).unwrap();
            let model = ex.model();
            let d = model.model.embed_tokens.weight.dims()[1];
            let hidden = Tensor::<Flex, 2>::random([3, d], burn::tensor::Distribution::Normal(0.0, 1.0), &model.device());
            let ids = [0u32, 7, 8, 300, model.vocab_size() as u32 - 1];
            let all = model.logits(hidden.clone()).into_data().to_vec::<f32>().unwrap();
            let some = model.logits_of(hidden, &ids).into_data().to_vec::<f32>().unwrap();
            let vocab = model.vocab_size();
            for row in 0..3 {
                for (k, &id) in ids.iter().enumerate() {
                    let (a, b) = (all[row * vocab + id as usize], some[row * ids.len() + k]);
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{fixture} row {row} token {id}: {a} vs {b}");
                }
            }
        }
    }

    /// The picks a pass prepares candidates for: one per drafted token the row can keep and the
    /// pick after them; a drafted token the grammar refuses ends the list after its position.
    #[test]
    fn candidates_follow_the_draft_while_it_can_be_kept() {
        let ex = extractor();
        let text = "王小明 上海市浦东新区世纪大道100号 xm@example.org";
        let mut slot = ex.engine(1).prepare(0, ex.request(text)).unwrap();
        let (grammar, state) = (slot.grammar.as_ref().unwrap(), slot.state.as_ref().unwrap());
        let state = grammar.step_bytes(state, " \"王".as_bytes()).unwrap();
        let drafted = draft(grammar, &state, ex.tokenizer(), ex.table(), 3);
        slot.state = Some(state.clone());
        slot.draft = drafted.clone();
        let lists = candidates(&slot, ex.table());
        assert_eq!(lists.len(), 4, "three drafted tokens and the pick after them");
        for (i, list) in lists.iter().enumerate() {
            let list = list.as_ref().expect("a constrained row");
            let expected = grammar.allowed(ex.table(), &grammar.step_bytes(&state, &drafted[..i].iter().flat_map(|&t| ex.table().bytes(t).unwrap().to_vec()).collect::<Vec<u8>>()).unwrap());
            assert_eq!(list, &expected, "pick {i}");
        }
        let outside = ex.tokenizer().encode("z").unwrap()[0];
        slot.draft = vec![drafted[0], outside, drafted[2]];
        assert_eq!(candidates(&slot, ex.table()).len(), 2, "`z` is not in the text: no pick after it");
        slot.grammar = None;
        assert_eq!(candidates(&slot, ex.table()), vec![None]);
    }

    /// The bookkeeping of a verified draft: tokens are kept up to the first pick that differs,
    /// which is what the row feeds next; the rejected columns are given back (the row's length
    /// drops by them); a draft kept whole is followed by the pick after it and doubles under auto.
    #[test]
    fn a_draft_is_kept_up_to_the_first_different_pick_and_the_rest_given_back() {
        let ex = extractor();
        let quote = ex.tokenizer().encode("\"").unwrap()[0];
        let (slot, drafted) = settle_after(&ex, |d| vec![d[0], d[1], quote, d[2]]);
        assert_eq!((slot.accepted, slot.drafted), (2, 3));
        assert_eq!(slot.len, 100 + 1 + 2, "one rejected column given back");
        assert_eq!(slot.pending.front(), Some(&quote), "the model's own pick is fed next");
        assert!(slot.pending.len() > 1, "the closing quote forces the next key");
        assert!(slot.draft.is_empty(), "no draft outside a value");
        assert_eq!(slot.draft_len.get(), 3, "auto shrinks to what was kept plus one");
        assert_ne!(drafted[2], quote);

        let (slot, drafted) = settle_after(&ex, |d| vec![d[0], d[1], d[2], quote]);
        assert_eq!((slot.accepted, slot.drafted, slot.len), (3, 3, 104), "a draft kept whole");
        assert_eq!(slot.pending.front(), Some(&quote));
        assert_eq!(slot.draft_len.get(), 8);
        assert_eq!(slot.generated, 4 + slot.pending.len() - 1, "3 kept, the pick and what it forces");
        assert!(!drafted.contains(&quote));

        let (slot, _) = settle_after(&ex, |_| vec![quote]);
        assert_eq!((slot.accepted, slot.drafted, slot.len), (0, 3, 101), "a draft rejected at once");
    }
}
