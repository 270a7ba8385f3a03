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
        nll(model, picked, &self.targets, (LOGIT_CHUNK_ELEMENTS / model.vocab_size()).max(1))
    }

    /// The summed NLL of the target rows from hidden states `[batch, seq, hidden]`, with its
    /// gradient through the fused output layer ([`crate::head_loss`]): what training uses.
    pub fn head_loss<B: AutodiffBackend>(&self, model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 3>) -> Result<HeadLoss<B>> {
        let [b, t, d] = hidden.dims();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(self.rows.clone(), [self.rows.len()]), &model.device());
        let picked = hidden.reshape([b * t, d]).select(0, idx);
        head_loss(model, picked, &self.targets, (LOGIT_CHUNK_ELEMENTS / model.vocab_size()).max(1))
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
