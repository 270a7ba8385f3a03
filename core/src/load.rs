//! Building a [`Qwen3ForCausalLM`] from a weight source (a checkpoint's safetensors or a seeded
//! random init), layer by layer: each tensor's shape is checked against the config, and each
//! layer is quantized and cast as soon as it is loaded, so the whole model never sits in memory
//! in f32 when a lighter form was asked for. Finding the files is [`crate::checkpoint`]'s job.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{FloatDType, TensorData};

use crate::config::Qwen3Config;
use crate::files::Files;
use crate::layout::Projection;
use crate::linear::{Linear, Quantization};
use crate::model::{Embedding, Qwen3Attention, Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3Mlp, Qwen3Model, RmsNorm};
use crate::previous_token::PreviousTokenHead;
use crate::weights::{RandomInit, WeightSource};
use crate::{Error, Result};

/// Every option of loading a model: how its weights are stored on the device (`max_tensor_bytes`,
/// `quantize`, `dtype`: applied by [`Qwen3ForCausalLM::load_with`] too) and what
/// [`crate::checkpoint::Checkpoint::load`] adds around it (an adapter, a tokenizer from
/// elsewhere, random weights instead of the checkpoint's).
#[derive(Clone, Default)]
pub struct LoadOptions<'a> {
    /// The most bytes (as f32) one tensor may take on the device: WebGPU adapters commonly cap a
    /// storage binding at 128 MiB, while Qwen3-0.6B's embedding is 594 MiB. A tied embedding
    /// (which is also the output layer) is then stored as row blocks under the limit; any other
    /// tensor over it is an error. `None`: no limit, one block.
    pub max_tensor_bytes: Option<usize>,
    /// Quantize each layer's projections as soon as it is loaded (see [`crate::quantize`]), so
    /// the whole model never sits in memory as f32.
    pub quantize: Option<Quantization>,
    /// Cast the base weights to this dtype as they load (see [`Qwen3ForCausalLM::cast_base`]).
    pub dtype: Option<FloatDType>,
    /// A LoRA adapter folder in PEFT's layout to attach.
    pub adapter: Option<&'a dyn Files>,
    /// Where `tokenizer.json` comes from, when not from the checkpoint's folder.
    pub tokenizer: Option<&'a dyn Files>,
    /// Seeded random weights of the config's shape instead of the checkpoint's safetensors.
    pub random_weights: Option<RandomWeights>,
}

/// A seeded normal init (transformers' `initializer_range` as `std`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomWeights {
    pub seed: u64,
    pub std: f32,
    /// Initial query/key RMSNorm weight (1 in transformers).
    pub qk_norm: f32,
    /// Start layer 0 with a previous-token head ([`crate::previous_token`]).
    pub previous_token: bool,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed, std: 0.02, qk_norm: 1.0, previous_token: false }
    }

    /// The random source for a model of `config`.
    pub fn source(&self, config: &Qwen3Config) -> RandomInit {
        let mut init = RandomInit::new(self.seed, self.std);
        init.qk_norm = self.qk_norm;
        init.previous_token = self.previous_token.then_some(PreviousTokenHead { head_dim: config.head_dim, rope_theta: config.rope_theta });
        init
    }
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

fn load_norm<B: Backend>(src: &mut dyn WeightSource, name: &str, dim: usize, eps: f64, device: &B::Device) -> Result<RmsNorm<B>> {
    Ok(RmsNorm { weight: load(src, &format!("{name}.weight"), [dim], device)?, eps })
}

fn load_embedding<B: Backend>(src: &mut dyn WeightSource, name: &str, shape: [usize; 2], max_bytes: Option<usize>, device: &B::Device) -> Result<Embedding<B>> {
    let [rows, cols] = shape;
    let per_block = max_bytes.map_or(rows, |limit| (limit / (cols * 4).max(1)).max(1));
    if per_block >= rows {
        return Ok(Embedding { weight: load(src, name, shape, device)?, rest: Vec::new() });
    }
    let values = src.load(name, &shape)?;
    let mut blocks = values.chunks(per_block * cols).map(|chunk| {
        let data = TensorData::new(chunk.to_vec(), [chunk.len() / cols, cols]);
        Param::from_tensor(Tensor::from_data(data, device)).set_require_grad(false)
    });
    let weight = blocks.next().expect("a table with rows");
    Ok(Embedding { weight, rest: blocks.collect() })
}


fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{bytes} bytes")
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
        cfg.check("the model's config")?;
        // A dtype the device lacks (f16 on a WebGPU adapter without shader-f16) failed in the
        // first cast with the backend's panic.
        if let Some(dtype) = opts.dtype {
            if !B::supports_dtype(device, dtype.into()) {
                return Err(Error::Unsupported(format!("dtype {}: this device does not support it (f32 works on every device)", crate::dtype::name(dtype))));
            }
        }
        src.check(&cfg.tensor_shapes())?;
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
        let (hd, d, eps) = (cfg.hidden_size, cfg.head_dim, cfg.rms_norm_eps);
        let embed_tokens =
            load_embedding(src, "model.embed_tokens.weight", [cfg.vocab_size, hd], max_bytes.filter(|_| cfg.tie_word_embeddings), device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linear = |proj: Projection| -> Result<Linear<B>> {
                Ok(Linear { weight: load(src, &format!("{}.weight", proj.path(i)), proj.shape(cfg), device)?, lora: None })
            };
            let (q_proj, k_proj, v_proj, o_proj) = (linear(Projection::Q)?, linear(Projection::K)?, linear(Projection::V)?, linear(Projection::O)?);
            let (gate_proj, up_proj, down_proj) = (linear(Projection::Gate)?, linear(Projection::Up)?, linear(Projection::Down)?);
            let mut norm = |name: &str, dim: usize| load_norm::<B>(src, &format!("{p}.{name}"), dim, eps, device);
            let mut layer = Qwen3DecoderLayer {
                self_attn: Qwen3Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    q_norm: norm("self_attn.q_norm", d)?,
                    k_norm: norm("self_attn.k_norm", d)?,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_key_value_heads,
                    head_dim: d,
                },
                mlp: Qwen3Mlp { gate_proj, up_proj, down_proj },
                input_layernorm: norm("input_layernorm", hd)?,
                post_attention_layernorm: norm("post_attention_layernorm", hd)?,
            };
            if let Some(q) = &opts.quantize {
                crate::quantize::quantize_layer(&mut layer, i, q)?;
            }
            if let Some(dtype) = opts.dtype {
                layer.cast_base(dtype);
            }
            layers.push(layer);
        }
        let norm = load_norm(src, "model.norm", hd, eps, device)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear { weight: load(src, "lm_head.weight", [cfg.vocab_size, hd], device)?, lora: None })
        };
        let mut model = Self {
            model: Qwen3Model { embed_tokens, layers, norm },
            lm_head,
            rope_theta: cfg.rope_theta,
            max_position_embeddings: cfg.max_position_embeddings,
            head_screen: None,
        };
        if let Some(dtype) = opts.dtype {
            model.cast_outside_layers(dtype);
        }
        if opts.quantize.is_some() {
            model.screen_head();
        }
        Ok(model)
    }

}
