//! `config.json` of a Qwen3 checkpoint, in both forms seen in the wild.

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

// Upper bounds on config.json's sizes, checked before anything is allocated: far above every
// published dense Qwen3 (the 32B has 64 layers, hidden 5,120, intermediate 25,600, 64 heads, a
// 151,936-token vocabulary, 40,960 positions), and low enough that no product of them wraps a
// 64-bit count (2^20 · 2^20 · 2^10 layers < 2^64).
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_HEAD_DIM: usize = 1 << 10;
pub const MAX_POSITIONS: usize = 1 << 24;

/// The architecture hyper-parameters of a dense Qwen3 model (transformers' `Qwen3Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Stored dtype of the checkpoint ("bfloat16", "float16", "float32").
    pub dtype: String,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// The parsed JSON, kept so `merge` can write the same file back.
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    // Published Qwen3 checkpoints: top-level `rope_theta`, `torch_dtype`.
    rope_theta: Option<f64>,
    torch_dtype: Option<String>,
    // transformers >= 5: `rope_parameters.rope_theta`, `dtype`.
    rope_parameters: Option<RopeParameters>,
    dtype: Option<String>,
    rope_scaling: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    hidden_act: Option<String>,
    num_experts: Option<usize>,
    eos_token_id: Option<Value>,
    bos_token_id: Option<u32>,
    use_sliding_window: Option<bool>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    #[serde(alias = "type")]
    rope_type: Option<String>,
}

/// `eos_token_id` as transformers takes it: an id, a list of ids, or null (unset). Anything else
/// is an error naming `source`, never "unset": a quoted id would otherwise make generation run
/// to the token limit on every record.
pub(crate) fn token_ids(value: &Value, source: &str) -> Result<Vec<u32>> {
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let ids = match value {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => items.iter().map(id).collect(),
        v => id(v).map(|n| vec![n]),
    };
    ids.ok_or_else(|| Error::Format(format!("{source}: eos_token_id must be a token id or a list of token ids, got {value}")))
}

impl Qwen3Config {
    /// Parses `config.json`; `source` names the file in error messages.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Format(format!("{source}: not valid JSON: {e}")))?;
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| Error::Format(format!("{source}: not a Qwen3 config: {e}")))?;
        let bad = |why: String| Error::Unsupported(format!("{source}: {why}"));

        let arch = raw.architectures.as_ref().and_then(|a| a.first().cloned());
        if raw.num_experts.unwrap_or(0) > 0 || raw.model_type.as_deref() == Some("qwen3_moe") {
            // Named by what makes it one: `num_experts` (even under the dense architecture's name)
            // or the model type.
            let what = match raw.num_experts.filter(|&n| n > 0) {
                Some(n) => format!("num_experts {n}"),
                None => "model_type qwen3_moe".to_string(),
            };
            return Err(bad(format!("mixture-of-experts models ({what}) are not supported; tiqu runs dense Qwen3ForCausalLM")));
        }
        match (&arch, raw.model_type.as_deref()) {
            (Some(a), _) if a != "Qwen3ForCausalLM" => {
                return Err(bad(format!("architecture {a} is not supported; tiqu runs Qwen3ForCausalLM")))
            }
            (None, Some(t)) if t != "qwen3" => {
                return Err(bad(format!("model_type {t} is not supported; tiqu runs qwen3")))
            }
            // transformers picks the config class, and from it the model, by model_type.
            (Some(a), Some(t)) if t != "qwen3" => {
                return Err(bad(format!("model_type {t} does not match architectures {a} (transformers would load a {t} model); tiqu runs qwen3")))
            }
            (None, None) => return Err(bad("neither `architectures` nor `model_type` is set".into())),
            _ => {}
        }
        if raw.attention_bias {
            return Err(bad("attention_bias = true is not supported (Qwen3 has none)".into()));
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(bad(format!("hidden_act {act} is not supported (Qwen3 uses silu)")));
            }
        }
        if raw.use_sliding_window == Some(true) {
            return Err(bad("use_sliding_window = true is not supported".into()));
        }
        let rope_type = raw.rope_parameters.as_ref().and_then(|r| r.rope_type.clone());
        let scaled = match &raw.rope_scaling {
            None | Some(Value::Null) => false,
            // transformers reads `type` where `rope_type` is absent (the older key, which Qwen's
            // own YaRN instructions still write).
            Some(v @ Value::Object(_)) => v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default") != "default",
            Some(other) => return Err(bad(format!("rope_scaling must be an object (or null), got {other}"))),
        };
        if scaled || rope_type.as_deref().is_some_and(|t| t != "default") {
            return Err(bad("RoPE scaling (yarn, linear, dynamic…) is not supported".into()));
        }
        if let (Some(inner), Some(outer)) = (raw.rope_parameters.as_ref().and_then(|r| r.rope_theta), raw.rope_theta) {
            if inner != outer {
                return Err(bad(format!("rope_parameters.rope_theta ({inner}) and rope_theta ({outer}) differ: which is meant?")));
            }
        }
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .ok_or_else(|| bad("no rope_theta (top-level or in rope_parameters)".into()))?;

        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size.checked_div(heads).unwrap_or(0));
        let dtype = raw.dtype.or(raw.torch_dtype).unwrap_or_else(|| "float32".into());
        let eos_token_ids = raw.eos_token_id.as_ref().map(|v| token_ids(v, source)).transpose()?.unwrap_or_default();
        Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: raw.tie_word_embeddings,
            dtype,
            eos_token_ids,
            bos_token_id: raw.bos_token_id,
            raw: value,
        }
        .checked(source)
    }

    /// The config if its sizes make a model, else why not (`source` names it in the message).
    /// [`Self::from_json`] calls it, and loading calls it again: the fields are public, and a
    /// config built by hand (`num_key_value_heads` that does not divide the heads) failed deep
    /// in a forward pass with a reshape's panic.
    pub fn checked(self, source: &str) -> Result<Self> {
        self.check(source)?;
        Ok(self)
    }

    /// [`Self::checked`] by reference.
    pub fn check(&self, source: &str) -> Result<()> {
        let bad = |why: String| Error::Unsupported(format!("{source}: {why}"));
        let (rope_theta, heads, kv_heads, head_dim) = (self.rope_theta, self.num_attention_heads, self.num_key_value_heads, self.head_dim);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(format!("rope_theta {rope_theta} must be a positive number")));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(bad(format!("rms_norm_eps {} must be a positive number", self.rms_norm_eps)));
        }
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}"
            )));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {head_dim} must be even and positive")));
        }
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", heads, MAX_HEADS),
            ("head_dim", head_dim, MAX_HEAD_DIM),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
            if v > max {
                return Err(Error::Limit(format!("{source}: {name} {v} is over tiqu's limit of {max}")));
            }
        }
        // RoPE's fastest frequency is rope_theta^(-(head_dim-2)/head_dim), and its angle at the
        // last position that times the position, in f32: past f32's range every rotation was NaN,
        // and the NaN logits were blamed on the weights.
        let fastest = rope_theta.powf(-((head_dim - 2) as f64) / head_dim as f64);
        let last_angle = fastest * (self.max_position_embeddings - 1) as f64;
        if !(last_angle.is_finite() && last_angle <= f32::MAX as f64) {
            return Err(bad(format!(
                "rope_theta {rope_theta:e} is too small: RoPE's angles overflow f32 by position {}",
                self.max_position_embeddings - 1
            )));
        }
        Ok(())
    }

    /// Built-in shapes for benchmarks and dry runs (`--config qwen3-0.6b`).
    pub fn preset(name: &str) -> Option<Self> {
        let (hidden, inter, layers, heads, kv, tied) = match name {
            "qwen3-0.6b" => (1024, 3072, 28, 16, 8, true),
            "qwen3-1.7b" => (2048, 6144, 28, 16, 8, true),
            "qwen3-4b" => (2560, 9728, 36, 32, 8, true),
            _ => return None,
        };
        let json = serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": 151936, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
            "hidden_act": "silu", "attention_bias": false,
            "bos_token_id": 151643, "eos_token_id": 151645
        });
        Self::from_json(json.to_string().as_bytes(), name).ok()
    }

    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters, counting a tied `lm_head` once (as PEFT's line does).
    /// In u64: the config's limits keep it from wrapping there, and wasm's usize is 32 bits.
    pub fn num_parameters(&self) -> u64 {
        let [h, i, d] = [self.hidden_size, self.intermediate_size, self.head_dim].map(|n| n as u64);
        let q = self.num_attention_heads as u64 * d;
        let kv = self.num_key_value_heads as u64 * d;
        let attn = h * q + 2 * h * kv + q * h + 2 * d;
        let mlp = 3 * h * i;
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers as u64 * layer + h + head
    }
}

/// The eos ids of `generation_config.json` (one id or a list), or `None` when it sets none.
pub fn generation_eos(bytes: &[u8], source: &str) -> Result<Option<Vec<u32>>> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Format(format!("{source}: not valid JSON: {e}")))?;
    Ok(value.get("eos_token_id").map(|v| token_ids(v, source)).transpose()?.filter(|ids| !ids.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_0_6b_has_the_published_parameter_count() {
        let cfg = Qwen3Config::preset("qwen3-0.6b").unwrap();
        assert_eq!((cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads), (1024, 16, 128, 8));
        // PEFT's line for the seed recipe: all params 601,096,192 = 596,049,920 base + 5,046,272 LoRA.
        assert_eq!(cfg.num_parameters(), 596_049_920);
        let counted: u64 = cfg.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
        assert_eq!(counted, cfg.num_parameters());
    }

    #[test]
    fn both_config_forms_give_the_same_rope_theta_and_dtype() {
        let old = r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":16,
            "rms_norm_eps":1e-6,"rope_theta":1000000,"torch_dtype":"bfloat16"}"#;
        let new = r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":16,
            "rms_norm_eps":1e-6,"rope_parameters":{"rope_type":"default","rope_theta":1000000},"dtype":"bfloat16"}"#;
        let (a, b) = (Qwen3Config::from_json(old.as_bytes(), "old").unwrap(), Qwen3Config::from_json(new.as_bytes(), "new").unwrap());
        assert_eq!((a.rope_theta, a.dtype.as_str(), a.head_dim), (1e6, "bfloat16", 4));
        assert_eq!((b.rope_theta, b.dtype.as_str()), (1e6, "bfloat16"));
    }

    #[test]
    fn unsupported_configs_are_named() {
        let base = serde_json::json!({"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16,
            "rms_norm_eps":1e-6,"rope_theta":10000});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            Qwen3Config::from_json(c.to_string().as_bytes(), "config.json").unwrap_err().to_string()
        };
        assert!(with("architectures", serde_json::json!(["Qwen2ForCausalLM"])).contains("Qwen2ForCausalLM"));
        assert!(with("model_type", serde_json::json!("llama")).contains("model_type llama does not match architectures Qwen3ForCausalLM"));
        assert!(with("num_experts", serde_json::json!(8)).contains("mixture-of-experts"));
        assert!(with("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4})).contains("RoPE scaling"));
        assert!(with("rope_scaling", serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})).contains("RoPE scaling"));
        assert!(with("rope_parameters", serde_json::json!({"type": "linear", "factor": 2.0, "rope_theta": 1e6})).contains("RoPE scaling"));
        assert!(with("num_key_value_heads", serde_json::json!(3)).contains("num_key_value_heads"));
        // Were read past: a scaling that is no object, and a second rope_theta that differs.
        assert!(with("rope_scaling", serde_json::json!("linear")).contains("rope_scaling must be an object"));
        assert!(with("rope_parameters", serde_json::json!({"rope_type": "default", "rope_theta": 1e6})).contains("differ"));
        let err = Qwen3Config::from_json(b"{not json", "config.json").unwrap_err().to_string();
        assert!(err.starts_with("config.json: not valid JSON"), "{err}");
    }
}
