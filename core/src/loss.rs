//! Mean negative log-likelihood of response tokens, as transformers computes the loss with
//! labels -100 on the prompt.

use burn::prelude::*;

use crate::model::{Positions, Qwen3ForCausalLM};
use crate::sft::Example;
use crate::{Error, Result};

/// Rows of full-vocabulary logits alive at once (each row is `vocab × 4` bytes).
const LOGIT_CHUNK: usize = 256;

/// Sum of response-token NLLs and the count of response tokens, for each example.
/// Only the positions that predict a response token go through the output layer.
pub fn nll_sums<B: Backend>(model: &Qwen3ForCausalLM<B>, batch: &[Example]) -> Result<Vec<(f64, usize)>> {
    let seq = batch.iter().map(Example::len).max().unwrap_or(0);
    if seq == 0 {
        return Ok(vec![(0.0, 0); batch.len()]);
    }
    if seq > model.max_position_embeddings {
        return Err(Error::Limit(format!(
            "a record of {seq} tokens exceeds the model's max_position_embeddings ({})",
            model.max_position_embeddings
        )));
    }
    let mut ids = Vec::with_capacity(batch.len() * seq);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, ex) in batch.iter().enumerate() {
        let row: Vec<u32> = ex.prompt.iter().chain(&ex.response).copied().collect();
        // Position t predicts token t+1: every response token but one predicted by nothing.
        for t in ex.prompt.len().max(1) - 1..row.len() - 1 {
            if t + 1 >= ex.prompt.len() {
                rows.push((b * seq + t) as i64);
                targets.push(row[t + 1]);
            }
        }
        ids.extend_from_slice(&row);
        ids.resize((b + 1) * seq, 0);
    }
    let lengths: Vec<usize> = batch.iter().map(Example::len).collect();
    let pos = Positions::right_padded(&lengths, seq);
    let hidden = model.hidden(&ids, &pos, None)?;
    let d = hidden.dims()[2];
    let device = model.device();
    let mut out = vec![(0.0f64, 0usize); batch.len()];
    if rows.is_empty() {
        return Ok(out);
    }
    let idx = Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(rows.clone(), [rows.len()]), &device);
    let picked = hidden.reshape([batch.len() * seq, d]).select(0, idx);
    let nll: Vec<f32> = model
        .nll(picked, &targets, LOGIT_CHUNK)
        .into_data()
        .to_vec()
        .map_err(|e| Error::Other(format!("reading losses: {e:?}")))?;
    for (r, v) in rows.iter().zip(nll) {
        let b = *r as usize / seq;
        out[b].0 += v as f64;
        out[b].1 += 1;
    }
    Ok(out)
}
