//! Weight-only quantization of the decoder's projections (q, k, v, o, gate, up, down) through
//! burn's own quantization: symmetric int8 or int4, one f32 scale per block of consecutive
//! input weights of a row. The stored weights shrink (on GPU backends int4 packs eight to a
//! u32); each forward dequantizes a projection just before its matmul, in the activations'
//! dtype. The embedding (also the tied output layer) and norms stay unquantized: for small
//! vocabularies-heavy models like Qwen3-0.6B the output layer is where rounding hurts most.

use burn::prelude::*;
use burn::tensor::ops::QuantizedTensor;
use burn::tensor::quantization::{QTensorPrimitive, QuantLevel, QuantParam, QuantScheme, QuantValue};

use crate::model::{Linear, Qwen3DecoderLayer, Qwen3ForCausalLM};
use crate::{Error, Result};

/// How many bits each quantized weight keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    Int8,
    Int4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantization {
    pub bits: Bits,
    /// Weights per scale, consecutive along a row's input dimension (which it must divide).
    pub block: usize,
}

impl Quantization {
    pub fn new(bits: Bits) -> Self {
        Self { bits, block: 32 }
    }

    fn scheme<B: Backend>(&self) -> QuantScheme {
        let value = match self.bits {
            Bits::Int8 => QuantValue::Q8S,
            Bits::Int4 => QuantValue::Q4S,
        };
        <QuantizedTensor<B> as QTensorPrimitive>::default_scheme()
            .with_value(value)
            .with_level(QuantLevel::block([self.block as u8]))
            .with_param(QuantParam::F32)
    }
}

impl<B: Backend> Qwen3ForCausalLM<B> {
    /// The seven projections of every layer quantized (LoRA adapters, if any, stay as they are).
    /// Refused, naming the tensor, where the block does not divide a row. To never hold the
    /// whole model in f32, quantize while loading instead ([`crate::LoadOptions::quantize`]).
    pub fn quantize_projections(mut self, q: &Quantization) -> Result<Self> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            quantize_layer(layer, i, q)?;
        }
        Ok(self)
    }
}

/// Layer `index`'s seven projections quantized.
pub fn quantize_layer<B: Backend>(layer: &mut Qwen3DecoderLayer<B>, index: usize, q: &Quantization) -> Result<()> {
    if q.block == 0 || q.block > 255 {
        return Err(Error::Limit(format!("quantization block {} must be between 1 and 255 weights", q.block)));
    }
    let scheme = q.scheme::<B>();
    let a = &mut layer.self_attn;
    let m = &mut layer.mlp;
    let projections = [
        ("self_attn.q_proj", &mut a.q_proj),
        ("self_attn.k_proj", &mut a.k_proj),
        ("self_attn.v_proj", &mut a.v_proj),
        ("self_attn.o_proj", &mut a.o_proj),
        ("mlp.gate_proj", &mut m.gate_proj),
        ("mlp.up_proj", &mut m.up_proj),
        ("mlp.down_proj", &mut m.down_proj),
    ];
    for (name, lin) in projections {
        quantize_linear(lin, &scheme, q.block, &format!("model.layers.{index}.{name}.weight"))?;
    }
    Ok(())
}

fn quantize_linear<B: Backend>(lin: &mut Linear<B>, scheme: &QuantScheme, block: usize, name: &str) -> Result<()> {
    let [_, inp] = lin.weight.dims();
    if !inp.is_multiple_of(block) {
        return Err(Error::Limit(format!("`{name}`: its rows of {inp} weights do not split into quantization blocks of {block}")));
    }
    // Scales come from f32 weights whatever dtype the base was cast to.
    let w = lin.weight.val().cast(burn::tensor::FloatDType::F32).quantize_dynamic(scheme);
    lin.weight = burn::module::Param::from_tensor(w).set_require_grad(false);
    Ok(())
}
