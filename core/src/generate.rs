//! Batched generation with a preallocated KV cache and left padding: greedy or sampled
//! (temperature, top-k, top-p), stopping on the eos ids or after `max_new_tokens`.

use burn::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::model::{Positions, Qwen3ForCausalLM};
use crate::read::{read, ready, ReadMode};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    #[default]
    Greedy,
    /// transformers' order: temperature, then top-k, then top-p.
    Sample { temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64 },
}

impl Sampling {
    /// A positive, finite temperature and a top-p in (0, 1].
    pub fn check(&self) -> Result<()> {
        if let Sampling::Sample { temperature, top_p, top_k, .. } = self {
            if *top_k == Some(0) {
                return Err(Error::Other("top_k must be at least 1".into()));
            }
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::Other(format!("temperature must be a finite number above 0, got {temperature:?}")));
            }
            if top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
                return Err(Error::Other("top_p must be in (0, 1]".into()));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Any of these ends a row; the stop token is not part of the output.
    pub eos_token_ids: Vec<u32>,
    /// Written into padding slots; never attended to.
    pub pad_token_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Generated ids, stop token excluded.
    pub tokens: Vec<u32>,
    pub stopped_on_eos: bool,
}

/// Generates a continuation for each prompt, all rows in one batch.
pub fn generate<B: Backend>(
    model: &Qwen3ForCausalLM<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generated>> {
    ready(generate_with(model, prompts, opts, ReadMode::Blocking))
}

/// [`generate`] for backends that cannot block (WebGPU in a browser): the same loop, awaiting
/// each step's read-back.
pub async fn generate_async<B: Backend>(
    model: &Qwen3ForCausalLM<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generated>> {
    generate_with(model, prompts, opts, ReadMode::Async).await
}

async fn generate_with<B: Backend>(
    model: &Qwen3ForCausalLM<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mode: ReadMode,
) -> Result<Vec<Generated>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Other(format!("prompt {i} is empty")));
    }
    opts.sampling.check()?;
    let batch = prompts.len();
    let seq = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let limit = model.max_position_embeddings;
    if seq > limit {
        // Which one, among several (`generate --prompt a --prompt b`), counted from 1.
        let which = match prompts.iter().position(|p| p.len() == seq) {
            Some(i) if batch > 1 => format!("prompt {}", i + 1),
            _ => "the prompt".to_string(),
        };
        return Err(Error::Limit(format!("{which} has {seq} tokens, more than the model's max_position_embeddings ({limit})")));
    }
    // Generation stops at the context limit rather than failing.
    let capacity = seq.saturating_add(opts.max_new_tokens).min(limit);
    let mut cache = model.new_cache(batch, capacity)?;
    let mut rng = match opts.sampling {
        Sampling::Sample { seed, .. } => StdRng::seed_from_u64(seed),
        Sampling::Greedy => StdRng::seed_from_u64(0),
    };

    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut ids = Vec::with_capacity(batch * seq);
    for p in prompts {
        ids.extend(std::iter::repeat_n(opts.pad_token_id, seq - p.len()));
        ids.extend_from_slice(p);
    }
    let mut pos = Positions::left_padded(&lengths, seq);
    let mut next_pos: Vec<usize> = lengths.clone();
    let mut out: Vec<Generated> = vec![Generated { tokens: Vec::new(), stopped_on_eos: false }; batch];
    let mut done = vec![false; batch];
    let mut step_ids = ids;
    for _ in 0..opts.max_new_tokens {
        if cache.len() + pos.seq > capacity {
            break;
        }
        let hidden = model.hidden(&step_ids, &pos, Some(&mut cache))?;
        let [b, t, d] = hidden.dims();
        let last = hidden.narrow(1, t - 1, 1).reshape([b, d]);
        let screened = match opts.sampling {
            Sampling::Greedy => model.screened_argmax(&last),
            Sampling::Sample { .. } => None,
        };
        let next = match screened {
            Some(token) => vec![token],
            None => pick(model.logits(last), &opts.sampling, &mut rng, mode).await?,
        };
        for (row, &tok) in next.iter().enumerate() {
            if done[row] {
                continue;
            }
            if opts.eos_token_ids.contains(&tok) {
                done[row] = true;
                out[row].stopped_on_eos = true;
            } else {
                out[row].tokens.push(tok);
                if out[row].tokens.len() >= opts.max_new_tokens {
                    done[row] = true;
                }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // Finished rows keep stepping with a pad token; their outputs are ignored.
        step_ids = next.iter().zip(&done).map(|(&tok, &d)| if d { opts.pad_token_id } else { tok }).collect();
        pos = pos.next(&vec![1; batch], &next_pos, 1);
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    Ok(out)
}

/// Chooses the next token of each row from logits `[batch, vocab]`.
async fn pick<B: Backend>(logits: Tensor<B, 2>, sampling: &Sampling, rng: &mut StdRng, mode: ReadMode) -> Result<Vec<u32>> {
    let read_err = |e| Error::Other(format!("reading logits: {e:?}"));
    match sampling {
        Sampling::Greedy => {
            // A NaN compares false, so the argmax of NaN logits is some token, not an error; an
            // infinite logit wins every argmax. A finite model computes neither.
            let broken = read(logits.clone().is_finite().bool_not().any(), mode).await?.convert::<bool>().to_vec::<bool>().map_err(read_err)?;
            if broken.first() == Some(&true) {
                return Err(non_finite_logits());
            }
            let ids = read(logits.argmax(1), mode).await?.convert::<i64>().to_vec::<i64>().map_err(read_err)?;
            Ok(ids.into_iter().map(|i| i as u32).collect())
        }
        Sampling::Sample { temperature, top_k, top_p, .. } => {
            let [b, v] = logits.dims();
            let values: Vec<f32> = read(logits, mode).await?.convert::<f32>().to_vec().map_err(read_err)?;
            if values.iter().any(|x| !x.is_finite()) {
                return Err(non_finite_logits());
            }
            Ok((0..b).map(|r| sample_row(&values[r * v..(r + 1) * v], *temperature, *top_k, *top_p, rng)).collect())
        }
    }
}

/// Picking from NaN or infinite logits means nothing (and the greedy pick is some token all the
/// same): a model whose weights are finite computes neither.
pub fn non_finite_logits() -> Error {
    Error::Tensor("the model's logits are NaN or infinite: its weights hold NaN or infinite values (a damaged checkpoint?)".into())
}

/// One draw from `softmax(logits / temperature)` restricted to the top-k, then to the smallest
/// set whose probability reaches top-p (always keeping the most likely token).
pub fn sample_row(logits: &[f32], temperature: f32, top_k: Option<usize>, top_p: Option<f32>, rng: &mut StdRng) -> u32 {
    let dist = distribution(logits, temperature, top_k, top_p);
    dist[draw(&dist, rng)].0 as u32
}

/// The sampled distribution over `logits`' indices: softmax at `temperature`, cut to the top-k,
/// then to the smallest set whose probability reaches top-p (the most likely index always
/// stays), renormalised. Pairs of (index, probability), most likely first.
pub fn distribution(logits: &[f32], temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = top_k.filter(|&k| k > 0) {
        order.truncate(k);
    }
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&q| {
            acc += q;
            acc >= p as f64
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    order.into_iter().zip(probs).collect()
}

/// A position of `dist` drawn from it (inverse CDF, most likely first).
pub fn draw(dist: &[(usize, f64)], rng: &mut StdRng) -> usize {
    let mut u: f64 = rng.random();
    for (k, &(_, q)) in dist.iter().enumerate() {
        if u < q {
            return k;
        }
        u -= q;
    }
    // Rounding left u past the end.
    dist.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draw is the inverse-CDF draw over the tokens from the most likely down: sample_row
    /// gives the tokens it gave before `distribution` and `draw` were split out of it.
    #[test]
    fn sample_row_draws_in_probability_order() {
        let logits = [0.0f32, 3.0, 1.0];
        let dist = distribution(&logits, 1.0, None, None);
        assert_eq!(dist.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2, 0]);
        let mut a = StdRng::seed_from_u64(3);
        let mut b = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let u: f64 = b.random();
            let expected = if u < dist[0].1 { 1 } else if u < dist[0].1 + dist[1].1 { 2 } else { 0 };
            assert_eq!(sample_row(&logits, 1.0, None, None, &mut a), expected);
        }
    }
}
