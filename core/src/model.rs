//! Qwen3ForCausalLM, as transformers' `modeling_qwen3.py` defines it, in one file.
//!
//! Field names equal the checkpoint keys (`model.layers.3.self_attn.q_proj.weight`), so loading
//! needs no remap table, and linear weights keep PyTorch's `[out, in]` layout.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{DType, FloatDType, TensorData};

use crate::config::Qwen3Config;
use crate::lora::Lora;
use crate::weights::WeightSource;
use crate::{Error, Result};

/// Large enough to zero a softmax weight, small enough that a fully masked row (a padding query)
/// stays finite instead of turning into NaN.
const MASKED: f32 = -1.0e9;

/// `x` in `dtype`; no cast (and no autodiff node) when it already is.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if x.dtype() == DType::from(dtype) {
        x
    } else {
        x.cast(dtype)
    }
}

/// The float dtype of a tensor (f32 for anything that is not a half type).
fn float_dtype<B: Backend, const D: usize>(x: &Tensor<B, D>) -> FloatDType {
    match x.dtype() {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

/// A frozen base parameter cast to `dtype`; quantized weights stay quantized.
fn cast_param<B: Backend, const D: usize>(p: Param<Tensor<B, D>>, dtype: FloatDType) -> Param<Tensor<B, D>> {
    if matches!(p.val().dtype(), DType::QFloat(_)) {
        return p;
    }
    p.map(|t| to_dtype(t, dtype)).set_require_grad(false)
}

fn load<B: Backend, const D: usize>(
    src: &mut dyn WeightSource,
    name: &str,
    shape: [usize; D],
    device: &B::Device,
) -> Result<Param<Tensor<B, D>>> {
    let values = src.load(name, &shape)?;
    // Base weights are frozen; training marks what it trains.
    Ok(Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device)).set_require_grad(false))
}

/// `nn.Linear(bias=False)`; `weight` is `[out, in]` as in the checkpoint. With `lora`, PEFT's
/// LoRA layer: the low-rank update is added in activation space.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    fn load(src: &mut dyn WeightSource, prefix: &str, out: usize, inp: usize, device: &B::Device) -> Result<Self> {
        Ok(Self { weight: load(src, &format!("{prefix}.weight"), [out, inp], device)?, lora: None })
    }

    /// `dropout_seed` is set while training: LoRA dropout masks derive from it.
    pub fn forward(&self, x: Tensor<B, 3>, dropout_seed: Option<u64>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let x = x.reshape([b * t, d]);
        let weight = match self.weight.val() {
            // Quantized (see `quantize`): dequantized for this matmul only.
            w if matches!(w.dtype(), DType::QFloat(_)) => to_dtype(w.dequantize(), float_dtype(&x)),
            w => w,
        };
        let mut out = crate::flex::linear(x.clone(), weight);
        if let Some(lora) = &self.lora {
            // As PEFT with a half-precision base: the adapter (kept in f32) sees x cast to f32,
            // the sum is taken in f32 and cast back.
            let dtype = float_dtype(&out);
            let update = lora.forward(to_dtype(x, FloatDType::F32), dropout_seed);
            out = to_dtype(to_dtype(out, FloatDType::F32).add(update), dtype);
        }
        let n = out.dims()[1];
        out.reshape([b, t, n])
    }
}

/// `Qwen3RMSNorm`: `weight * x / sqrt(mean(x²) + eps)` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn load(src: &mut dyn WeightSource, name: &str, dim: usize, eps: f64, device: &B::Device) -> Result<Self> {
        Ok(Self { weight: load(src, &format!("{name}.weight"), [dim], device)?, eps })
    }

    /// Normalised in f32 whatever the input's dtype, then cast back before the weight, as
    /// transformers does.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = float_dtype(&x);
        let x = to_dtype(x, FloatDType::F32);
        let rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt();
        to_dtype(x.div(rms), dtype).mul(self.weight.val().unsqueeze())
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// Where loading may split tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The most bytes (as f32) one tensor may take on the device: WebGPU adapters commonly cap a
    /// storage binding at 128 MiB, while Qwen3-0.6B's embedding is 594 MiB. A tied embedding
    /// (which is also the output layer) is then stored as row blocks under the limit; any other
    /// tensor over it is an error. `None`: no limit, one block.
    pub max_tensor_bytes: Option<usize>,
    /// Quantize each layer's projections as soon as it is loaded (see [`crate::quantize`]), so
    /// the whole model never sits in memory as f32.
    pub quantize: Option<crate::quantize::Quantization>,
    /// Cast the base weights to this dtype as they load (see [`Qwen3ForCausalLM::cast_base`]).
    pub dtype: Option<FloatDType>,
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
    fn load(src: &mut dyn WeightSource, name: &str, shape: [usize; 2], max_bytes: Option<usize>, device: &B::Device) -> Result<Self> {
        let [rows, cols] = shape;
        let per_block = max_bytes.map_or(rows, |limit| (limit / (cols * 4).max(1)).max(1));
        if per_block >= rows {
            return Ok(Self { weight: load(src, name, shape, device)?, rest: Vec::new() });
        }
        let values = src.load(name, &shape)?;
        let mut blocks = values.chunks(per_block * cols).map(|chunk| {
            let data = TensorData::new(chunk.to_vec(), [chunk.len() / cols, cols]);
            Param::from_tensor(Tensor::from_data(data, device)).set_require_grad(false)
        });
        let weight = blocks.next().expect("a table with rows");
        Ok(Self { weight, rest: blocks.collect() })
    }

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
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let seed = ctx.dropout_seed;
        let q = self.q_norm.forward(self.q_proj.forward(x.clone(), seed).reshape([b, t, h, d])).swap_dims(1, 2);
        let k = self.k_norm.forward(self.k_proj.forward(x.clone(), seed).reshape([b, t, kvh, d])).swap_dims(1, 2);
        let v = self.v_proj.forward(x, seed).reshape([b, t, kvh, d]).swap_dims(1, 2);
        let q = apply_rope(q, &ctx.rope);
        let k = apply_rope(k, &ctx.rope);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
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
        self.o_proj.forward(out, seed)
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
        let dtype = float_dtype(&gate);
        let gate = to_dtype(silu(to_dtype(gate, FloatDType::F32)), dtype);
        self.down_proj.forward(gate.mul(self.up_proj.forward(x, seed)), seed)
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
    /// The layer's frozen weights in `dtype` (LoRA weights untouched).
    fn cast_base(&mut self, dtype: FloatDType) {
        let a = &mut self.self_attn;
        let m = &mut self.mlp;
        for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
            lin.weight = cast_param(lin.weight.clone(), dtype);
        }
        for norm in [&mut a.q_norm, &mut a.k_norm, &mut self.input_layernorm, &mut self.post_attention_layernorm] {
            norm.weight = cast_param(norm.weight.clone(), dtype);
        }
    }

    fn forward(&self, x: Tensor<B, 3>, ctx: &Context<B>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        let h = x.clone().add(self.self_attn.forward(self.input_layernorm.forward(x), ctx, cache));
        h.clone().add(self.mlp.forward(self.post_attention_layernorm.forward(h), ctx.dropout_seed))
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
}

/// Per-layer key/value cache, preallocated to its capacity.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> LayerCache<B> {
    fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, kvh, t, d] = k.dims();
        let end = self.len + t;
        // Moved out, not cloned: a tensor with one owner is updated in place, a shared one would
        // be copied whole on every step.
        let dummy = || Tensor::<B, 4>::empty([0, 0, 0, 0], &k.device());
        let cache_k = std::mem::replace(&mut self.k, dummy());
        let cache_v = std::mem::replace(&mut self.v, dummy());
        self.k = crate::flex::assign_rows(cache_k, self.len, k);
        self.v = crate::flex::assign_rows(cache_v, self.len, v);
        self.len = end;
        (self.k.clone().slice([0..b, 0..kvh, 0..end, 0..d]), self.v.clone().slice([0..b, 0..kvh, 0..end, 0..d]))
    }
}

/// The KV cache of a whole model for one batch.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grows the cache (by at least half) so that `needed` tokens fit, keeping what it holds.
    pub fn reserve(&mut self, needed: usize) {
        if needed <= self.capacity {
            return;
        }
        let capacity = needed.max(self.capacity + self.capacity / 2);
        for layer in &mut self.layers {
            let [b, h, _, d] = layer.k.dims();
            let (device, dtype) = (layer.k.device(), layer.k.dtype());
            let extra = capacity - self.capacity;
            layer.k = Tensor::cat(vec![layer.k.clone(), Tensor::zeros([b, h, extra, d], (&device, dtype))], 2);
            layer.v = Tensor::cat(vec![layer.v.clone(), Tensor::zeros([b, h, extra, d], (&device, dtype))], 2);
        }
        self.capacity = capacity;
    }
}

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

/// Device tensors derived from [`Positions`], shared by every layer of one forward pass.
struct Context<B: Backend> {
    rope: Rope<B>,
    mask: Tensor<B, 4>,
    dropout_seed: Option<u64>,
}

struct Rope<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> Context<B> {
    /// Rotary tables in the activations' `dtype` (computed in f32, as transformers does); the
    /// mask stays f32.
    fn new(p: &Positions, head_dim: usize, theta: f64, dropout_seed: Option<u64>, dtype: FloatDType, device: &B::Device) -> Self {
        let half = head_dim / 2;
        // f32 products as in transformers, so high positions round the same way.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect();
        let n = p.positions.len();
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for &pos in &p.positions {
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [p.batch, 1, p.seq, head_dim];
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
            rope: Rope {
                cos: to_dtype(Tensor::from_data(TensorData::new(cos, shape), device), dtype),
                sin: to_dtype(Tensor::from_data(TensorData::new(sin, shape), device), dtype),
            },
            mask: Tensor::from_data(TensorData::new(mask, [p.batch, 1, p.seq, total]), device),
            dropout_seed,
        }
    }
}

impl<B: Backend> Qwen3ForCausalLM<B> {
    /// Builds the model from a weight source (a checkpoint or a random init), checking every
    /// tensor's shape against the config.
    pub fn load(cfg: &Qwen3Config, src: &mut dyn WeightSource, device: &B::Device) -> Result<Self> {
        Self::load_with(cfg, src, device, &LoadOptions::default())
    }

    /// [`Self::load`] under a per-tensor byte limit (see [`LoadOptions`]): refused before any
    /// tensor is read when a tensor that cannot be split exceeds it.
    pub fn load_with(cfg: &Qwen3Config, src: &mut dyn WeightSource, device: &B::Device, opts: &LoadOptions) -> Result<Self> {
        let max_bytes = opts.max_tensor_bytes;
        if let Some(limit) = max_bytes {
            for (name, shape) in cfg.tensor_shapes() {
                let bytes = shape.iter().product::<usize>() * 4;
                let splittable = name == "model.embed_tokens.weight" && cfg.tie_word_embeddings;
                if bytes > limit && (!splittable || shape[1] * 4 > limit) {
                    return Err(Error::Limit(format!(
                        "tensor `{name}` {shape:?} takes {} as f32, over the device's limit of {} per tensor",
                        size(bytes),
                        size(limit)
                    )));
                }
            }
        }
        let (hd, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let eps = cfg.rms_norm_eps;
        let embed_tokens =
            Embedding::load(src, "model.embed_tokens.weight", [cfg.vocab_size, hd], max_bytes.filter(|_| cfg.tie_word_embeddings), device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            let mut layer = Qwen3DecoderLayer {
                self_attn: Qwen3Attention {
                    q_proj: Linear::load(src, &format!("{a}.q_proj"), q, hd, device)?,
                    k_proj: Linear::load(src, &format!("{a}.k_proj"), kv, hd, device)?,
                    v_proj: Linear::load(src, &format!("{a}.v_proj"), kv, hd, device)?,
                    o_proj: Linear::load(src, &format!("{a}.o_proj"), hd, q, device)?,
                    q_norm: RmsNorm::load(src, &format!("{a}.q_norm"), d, eps, device)?,
                    k_norm: RmsNorm::load(src, &format!("{a}.k_norm"), d, eps, device)?,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_key_value_heads,
                    head_dim: d,
                },
                mlp: Qwen3Mlp {
                    gate_proj: Linear::load(src, &format!("{m}.gate_proj"), cfg.intermediate_size, hd, device)?,
                    up_proj: Linear::load(src, &format!("{m}.up_proj"), cfg.intermediate_size, hd, device)?,
                    down_proj: Linear::load(src, &format!("{m}.down_proj"), hd, cfg.intermediate_size, device)?,
                },
                input_layernorm: RmsNorm::load(src, &format!("{p}.input_layernorm"), hd, eps, device)?,
                post_attention_layernorm: RmsNorm::load(src, &format!("{p}.post_attention_layernorm"), hd, eps, device)?,
            };
            if let Some(q) = &opts.quantize {
                crate::quantize::quantize_layer(&mut layer, i, q)?;
            }
            if let Some(dtype) = opts.dtype {
                layer.cast_base(dtype);
            }
            layers.push(layer);
        }
        let norm = RmsNorm::load(src, "model.norm", hd, eps, device)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::load(src, "lm_head", cfg.vocab_size, hd, device)?)
        };
        let mut model = Self {
            model: Qwen3Model { embed_tokens, layers, norm },
            lm_head,
            rope_theta: cfg.rope_theta,
            max_position_embeddings: cfg.max_position_embeddings,
        };
        if let Some(dtype) = opts.dtype {
            model.cast_outside_layers(dtype);
        }
        Ok(model)
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
    fn cast_outside_layers(&mut self, dtype: FloatDType) {
        let m = &mut self.model;
        m.embed_tokens.weight = cast_param(m.embed_tokens.weight.clone(), dtype);
        m.embed_tokens.rest = m.embed_tokens.rest.drain(..).map(|p| cast_param(p, dtype)).collect();
        m.norm.weight = cast_param(m.norm.weight.clone(), dtype);
        if let Some(head) = &mut self.lm_head {
            head.weight = cast_param(head.weight.clone(), dtype);
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
        mut cache: Option<&mut KvCache<B>>,
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
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Limit(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        let head_dim = self.model.layers.first().map_or(2, |l| l.self_attn.head_dim);
        let ctx = Context::new(pos, head_dim, self.rope_theta, dropout_seed, self.dtype(), &device);
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let mut x = self.model.embed_tokens.forward(&ids, pos.batch, pos.seq);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &ctx, layer_cache);
        }
        Ok(self.model.norm.forward(x))
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

    /// Negative log-likelihood of `targets` given hidden rows `[rows, hidden]`, computed in chunks
    /// so that at most `chunk` rows of full-vocabulary logits exist at once.
    pub fn nll(&self, hidden: Tensor<B, 2>, targets: &[u32], chunk: usize) -> Tensor<B, 1> {
        let rows = hidden.dims()[0];
        let device = self.device();
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = chunk.max(1).min(rows - start);
            let logp = log_softmax(self.logits(hidden.clone().narrow(0, start, n)), 1);
            let idx: Vec<i64> = targets[start..start + n].iter().map(|&t| t as i64).collect();
            let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
            parts.push(logp.gather(1, idx).reshape([n]).neg());
            start += n;
        }
        Tensor::cat(parts, 0)
    }
}
