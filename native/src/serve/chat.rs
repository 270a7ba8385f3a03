//! One chat completion on the model thread, token by token so that a stream gets each piece as
//! it is decided. With a response format, the same grammar as extraction (`tiqu_core::constrain`)
//! decides which tokens are allowed and forces keys and punctuation: the content is always the
//! schema's object (and in copy mode its values are substrings of the user's message).

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tiqu_core::constrain::{Grammar, State, TokenTable};
use tiqu_core::generate::sample_row;
use tiqu_core::model::Positions;
use tiqu_core::{Extractor, Tokenizer};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::openai::ChatPlan;

/// What the model thread reports back, in order: deltas, then `Done` or `Error`.
#[derive(Debug)]
pub enum ChatEvent {
    Delta(String),
    Done { finish_reason: &'static str, prompt_tokens: usize, completion_tokens: usize },
    Error { status: u16, message: String },
}

pub struct ChatJob {
    pub plan: ChatPlan,
    pub arrived: Instant,
    pub events: mpsc::UnboundedSender<ChatEvent>,
}

fn failed(status: u16, message: impl std::fmt::Display) -> ChatEvent {
    ChatEvent::Error { status, message: message.to_string().replace('\n', " ") }
}

/// Sends content as it becomes valid UTF-8 (a token may end inside a character).
#[derive(Default)]
struct Content {
    sent: String,
    started: bool,
    /// The client has gone: stop decoding.
    closed: bool,
}

impl Content {
    /// `text` is the whole content so far; what extends what was sent goes out.
    fn update(&mut self, job: &ChatJob, metrics: &Metrics, text: &str) {
        let Some(delta) = text.strip_prefix(self.sent.as_str()) else { return };
        if delta.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            metrics.first_token.observe(job.arrived.elapsed().as_secs_f64());
        }
        self.closed |= job.events.send(ChatEvent::Delta(delta.to_string())).is_err();
        self.sent.push_str(delta);
    }
}

/// The longest prefix of `bytes` that is whole UTF-8.
fn whole_utf8(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// The tokens of what the grammar forces next (a key, a separator), at most `room` of them: they
/// count as completion tokens, so `max_tokens` caps them too. The grammar and `bytes` advance
/// over the tokens kept.
fn force(g: &Grammar, s: &mut State, room: usize, tokenizer: &Tokenizer, table: &TokenTable, bytes: &mut Vec<u8>) -> Result<Vec<u32>, ChatEvent> {
    let forced = g.forced(s);
    if forced.is_empty() || room == 0 {
        return Ok(Vec::new());
    }
    let mut tokens = tokenizer.encode(whole_utf8(&forced)).map_err(|e| failed(500, e))?;
    tokens.truncate(room);
    // The literal is the schema's keys: a key holding an added token (`<think>`) or text the
    // tokenizer normalises (not NFC) cannot be written byte for byte, which is the client's to fix.
    let unwritable = || failed(422, format!("response_format: `{}` cannot be written as given (a key holding a special token, or not in Unicode NFC)", whole_utf8(&forced).trim()));
    let mut kept = Vec::new();
    for &t in &tokens {
        kept.extend_from_slice(table.bytes(t).ok_or_else(unwritable)?);
    }
    *s = g.step_bytes(s, &kept).ok_or_else(unwritable)?;
    bytes.extend_from_slice(&kept);
    Ok(tokens)
}

/// One chat completion being decoded, a forward pass per [`ChatRun::step`]: the model thread
/// interleaves its passes with the extraction engine's, so that a long answer does not hold
/// every `/v1/extract` request until it ends.
pub struct ChatRun<'a, B: Backend> {
    extractor: &'a Extractor<B>,
    table: &'a TokenTable,
    job: ChatJob,
    place: Arc<super::worker::Place>,
    grammar: Option<Grammar>,
    state: Option<State>,
    /// Constrained content is the bytes the grammar consumed; free content is the decoded tokens.
    bytes: Vec<u8>,
    free: Vec<u32>,
    generated: usize,
    budget: usize,
    prompt_tokens: usize,
    content: Content,
    cache: tiqu_core::KvCache<B>,
    feed: Vec<u32>,
    pos: Positions,
    next_pos: usize,
    rng: StdRng,
}

/// Where a chat stands after a step.
pub enum Step {
    Going,
    /// Answered, stopped for a departed client, or failed (the error was sent).
    Over,
}

impl<'a, B: Backend> ChatRun<'a, B> {
    /// The prompt encoded and the grammar's opening forced; nothing decoded yet. An error is the
    /// request's answer.
    pub fn start(extractor: &'a Extractor<B>, table: &'a TokenTable, job: ChatJob, place: Arc<super::worker::Place>) -> Result<Self, ChatEvent> {
        let model = extractor.model();
        let tokenizer = extractor.tokenizer();
        let limit = model.max_position_embeddings;
        // Only a tokenizer without the chat markers fails here: the server's fault, not the request's.
        let mut feed = job.plan.prompt.encode(tokenizer).map_err(|e| failed(500, e))?;
        let prompt_tokens = feed.len();
        if prompt_tokens >= limit {
            return Err(failed(400, format!("the prompt has {prompt_tokens} tokens; the model's context is {limit} (messages too long)")));
        }
        let budget = job.plan.max_tokens.unwrap_or(usize::MAX).min(limit - prompt_tokens);
        let grammar = job.plan.format.as_ref().map(|(schema, mode, text)| Grammar::new(schema, *mode, text)).transpose().map_err(|e| failed(422, e))?;
        let mut state = grammar.as_ref().map(Grammar::start);
        let mut bytes = Vec::new();
        let mut generated = 0usize;
        if let (Some(g), Some(s)) = (&grammar, &mut state) {
            let tokens = force(g, s, budget, tokenizer, table, &mut bytes)?;
            generated += tokens.len();
            feed.extend(tokens);
        }
        // The forced opening goes out with the first picked token, so that the time to the first
        // content includes the prompt's forward pass.
        let capacity = (feed.len() + budget.min(4096) + 16).min(limit);
        let cache = model.new_cache(1, capacity).map_err(|e| failed(500, e))?;
        let pos = Positions::left_padded(&[feed.len()], feed.len());
        let next_pos = feed.len();
        let rng = StdRng::seed_from_u64(job.plan.seed);
        Ok(Self { extractor, table, job, place, grammar, state, bytes, free: Vec::new(), generated, budget, prompt_tokens, content: Content::default(), cache, feed, pos, next_pos, rng })
    }

    /// One forward pass and the token(s) it decides; the answer's end, or an error, is sent.
    pub fn step(&mut self, metrics: &Metrics) -> Step {
        let outcome = match self.pass(metrics) {
            Ok(None) => return Step::Going,
            Ok(Some(reason)) => reason,
            Err(e) => {
                metrics.tokens.inc_by(self.generated as u64);
                let _ = self.job.events.send(e);
                return Step::Over;
            }
        };
        metrics.tokens.inc_by(self.generated as u64);
        let Some(finish_reason) = outcome else {
            self.place.count_cancel();
            return Step::Over;
        };
        // What was held back for being incomplete goes out as it is.
        let text = if self.grammar.is_some() {
            String::from_utf8_lossy(&self.bytes).into_owned()
        } else {
            match self.extractor.tokenizer().decode(&self.free, true) {
                Ok(t) => t,
                Err(e) => {
                    let _ = self.job.events.send(failed(500, e));
                    return Step::Over;
                }
            }
        };
        self.content.update(&self.job, metrics, &text);
        let done = ChatEvent::Done { finish_reason, prompt_tokens: self.prompt_tokens, completion_tokens: self.generated };
        let _ = self.job.events.send(done);
        Step::Over
    }

    /// Ends the chat with a server error (its pass panicked).
    pub fn fail(&mut self, message: &str) {
        let _ = self.job.events.send(failed(500, message));
    }

    /// `Ok(None)`: going on; `Ok(Some(None))`: the client left; `Ok(Some(Some(reason)))`: done.
    fn pass(&mut self, metrics: &Metrics) -> Result<Option<Option<&'static str>>, ChatEvent> {
        let model = self.extractor.model();
        let tokenizer = self.extractor.tokenizer();
        let limit = model.max_position_embeddings;
        if self.place.is_cancelled() || self.content.closed {
            return Ok(Some(None));
        }
        if self.generated >= self.budget {
            return Ok(Some(Some("length")));
        }
        model.grow_cache(&mut self.cache, 1, self.pos.past + self.pos.seq).map_err(|e| failed(503, e))?;
        let hidden = model.hidden(&self.feed, &self.pos, Some(&mut self.cache)).map_err(|e| failed(500, e))?;
        let [_, t, d] = hidden.dims();
        let logits: Vec<f32> = model
            .logits(hidden.narrow(1, t - 1, 1).reshape([1, d]))
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| failed(500, format!("reading logits: {e:?}")))?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(failed(500, tiqu_core::generate::non_finite_logits()));
        }
        let mut chunk = Vec::new();
        let mut done = false;
        match (&self.grammar, &mut self.state) {
            (Some(g), Some(s)) => {
                let allowed = g.allowed(self.table, s);
                if allowed.is_empty() {
                    return Ok(Some(Some("length")));
                }
                let best = choose(&logits, Some(&allowed), &self.job, &mut self.rng);
                let piece = self.table.bytes(best).ok_or_else(|| failed(500, "an allowed token has no bytes"))?;
                *s = g.step_bytes(s, piece).ok_or_else(|| failed(500, "the grammar rejected an allowed token"))?;
                self.bytes.extend_from_slice(piece);
                self.generated += 1;
                chunk.push(best);
                if g.is_done(s) {
                    done = true;
                } else {
                    let tokens = force(g, s, self.budget - self.generated, tokenizer, self.table, &mut self.bytes)?;
                    self.generated += tokens.len();
                    chunk.extend(tokens);
                }
                self.content.update(&self.job, metrics, whole_utf8(&self.bytes));
            }
            _ => {
                let best = choose(&logits, None, &self.job, &mut self.rng);
                if self.extractor.eos_token_ids().contains(&best) {
                    return Ok(Some(Some("stop")));
                }
                self.free.push(best);
                self.generated += 1;
                chunk.push(best);
                // A token that ends inside a character decodes to U+FFFD until the rest comes.
                let text = tokenizer.decode(&self.free, true).map_err(|e| failed(500, e))?;
                self.content.update(&self.job, metrics, text.trim_end_matches('\u{FFFD}'));
            }
        }
        if done {
            return Ok(Some(Some("stop")));
        }
        if self.next_pos + chunk.len() > limit {
            return Ok(Some(Some("length")));
        }
        self.pos = self.pos.next(&[chunk.len()], &[self.next_pos], chunk.len());
        self.next_pos += chunk.len();
        self.feed = chunk;
        Ok(None)
    }
}

/// The next token: the most likely (temperature 0) or a draw, among `allowed` when given.
fn choose(logits: &[f32], allowed: Option<&[u32]>, job: &ChatJob, rng: &mut StdRng) -> u32 {
    let candidates: Vec<u32> = match allowed {
        Some(a) => a.to_vec(),
        None => (0..logits.len() as u32).collect(),
    };
    if job.plan.temperature <= 0.0 {
        let mut best = (f32::NEG_INFINITY, candidates[0]);
        for &id in &candidates {
            let v = logits[id as usize];
            if v > best.0 || (v == best.0 && id < best.1) {
                best = (v, id);
            }
        }
        return best.1;
    }
    let sub: Vec<f32> = candidates.iter().map(|&id| logits[id as usize]).collect();
    candidates[sample_row(&sub, job.plan.temperature, None, job.plan.top_p, rng) as usize]
}
