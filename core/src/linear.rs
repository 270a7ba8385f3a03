//! `nn.Linear(bias=False)` and its two other forms: with a LoRA pair (PEFT's LoRA layer, the
//! low-rank update added in activation space, never materialising `W + BA`) and with its weight
//! stored quantized (burn's per-block symmetric int8/int4, dequantized just before each matmul;
//! on flex straight from its blocks, a tile at a time for many rows).
//! A leaf module: the model, LoRA adapters and quantization build on it.

#![allow(non_snake_case)] // PEFT names the LoRA matrices lora_A and lora_B; the fields keep its names.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::ops::QuantizedTensor;
use burn::tensor::quantization::{QTensorPrimitive, QuantLevel, QuantParam, QuantScheme, QuantValue};
use burn::tensor::{DType, Distribution, FloatDType, TensorData};

use crate::dtype::{float_dtype, to_dtype};
use crate::{Error, Result};

/// `weight` is `[out, in]` as in the checkpoint. With `lora`, PEFT's LoRA layer.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    /// A frozen weight without adapter.
    pub fn frozen(weight: Tensor<B, 2>) -> Self {
        Self { weight: Param::from_tensor(weight).set_require_grad(false), lora: None }
    }

    /// `dropout_seed` is set while training: LoRA dropout masks derive from it.
    pub fn forward(&self, x: Tensor<B, 3>, dropout_seed: Option<u64>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let x = x.reshape([b * t, d]);
        let weight = self.weight.val();
        let mut out = if matches!(weight.dtype(), DType::QFloat(_)) {
            match crate::flex::quantized_linear(&x, &weight) {
                Some(out) => out,
                None => crate::flex::linear(x.clone(), to_dtype(weight.dequantize(), float_dtype(&x))),
            }
        } else {
            crate::flex::linear(x.clone(), weight)
        };
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

    /// The weight stored quantized; `name` (its checkpoint key) is for the error when the block
    /// does not divide a row.
    pub fn quantize(&mut self, q: &Quantization, name: &str) -> Result<()> {
        q.check()?;
        let [_, inp] = self.weight.dims();
        if !inp.is_multiple_of(q.block) {
            return Err(Error::Limit(format!("`{name}`: its rows of {inp} weights do not split into quantization blocks of {}", q.block)));
        }
        // Scales come from f32 weights whatever dtype the base was cast to.
        let w = self.weight.val().cast(FloatDType::F32).quantize_dynamic(&q.scheme::<B>());
        self.weight = Param::from_tensor(w).set_require_grad(false);
        Ok(())
    }
}

/// How many bits each quantized weight keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    Int8,
    Int4,
}

/// Weight-only quantization of a projection: symmetric, one f32 scale per block.
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

    fn check(&self) -> Result<()> {
        if self.block == 0 || self.block > 255 {
            return Err(Error::Limit(format!("quantization block {} must be between 1 and 255 weights", self.block)));
        }
        Ok(())
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

/// One LoRA pair on a projection: `lora_A` `[r, in]`, `lora_B` `[out, r]`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_A: Param<Tensor<B, 2>>,
    pub lora_B: Param<Tensor<B, 2>>,
    pub scaling: f64,
    pub dropout: f64,
    /// Distinguishes this module's dropout masks from every other module's.
    pub tag: u64,
}

static DROPOUT_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Mixes a seed with a tag (splitmix64), so masks are a pure function of (seed, step, module):
/// reproducible, and a resumed run draws exactly the masks the uninterrupted one would have.
#[inline(always)]
pub fn mix(seed: u64, tag: u64) -> u64 {
    let mut z = seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` dropout multipliers as torch makes them: `1/keep` with probability `keep`, else 0. Two
/// per 64-bit draw of a counter-based splitmix64 stream keyed by `seed`. On the CPU this replaces
/// burn's per-element ChaCha draws, which were 8 % of a LoRA training step (BENCHMARKS.md).
pub fn keep_mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n.next_multiple_of(2)];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU has both, checked just above.
        unsafe { fill_mask_avx512(&mut out, keep, seed) };
        out.truncate(n);
        return out;
    }
    fill_mask(&mut out, keep, seed);
    out.truncate(n);
    out
}

/// [`fill_mask`] compiled with AVX-512's 64-bit products, so that eight draws go at once (the
/// scalar loop was 2.5 % of a LoRA step on the 0.6B shape).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn fill_mask_avx512(out: &mut [f32], keep: f64, seed: u64) {
    fill_mask(out, keep, seed)
}

#[inline(always)]
fn fill_mask(out: &mut [f32], keep: f64, seed: u64) {
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let pick = |bits: u64| if bits < threshold { scale } else { 0.0 };
    for (i, pair) in (0u64..).zip(out.chunks_exact_mut(2)) {
        let z = mix(seed, i);
        pair[0] = pick(z & 0xFFFF_FFFF);
        pair[1] = pick(z >> 32);
    }
}

impl<B: Backend> Lora<B> {
    /// `scaling · B(A(dropout(x)))` for rows `x` `[n, in]`; dropout only when `dropout_seed` is set.
    pub fn forward(&self, x: Tensor<B, 2>, dropout_seed: Option<u64>) -> Tensor<B, 2> {
        let x = match dropout_seed {
            Some(seed) if self.dropout > 0.0 => {
                let device = x.device();
                let keep = 1.0 - self.dropout;
                let seed = mix(seed, self.tag);
                let mask = if crate::flex::is_cpu::<B>() {
                    Tensor::from_data(TensorData::new(keep_mask(x.dims().iter().product(), keep, seed), x.dims()), &device)
                } else {
                    // Backends keep one RNG per process: seeding and drawing must not interleave
                    // with another training thread's (micro-batches and devices run concurrently).
                    let _one_at_a_time = DROPOUT_RNG.lock().unwrap_or_else(|e| e.into_inner());
                    B::seed(&device, seed);
                    Tensor::<B, 2>::random(x.dims(), Distribution::Bernoulli(keep), &device).div_scalar(keep)
                };
                x.mul(mask)
            }
            _ => x,
        };
        // The scaling goes on the `[n, r]` product instead of PEFT's `[n, out]` result: a pass
        // over r = 8 columns instead of thousands, and the same numbers when it is a power of
        // two (the recipe's 32 / 8 = 4), since multiplying by a power of two is exact.
        x.matmul(self.lora_A.val().transpose()).mul_scalar(self.scaling).matmul(self.lora_B.val().transpose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_mask_keeps_the_asked_share_at_torchs_scale_and_depends_only_on_its_seed() {
        let n = 200_001;
        let mask = keep_mask(n, 0.9, 42);
        assert_eq!(mask.len(), n);
        let scale = (1.0 / 0.9) as f32;
        assert!(mask.iter().all(|&m| m == 0.0 || m == scale));
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        // Binomial standard deviation at n = 2e5 is 0.00067: 0.003 is 4.5 of them.
        assert!((kept - 0.9).abs() < 0.003, "kept {kept}");
        assert_eq!(mask, keep_mask(n, 0.9, 42));
        let other = keep_mask(n, 0.9, 43);
        let same = mask.iter().zip(&other).filter(|(a, b)| a == b).count() as f64 / n as f64;
        // Independent masks agree on 0.9² + 0.1² = 82 % of positions.
        assert!((same - 0.82).abs() < 0.005, "agree {same}");
        // Neighbouring elements (the two halves of one draw) are not correlated.
        let pairs = mask.chunks(2).filter(|p| p.len() == 2 && p[0] == 0.0 && p[1] == 0.0).count() as f64;
        assert!((pairs / (n / 2) as f64 - 0.01).abs() < 0.002);
    }
}
