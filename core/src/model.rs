//! Qwen3ForCausalLM, as transformers' `modeling_qwen3.py` defines it: the modules and their
//! forward passes, nothing else (loading is [`crate::load`], the cache [`crate::kv_cache`],
//! positions and masks [`crate::positions`], the loss [`crate::loss`]).
//!
//! Field names equal the checkpoint keys (`model.layers.3.self_attn.q_proj.weight`), so loading
//! needs no remap table, and linear weights keep PyTorch's `[out, in]` layout.

use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{DType, FloatDType};

use crate::dtype::{cast_param, float_dtype, to_dtype};
pub use crate::kv_cache::KvCache;
use crate::head_screen::{HeadScreen, LazyScreen};
use crate::kv_cache::LayerCache;
use crate::layout::{Projection, PROJECTIONS};
pub use crate::linear::Linear;
pub use crate::positions::{Positions, RowPass};
use crate::positions::{Context, Rope};
use crate::{Error, Result};

/// `Qwen3RMSNorm`: `weight * x / sqrt(mean(x²) + eps)` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalised in f32 whatever the input's dtype, then cast back before the weight, as
    /// transformers does.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = float_dtype(&x);
        let x = to_dtype(x, FloatDType::F32);
        let rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt();
        to_dtype(x.div(rms), dtype).mul(self.weight.val().unsqueeze())
    }
}

/// `nn.Embedding`: one row of `weight` per token id. Under a per-tensor byte limit
/// ([`LoadOptions`]) the table is kept as consecutive row blocks: `weight` holds the first rows
/// and `rest` the blocks after it (empty when unsplit, as natively); lookups and the tied output
/// layer give the numbers of the whole table. Whole-model training and saving see `weight`
/// only, so they take unsplit models.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub rest: Vec<Param<Tensor<B, 2>>>,
}

impl<B: Backend> Embedding<B> {
    fn blocks(&self) -> impl Iterator<Item = &Param<Tensor<B, 2>>> {
        std::iter::once(&self.weight).chain(&self.rest)
    }

    pub fn rows(&self) -> usize {
        self.blocks().map(|b| b.dims()[0]).sum()
    }

    /// Embeddings `[batch, seq, hidden]` of `ids` `[batch * seq]` (each below [`Self::rows`]).
    pub fn forward(&self, ids: &[i64], batch: usize, seq: usize) -> Tensor<B, 3> {
        let device = self.weight.device();
        let d = self.weight.dims()[1];
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        if self.rest.is_empty() {
            return self.weight.val().select(0, int(ids.to_vec())).reshape([batch, seq, d]);
        }
        // Each block's rows, gathered, then put back in the order asked.
        let mut parts = Vec::new();
        let mut place = vec![0i64; ids.len()];
        let (mut start, mut taken) = (0i64, 0i64);
        for block in self.blocks() {
            let n = block.dims()[0] as i64;
            let local: Vec<i64> = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id >= start && id < start + n)
                .map(|(i, &id)| {
                    place[i] = taken;
                    taken += 1;
                    id - start
                })
                .collect();
            if !local.is_empty() {
                parts.push(block.val().select(0, int(local)));
            }
            start += n;
        }
        Tensor::cat(parts, 0).select(0, int(place)).reshape([batch, seq, d])
    }

    /// `x · tableᵀ` for `x` `[n, hidden]`: the tied output layer, `[n, rows]`, one product per block.
    pub fn matmul_t(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.rest.is_empty() {
            return crate::flex::linear(x, self.weight.val());
        }
        Tensor::cat(self.blocks().map(|b| crate::flex::linear(x.clone(), b.val())).collect(), 1)
    }
}

#[derive(Module, Debug)]
pub struct Qwen3Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: RmsNorm<B>,
    pub k_norm: RmsNorm<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// HF's `rotate_half` convention: the two halves of each head are the (x, y) pairs, not
/// interleaved neighbours as in burn's `RotaryEncoding`.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, rope: &Rope<B>) -> Tensor<B, 4> {
    if let Some(out) = crate::flex::rope(&x, &rope.cos, &rope.sin) {
        return out;
    }
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x.mul(rope.cos.clone()).add(rotated.mul(rope.sin.clone()))
}

impl<B: Backend> Qwen3Attention<B> {
    fn forward(&self, x: Tensor<B, 3>, ctx: &Context<B>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        let [xb, xt, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let seed = ctx.dropout_seed;
        let q = self.q_norm.forward(self.q_proj.forward(x.clone(), seed).reshape([xb, xt, h, d]));
        let k = self.k_norm.forward(self.k_proj.forward(x.clone(), seed).reshape([xb, xt, kvh, d]));
        let v = self.v_proj.forward(x, seed);
        // Packed tokens go back to the pass's grid of rows for attention, and come out packed.
        let ([b, t], grid) = match &ctx.packing {
            Some(p) => {
                let [b, t] = p.grid();
                let grid = |y: Tensor<B, 4>, heads: usize| p.unpack(y.reshape([xb, xt, heads * d])).reshape([b, t, heads, d]);
                ([b, t], (grid(q, h), grid(k, kvh), grid(v.reshape([xb, xt, kvh, d]), kvh)))
            }
            None => ([xb, xt], (q, k, v.reshape([xb, xt, kvh, d]))),
        };
        let (q, k, v) = (grid.0.swap_dims(1, 2), grid.1.swap_dims(1, 2), grid.2.swap_dims(1, 2));
        let packed = |out: Tensor<B, 3>| match &ctx.packing {
            Some(p) => p.pack(out),
            None => out,
        };
        let q = apply_rope(q, &ctx.rope);
        let k = apply_rope(k, &ctx.rope);
        let cached = cache.is_some();
        let (k, v) = match (cache, &ctx.rows) {
            (Some(cache), Some(pass)) => cache.write_rows(pass, k, v),
            (Some(cache), None) => cache.append(k, v),
            (None, _) => (k, v),
        };
        if let Some(pass) = &ctx.rows {
            if let Some(out) = crate::flex::row_attention(&q, &k, &v, &pass.starts, &pass.lens, (d as f64).powf(-0.5) as f32) {
                return self.o_proj.forward(packed(out.swap_dims(1, 2).reshape([b, t, h * d])), seed);
            }
        }
        if let (false, Some(visible)) = (cached, &ctx.visible) {
            if let Some(out) = crate::flex::causal_attention(&q, &k, &v, visible, (d as f64).powf(-0.5) as f32) {
                return self.o_proj.forward(packed(out), seed);
            }
        }
        let s = k.dims()[2];
        let groups = h / kvh;
        // Query heads of one KV group share its keys: fold them into the row dimension instead of
        // copying K and V per head (transformers' repeat_kv), same numbers, less memory.
        let q = q.reshape([b, kvh, groups * t, d]);
        // In half precision the rounding of transformers' eager attention: scores scaled in f32
        // (a scale rounded to bf16 would shift every score) and rounded to the dtype, then masked
        // and softmaxed in f32 (-1e9 does not fit in f16). In f32 every cast is a no-op.
        let scores = q.matmul(k.swap_dims(2, 3));
        let dtype = float_dtype(&scores);
        let scores = to_dtype(to_dtype(scores, FloatDType::F32).mul_scalar((d as f64).powf(-0.5)), dtype);
        let scores = to_dtype(scores.reshape([b, h, t, s]), FloatDType::F32).add(ctx.mask.clone());
        let probs = to_dtype(softmax(scores, 3), dtype).reshape([b, kvh, groups * t, s]);
        let out = probs.matmul(v).reshape([b, h, t, d]).swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward(packed(out), seed)
    }
}

#[derive(Module, Debug)]
pub struct Qwen3Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Qwen3Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, seed: Option<u64>) -> Tensor<B, 3> {
        // SiLU in f32 and rounded once, as torch computes it for half types.
        let gate = self.gate_proj.forward(x.clone(), seed);
        let up = self.up_proj.forward(x, seed);
        if let Some(y) = crate::flex::swiglu(&gate, &up) {
            return self.down_proj.forward(y, seed);
        }
        let dtype = float_dtype(&gate);
        let gate = to_dtype(silu(to_dtype(gate, FloatDType::F32)), dtype);
        self.down_proj.forward(gate.mul(up), seed)
    }
}

#[derive(Module, Debug)]
pub struct Qwen3DecoderLayer<B: Backend> {
    pub self_attn: Qwen3Attention<B>,
    pub mlp: Qwen3Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> Qwen3DecoderLayer<B> {
    /// The projection `p` (see [`crate::layout`]).
    pub fn projection(&self, p: Projection) -> &Linear<B> {
        let (a, m) = (&self.self_attn, &self.mlp);
        match p {
            Projection::Q => &a.q_proj,
            Projection::K => &a.k_proj,
            Projection::V => &a.v_proj,
            Projection::O => &a.o_proj,
            Projection::Gate => &m.gate_proj,
            Projection::Up => &m.up_proj,
            Projection::Down => &m.down_proj,
        }
    }

    pub fn projection_mut(&mut self, p: Projection) -> &mut Linear<B> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        match p {
            Projection::Q => &mut a.q_proj,
            Projection::K => &mut a.k_proj,
            Projection::V => &mut a.v_proj,
            Projection::O => &mut a.o_proj,
            Projection::Gate => &mut m.gate_proj,
            Projection::Up => &mut m.up_proj,
            Projection::Down => &mut m.down_proj,
        }
    }

    /// The layer's normalisation vectors by checkpoint name relative to the layer, in the order
    /// of [`crate::layout::layer_norms`].
    pub fn norms_mut(&mut self) -> [(&'static str, &mut RmsNorm<B>); 4] {
        let a = &mut self.self_attn;
        [
            ("self_attn.q_norm", &mut a.q_norm),
            ("self_attn.k_norm", &mut a.k_norm),
            ("input_layernorm", &mut self.input_layernorm),
            ("post_attention_layernorm", &mut self.post_attention_layernorm),
        ]
    }

    /// The layer's frozen weights in `dtype` (LoRA weights untouched).
    pub(crate) fn cast_base(&mut self, dtype: FloatDType) {
        for p in PROJECTIONS {
            let lin = self.projection_mut(p);
            lin.weight = cast_param(lin.weight.clone(), dtype);
        }
        for (_, norm) in self.norms_mut() {
            norm.weight = cast_param(norm.weight.clone(), dtype);
        }
    }

    /// The layer in training, without a cache (see [`Qwen3ForCausalLM::train_context`]).
    pub(crate) fn forward_train(&self, x: Tensor<B, 3>, ctx: &Context<B>) -> Tensor<B, 3> {
        self.forward(x, ctx, None)
    }

    fn forward(&self, x: Tensor<B, 3>, ctx: &Context<B>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        // The sublayer's output first: it is fresh and held by nothing else, so flex adds the
        // residual into it in place (the other order allocates a new tensor every time).
        let h = self.self_attn.forward(self.input_layernorm.forward(x.clone()), ctx, cache).add(x);
        self.mlp.forward(self.post_attention_layernorm.forward(h.clone()), ctx.dropout_seed).add(h)
    }
}

#[derive(Module, Debug)]
pub struct Qwen3Model<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Qwen3DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct Qwen3ForCausalLM<B: Backend> {
    pub model: Qwen3Model<B>,
    /// `None` when the embeddings are tied: the output layer is `embed_tokens.weight`.
    pub lm_head: Option<Linear<B>>,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// An int8 copy of the output layer that greedy decoding at batch 1 on the CPU reads instead
    /// of the f32 one, with the same tokens ([`crate::head_screen`]); set up with int8 or int4
    /// projections ([`Self::screen_head`]), made on its first use.
    #[module(skip)]
    pub head_screen: Option<Arc<LazyScreen>>,
}

impl<B: Backend> Qwen3ForCausalLM<B> {
    /// The output layer's weight when it is one block (not split under a byte limit).
    fn output_weight(&self) -> Option<Tensor<B, 2>> {
        match &self.lm_head {
            Some(head) => Some(head.weight.val()),
            None if self.model.embed_tokens.rest.is_empty() => Some(self.model.embed_tokens.weight.val()),
            None => None,
        }
    }

    /// Sets up [`Self::head_screen`] (a fresh one, for the current output layer) where it pays:
    /// flex, f32, one output block whose rows 32 divides.
    pub fn screen_head(&mut self) {
        let fits = self.output_weight().is_some_and(|w| HeadScreen::fits(w.dims()[1]) && crate::flex::with_f32(&w, |_| ()).is_some());
        self.head_screen = fits.then(|| Arc::new(LazyScreen::default()));
    }

    /// The greedy token for one hidden row `[1, hidden]` read through [`Self::head_screen`]: the
    /// candidates it leaves, scored from their f32 rows by the product [`Self::logits`] uses, the
    /// largest (lowest id on a tie). `None` without a screen, for several rows, or on a NaN.
    pub fn screened_argmax(&self, hidden: &Tensor<B, 2>) -> Option<u32> {
        let lazy = self.head_screen.as_ref()?;
        if hidden.dims()[0] != 1 {
            return None;
        }
        let screen = lazy.get_or_make(|| {
            let weight = self.output_weight()?;
            let [rows, cols] = weight.dims();
            crate::flex::with_f32(&weight, |w| HeadScreen::new(w, rows, cols)).flatten()
        })?;
        let candidates = crate::flex::with_f32(hidden, |x| screen.candidates(x)).flatten()?;
        let logits: Vec<f32> = self.logits_of(hidden.clone(), &candidates).into_data().to_vec().ok()?;
        // Left to the whole head's pick, which refuses them.
        if logits.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        candidates.get(best).copied()
    }

    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.weight.device()
    }

    /// The dtype of the base weights and of the activations between layers.
    pub fn dtype(&self) -> FloatDType {
        float_dtype(&self.model.norm.weight.val())
    }

    /// The frozen base weights cast to `dtype` (bf16 on CUDA, f16 on most GPUs through wgpu);
    /// LoRA weights stay as they are (f32), so their gradients and optimizer state do too.
    /// Normalisation, softmax, the adapters and the logits still compute in f32.
    pub fn cast_base(mut self, dtype: FloatDType) -> Self {
        for layer in &mut self.model.layers {
            layer.cast_base(dtype);
        }
        self.cast_outside_layers(dtype);
        self
    }

    /// The embedding, the final norm and an untied output layer in `dtype` (loading casts the
    /// layers one by one as they arrive).
    pub(crate) fn cast_outside_layers(&mut self, dtype: FloatDType) {
        let m = &mut self.model;
        m.embed_tokens.weight = cast_param(m.embed_tokens.weight.clone(), dtype);
        m.embed_tokens.rest = m.embed_tokens.rest.drain(..).map(|p| cast_param(p, dtype)).collect();
        m.norm.weight = cast_param(m.norm.weight.clone(), dtype);
        if let Some(head) = &mut self.lm_head {
            head.weight = cast_param(head.weight.clone(), dtype);
        }
        if self.head_screen.is_some() {
            self.screen_head();
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.rows()
    }

    /// An empty KV cache for `batch` rows of up to `capacity` tokens.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache<B>> {
        if capacity > self.max_position_embeddings {
            return Err(Error::Limit(format!(
                "{capacity} tokens exceed the model's max_position_embeddings ({})",
                self.max_position_embeddings
            )));
        }
        self.check_cache_memory(self.cache_bytes(batch, capacity, false), &format!("a KV cache of {batch} rows × {capacity} positions takes"))?;
        let device = self.device();
        let dtype = DType::from(self.dtype());
        let layers = self
            .model
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let shape = [batch, a.num_kv_heads, capacity, a.head_dim];
                LayerCache { k: Tensor::zeros(shape, (&device, dtype)), v: Tensor::zeros(shape, (&device, dtype)), len: 0 }
            })
            .collect();
        Ok(KvCache { layers, capacity })
    }

    /// Grows `cache` to at least `rows` rows and room for `needed` tokens, keeping what it holds:
    /// columns grow by at least half (up to the model's context), so that decoding a token at a
    /// time copies the cache rarely; rows are added as asked (continuous batching adds rows as
    /// requests arrive instead of allocating every row a `--batch` allows up front).
    pub fn grow_cache(&self, cache: &mut KvCache<B>, rows: usize, needed: usize) -> Result<()> {
        let capacity = if needed > cache.capacity { needed.max((cache.capacity * 3 / 2).min(self.max_position_embeddings)) } else { cache.capacity };
        let rows = rows.max(cache.rows());
        if rows == cache.rows() && capacity == cache.capacity {
            return Ok(());
        }
        // The old cache is allocated already: what growing takes is the difference, and while
        // one tensor is replaced, its copies (at most two of the grown size).
        let (old_rows, old_capacity) = (cache.rows(), cache.capacity);
        let more = self.cache_bytes(rows, capacity, false) - self.cache_bytes(old_rows, old_capacity, false) + 2 * self.cache_bytes(rows, capacity, true);
        self.check_cache_memory(more, &format!("growing the KV cache to {rows} rows × {capacity} positions takes"))?;
        cache.grow(rows, capacity);
        Ok(())
    }

    /// Bytes of a cache of `rows × capacity`, or of its largest single tensor.
    fn cache_bytes(&self, rows: usize, capacity: usize, one_tensor: bool) -> u128 {
        let widths = self.model.layers.iter().map(|l| (l.self_attn.num_kv_heads * l.self_attn.head_dim) as u128);
        let width = if one_tensor { widths.max().unwrap_or(0) } else { 2 * widths.sum::<u128>() };
        width * rows as u128 * capacity as u128 * DType::from(self.dtype()).size() as u128
    }

    /// Host memory the cache would take: asked of the allocator past what is there, the process
    /// aborts instead of returning an error.
    fn check_cache_memory(&self, bytes: u128, what_takes: &str) -> Result<()> {
        if !crate::flex::is_cpu::<B>() {
            return Ok(());
        }
        crate::weights::check_available(bytes, what_takes, " (fewer rows: lower --batch)")
    }

    /// Final hidden states `[batch, seq, hidden]` (after `model.norm`) for `ids` `[batch * seq]`.
    /// With a cache, the new keys and values are appended to it.
    pub fn hidden(&self, ids: &[u32], pos: &Positions, cache: Option<&mut KvCache<B>>) -> Result<Tensor<B, 3>> {
        self.forward_hidden(ids, pos, cache, None)
    }

    /// [`Self::hidden`] in training mode: LoRA dropout on, its masks drawn from `dropout_seed`.
    pub fn hidden_train(&self, ids: &[u32], pos: &Positions, dropout_seed: u64) -> Result<Tensor<B, 3>> {
        self.forward_hidden(ids, pos, None, Some(dropout_seed))
    }

    fn forward_hidden(
        &self,
        ids: &[u32],
        pos: &Positions,
        cache: Option<&mut KvCache<B>>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor<B, 3>> {
        let device = self.device();
        if let Some(c) = cache.as_deref() {
            if c.len() != pos.past || pos.past + pos.seq > c.capacity {
                return Err(Error::Limit(format!(
                    "KV cache holds {} of {} tokens; cannot add {} after {}",
                    c.len(),
                    c.capacity,
                    pos.seq,
                    pos.past
                )));
            }
        } else if pos.past != 0 {
            return Err(Error::Other("positions say tokens are cached, but no cache was given".into()));
        }
        let max_pos = pos.positions.iter().copied().max().unwrap_or(0);
        if max_pos >= self.max_position_embeddings {
            return Err(Error::Limit(format!(
                "position {max_pos} exceeds the model's max_position_embeddings ({})",
                self.max_position_embeddings
            )));
        }
        self.check_ids(ids)?;
        let ctx = Context::new(pos, self.head_dim(), self.rope_theta, dropout_seed, self.dtype(), &device);
        Ok(self.run_layers(ids, pos.batch, pos.seq, &ctx, cache))
    }

    /// The pieces of [`Self::hidden_train`] one at a time, for training that keeps each layer's
    /// input only and recomputes the layer in backward ([`crate::train`]): the context of the
    /// pass (checked as `hidden_train` checks it), then the embeddings; then
    /// [`Qwen3DecoderLayer::forward_train`] per layer and `model.norm`.
    pub(crate) fn train_context(&self, ids: &[u32], pos: &Positions, dropout_seed: u64) -> Result<Context<B>> {
        if pos.past != 0 {
            return Err(Error::Other("positions say tokens are cached, but no cache was given".into()));
        }
        let max_pos = pos.positions.iter().copied().max().unwrap_or(0);
        if max_pos >= self.max_position_embeddings {
            return Err(Error::Limit(format!(
                "position {max_pos} exceeds the model's max_position_embeddings ({})",
                self.max_position_embeddings
            )));
        }
        self.check_ids(ids)?;
        Ok(Context::new(pos, self.head_dim(), self.rope_theta, Some(dropout_seed), self.dtype(), &self.device()))
    }

    /// The input embeddings `[batch, seq, hidden]` of `ids` `[batch * seq]`.
    pub fn embed(&self, ids: &[u32], batch: usize, seq: usize) -> Tensor<B, 3> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        self.model.embed_tokens.forward(&ids, batch, seq)
    }

    /// Final hidden states `[rows, seq, hidden]` of a [`RowPass`]: each row of `cache` keeps its
    /// own length, so rows can join and leave a batch between passes (continuous batching).
    pub fn hidden_rows(&self, ids: &[u32], pass: &RowPass, cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        let rows = pass.batch();
        if pass.starts.len() != rows || ids.len() != rows * pass.seq || pass.lens.iter().any(|&l| l > pass.seq) {
            return Err(Error::Other(format!("a pass of {rows} rows × {} columns was given {} ids", pass.seq, ids.len())));
        }
        if pass.first + rows > cache.rows() || pass.keys() > cache.capacity {
            return Err(Error::Limit(format!(
                "KV cache of {} rows × {} tokens cannot take rows {}..{} up to {} tokens",
                cache.rows(),
                cache.capacity,
                pass.first,
                pass.first + rows,
                pass.keys()
            )));
        }
        if pass.keys() > self.max_position_embeddings {
            return Err(Error::Limit(format!(
                "position {} exceeds the model's max_position_embeddings ({})",
                pass.keys() - 1,
                self.max_position_embeddings
            )));
        }
        self.check_ids(ids)?;
        let ctx = Context::for_rows(pass, self.head_dim(), self.rope_theta, self.dtype(), &self.device());
        Ok(self.run_layers(ids, rows, pass.seq, &ctx, Some(cache)))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(bad) => Err(Error::Limit(format!("token id {bad} is outside the vocabulary ({vocab})"))),
            None => Ok(()),
        }
    }

    fn head_dim(&self) -> usize {
        self.model.layers.first().map_or(2, |l| l.self_attn.head_dim)
    }

    /// The layers over `ids` `[batch * seq]`: `[batch, seq, hidden]`. A packed pass embeds and
    /// runs its fed tokens only and puts them back in its grid at the end.
    fn run_layers(&self, ids: &[u32], batch: usize, seq: usize, ctx: &Context<B>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let (ids, batch, seq) = match &ctx.packing {
            Some(p) => (p.ids(ids), 1, p.tokens()),
            None => (ids.to_vec(), batch, seq),
        };
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let mut x = self.model.embed_tokens.forward(&ids, batch, seq);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, ctx, layer_cache);
        }
        let x = self.model.norm.forward(x);
        match &ctx.packing {
            Some(p) => p.unpack(x),
            None => x,
        }
    }

    /// The output layer's weight as row blocks `[rows, hidden]` in vocabulary order: `lm_head`,
    /// or the tied embedding's blocks.
    pub fn output_blocks(&self) -> Vec<Tensor<B, 2>> {
        match &self.lm_head {
            Some(head) => vec![head.weight.val()],
            None => self.model.embed_tokens.blocks().map(Param::val).collect(),
        }
    }

    /// Logits `[rows, vocab]` for hidden-state rows `[rows, hidden]`, in f32 whatever the
    /// model's dtype (transformers upcasts them for the loss too).
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = match &self.lm_head {
            Some(head) => crate::flex::linear(hidden, head.weight.val()),
            None => self.model.embed_tokens.matmul_t(hidden),
        };
        to_dtype(logits, FloatDType::F32)
    }

    /// The logits of the tokens `ids` only, `[rows, ids.len()]`: the output layer's rows for
    /// them gathered, then one product. When a grammar leaves a few hundred candidates, this
    /// reads a few hundred rows of the head instead of all 151,936 (on the quickstart model the
    /// whole head was 92 % of a decode step at batch 1).
    pub fn logits_of(&self, hidden: Tensor<B, 2>, ids: &[u32]) -> Tensor<B, 2> {
        to_dtype(crate::flex::linear(hidden, self.output_rows(ids)), FloatDType::F32)
    }

    /// The output layer's rows for the tokens `ids`, `[ids.len(), hidden]`.
    pub fn output_rows(&self, ids: &[u32]) -> Tensor<B, 2> {
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        match &self.lm_head {
            Some(head) => head.weight.val().select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &head.weight.device())),
            None => {
                let d = self.model.embed_tokens.weight.dims()[1];
                self.model.embed_tokens.forward(&ids, 1, n).reshape([n, d])
            }
        }
    }
}
