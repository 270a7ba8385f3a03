//! LoRA as PEFT computes it — `y = x·Wᵀ + scaling·B(A(dropout(x)))` in activation space, never
//! materialising `W + BA` — and adapters in PEFT's on-disk layout (`adapter_config.json` +
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`).

#![allow(non_snake_case)] // PEFT names the LoRA matrices lora_A and lora_B; the fields keep its names.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layout::{Projection, PROJECTIONS};
pub use crate::linear::{keep_mask, mix, Lora};
use crate::linear::Linear;
use crate::model::Qwen3ForCausalLM;
use crate::weights::SafetensorsFile;
use crate::{Error, Result};

/// LoRA weights by PEFT key: `(shape, f32 values)`.
pub type AdapterTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The projections LoRA can target, in the order PEFT lists a Qwen3 layer's modules.
pub const TARGETS: [&str; 7] = {
    let mut names = [""; 7];
    let mut i = 0;
    while i < 7 {
        names[i] = PROJECTIONS[i].name();
        i += 1;
    }
    names
};

/// The LoRA hyper-parameters (PEFT's `LoraConfig` fields that tiqu honours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// The seed notebook's recipe: r=8, alpha=32, dropout 0.1 on every projection.
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 32.0,
            lora_dropout: 0.1,
            target_modules: TARGETS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        // Far above any useful rank (the projections of Qwen3-0.6B are 1024 wide): a typo's rank
        // would be an allocation that aborts the process.
        const MAX_R: usize = 65_536;
        if self.r == 0 || self.r > MAX_R {
            return Err(Error::Unsupported(format!("LoRA r must be between 1 and {MAX_R}, got {}", self.r)));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::Unsupported(format!("lora_alpha {} must be a finite number above 0", self.lora_alpha)));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Unsupported(format!("lora_dropout {} must be in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Unsupported("target_modules is empty".into()));
        }
        for t in &self.target_modules {
            if !TARGETS.contains(&t.as_str()) {
                return Err(Error::Unsupported(format!(
                    "target module `{t}` is not a Qwen3 projection (supported: {})",
                    TARGETS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The first setting that makes weights trained under `self` mean something else under
    /// `other` (rank, scaling, targets, rsLoRA), as `(key, ours, theirs)`; dropout is free.
    pub fn differs_from(&self, other: &Self) -> Option<(&'static str, String, String)> {
        let set = |t: &[String]| {
            let mut t = t.to_vec();
            t.sort();
            t.dedup();
            t
        };
        if self.r != other.r {
            return Some(("r", self.r.to_string(), other.r.to_string()));
        }
        if self.lora_alpha != other.lora_alpha {
            return Some(("lora_alpha", self.lora_alpha.to_string(), other.lora_alpha.to_string()));
        }
        if set(&self.target_modules) != set(&other.target_modules) {
            return Some(("target_modules", self.target_modules.join(","), other.target_modules.join(",")));
        }
        if self.use_rslora != other.use_rslora {
            return Some(("use_rslora", self.use_rslora.to_string(), other.use_rslora.to_string()));
        }
        None
    }

    /// LoRA parameters this config adds to a model of shape `model` (no weights needed).
    pub fn trainable_params(&self, model: &crate::Qwen3Config) -> u64 {
        let per_layer: u64 = PROJECTIONS
            .iter()
            .filter(|p| self.target_modules.iter().any(|t| t == p.name()))
            .map(|p| p.shape(model).iter().sum::<usize>() as u64)
            .sum();
        (self.r as u64).saturating_mul(per_layer).saturating_mul(model.num_hidden_layers as u64)
    }

    /// PEFT's `adapter_config.json` for this config.
    pub fn to_peft_json(&self, base_model: &str) -> Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
            "revision": null,
        })
    }

    /// Reads PEFT's `adapter_config.json`, refusing what tiqu does not implement.
    pub fn from_peft_json(bytes: &[u8], source: &str) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Format(format!("{source}: not valid JSON: {e}")))?;
        let bad = |why: String| Error::Unsupported(format!("{source}: {why}"));
        // A key that is there with the wrong type is an error, never its default: `"lora_alpha":
        // "32"` read as absent would scale the update by a quarter of what was trained.
        fn typed<'v, T>(v: &'v Value, key: &str, kind: &str, read: impl Fn(&'v Value) -> Option<T>, source: &str) -> Result<Option<T>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => read(x).map(Some).ok_or_else(|| Error::Format(format!("{source}: `{key}` must be {kind}, got {x}"))),
            }
        }
        let flag = |key: &str| typed(&v, key, "true or false", Value::as_bool, source);
        let number = |key: &str| typed(&v, key, "a number", Value::as_f64, source);
        let text = |key: &str| typed(&v, key, "a string", Value::as_str, source);
        let peft_type = text("peft_type")?.unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!("peft_type {peft_type} is not supported (only LORA)")));
        }
        // A sequence-classification (or other) head's adapter applies to another model.
        if let Some(task) = text("task_type")? {
            if task != "CAUSAL_LM" {
                return Err(bad(format!("task_type {task} is not supported (only CAUSAL_LM, a language model's adapter)")));
            }
        }
        // QALoRA pools the input by groups before A: merged as plain LoRA, the model was another.
        for key in ["use_dora", "fan_in_fan_out", "use_qalora"] {
            if flag(key)?.unwrap_or(false) {
                return Err(bad(format!("{key} = true is not supported")));
            }
        }
        if let Some(bias) = text("bias")? {
            if bias != "none" {
                return Err(bad(format!("bias = \"{bias}\" is not supported (only \"none\")")));
            }
        }
        // Each changes which weights the adapter holds or where they apply: ignored, the model
        // would silently be another one.
        for key in ["modules_to_save", "layers_to_transform", "trainable_token_indices", "exclude_modules", "target_parameters", "layer_replication"] {
            let set = match v.get(key) {
                None | Some(Value::Null) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(m)) => !m.is_empty(),
                Some(Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(bad(format!("{key} is not supported")));
            }
        }
        if flag("lora_bias")?.unwrap_or(false) {
            return Err(bad("lora_bias = true is not supported".into()));
        }
        for (key, what) in [("rank_pattern", "ranks"), ("alpha_pattern", "alphas")] {
            if v.get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                return Err(bad(format!("{key} (per-module {what}) is not supported")));
            }
        }
        let target_modules = match v.get("target_modules") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|x| x.as_str().map(String::from).ok_or_else(|| bad(format!("target_modules holds {x}, not a module name"))))
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(s)) if TARGETS.contains(&s.as_str()) => vec![s.clone()],
            Some(Value::String(s)) => return Err(bad(format!("target_modules as a regex (`{s}`) is not supported; list the modules"))),
            _ => return Err(bad("no target_modules".into())),
        };
        let r = typed(&v, "r", "a whole number of at least 1", Value::as_u64, source)?.ok_or_else(|| bad("no r".into()))? as usize;
        let cfg = Self {
            r,
            // PEFT's defaults for keys an adapter leaves out.
            lora_alpha: number("lora_alpha")?.unwrap_or(8.0),
            lora_dropout: number("lora_dropout")?.unwrap_or(0.0),
            target_modules,
            use_rslora: flag("use_rslora")?.unwrap_or(false),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

/// Fresh LoRA weights as PEFT initialises them: A like `nn.Linear` (kaiming-uniform with a=√5,
/// i.e. U(±1/√in)), B zeros.
pub fn init_lora<B: Backend>(inp: usize, out: usize, cfg: &LoraConfig, rng: &mut StdRng, tag: u64, device: &B::Device) -> Lora<B> {
    let bound = 1.0 / (inp as f64).sqrt();
    let a: Vec<f32> = (0..cfg.r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
    Lora {
        lora_A: Param::from_tensor(Tensor::from_data(TensorData::new(a, [cfg.r, inp]), device)),
        lora_B: Param::from_tensor(Tensor::zeros([out, cfg.r], device)),
        scaling: cfg.scaling(),
        dropout: cfg.lora_dropout,
        tag,
    }
}

/// A tensor of an adapter that no LoRA weight reads (trainable tokens, a module saved whole)
/// would be dropped without a word: the adapter would apply without part of what it holds.
pub fn only_lora_weights<'a>(mut names: impl Iterator<Item = &'a str>, source: &str) -> Result<()> {
    match names.find(|n| !n.contains(".lora_A.") && !n.contains(".lora_B.")) {
        Some(other) => Err(Error::Unsupported(format!("{source}: tensor `{other}` is not a LoRA weight; adapters holding other weights are not supported"))),
        None => Ok(()),
    }
}

/// PEFT's saved key for a LoRA weight (`which` is "lora_A" or "lora_B").
pub fn peft_key(layer: usize, p: Projection, which: &str) -> String {
    format!("base_model.model.{}.{which}.weight", p.path(layer))
}

impl<B: Backend> Qwen3ForCausalLM<B> {
    /// Every projection of every layer, with its layer index, in checkpoint order.
    pub fn projections_mut(&mut self) -> Vec<(usize, Projection, &mut Linear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            // Field borrows, not `projection_mut`, so that all seven can be held at once.
            out.extend([
                (i, Projection::Q, &mut a.q_proj),
                (i, Projection::K, &mut a.k_proj),
                (i, Projection::V, &mut a.v_proj),
                (i, Projection::O, &mut a.o_proj),
                (i, Projection::Gate, &mut m.gate_proj),
                (i, Projection::Up, &mut m.up_proj),
                (i, Projection::Down, &mut m.down_proj),
            ]);
        }
        out
    }

    pub fn projections(&self) -> Vec<(usize, Projection, &Linear<B>)> {
        self.model.layers.iter().enumerate().flat_map(|(i, l)| PROJECTIONS.map(|p| (i, p, l.projection(p)))).collect()
    }

    /// Adds fresh LoRA pairs (PEFT's init, seeded) to the targeted projections.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        // A product of rank r needs r ≤ both sides; a larger r only costs memory (and a typo's
        // r would abort the process allocating it).
        for (_, name, linear) in self.projections_mut() {
            let [out, inp] = linear.weight.dims();
            if cfg.target_modules.iter().any(|t| t == name.name()) && cfg.r > out.min(inp) {
                return Err(Error::Unsupported(format!(
                    "LoRA r {} is more than {}'s smaller side ({}): its update cannot have that rank",
                    cfg.r,
                    name.name(),
                    out.min(inp)
                )));
            }
        }
        let device = self.device();
        let mut rng = StdRng::seed_from_u64(seed);
        for (tag, (layer, name, linear)) in self.projections_mut().into_iter().enumerate() {
            let _ = layer;
            if cfg.target_modules.iter().any(|t| t == name.name()) {
                let [out, inp] = linear.weight.dims();
                linear.lora = Some(init_lora(inp, out, cfg, &mut rng, tag as u64, &device));
            }
        }
        Ok(())
    }

    /// Attaches an adapter read from PEFT's layout, checking every shape against the base.
    pub fn load_adapter(&mut self, cfg: &LoraConfig, weights: &mut SafetensorsFile, source: &str) -> Result<()> {
        cfg.validate()?;
        let device = self.device();
        let mut used = 0usize;
        for (tag, (layer, name, linear)) in self.projections_mut().into_iter().enumerate() {
            if !cfg.target_modules.iter().any(|t| t == name.name()) {
                continue;
            }
            let [out, inp] = linear.weight.dims();
            let mut read = |which: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
                let key = peft_key(layer, name, which);
                let alt = key.replace(&format!(".{which}.weight"), &format!(".{which}.default.weight"));
                let key = if weights.info(&key).is_none() && weights.info(&alt).is_some() { alt } else { key };
                let (got, values) = weights.read_f32(&key).map_err(|_| {
                    Error::Tensor(format!("{source}: tensor `{key}` is missing (adapter_config.json targets {})", name.name()))
                })?;
                if got != shape {
                    return Err(Error::Tensor(format!(
                        "{source}: tensor `{key}` has shape {got:?}, but the base model needs {shape:?} (r={}, adapter made for another model?)",
                        cfg.r
                    )));
                }
                used += 1;
                Ok(Tensor::from_data(TensorData::new(values, shape), &device))
            };
            let a = read("lora_A", [cfg.r, inp])?;
            let b = read("lora_B", [out, cfg.r])?;
            linear.lora = Some(Lora {
                lora_A: Param::from_tensor(a),
                lora_B: Param::from_tensor(b),
                scaling: cfg.scaling(),
                dropout: cfg.lora_dropout,
                tag: tag as u64,
            });
        }
        only_lora_weights(weights.names(), source)?;
        let lora_keys = weights.names().filter(|n| n.contains(".lora_")).count();
        if lora_keys != used {
            let layers = self.model.layers.len();
            return Err(Error::Tensor(format!(
                "{source}: holds {lora_keys} LoRA tensors but the base ({layers} layers, targets {}) uses {used}; adapter made for another model?",
                cfg.target_modules.join(",")
            )));
        }
        Ok(())
    }

    /// The LoRA weights in PEFT's key names, as f32 `(shape, values)`.
    pub fn adapter_tensors(&self) -> Result<AdapterTensors> {
        let mut out = BTreeMap::new();
        for (layer, name, linear) in self.projections() {
            if let Some(lora) = &linear.lora {
                for (which, t) in [("lora_A", lora.lora_A.val()), ("lora_B", lora.lora_B.val())] {
                    let shape = t.dims().to_vec();
                    let values = t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| Error::Other(format!("{e:?}")))?;
                    out.insert(peft_key(layer, name, which), (shape, values));
                }
            }
        }
        Ok(out)
    }

    /// Trainable LoRA parameter count and all parameters (PEFT's `print_trainable_parameters`).
    pub fn lora_parameter_counts(&self, base: u64) -> (u64, u64) {
        let lora: u64 = self
            .projections()
            .iter()
            .filter_map(|(_, _, l)| l.lora.as_ref().map(|x| (x.lora_A.val().dims().iter().product::<usize>() + x.lora_B.val().dims().iter().product::<usize>()) as u64))
            .sum();
        (lora, base + lora)
    }
}

/// PEFT's line: `trainable params: 5,046,272 || all params: 601,096,192 || trainable%: 0.8395`.
pub fn trainable_line(trainable: u64, all: u64) -> String {
    fn commas(n: u64) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
    let pct = if all > 0 { 100.0 * trainable as f64 / all as f64 } else { 0.0 };
    format!("trainable params: {} || all params: {} || trainable%: {pct:.4}", commas(trainable), commas(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peft(extra: Value) -> Result<LoraConfig> {
        let mut v = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
            "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": false});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        LoraConfig::from_peft_json(v.to_string().as_bytes(), "adapter_config.json")
    }

    #[test]
    fn peft_configs_round_trip_and_scale() {
        let cfg = peft(serde_json::json!({})).unwrap();
        assert_eq!((cfg.r, cfg.scaling()), (8, 4.0));
        let again = LoraConfig::from_peft_json(cfg.to_peft_json("base").to_string().as_bytes(), "x").unwrap();
        assert_eq!(again, cfg);
        let rs = peft(serde_json::json!({"use_rslora": true})).unwrap();
        assert!((rs.scaling() - 32.0 / 8f64.sqrt()).abs() < 1e-12);
        let one = peft(serde_json::json!({"target_modules": "q_proj"})).unwrap();
        assert_eq!(one.target_modules, ["q_proj"]);
    }

    #[test]
    fn unsupported_peft_features_are_refused_by_name() {
        for (extra, needle) in [
            (serde_json::json!({"use_dora": true}), "use_dora"),
            (serde_json::json!({"bias": "all"}), "bias"),
            (serde_json::json!({"peft_type": "IA3"}), "IA3"),
            (serde_json::json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
            (serde_json::json!({"rank_pattern": {"q_proj": 4}}), "rank_pattern"),
            (serde_json::json!({"target_modules": ".*proj"}), "regex"),
            (serde_json::json!({"target_modules": ["embed_tokens"]}), "embed_tokens"),
            (serde_json::json!({"fan_in_fan_out": true}), "fan_in_fan_out"),
            // What changes where an adapter applies or what it holds (were ignored).
            (serde_json::json!({"trainable_token_indices": [11, 13]}), "trainable_token_indices"),
            (serde_json::json!({"exclude_modules": ["down_proj"]}), "exclude_modules"),
            (serde_json::json!({"target_parameters": ["mlp.experts.down_proj"]}), "target_parameters"),
            (serde_json::json!({"layer_replication": [[0, 1]]}), "layer_replication"),
            (serde_json::json!({"lora_bias": true}), "lora_bias"),
            (serde_json::json!({"use_qalora": true}), "use_qalora"),
            (serde_json::json!({"task_type": "SEQ_CLS"}), "task_type SEQ_CLS"),
            // A value of the wrong type is named, never taken as PEFT's default.
            (serde_json::json!({"lora_alpha": "32"}), "`lora_alpha` must be a number"),
            (serde_json::json!({"use_rslora": "yes"}), "`use_rslora` must be true or false"),
            (serde_json::json!({"use_dora": "true"}), "`use_dora` must be true or false"),
            (serde_json::json!({"r": "8"}), "`r` must be a whole number"),
            (serde_json::json!({"r": -1}), "`r` must be a whole number"),
            (serde_json::json!({"target_modules": ["q_proj", 3]}), "target_modules holds 3"),
            (serde_json::json!({"lora_alpha": 0}), "lora_alpha 0 must be a finite number above 0"),
        ] {
            let err = peft(extra).unwrap_err().to_string();
            assert!(err.starts_with("adapter_config.json: ") && err.contains(needle), "{err}");
        }
    }

    /// PEFT writes these keys empty or null when unused: that is no feature to refuse.
    #[test]
    fn unused_peft_keys_are_accepted() {
        let unused = serde_json::json!({"exclude_modules": null, "target_parameters": [], "trainable_token_indices": null, "lora_bias": false, "layer_replication": null});
        assert!(peft(unused).is_ok());
    }

    #[test]
    fn trainable_count_matches_the_seed_line() {
        let cfg = crate::Qwen3Config::preset("qwen3-0.6b").unwrap();
        let n = LoraConfig::default().trainable_params(&cfg);
        assert_eq!(n, 5_046_272);
        assert_eq!(
            trainable_line(n, cfg.num_parameters() + n),
            "trainable params: 5,046,272 || all params: 601,096,192 || trainable%: 0.8395"
        );
    }
}
