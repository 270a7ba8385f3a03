//! Every parameter of the model by its checkpoint key, for full fine-tuning and for saving a
//! whole model: the optimizer treats RMSNorm vectors as `[1, n]` matrices so that one AdamW loop
//! and one state layout serve both.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::layout::Projection;
use crate::model::Qwen3ForCausalLM;
use crate::Result;

/// A mutable handle to one parameter, vector or matrix.
pub enum ParamMut<'a, B: Backend> {
    Vector(&'a mut Param<Tensor<B, 1>>),
    Matrix(&'a mut Param<Tensor<B, 2>>),
}

impl<B: Backend> ParamMut<'_, B> {
    /// The shape as the optimizer sees it: vectors are `[1, n]`.
    pub fn dims2(&self) -> [usize; 2] {
        match self {
            Self::Vector(p) => [1, p.dims()[0]],
            Self::Matrix(p) => p.dims(),
        }
    }

    /// Marks the parameter trainable (checkpoint weights load frozen).
    pub fn train(&mut self) {
        match self {
            Self::Vector(p) => **p = p.clone().set_require_grad(true),
            Self::Matrix(p) => **p = p.clone().set_require_grad(true),
        }
    }
}

impl<B: AutodiffBackend> ParamMut<'_, B> {
    pub fn value(&self) -> Tensor<B::InnerBackend, 2> {
        match self {
            Self::Vector(p) => p.val().inner().unsqueeze(),
            Self::Matrix(p) => p.val().inner(),
        }
    }

    pub fn grad(&self, grads: &B::Gradients) -> Option<Tensor<B::InnerBackend, 2>> {
        match self {
            Self::Vector(p) => p.val().grad(grads).map(|g| g.unsqueeze()),
            Self::Matrix(p) => p.val().grad(grads),
        }
    }

    /// Replaces the value (a trainable leaf again).
    pub fn set(&mut self, value: Tensor<B::InnerBackend, 2>) {
        match self {
            Self::Vector(p) => {
                let n = value.dims()[1];
                **p = Param::from_tensor(Tensor::from_inner(value.reshape([n])));
            }
            Self::Matrix(p) => **p = Param::from_tensor(Tensor::from_inner(value)),
        }
    }
}

/// Every base parameter by checkpoint key, in the order the checkpoint lists them (LoRA pairs
/// are not included).
pub fn named_params_mut<B: Backend>(model: &mut Qwen3ForCausalLM<B>) -> Vec<(String, ParamMut<'_, B>)> {
    let mut out = Vec::new();
    let m = &mut model.model;
    out.push(("model.embed_tokens.weight".to_string(), ParamMut::Matrix(&mut m.embed_tokens.weight)));
    for (i, layer) in m.layers.iter_mut().enumerate() {
        let a = &mut layer.self_attn;
        let mlp = &mut layer.mlp;
        // Checkpoint order: attention projections and their norms, then the MLP, then the layer norms.
        let linears = [
            (Projection::Q, &mut a.q_proj),
            (Projection::K, &mut a.k_proj),
            (Projection::V, &mut a.v_proj),
            (Projection::O, &mut a.o_proj),
        ];
        out.extend(linears.map(|(p, l)| (format!("{}.weight", p.path(i)), ParamMut::Matrix(&mut l.weight))));
        out.push((format!("model.layers.{i}.self_attn.q_norm.weight"), ParamMut::Vector(&mut a.q_norm.weight)));
        out.push((format!("model.layers.{i}.self_attn.k_norm.weight"), ParamMut::Vector(&mut a.k_norm.weight)));
        let linears = [(Projection::Gate, &mut mlp.gate_proj), (Projection::Up, &mut mlp.up_proj), (Projection::Down, &mut mlp.down_proj)];
        out.extend(linears.map(|(p, l)| (format!("{}.weight", p.path(i)), ParamMut::Matrix(&mut l.weight))));
        out.push((format!("model.layers.{i}.input_layernorm.weight"), ParamMut::Vector(&mut layer.input_layernorm.weight)));
        out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), ParamMut::Vector(&mut layer.post_attention_layernorm.weight)));
    }
    out.push(("model.norm.weight".to_string(), ParamMut::Vector(&mut m.norm.weight)));
    if let Some(head) = model.lm_head.as_mut() {
        out.push(("lm_head.weight".to_string(), ParamMut::Matrix(&mut head.weight)));
    }
    out
}

/// A tensor to write: checkpoint key, shape, f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every base tensor, for writing a checkpoint.
pub fn base_tensors<B: Backend>(model: &Qwen3ForCausalLM<B>) -> Result<Vec<NamedTensor>> {
    // The visitor needs `&mut`; a clone shares the tensors' storage, so this copies nothing.
    let mut model = model.clone();
    let mut out = Vec::new();
    for (name, p) in named_params_mut(&mut model) {
        let (shape, data) = match p {
            ParamMut::Vector(p) => (p.dims().to_vec(), p.val().into_data()),
            ParamMut::Matrix(p) => (p.dims().to_vec(), p.val().into_data()),
        };
        let values = data.convert::<f32>().to_vec::<f32>().map_err(|e| crate::Error::Tensor(format!("{name}: {e:?}")))?;
        out.push((name, shape, values));
    }
    Ok(out)
}

/// The first parameter (base weight, then LoRA pair) holding a NaN or an infinity, by
/// checkpoint key: what a loss that is NaN from its first step names as its cause.
pub fn first_non_finite<B: Backend>(model: &Qwen3ForCausalLM<B>) -> Option<String> {
    for (name, p) in named_params_mut(&mut model.clone()) {
        let found = match p {
            ParamMut::Vector(p) => holds_non_finite(p.val().into_data()),
            ParamMut::Matrix(p) => holds_non_finite(p.val().into_data()),
        };
        if found {
            return Some(name);
        }
    }
    first_non_finite_lora(model)
}

fn holds_non_finite(data: TensorData) -> bool {
    data.convert::<f32>().to_vec::<f32>().unwrap_or_default().iter().any(|x| !x.is_finite())
}

/// The first LoRA matrix holding a NaN or an infinity, by PEFT key.
pub fn first_non_finite_lora<B: Backend>(model: &Qwen3ForCausalLM<B>) -> Option<String> {
    let mut model = model.clone();
    for (layer, projection, linear) in model.projections_mut() {
        if let Some(lora) = &linear.lora {
            for (which, p) in [("lora_A", &lora.lora_A), ("lora_B", &lora.lora_B)] {
                if holds_non_finite(p.val().into_data()) {
                    return Some(format!("{}.{which}.weight", projection.path(layer)));
                }
            }
        }
    }
    None
}
