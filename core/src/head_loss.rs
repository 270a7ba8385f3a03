//! The output layer and the training loss, fused (Liger's fused linear cross-entropy is the
//! anchor): chunk by chunk of label rows, the logits, their softmax, the NLL and the loss's
//! gradients with respect to the hidden rows (and to the output weight when it is trained) are
//! computed at once, outside the autodiff graph. Through the graph, the `[rows, vocab]` logits
//! of every chunk, their log-softmax and its backward's temporaries stayed alive from forward to
//! backward (hundreds of MB on the 151,936-token vocabulary), and each took several passes of
//! burn's generic ops; here each chunk's logits are freed before the next one's exist.
//!
//! The graph gets a surrogate whose gradient is the loss's: `Σ h ⊙ G` (plus `Σ W ⊙ G_W` for a
//! trained output weight), with `G = ∂Σnll/∂h` and `G_W = ∂Σnll/∂W` held constant. Its value
//! is not the loss; the loss is returned beside it.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, IndexingUpdateOp, TensorData};

use crate::dtype::{float_dtype, to_dtype};
use crate::model::Qwen3ForCausalLM;
use crate::{Error, Result};

pub struct HeadLoss<B: AutodiffBackend> {
    /// Its gradient is the gradient of the summed NLL; its value is not the loss.
    pub surrogate: Tensor<B, 1>,
    /// The NLL summed over the rows.
    pub nll: f64,
}

/// The summed NLL of `targets` given hidden rows `[rows, hidden]` (after the final norm), at
/// most `chunk` rows of logits at a time, and its surrogate for backward.
pub fn head_loss<B: AutodiffBackend>(model: &Qwen3ForCausalLM<B>, hidden: Tensor<B, 2>, targets: &[u32], chunk: usize) -> Result<HeadLoss<B>> {
    let rows = hidden.dims()[0];
    if rows != targets.len() {
        return Err(Error::Other(format!("{rows} hidden rows for {} targets", targets.len())));
    }
    let device = model.device();
    let blocks = model.output_blocks();
    let weights: Vec<Tensor<B::InnerBackend, 2>> = blocks.iter().map(|w| w.clone().inner()).collect();
    let trained: Vec<bool> = blocks.iter().map(Tensor::is_require_grad).collect();
    let h_all = hidden.clone().inner();
    // The one-hot part of ∂nll/∂logits, `W[target]` for the hidden rows (and the rows of the
    // output weight's gradient it subtracts from), taken out of the `[rows, vocab]` passes.
    let target_rows = model.output_rows(targets).inner();
    let mut weight_grads: Vec<Option<Tensor<B::InnerBackend, 2>>> = vec![None; blocks.len()];
    let (mut hidden_grads, mut losses, mut nll) = (Vec::new(), Vec::new(), 0f64);
    let mut start = 0;
    while start < rows {
        let n = chunk.max(1).min(rows - start);
        let h = h_all.clone().narrow(0, start, n);
        let minus_targets = to_dtype(target_rows.clone().narrow(0, start, n), FloatDType::F32).neg();
        if let Some((chunk_nll, g, grads)) = crate::flex::head_chunk(&h, &weights, &trained, &targets[start..start + n]) {
            nll += chunk_nll;
            hidden_grads.push(minus_targets.add(g));
            for (acc, gw) in weight_grads.iter_mut().zip(grads) {
                if let Some(gw) = gw {
                    *acc = Some(match acc.take() {
                        Some(prev) => prev.add(gw),
                        None => gw,
                    });
                }
            }
            start += n;
            continue;
        }
        let logits = Tensor::cat(weights.iter().map(|w| to_dtype(crate::flex::linear(h.clone(), w.clone()), FloatDType::F32)).collect(), 1);
        let idx: Vec<i64> = targets[start..start + n].iter().map(|&t| t as i64).collect();
        let idx = Tensor::<B::InnerBackend, 2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
        let max = logits.clone().max_dim(1);
        let target = logits.clone().gather(1, idx);
        let exp = logits.sub(max.clone()).exp();
        let sum = exp.clone().sum_dim(1);
        losses.push(sum.clone().log().add(max).sub(target).sum());
        // The softmax is `exp / sum`: the division is applied to the `[n, hidden]` products
        // instead of the `[n, vocab]` exponentials.
        let inv = sum.recip();
        let mut g = minus_targets;
        let mut offset = 0;
        for ((w, grad), &train) in weights.iter().zip(&mut weight_grads).zip(&trained) {
            let v = w.dims()[0];
            let part = if weights.len() == 1 { exp.clone() } else { exp.clone().narrow(1, offset, v) };
            let (part, wdtype) = (to_dtype(part, float_dtype(w)), float_dtype(w));
            // `exp · W` is in gemm's own layout (W is `[vocab, hidden]`).
            g = g.add(to_dtype(part.clone().matmul(w.clone()), FloatDType::F32).mul(inv.clone()));
            if train {
                let scaled = to_dtype(to_dtype(h.clone(), FloatDType::F32).mul(inv.clone()), wdtype);
                let mut gw = part.transpose().matmul(scaled);
                let (at, local): (Vec<i64>, Vec<i64>) = targets[start..start + n]
                    .iter()
                    .enumerate()
                    .filter(|(_, &t)| (offset..offset + v).contains(&(t as usize)))
                    .map(|(i, &t)| (i as i64, (t as usize - offset) as i64))
                    .unzip();
                if !at.is_empty() {
                    let int = |v: Vec<i64>| Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(v.clone(), [v.len()]), &device);
                    gw = gw.select_assign(0, int(local), h.clone().select(0, int(at)).neg(), IndexingUpdateOp::Add);
                }
                *grad = Some(match grad.take() {
                    Some(prev) => prev.add(gw),
                    None => gw,
                });
            }
            offset += v;
        }
        hidden_grads.push(g);
        start += n;
    }
    if !losses.is_empty() {
        let read = Tensor::cat(losses, 0).into_data().convert::<f64>().to_vec::<f64>();
        nll += read.map_err(|e| Error::Other(format!("reading losses: {e:?}")))?.iter().sum::<f64>();
    }
    let dtype = float_dtype(&hidden);
    let mut surrogate = match hidden_grads.is_empty() {
        true => hidden.sum().mul_scalar(0.0),
        false => hidden.mul(Tensor::from_inner(to_dtype(Tensor::cat(hidden_grads, 0), dtype))).sum(),
    };
    for (w, gw) in blocks.into_iter().zip(weight_grads) {
        if let Some(gw) = gw {
            let dtype = float_dtype(&w);
            surrogate = surrogate.add(w.mul(Tensor::from_inner(to_dtype(gw, dtype))).sum());
        }
    }
    Ok(HeadLoss { surrogate, nll })
}
