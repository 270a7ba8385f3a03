//! One optimizer step of fine-tuning, as transformers' Trainer (+ PEFT for LoRA) takes it:
//! gradient accumulation with the loss normalised by the label tokens of the whole accumulated
//! batch, global-norm clipping, torch's AdamW, and a linear decay to 0 after an optional warmup.

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::linear::mix;
use crate::loss::LabelledBatch;
use crate::model::Qwen3ForCausalLM;
use crate::params::{named_params_mut, ParamMut};
use crate::sft::Example;
use crate::{Error, Result};

/// torch.optim.AdamW's hyper-parameters (named as transformers' `TrainingArguments` in a run's
/// config.toml).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    #[serde(rename = "adam_beta1")]
    pub beta1: f64,
    #[serde(rename = "adam_beta2")]
    pub beta2: f64,
    #[serde(rename = "adam_epsilon")]
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// transformers' `get_linear_schedule_with_warmup(…, warmup, total)`: the learning rate of
/// optimizer step `step` (0-based).
pub fn linear_lr(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * step as f64 / warmup as f64;
    }
    lr * (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64)
}

/// What training updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LoRA pairs only; the base stays frozen.
    #[default]
    Lora,
    /// Every parameter of the model.
    Full,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lora" => Ok(Self::Lora),
            "full" => Ok(Self::Full),
            _ => Err(format!("unknown method `{s}` (lora, full)")),
        }
    }
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Full => "full",
        }
    }
}

/// What backward recomputes instead of keeping from forward (`gradient_checkpointing` in a run's
/// settings; `true` and `false`, transformers' values, stand for `balanced` and `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// Every activation kept: the fastest, the most memory.
    None,
    /// burn's balanced strategy: memory-bound operations recomputed, products kept.
    #[default]
    Balanced,
    /// Each decoder layer's input kept, the layer recomputed in backward (transformers'
    /// `gradient_checkpointing_enable()`): the least memory, one more forward pass.
    Layer,
}

impl Checkpointing {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Balanced => "balanced",
            Self::Layer => "layer",
        }
    }
}

impl std::str::FromStr for Checkpointing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" | "false" => Ok(Self::None),
            "balanced" | "true" => Ok(Self::Balanced),
            "layer" => Ok(Self::Layer),
            _ => Err(format!("unknown gradient checkpointing `{s}` (none, balanced, layer; true = balanced, false = none)")),
        }
    }
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Checkpointing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Checkpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // A visitor rather than an untagged enum, whose error ("did not match any variant")
        // names neither the choices nor what was given.
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = Checkpointing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("none, balanced, layer, true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> std::result::Result<Checkpointing, E> {
                Ok(if on { Checkpointing::Balanced } else { Checkpointing::None })
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<Checkpointing, E> {
                name.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Choice)
    }
}

/// AdamW moments of every trainable tensor, in [`trainable_params`] order.
#[derive(Debug, Clone)]
pub struct AdamWState<B: Backend> {
    pub exp_avg: Vec<Tensor<B, 2>>,
    pub exp_avg_sq: Vec<Tensor<B, 2>>,
    /// Optimizer steps taken.
    pub step: usize,
}

/// Mutable handles to the trainable tensors in a fixed order: every LoRA A and B, or with
/// [`Method::Full`] every base parameter in checkpoint order.
pub fn trainable_params<B: Backend>(model: &mut Qwen3ForCausalLM<B>, method: Method) -> Vec<ParamMut<'_, B>> {
    if method == Method::Full {
        return named_params_mut(model).into_iter().map(|(_, p)| p).collect();
    }
    let mut out = Vec::new();
    for (_, _, linear) in model.projections_mut() {
        if let Some(lora) = linear.lora.as_mut() {
            out.push(ParamMut::Matrix(&mut lora.lora_A));
            out.push(ParamMut::Matrix(&mut lora.lora_B));
        }
    }
    out
}

/// Mean loss, label tokens and gradients (in [`trainable_params`] order) of one accumulated batch.
pub type Gradients<B> = (f64, usize, Vec<Tensor<B, 2>>);

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean NLL per label token over the accumulated batch (the value transformers logs).
    pub loss: f64,
    pub label_tokens: usize,
    /// Tokens processed, padding excluded.
    pub tokens: usize,
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct Trainer<B: AutodiffBackend> {
    pub model: Qwen3ForCausalLM<B>,
    pub state: AdamWState<B::InnerBackend>,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (transformers' default 1.0); 0 disables.
    pub max_grad_norm: f64,
    /// Dropout masks derive from this and the step.
    pub seed: u64,
    pub method: Method,
    /// Micro-batches computed at once, each on its own thread (CPU backends use the cores better
    /// this way than with one small batch at a time); results do not depend on it.
    pub threads: usize,
    /// Keep each decoder layer's input only and recompute the layer in backward (per-layer
    /// checkpointing; use it with a backend without burn's own checkpointing).
    pub recompute_layers: bool,
    /// Data parallelism: copies of the model on further devices (see [`Trainer::set_devices`]).
    replicas: Vec<Qwen3ForCausalLM<B>>,
}

/// NLL sum and gradients (in [`trainable_params`] order) of one micro-batch.
type MicroGradients<B> = (f64, Vec<Option<Tensor<<B as AutodiffBackend>::InnerBackend, 2>>>);

/// Gives every parameter a fresh autodiff leaf over the same storage. burn 0.21 merges graphs
/// that share leaves, and two threads doing so at once deadlock on its graph locks; with leaves of
/// their own, each thread's graph stays apart.
struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let trainable = tensor.is_require_grad();
        let leaf = Tensor::from_inner(tensor.inner());
        Param::from_mapped_value(id, if trainable { leaf.require_grad() } else { leaf }, mapper)
    }
}

/// The message a panic carried (device failures such as running out of memory arrive so).
fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    let text = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
    text.unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()).take(3).collect::<Vec<_>>().join(" ")
}

/// `t` on `device`, through host memory: not every backend copies between its devices directly
/// (cubecl's wgpu server leaves peer-to-peer copies unimplemented), and what crosses per step
/// (trainable weights out, their gradients back) is small.
fn via_host<B: Backend, const D: usize>(t: Tensor<B, D>, device: &B::Device) -> Tensor<B, D> {
    if &t.device() == device {
        return t;
    }
    let data = t.into_data();
    let dtype = data.dtype;
    Tensor::from_data(data, (device, dtype))
}

/// A copy of a module on another device (through host memory, see [`via_host`]), trainable
/// parameters still trainable.
struct ViaHost<D> {
    device: D,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ViaHost<B::Device> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let trainable = tensor.is_require_grad();
        let copy = Tensor::from_inner(via_host(tensor.inner(), &self.device));
        Param::from_mapped_value(id, if trainable { copy.require_grad() } else { copy }, mapper)
    }
}

fn micro_gradients<B: AutodiffBackend>(model: &Qwen3ForCausalLM<B>, method: Method, lb: &LabelledBatch, dropout_seed: u64, norm: f64, recompute_layers: bool) -> Result<MicroGradients<B>> {
    let mut model = model.clone().map(&mut FreshLeaves);
    if recompute_layers {
        return layer_by_layer(&mut model, method, lb, dropout_seed, norm);
    }
    let hidden = model.hidden_train(&lb.ids, &lb.pos, dropout_seed)?;
    let loss = lb.head_loss(&model, hidden)?;
    let (nll, grads) = (loss.nll, loss.surrogate.div_scalar(norm).backward());
    let out = trainable_params(&mut model, method).iter().map(|p| p.grad(&grads)).collect();
    Ok((nll, out))
}

/// [`micro_gradients`] with per-layer checkpointing, as transformers'
/// `gradient_checkpointing_enable()` does it: the layers run once outside the graph keeping only
/// each layer's input; the final norm, output layer and loss run in the graph from the last
/// layer's output; then, from the last layer down, each layer runs again in the graph from its
/// kept input and is back-propagated alone from its output's gradient (`Σ y ⊙ ∂loss/∂y`).
/// Activations of one layer at a time instead of all of them, for one more forward pass. The
/// dropout masks are a function of (seed, module), so the recomputed layer draws the same ones.
fn layer_by_layer<B: AutodiffBackend>(model: &mut Qwen3ForCausalLM<B>, method: Method, lb: &LabelledBatch, dropout_seed: u64, norm: f64) -> Result<MicroGradients<B>> {
    let (batch, seq) = (lb.pos.batch, lb.pos.seq);
    let mut inputs = Vec::with_capacity(model.model.layers.len());
    let last = {
        let inner = model.valid();
        let ctx = inner.train_context(&lb.ids, &lb.pos, dropout_seed)?;
        let mut x = inner.embed(&lb.ids, batch, seq);
        for layer in &inner.model.layers {
            inputs.push(x.clone());
            x = layer.forward_train(x, &ctx);
        }
        Tensor::<B, 3>::from_inner(x).require_grad()
    };
    let mut acc: Vec<Option<Tensor<B::InnerBackend, 2>>> = vec![None; trainable_params(model, method).len()];
    let mut collect = |model: &mut Qwen3ForCausalLM<B>, grads: &B::Gradients| {
        for (slot, p) in acc.iter_mut().zip(trainable_params(model, method)) {
            if let Some(g) = p.grad(grads) {
                *slot = Some(match slot.take() {
                    Some(prev) => prev.add(g),
                    None => g,
                });
            }
        }
    };
    let missing = || Error::Other("per-layer checkpointing: a layer's input received no gradient".into());
    let loss = lb.head_loss(model, model.model.norm.forward(last.clone()))?;
    let grads = loss.surrogate.div_scalar(norm).backward();
    collect(model, &grads);
    let mut dy = last.grad(&grads).ok_or_else(missing)?;
    let ctx = model.train_context(&lb.ids, &lb.pos, dropout_seed)?;
    for i in (0..model.model.layers.len()).rev() {
        let x = Tensor::<B, 3>::from_inner(inputs.pop().ok_or_else(missing)?).require_grad();
        let y = model.model.layers[i].forward_train(x.clone(), &ctx);
        let grads = y.mul(Tensor::from_inner(dy)).sum().backward();
        collect(model, &grads);
        dy = x.grad(&grads).ok_or_else(missing)?;
    }
    // A trained embedding (full fine-tuning) takes the first layer's input gradient at the ids' rows.
    if model.model.embed_tokens.weight.val().is_require_grad() {
        let grads = model.embed(&lb.ids, batch, seq).mul(Tensor::from_inner(dy)).sum().backward();
        collect(model, &grads);
    }
    Ok((loss.nll, acc))
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(mut model: Qwen3ForCausalLM<B>, method: Method, adamw: AdamWConfig, max_grad_norm: f64, seed: u64) -> Result<Self> {
        let device = model.device();
        let mut params = trainable_params(&mut model, method);
        if params.is_empty() {
            return Err(Error::Other("nothing to train: the model has no LoRA layers".into()));
        }
        params.iter_mut().for_each(ParamMut::train);
        let zeros = |p: &ParamMut<B>| Tensor::<B::InnerBackend, 2>::zeros(p.dims2(), &device);
        let exp_avg = params.iter().map(zeros).collect();
        let exp_avg_sq = params.iter().map(zeros).collect();
        Ok(Self {
            model,
            state: AdamWState { exp_avg, exp_avg_sq, step: 0 },
            adamw,
            max_grad_norm,
            seed,
            method,
            threads: 1,
            recompute_layers: false,
            replicas: Vec::new(),
        })
    }

    /// Data-parallel training over the model's device and `more` devices: each step, micro-batch
    /// k runs on device k mod n (on its own thread), gradients are moved to the model's device
    /// and summed there in micro-batch order, and only the updated trainable weights are copied
    /// back out. Same numbers as one device with the same global batch, up to the devices'
    /// kernels. The base weights are copied once, here.
    pub fn set_devices(&mut self, more: &[B::Device]) {
        self.replicas = more.iter().map(|d| self.model.clone().map(&mut ViaHost { device: d.clone() })).collect();
    }

    /// The trainable weights of the model, copied to every replica.
    fn sync_replicas(&mut self) {
        if self.replicas.is_empty() {
            return;
        }
        let values: Vec<_> = trainable_params(&mut self.model, self.method).iter().map(ParamMut::value).collect();
        for replica in &mut self.replicas {
            let device = replica.device();
            for (mut p, v) in trainable_params(replica, self.method).into_iter().zip(&values) {
                p.set(via_host(v.clone(), &device));
            }
        }
    }

    /// Loss and gradients of one accumulated batch, without updating anything: the loss of
    /// each micro-batch is its NLL sum over the label tokens of the whole accumulated batch.
    /// Returns (mean loss, label tokens, gradients in [`trainable_params`] order).
    pub fn gradients(&mut self, micro_batches: &[&[Example]]) -> Result<Gradients<B::InnerBackend>> {
        let max_pos = self.model.max_position_embeddings;
        let prepared = micro_batches.iter().map(|mb| LabelledBatch::new(mb, max_pos)).collect::<Result<Vec<_>>>()?;
        let label_tokens: usize = prepared.iter().map(|p| p.rows.len()).sum();
        let norm = label_tokens.max(1) as f64;
        let mut acc: Vec<Option<Tensor<B::InnerBackend, 2>>> = vec![None; self.state.exp_avg.len()];
        let mut nll_total = 0.0f64;
        let step_seed = mix(self.seed, self.state.step as u64);
        self.sync_replicas();
        let models: Vec<&Qwen3ForCausalLM<B>> = std::iter::once(&self.model).chain(&self.replicas).collect();
        let (method, main, recompute) = (self.method, self.model.device(), self.recompute_layers);
        let work: Vec<(usize, &LabelledBatch)> = prepared.iter().enumerate().filter(|(_, lb)| !lb.rows.is_empty()).collect();
        // Micro-batches are independent until their gradients are summed, which happens in their
        // order whatever thread or device computed them: the numbers do not depend on `threads`.
        for wave in work.chunks(self.threads.max(models.len())) {
            let on = |j: usize| models[j % models.len()];
            let results: Vec<Result<MicroGradients<B>>> = if wave.len() == 1 {
                vec![micro_gradients(on(0), method, wave[0].1, mix(step_seed, wave[0].0 as u64), norm, recompute)]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = wave
                        .iter()
                        .enumerate()
                        .map(|(j, &(k, lb))| {
                            let model = on(j);
                            scope.spawn(move || micro_gradients(model, method, lb, mix(step_seed, k as u64), norm, recompute))
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| Err(Error::Other(format!("a training thread failed: {}", panic_text(&p)))))).collect()
                })
            };
            for result in results {
                let (nll, grads) = result?;
                nll_total += nll;
                for (slot, g) in acc.iter_mut().zip(grads) {
                    if let Some(g) = g.map(|g| via_host(g, &main)) {
                        *slot = Some(match slot.take() {
                            Some(prev) => prev.add(g),
                            None => g,
                        });
                    }
                }
            }
        }
        let grads = acc
            .into_iter()
            .zip(&self.state.exp_avg)
            .map(|(g, m)| g.unwrap_or_else(|| m.zeros_like()))
            .collect();
        Ok((nll_total / norm, label_tokens, grads))
    }

    /// One optimizer step over `micro_batches` (gradient accumulation), at learning rate `lr`.
    /// A non-finite loss is an error and leaves the weights untouched.
    pub fn step(&mut self, micro_batches: &[&[Example]], lr: f64) -> Result<StepStats> {
        let tokens: usize = micro_batches.iter().flat_map(|mb| mb.iter().map(Example::len)).sum();
        let (loss, label_tokens, grads) = self.gradients(micro_batches)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite { step: self.state.step + 1, loss });
        }
        let mut sq = 0.0;
        for g in &grads {
            sq += scalar(g.clone().square().sum())?;
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite { step: self.state.step + 1, loss: grad_norm });
        }
        // torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1.
        let clip = if self.max_grad_norm > 0.0 { (self.max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
        self.apply_adamw(grads, clip, lr);
        Ok(StepStats { loss, label_tokens, tokens, grad_norm, lr })
    }

    /// torch.optim.AdamW: decoupled weight decay, bias-corrected moments, eps outside the root.
    fn apply_adamw(&mut self, grads: Vec<Tensor<B::InnerBackend, 2>>, clip: f64, lr: f64) {
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.adamw;
        self.state.step += 1;
        let t = self.state.step as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        let state = &mut self.state;
        for (i, (mut param, g)) in trainable_params(&mut self.model, self.method).into_iter().zip(grads).enumerate() {
            let g = if clip < 1.0 { g.mul_scalar(clip) } else { g };
            let m = state.exp_avg[i].clone().mul_scalar(beta1).add(g.clone().mul_scalar(1.0 - beta1));
            let v = state.exp_avg_sq[i].clone().mul_scalar(beta2).add(g.square().mul_scalar(1.0 - beta2));
            let mut p = param.value();
            if weight_decay > 0.0 {
                p = p.mul_scalar(1.0 - lr * weight_decay);
            }
            let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(eps);
            p = p.sub(m.clone().div(denom).mul_scalar(lr / bc1));
            param.set(p);
            state.exp_avg[i] = m;
            state.exp_avg_sq[i] = v;
        }
    }
}

fn scalar<B: Backend>(x: Tensor<B, 1>) -> Result<f64> {
    let v: Vec<f32> = x.into_data().convert::<f32>().to_vec().map_err(|e| Error::Other(format!("{e:?}")))?;
    Ok(v.first().copied().unwrap_or(f32::NAN) as f64)
}

/// The order records are visited in during `epoch`: a seeded shuffle, the same on every run and
/// on resume.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(seed, 0xE90C + epoch as u64)));
    order
}

/// Optimizer steps in one epoch of `n` records: transformers' count, where a final partial
/// accumulation still makes a step.
pub fn steps_per_epoch(n: usize, batch: usize, accumulation: usize) -> usize {
    n.div_ceil(batch.max(1)).div_ceil(accumulation.max(1))
}

/// The micro-batches (as record indices) of optimizer step `step_in_epoch`.
pub fn step_micro_batches(order: &[usize], batch: usize, accumulation: usize, step_in_epoch: usize) -> Vec<Vec<usize>> {
    let per_step = batch * accumulation;
    let start = step_in_epoch * per_step;
    let end = (start + per_step).min(order.len());
    order.get(start..end).unwrap_or(&[]).chunks(batch).map(<[usize]>::to_vec).collect()
}

/// Names of [`trainable_params`], in the same order: PEFT keys for LoRA, checkpoint keys for
/// full training.
pub fn trainable_names<B: Backend>(model: &Qwen3ForCausalLM<B>, method: Method) -> Vec<String> {
    if method == Method::Full {
        return named_params_mut(&mut model.clone()).into_iter().map(|(n, _)| n).collect();
    }
    let mut out = Vec::new();
    for (layer, p, linear) in model.projections() {
        if linear.lora.is_some() {
            out.push(crate::lora::peft_key(layer, p, "lora_A"));
            out.push(crate::lora::peft_key(layer, p, "lora_B"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_lr_is_transformers_linear_schedule_with_warmup() {
        // get_linear_schedule_with_warmup(opt, 2, 6): step / 2 during warmup, then (6 - step) / 4.
        let lrs: Vec<f64> = (0..=6).map(|s| linear_lr(1.0, s, 2, 6)).collect();
        assert_eq!(lrs, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        // Without warmup (the seed's recipe): (total - step) / total.
        assert_eq!(linear_lr(1.0, 1, 0, 4), 0.75);
    }
}
