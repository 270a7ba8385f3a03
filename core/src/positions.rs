//! Where each token of a forward pass sits: rotary positions and which keys are real, built on
//! the host ([`Positions`]), and the device tensors derived from them that every layer shares
//! (rotary tables and the attention mask).

use burn::prelude::*;
use burn::tensor::{FloatDType, TensorData};

use crate::dtype::to_dtype;

/// Large enough to zero a softmax weight, small enough that a fully masked row (a padding query)
/// stays finite instead of turning into NaN.
const MASKED: f32 = -1.0e9;

/// What one forward pass needs besides token ids, built on the host.
#[derive(Debug, Clone)]
pub struct Positions {
    pub batch: usize,
    pub seq: usize,
    /// Tokens already in the KV cache.
    pub past: usize,
    /// Rotary position of each new token, `[batch * seq]`.
    pub positions: Vec<usize>,
    /// Which keys (cached and new) are real tokens, `[batch * (past + seq)]`.
    pub key_valid: Vec<bool>,
}

impl Positions {
    /// Right-padded rows starting at position 0 (training, loss): `lengths[i]` real tokens each.
    pub fn right_padded(lengths: &[usize], seq: usize) -> Self {
        let mut positions = Vec::with_capacity(lengths.len() * seq);
        let mut key_valid = Vec::with_capacity(lengths.len() * seq);
        for &len in lengths {
            positions.extend(0..seq);
            key_valid.extend((0..seq).map(|j| j < len));
        }
        Self { batch: lengths.len(), seq, past: 0, positions, key_valid }
    }

    /// Left-padded rows (generation prefill): `lengths[i]` real tokens at the end of each row.
    pub fn left_padded(lengths: &[usize], seq: usize) -> Self {
        let mut positions = Vec::with_capacity(lengths.len() * seq);
        let mut key_valid = Vec::with_capacity(lengths.len() * seq);
        for &len in lengths {
            let pad = seq - len;
            positions.extend((0..seq).map(|j| j.saturating_sub(pad)));
            key_valid.extend((0..seq).map(|j| j >= pad));
        }
        Self { batch: lengths.len(), seq, past: 0, positions, key_valid }
    }

    /// The step after this one: row `r` feeds `lens[r]` tokens at rotary positions from
    /// `starts[r]`, left-aligned in `seq` columns; the padding columns are never attended to.
    pub fn next(&self, lens: &[usize], starts: &[usize], seq: usize) -> Self {
        let past = self.past + self.seq;
        let mut positions = Vec::with_capacity(self.batch * seq);
        let mut key_valid = Vec::with_capacity(self.batch * (past + seq));
        for r in 0..self.batch {
            positions.extend((0..seq).map(|j| starts[r] + j.min(lens[r].saturating_sub(1))));
            key_valid.extend_from_slice(&self.key_valid[r * past..(r + 1) * past]);
            key_valid.extend((0..seq).map(|j| j < lens[r]));
        }
        Self { batch: self.batch, seq, past, positions, key_valid }
    }
}

/// A forward pass over KV-cache rows `first..first + lens.len()` in which every row keeps its own
/// length (continuous batching): row `r` feeds `lens[r]` tokens, left-aligned in `seq` columns,
/// written at cache columns `starts[r]..` which are also their rotary positions. A row's cache
/// starts at column 0 with its first prompt token, so no row carries another's padding, and a
/// row that feeds nothing (free, or waiting) writes nothing.
#[derive(Debug, Clone)]
pub struct RowPass {
    pub first: usize,
    pub seq: usize,
    pub starts: Vec<usize>,
    pub lens: Vec<usize>,
}

impl RowPass {
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Cache columns the pass attends over: up to the longest row after this pass.
    pub fn keys(&self) -> usize {
        self.starts.iter().zip(&self.lens).map(|(s, l)| s + l).max().unwrap_or(0).max(1)
    }

    /// Rotary position of each column; padding columns repeat the row's last real one, as
    /// [`Positions::next`] does.
    pub fn positions(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch() * self.seq);
        for (s, l) in self.starts.iter().zip(&self.lens) {
            out.extend((0..self.seq).map(|j| s + j.min(l.saturating_sub(1))));
        }
        out
    }

    /// Tokens the pass feeds (its columns less the padding).
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// The fed tokens' columns in the pass's `rows × seq` grid, row by row: where the packed
    /// token `i` sits.
    fn fed_columns(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.tokens());
        for (r, &l) in self.lens.iter().enumerate() {
            out.extend((0..l).map(|j| (r * self.seq + j) as i64));
        }
        out
    }

    /// For each column of the grid, the packed token it shows: its own, or for a padding column
    /// the row's last one (or the first token of the pass, for a row that feeds nothing). A
    /// padding column's keys and values are never written to the cache, and what its query
    /// computes is never read.
    fn column_tokens(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.batch() * self.seq);
        let mut first = 0;
        for &l in &self.lens {
            out.extend((0..self.seq).map(|j| (first + j.min(l.max(1) - 1)) as i64));
            first += l;
        }
        let last = self.tokens().saturating_sub(1) as i64;
        out.iter_mut().for_each(|t| *t = (*t).min(last));
        out
    }

    /// `[batch, seq, keys]`: query `i` of row `r` sees the row's cached keys and its own new ones
    /// up to itself. Padding queries see the row's real keys (their output is never read, it only
    /// has to stay finite).
    fn mask(&self) -> Vec<f32> {
        let keys = self.keys();
        let mut mask = vec![MASKED; self.batch() * self.seq * keys];
        for (r, (&s, &l)) in self.starts.iter().zip(&self.lens).enumerate() {
            for i in 0..self.seq {
                let visible = (s + i.min(l.saturating_sub(1)) + 1).min(s + l);
                let row = (r * self.seq + i) * keys;
                mask[row..row + visible].fill(0.0);
            }
        }
        mask
    }
}

/// Which keys each query sees: key `j` of row `r` is visible to query `i` when
/// `valid[r · keys + j]` and `j ≤ past + i` (the mask [`Context::new`] builds for burn).
// Read only by flex's fused attention (`causal.rs`), which the wasm build and builds without
// flex leave out.
#[cfg_attr(not(all(feature = "flex", not(target_arch = "wasm32"))), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct Visible {
    pub past: usize,
    pub keys: usize,
    pub valid: Vec<bool>,
}

#[cfg_attr(not(all(feature = "flex", not(target_arch = "wasm32"))), allow(dead_code))]
impl Visible {
    /// `None` when some query would see no key at all (a left-padded row's padding): burn's
    /// masked softmax gives such a query a uniform average, which this path does not reproduce.
    pub(crate) fn new(past: usize, keys: usize, valid: Vec<bool>) -> Option<Self> {
        if keys == 0 || !valid.len().is_multiple_of(keys) {
            return None;
        }
        // Query 0 sees keys 0..=past: every later query sees those too.
        let every_query_sees_one = valid.chunks_exact(keys).all(|row| row[..(past + 1).min(keys)].iter().any(|&v| v));
        every_query_sees_one.then_some(Self { past, keys, valid })
    }

    /// Keys `0..lim` are not hidden from query `i` by causality.
    pub(crate) fn lim(&self, i: usize) -> usize {
        (self.past + i + 1).min(self.keys)
    }
}

/// Device tensors derived from [`Positions`], shared by every layer of one forward pass.
pub(crate) struct Context<B: Backend> {
    pub(crate) rope: Rope<B>,
    pub(crate) mask: Tensor<B, 4>,
    /// The mask on the host, for attention computed there (`None` for a [`RowPass`], or when
    /// some query would see no key).
    pub(crate) visible: Option<Visible>,
    pub(crate) dropout_seed: Option<u64>,
    /// Where each row's new keys and values go in the cache, for a [`RowPass`]; `None` appends
    /// them after the cache's shared length.
    pub(crate) rows: Option<RowPass>,
    /// For a [`RowPass`] with padding columns: the layers' products, norms and sums run over
    /// the fed tokens only, and only attention sees the rows' grid.
    pub(crate) packing: Option<Packing<B>>,
}

/// The fed tokens of a [`RowPass`] packed into one sequence `[1, tokens]`, and the way between
/// that and the pass's `[rows, seq]` grid. Without it a draft of four tokens in one row made the
/// projections of every row run over four columns.
pub(crate) struct Packing<B: Backend> {
    tokens: usize,
    rows: usize,
    seq: usize,
    /// Grid column of each packed token, on the host and on the device.
    columns: Vec<i64>,
    fed: Tensor<B, 1, Int>,
    /// Packed token shown in each grid column.
    shown: Tensor<B, 1, Int>,
}

impl<B: Backend> Packing<B> {
    fn new(p: &RowPass, device: &B::Device) -> Option<Self> {
        let tokens = p.tokens();
        if tokens == 0 || tokens == p.batch() * p.seq {
            return None;
        }
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::from_data(TensorData::new(v, [n]), device)
        };
        let columns = p.fed_columns();
        Some(Self { tokens, rows: p.batch(), seq: p.seq, fed: int(columns.clone()), columns, shown: int(p.column_tokens()) })
    }

    /// `[1, tokens, width]` of the grid's `[rows, seq, width]`.
    pub(crate) fn pack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = x.dims()[2];
        x.reshape([self.rows * self.seq, w]).select(0, self.fed.clone()).reshape([1, self.tokens, w])
    }

    /// The grid `[rows, seq, width]` of packed `[1, tokens, width]`.
    pub(crate) fn unpack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = x.dims()[2];
        x.reshape([self.tokens, w]).select(0, self.shown.clone()).reshape([self.rows, self.seq, w])
    }

    /// The packed token ids of the grid's `ids`.
    pub(crate) fn ids(&self, ids: &[u32]) -> Vec<u32> {
        self.columns.iter().map(|&c| ids[c as usize]).collect()
    }

    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// The grid's `[rows, seq]`.
    pub(crate) fn grid(&self) -> [usize; 2] {
        [self.rows, self.seq]
    }
}

pub(crate) struct Rope<B: Backend> {
    pub(crate) cos: Tensor<B, 4>,
    pub(crate) sin: Tensor<B, 4>,
}

impl<B: Backend> Context<B> {
    /// Rotary tables in the activations' `dtype` (computed in f32, as transformers does); the
    /// mask stays f32.
    pub(crate) fn new(p: &Positions, head_dim: usize, theta: f64, dropout_seed: Option<u64>, dtype: FloatDType, device: &B::Device) -> Self {
        let total = p.past + p.seq;
        let mut mask = vec![0f32; p.batch * p.seq * total];
        for b in 0..p.batch {
            for i in 0..p.seq {
                for j in 0..total {
                    if !p.key_valid[b * total + j] || j > p.past + i {
                        mask[(b * p.seq + i) * total + j] = MASKED;
                    }
                }
            }
        }
        Self {
            rope: Rope::new(&p.positions, [p.batch, 1, p.seq, head_dim], theta, dtype, device),
            mask: Tensor::from_data(TensorData::new(mask, [p.batch, 1, p.seq, total]), device),
            visible: Visible::new(p.past, total, p.key_valid.clone()),
            dropout_seed,
            rows: None,
            packing: None,
        }
    }

    /// The context of a [`RowPass`] (inference only: no dropout).
    pub(crate) fn for_rows(p: &RowPass, head_dim: usize, theta: f64, dtype: FloatDType, device: &B::Device) -> Self {
        let shape = [p.batch(), 1, p.seq, p.keys()];
        Self {
            rope: Rope::new(&p.positions(), [p.batch(), 1, p.seq, head_dim], theta, dtype, device),
            mask: Tensor::from_data(TensorData::new(p.mask(), shape), device),
            visible: None,
            dropout_seed: None,
            rows: Some(p.clone()),
            packing: Packing::new(p, device),
        }
    }
}

impl<B: Backend> Rope<B> {
    fn new(positions: &[usize], shape: [usize; 4], theta: f64, dtype: FloatDType, device: &B::Device) -> Self {
        let head_dim = shape[3];
        let half = head_dim / 2;
        // f32 products as in transformers, so high positions round the same way.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for &pos in positions {
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        Self {
            cos: to_dtype(Tensor::from_data(TensorData::new(cos, shape), device), dtype),
            sin: to_dtype(Tensor::from_data(TensorData::new(sin, shape), device), dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_pass_sees_each_rows_own_keys_causally() {
        // Row 0 feeds its first three tokens; row 1 has two cached and feeds one (two padding
        // columns); row 2 is free.
        let p = RowPass { first: 0, seq: 3, starts: vec![0, 2, 0], lens: vec![3, 1, 0] };
        assert_eq!(p.keys(), 3);
        assert_eq!(p.positions(), [0, 1, 2, 2, 2, 2, 0, 0, 0]);
        let seen: Vec<bool> = p.mask().iter().map(|&m| m == 0.0).collect();
        let (t, f) = (true, false);
        #[rustfmt::skip]
        let expected = [
            t, f, f,  t, t, f,  t, t, t,  // row 0: causal over its own new tokens
            t, t, t,  t, t, t,  t, t, t,  // row 1: its two cached keys and its new one
            f, f, f,  f, f, f,  f, f, f,  // row 2: nothing
        ];
        assert_eq!(seen, expected);
        // Packed: row 0's three tokens, then row 1's one; row 1's padding shows its token, the
        // free row the last one.
        assert_eq!(p.tokens(), 4);
        assert_eq!(p.fed_columns(), [0, 1, 2, 3]);
        assert_eq!(p.column_tokens(), [0, 1, 2, 3, 3, 3, 3, 3, 3]);
        let q = RowPass { first: 2, seq: 2, starts: vec![5, 0, 7], lens: vec![0, 2, 1] };
        assert_eq!(q.fed_columns(), [2, 3, 4]);
        assert_eq!(q.column_tokens(), [0, 0, 0, 1, 2, 2]);
    }
}
