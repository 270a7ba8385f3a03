//! Mean negative log-likelihood of response tokens, as transformers computes the loss with
//! labels -100 on the prompt.

use burn::prelude::*;
use burn::tensor::TensorData;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;

use crate::head_loss::{head_loss, HeadLoss};

use crate::model::Qwen3ForCausalLM;
use crate::positions::Positions;
use crate::sft::Example;
use crate::{Error, Result};

/// Elements of full-vocabulary logits alive at once: 64 MiB of f32, under the 128 MiB that
/// many GPU adapters (lavapipe, WebGPU) allow in one buffer.
const LOGIT_CHUNK_ELEMENTS: usize = 1 << 24;

/// Rows per chunk of logits for `rows` target rows: as few chunks as [`LOGIT_CHUNK_ELEMENTS`]
/// allows, of equal size, rounded up to 16 rows where that stays under the limit. 128 rows of
/// the 151,936-token vocabulary went as 110 and 18, and the 18-row product read the whole
/// output layer for a seventh of the work; as 64 and 64 each product fills gemm's blocks.
fn chunk_rows(rows: usize, vocab: usize) -> usize {
    let most = (LOGIT_CHUNK_ELEMENTS / vocab.max(1)).max(1);
    let even = rows.div_ceil(rows.div_ceil(most).max(1)).max(1);
    match even.next_multiple_of(16) {
        up if up <= most => up.min(rows.max(1)),
        _ => even,
    }
}

/// A batch laid out for one forward pass: right-padded rows, and the flat positions whose hidden
/// state predicts a response token (only those go through the output layer).
pub struct LabelledBatch {
    pub ids: Vec<u32>,
    pub pos: Positions,
    /// Index into the flattened `[batch * seq]` rows.
    pub rows: Vec<i64>,
    /// The token each of `rows` must predict.
    pub targets: Vec<u32>,
    /// Which example each of `rows` belongs to.
    pub owner: Vec<usize>,
}

impl LabelledBatch {
    pub fn new(batch: &[Example], max_positions: usize) -> Result<Self> {
        let seq = batch.iter().map(Example::len).max().unwrap_or(0).max(1);
        if seq > max_positions {
            return Err(Error::Limit(format!(
                "a record of {seq} tokens exceeds the model's max_position_embeddings ({max_positions})"
            )));
        }
        let mut ids = Vec::with_capacity(batch.len() * seq);
        let (mut rows, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        for (b, ex) in batch.iter().enumerate() {
            let start = ids.len();
            ids.extend_from_slice(&ex.prompt);
            ids.extend_from_slice(&ex.response);
            // Position t predicts token t+1; response token 0 of an empty prompt has no predictor.
            for t in ex.prompt.len().max(1) - 1..ex.len().saturating_sub(1) {
                rows.push((b * seq + t) as i64);
                targets.push(ids[start + t + 1]);
                owner.push(b);
            }
            ids.resize((b + 1) * seq, 0);
        }
        let lengths: Vec<usize> = batch.iter().map(Example::len).collect();
        Ok(Self { ids, pos: Positions::right_padded(&lengths, seq), rows, targets, owner })
    }

    /// NLL of every target row, `[rows]`, from hidden states `[batch, seq, hidden]`.
    pub fn nll<B: Backend>(&self, model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 3>) -> Tensor<B, 1> {
        let [b, t, d] = hidden.dims();
        let device = model.device();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(self.rows.clone(), [self.rows.len()]), &device);
        let picked = hidden.reshape([b * t, d]).select(0, idx);
        nll(model, picked, &self.targets, chunk_rows(self.targets.len(), model.vocab_size()))
    }

    /// The summed NLL of the target rows from hidden states `[batch, seq, hidden]`, with its
    /// gradient through the fused output layer ([`crate::head_loss`]): what training uses.
    pub fn head_loss<B: AutodiffBackend>(&self, model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 3>) -> Result<HeadLoss<B>> {
        let [b, t, d] = hidden.dims();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(self.rows.clone(), [self.rows.len()]), &model.device());
        let picked = hidden.reshape([b * t, d]).select(0, idx);
        head_loss(model, picked, &self.targets, chunk_rows(self.targets.len(), model.vocab_size()))
    }
}

/// Negative log-likelihood of `targets` given hidden rows `[rows, hidden]`, computed in chunks
/// so that at most `chunk` rows of full-vocabulary logits exist at once.
pub fn nll<B: Backend>(model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 2>, targets: &[u32], chunk: usize) -> Tensor<B, 1> {
    let rows = hidden.dims()[0];
    let device = model.device();
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = chunk.max(1).min(rows - start);
        let logp = log_softmax(model.logits(hidden.clone().narrow(0, start, n)), 1);
        let idx: Vec<i64> = targets[start..start + n].iter().map(|&t| t as i64).collect();
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
        parts.push(logp.gather(1, idx).reshape([n]).neg());
        start += n;
    }
    Tensor::cat(parts, 0)
}

/// Sum of response-token NLLs and the count of response tokens, for each example.
pub fn nll_sums<B: Backend>(model: &Qwen3ForCausalLM<B>, batch: &[Example]) -> Result<Vec<(f64, usize)>> {
    let mut out = vec![(0.0f64, 0usize); batch.len()];
    let lb = LabelledBatch::new(batch, model.max_position_embeddings)?;
    if lb.rows.is_empty() {
        return Ok(out);
    }
    let hidden = model.hidden(&lb.ids, &lb.pos, None)?;
    let nll: Vec<f32> = lb
        .nll(model, hidden)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| Error::Other(format!("reading losses: {e:?}")))?;
    for (&b, v) in lb.owner.iter().zip(nll) {
        out[b].0 += v as f64;
        out[b].1 += 1;
    }
    Ok(out)
}

/// Total response-token NLL and response-token count over `examples`, `batch` records per pass.
pub fn total_nll<B: Backend>(model: &Qwen3ForCausalLM<B>, examples: &[Example], batch: usize) -> Result<(f64, usize)> {
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        for (sum, count) in nll_sums(model, chunk)? {
            nll += sum;
            tokens += count;
        }
    }
    Ok((nll, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_even_within_the_limit() {
        // 110 rows fit under the limit at Qwen's vocabulary: 128 rows go as two of 64.
        assert_eq!(chunk_rows(128, 151_936), 64);
        assert_eq!(chunk_rows(110, 151_936), 110);
        // 111 rows: two chunks of 56, rounded up to 64 (under 110).
        assert_eq!(chunk_rows(111, 151_936), 64);
        // 300 rows: three chunks of 100; 112 would pass the limit, so 100 stays.
        assert_eq!(chunk_rows(300, 151_936), 100);
        // A small vocabulary takes every row at once; no rows still gives a positive size.
        assert_eq!(chunk_rows(37, 1000), 37);
        assert_eq!(chunk_rows(0, 151_936), 1);
        // A vocabulary larger than the limit: one row at a time.
        assert_eq!(chunk_rows(5, 1 << 25), 1);
    }
}
