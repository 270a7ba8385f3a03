//! The one list of a Qwen3 decoder layer's projections: their checkpoint names and shapes.
//! Loading, saving, parameter naming, LoRA targets, merging and quantization all walk this list,
//! so a projection is named in one place.

use crate::config::Qwen3Config;

/// A linear projection of a decoder layer, in the order transformers (and PEFT) list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// Every projection of a layer, in checkpoint order.
pub const PROJECTIONS: [Projection; 7] =
    [Projection::Q, Projection::K, Projection::V, Projection::O, Projection::Gate, Projection::Up, Projection::Down];

impl Projection {
    /// The module name (`q_proj`), which is also PEFT's `target_modules` entry.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        PROJECTIONS.into_iter().find(|p| p.name() == name)
    }

    /// The sub-module that holds it: `self_attn` or `mlp`.
    pub fn block(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }

    /// Module path in layer `layer`, as the checkpoint names it (`model.layers.3.self_attn.q_proj`).
    pub fn path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.block(), self.name())
    }

    /// `[out, in]`, PyTorch's layout of the weight.
    pub fn shape(self, cfg: &Qwen3Config) -> [usize; 2] {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        match self {
            Self::Q => [q, h],
            Self::K | Self::V => [kv, h],
            Self::O => [h, q],
            Self::Gate | Self::Up => [i, h],
            Self::Down => [h, i],
        }
    }
}

/// A layer's normalisation vectors, by checkpoint name relative to the layer, with their length.
pub fn layer_norms(cfg: &Qwen3Config) -> [(&'static str, usize); 4] {
    let (h, d) = (cfg.hidden_size, cfg.head_dim);
    [("self_attn.q_norm", d), ("self_attn.k_norm", d), ("input_layernorm", h), ("post_attention_layernorm", h)]
}

impl Qwen3Config {
    /// Refuses a tensor of a layer this config does not have: a deeper model's weights under a
    /// shallower config.json would otherwise load their first layers and drop the rest silently.
    pub fn check_layer_indices<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>, source: &str) -> crate::Result<()> {
        for name in names {
            let name = name.as_ref();
            let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = layer.filter(|&n| n >= self.num_hidden_layers) {
                return Err(crate::Error::Tensor(format!(
                    "{source}: tensor `{name}` is of layer {n}, but config.json says num_hidden_layers = {}",
                    self.num_hidden_layers
                )));
            }
        }
        Ok(())
    }

    /// Refuses a tensor no weight of this config reads (a projection's bias, a LoRA pair saved
    /// into the base, another architecture's weight): loading would drop it without a word and
    /// run another model than the checkpoint's. Tolerated as transformers tolerates them: RoPE's
    /// `inv_freq` buffers older exports hold, and `lm_head.weight` beside tied embeddings
    /// (transformers ties it to the embedding).
    pub fn check_unexpected<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>, source: &str) -> crate::Result<()> {
        let expected: std::collections::HashSet<String> = self.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        for name in names {
            let name = name.as_ref();
            let tolerated = name.ends_with("rotary_emb.inv_freq") || (name == "lm_head.weight" && self.tie_word_embeddings);
            if !tolerated && !expected.contains(name) {
                return Err(crate::Error::Tensor(format!(
                    "{source}: tensor `{name}` is not a weight of this Qwen3 config; loading would ignore it and run another model than the checkpoint's"
                )));
            }
        }
        Ok(())
    }

    /// Every checkpoint tensor of this config, as transformers names and shapes it.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for l in 0..self.num_hidden_layers {
            let mut layer: Vec<(String, Vec<usize>)> =
                PROJECTIONS.iter().map(|p| (format!("{}.weight", p.path(l)), p.shape(self).to_vec())).collect();
            let norms = layer_norms(self).map(|(name, n)| (format!("model.layers.{l}.{name}.weight"), vec![n]));
            // Checkpoint order: q/k/v/o, the q/k norms, the MLP, the layer norms.
            layer.splice(4..4, norms[..2].iter().cloned());
            layer.extend(norms[2..].iter().cloned());
            out.extend(layer);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_paths_match_the_checkpoint_keys() {
        for p in PROJECTIONS {
            assert_eq!(Projection::from_name(p.name()), Some(p));
        }
        assert_eq!(Projection::Q.path(3), "model.layers.3.self_attn.q_proj");
        assert_eq!(Projection::Down.path(0), "model.layers.0.mlp.down_proj");
        let cfg = Qwen3Config::preset("qwen3-0.6b").unwrap();
        assert_eq!(Projection::Q.shape(&cfg), [2048, 1024]);
        assert_eq!(Projection::K.shape(&cfg), [1024, 1024]);
        assert_eq!(Projection::Down.shape(&cfg), [1024, 3072]);
    }
}
