//! Casting between float dtypes where transformers casts: no cast (and no autodiff node) when a
//! tensor already has the dtype, so f32 runs pay nothing for the half-precision paths.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

/// `x` in `dtype`; no cast (and no autodiff node) when it already is.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if x.dtype() == DType::from(dtype) {
        x
    } else {
        x.cast(dtype)
    }
}

/// The float dtype of a tensor (f32 for anything that is not a half type).
pub fn float_dtype<B: Backend, const D: usize>(x: &Tensor<B, D>) -> FloatDType {
    match x.dtype() {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

/// A frozen base parameter cast to `dtype`; quantized weights stay quantized.
pub fn cast_param<B: Backend, const D: usize>(p: Param<Tensor<B, D>>, dtype: FloatDType) -> Param<Tensor<B, D>> {
    if matches!(p.val().dtype(), DType::QFloat(_)) {
        return p;
    }
    p.map(|t| to_dtype(t, dtype)).set_require_grad(false)
}

/// `f32`, `bf16`, `f16` (`f64`): as `--dtype` spells it.
pub fn name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::BF16 => "bf16",
        FloatDType::F16 => "f16",
        FloatDType::F64 => "f64",
        _ => "f32",
    }
}
