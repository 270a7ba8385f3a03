//! Weight-only quantization of the decoder's projections (the seven of [`crate::layout`])
//! through burn's own quantization: symmetric int8 or int4, one f32 scale per block of
//! consecutive input weights of a row. The stored weights shrink (on GPU backends int4 packs
//! eight to a u32); each forward dequantizes a projection just before its matmul, in the
//! activations' dtype ([`crate::linear::Linear`]). The embedding (also the tied output layer)
//! and norms stay unquantized: for vocabulary-heavy small models like Qwen3-0.6B the output
//! layer is where rounding hurts most. On the CPU an int8 copy of the output layer is added for
//! greedy decoding, which it screens without changing a token ([`crate::head_screen`]).

use burn::prelude::*;

pub use crate::linear::{Bits, Quantization};
use crate::layout::PROJECTIONS;
use crate::model::{Qwen3DecoderLayer, Qwen3ForCausalLM};
use crate::Result;

impl<B: Backend> Qwen3ForCausalLM<B> {
    /// The seven projections of every layer quantized (LoRA adapters, if any, stay as they are).
    /// Refused, naming the tensor, where the block does not divide a row. To never hold the
    /// whole model in f32, quantize while loading instead ([`crate::LoadOptions::quantize`]).
    pub fn quantize_projections(mut self, q: &Quantization) -> Result<Self> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            quantize_layer(layer, i, q)?;
        }
        self.screen_head();
        Ok(self)
    }
}

/// Layer `index`'s seven projections quantized.
pub fn quantize_layer<B: Backend>(layer: &mut Qwen3DecoderLayer<B>, index: usize, q: &Quantization) -> Result<()> {
    for p in PROJECTIONS {
        layer.projection_mut(p).quantize(q, &format!("{}.weight", p.path(index)))?;
    }
    Ok(())
}
