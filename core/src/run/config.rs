//! Every setting of a training run, declared once: defaults are the seed notebook's recipe, a
//! run's `config.toml` stores them with transformers' names, and the command line's flags and a
//! `--config` file fill the same struct (as layers of TOML values, so both are checked alike).

use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::lora::LoraConfig;
use crate::train::{AdamWConfig, Checkpointing, Method};
use crate::{Error, Result};

/// The optimizer and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    pub learning_rate: f64,
    #[serde(flatten)]
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (transformers' default 1.0); 0 disables.
    pub max_grad_norm: f64,
    /// Optimizer steps of linear warmup before the linear decay to 0.
    pub warmup_steps: usize,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self { learning_rate: 1e-4, adamw: AdamWConfig::default(), max_grad_norm: 1.0, warmup_steps: 0 }
    }
}

/// Every knob of a run. Saved as the run folder's `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// A checkpoint folder (stored absolute) or a Hub id.
    pub model: String,
    pub method: Method,
    /// Start from config.json's architecture with seeded random weights.
    pub random_weights: bool,
    /// Train over the tokens the training data uses only; saved models use Qwen3 ids again
    /// ([`crate::vocab`]).
    pub restrict_vocab: bool,
    /// Standard deviation of the normal init with random weights (transformers' initializer_range).
    pub init_std: f64,
    /// Initial query/key RMSNorm weight with random weights: Qwen3 normalises queries and keys,
    /// which caps attention logits at √head_dim until these weights grow; copying wants sharp
    /// attention early.
    pub qk_norm_init: f64,
    /// With random weights, start layer 0 with a previous-token head
    /// ([`crate::previous_token`]): copying spans is learned hundreds of steps sooner.
    pub previous_token_init: bool,
    /// SFT records (stored absolute, so a resume from another folder finds them).
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
    /// Held-out records extracted and scored at each checkpoint (0: the eval loss alone).
    pub eval_sample: usize,
    /// A PEFT adapter folder (stored absolute) whose pairs training continues instead of fresh
    /// ones; its r, alpha, targets and rsLoRA are the run's ([`RunConfig::continuing`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// A folder whose tokenizer.json is read instead of the model's (stored absolute): the
    /// records' tokens depend on it, so a resume reads the same one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    #[serde(flatten)]
    pub lora: LoraConfig,
    #[serde(flatten)]
    pub optimizer: OptimizerConfig,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (0: the epochs decide).
    pub max_steps: usize,
    pub save_steps: usize,
    pub max_length: usize,
    pub gradient_checkpointing: Checkpointing,
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            method: Method::Lora,
            random_weights: false,
            restrict_vocab: false,
            init_std: 0.02,
            qk_norm_init: 1.0,
            previous_token_init: false,
            data: String::new(),
            eval_data: None,
            adapter: None,
            tokenizer: None,
            eval_sample: 32,
            lora: LoraConfig::default(),
            optimizer: OptimizerConfig::default(),
            per_device_train_batch_size: 4,
            gradient_accumulation_steps: 4,
            num_train_epochs: 3,
            max_steps: 0,
            save_steps: 50,
            max_length: 1024,
            gradient_checkpointing: Checkpointing::Balanced,
            seed: 42,
        }
    }
}

/// Settings a resumed run may change: they decide what is saved and reported, not the numbers.
pub const RESUMABLE: [&str; 3] = ["save_steps", "eval_data", "eval_sample"];

/// Settings that only matter for the LoRA method, or only with random weights (a report shows a
/// run's settings without the ones its method never used).
pub const LORA_ONLY: [&str; 5] = ["r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora"];
pub const RANDOM_ONLY: [&str; 3] = ["init_std", "qk_norm_init", "previous_token_init"];

impl RunConfig {
    /// The settings as a TOML table, every key present.
    pub fn to_table(&self) -> Result<Table> {
        match Value::try_from(self).map_err(|e| Error::Other(format!("settings: {e}")))? {
            Value::Table(t) => Ok(t),
            _ => Err(Error::Other("settings are not a table".into())),
        }
    }

    /// Every setting's name.
    pub fn keys() -> Vec<String> {
        let mut keys: Vec<String> = Self::default().to_table().map(|t| t.keys().cloned().collect()).unwrap_or_default();
        keys.push("eval_data".into());
        keys.push("adapter".into());
        keys.push("tokenizer".into());
        keys
    }

    /// Defaults, then each layer in turn (a `config.toml`-style file, then flags); a key that is
    /// not a setting or a value of the wrong type is refused, naming it and where it came from.
    pub fn from_layers(layers: &[(&str, Table)]) -> Result<Self> {
        let known = Self::keys();
        let mut merged = Self::default().to_table()?;
        for (source, layer) in layers {
            for (key, value) in layer {
                if !known.contains(key) {
                    return Err(Error::Format(format!("{source}: unknown setting `{key}`")));
                }
                merged.insert(key.clone(), value.clone());
            }
        }
        let config: Self = Value::Table(merged.clone()).try_into().map_err(|e: toml::de::Error| {
            // The error of a whole table names no key: find the value that fails on its own.
            for (source, layer) in layers.iter().rev() {
                for (key, value) in layer {
                    let Ok(mut alone) = Self::default().to_table() else { continue };
                    alone.insert(key.clone(), value.clone());
                    if let Err(e) = Value::Table(alone).try_into::<Self>() {
                        return Error::Format(format!("{source}: `{key}` = {value}: {}", e.message().replace('\n', " ")));
                    }
                }
            }
            let what = layers.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ");
            Error::Format(format!("{}: {}", if what.is_empty() { "settings" } else { &what }, e.message().replace('\n', " ")))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// These settings (made by [`Self::from_layers`] from `layers`) for a run that continues
    /// training `adapter` (read from `source`): its rank, alpha, targets and rsLoRA are the run's,
    /// because its weights were trained under them and the adapter the run saves must say so; a
    /// layer that sets one of them otherwise is refused by name. Its dropout is a default a layer
    /// may change.
    pub fn continuing(self, layers: &[(&str, Table)], adapter: &LoraConfig, source: &str) -> Result<Self> {
        for (layer, table) in layers {
            let mut merged = Self { lora: adapter.clone(), ..Self::default() }.to_table()?;
            merged.extend(table.iter().map(|(k, v)| (k.clone(), v.clone())));
            let theirs: Self = Value::Table(merged).try_into().map_err(|e: toml::de::Error| Error::Format(format!("{layer}: {}", e.message())))?;
            if let Some((key, ours, theirs)) = adapter.differs_from(&theirs.lora) {
                return Err(Error::Unsupported(format!(
                    "{layer}: {key} {theirs} differs from the adapter being continued ({source} has {ours}); leave {key} out"
                )));
            }
        }
        let dropout_set = layers.iter().any(|(_, t)| t.contains_key("lora_dropout"));
        let mut config = self;
        config.lora = LoraConfig { lora_dropout: if dropout_set { config.lora.lora_dropout } else { adapter.lora_dropout }, ..adapter.clone() };
        config.validate()?;
        Ok(config)
    }

    /// A `config.toml` (or `--config` file) as a layer.
    pub fn parse_file(path: &Path) -> Result<Table> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        text.parse::<Table>().map_err(|e| {
            // The parser's message has no position of its own; its span gives the line.
            let line = e.span().map_or(String::new(), |s| format!(":{}", 1 + text[..s.start.min(text.len())].matches('\n').count()));
            Error::Format(format!("{}{line}: {}", path.display(), e.message().replace('\n', " ")))
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return Err(Error::Unsupported("batch size and gradient accumulation must be at least 1".into()));
        }
        // Bounds far above any real run, so that the step arithmetic cannot overflow (a typo's
        // batch size panicked in the middle of the first step).
        const MAX_COUNT: usize = 1 << 20;
        for (name, value) in [
            ("per_device_train_batch_size (--batch-size)", self.per_device_train_batch_size),
            ("gradient_accumulation_steps (--grad-accum)", self.gradient_accumulation_steps),
            ("num_train_epochs (--epochs)", self.num_train_epochs),
        ] {
            if value > MAX_COUNT {
                return Err(Error::Unsupported(format!("{name} {value} is above the limit of {MAX_COUNT}")));
            }
        }
        if self.max_steps > 1 << 40 || self.max_length > 1 << 24 {
            return Err(Error::Unsupported(format!("max_steps {} or max_length {} is beyond any run (at most 2^40 steps, 2^24 tokens)", self.max_steps, self.max_length)));
        }

        if self.max_length < 2 {
            return Err(Error::Unsupported("max_length must be at least 2".into()));
        }
        if !(self.optimizer.learning_rate.is_finite() && self.optimizer.learning_rate >= 0.0) {
            return Err(Error::Unsupported(format!("learning_rate {} must be a finite number, at least 0", self.optimizer.learning_rate)));
        }
        let adamw = &self.optimizer.adamw;
        for (name, value) in [("adam_beta1", adamw.beta1), ("adam_beta2", adamw.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::Unsupported(format!("{name} {value} must be in [0, 1)")));
            }
        }
        if !(adamw.eps.is_finite() && adamw.eps > 0.0) {
            return Err(Error::Unsupported(format!("adam_epsilon {} must be a finite number above 0", adamw.eps)));
        }
        for (name, value) in [("weight_decay", adamw.weight_decay), ("max_grad_norm (0: no clipping)", self.optimizer.max_grad_norm), ("init_std", self.init_std)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::Unsupported(format!("{name} {value} must be a finite number, at least 0")));
            }
        }
        if !self.qk_norm_init.is_finite() {
            return Err(Error::Unsupported(format!("qk_norm_init {} must be a finite number", self.qk_norm_init)));
        }
        // Read as f64, used as f32: a value f32 cannot hold became inf (a learning rate of 1e39
        // wrote an adapter of NaN, exit 0) or 0 (an adam_epsilon of 1e-50 divided by zero).
        for (name, value) in [
            ("learning_rate", self.optimizer.learning_rate),
            ("adam_epsilon", adamw.eps),
            ("weight_decay", adamw.weight_decay),
            ("max_grad_norm", self.optimizer.max_grad_norm),
            ("init_std", self.init_std),
            ("qk_norm_init", self.qk_norm_init),
            ("lora_alpha", self.lora.lora_alpha),
        ] {
            let single = value as f32;
            if !single.is_finite() || (value != 0.0 && single == 0.0) {
                return Err(Error::Unsupported(format!("{name} {value:e} is beyond what f32, the precision training uses, holds (magnitudes up to 3.4e38 and down to 1.4e-45)")));
            }
        }
        if self.num_train_epochs == 0 && self.max_steps == 0 {
            return Err(Error::Unsupported("num_train_epochs must be at least 1 (or max_steps set): 0 trains nothing".into()));
        }
        if self.method == Method::Lora {
            self.lora.validate()?;
        }
        Ok(())
    }

    /// What a new run refuses beyond [`RunConfig::validate`]: settings that runs started before
    /// these checks may hold (a resume must still read them: save_steps 0 ran as 1).
    pub fn check_new(&self) -> Result<()> {
        if self.save_steps == 0 {
            return Err(Error::Unsupported("save_steps must be at least 1 (a checkpoint every N optimizer steps)".into()));
        }
        if self.adapter.is_some() && self.method != Method::Lora {
            return Err(Error::Unsupported(
                "an adapter is continued by LoRA training; --method full trains the base weights and would ignore it: merge the adapter first (tiqu merge) or drop --method full".into(),
            ));
        }
        // Settings this run would never read, given other than their defaults: accepted, they
        // were written into config.toml and did nothing.
        let (set, default) = (self.to_table()?, Self::default().to_table()?);
        let unused: Vec<(&str, &str)> = LORA_ONLY
            .iter()
            .filter(|_| self.method == Method::Full)
            .map(|k| (*k, "--method lora"))
            .chain(RANDOM_ONLY.iter().filter(|_| !self.random_weights).map(|k| (*k, "random weights (--random-weights)")))
            .collect();
        if let Some((key, needs)) = unused.into_iter().find(|(k, _)| set.get(*k) != default.get(*k)) {
            return Err(Error::Unsupported(format!("{key} is only read with {needs}; this run would ignore it (drop it from the flags or the --config file)")));
        }
        let targets = &self.lora.target_modules;
        if let Some((_, t)) = targets.iter().enumerate().find(|(i, t)| targets[..*i].contains(t)) {
            return Err(Error::Unsupported(format!("target_modules lists `{t}` twice")));
        }
        Ok(())
    }

    /// The settings of `self` that differ from `other`'s, by name.
    pub fn differences(&self, other: &Self) -> Result<Vec<String>> {
        let (a, b) = (self.to_table()?, other.to_table()?);
        let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        Ok(keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_are_the_seed_recipe_and_layers_override_in_order() {
        let d = RunConfig::default();
        assert_eq!((d.lora.r, d.lora.lora_alpha, d.lora.lora_dropout, d.optimizer.learning_rate), (8, 32.0, 0.1, 1e-4));
        assert_eq!((d.per_device_train_batch_size, d.gradient_accumulation_steps, d.num_train_epochs), (4, 4, 3));
        let c = RunConfig::from_layers(&[("run.toml", table("r = 16\nlearning_rate = 2e-4\nmethod = \"full\"")), ("flags", table("learning_rate = 3e-4"))]).unwrap();
        assert_eq!((c.lora.r, c.optimizer.learning_rate, c.method), (16, 3e-4, Method::Full));
    }

    #[test]
    fn the_toml_keeps_transformers_names_and_round_trips() {
        let c = RunConfig { eval_data: Some("/x/eval.jsonl".into()), ..Default::default() };
        let text = toml::to_string(&c).unwrap();
        for key in ["learning_rate = 0.0001", "adam_beta1 = 0.9", "lora_alpha = 32.0", "method = \"lora\"", "eval_data = \"/x/eval.jsonl\""] {
            assert!(text.contains(key), "{key} missing from\n{text}");
        }
        assert_eq!(RunConfig::from_layers(&[("config.toml", text.parse().unwrap())]).unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = RunConfig::from_layers(&[("run.toml", table("lr = 1e-3"))]).unwrap_err().to_string();
        assert_eq!(err, "run.toml: unknown setting `lr`");
        let err = RunConfig::from_layers(&[("run.toml", table("method = \"half\""))]).unwrap_err().to_string();
        assert!(err.starts_with("run.toml: ") && err.contains("half") && !err.contains('\n'), "{err}");
        let err = RunConfig::from_layers(&[("run.toml", table("r = 0"))]).unwrap_err().to_string();
        assert!(err.contains("r must be between 1 and 65536, got 0"), "{err}");
        // Settings that would train nothing, or NaN, are refused by name before a run starts.
        for (text, needle) in [
            ("adam_beta1 = 1.5", "adam_beta1 1.5 must be in [0, 1)"),
            ("adam_beta2 = nan", "adam_beta2 NaN"),
            ("adam_epsilon = 0.0", "adam_epsilon 0 must be"),
            ("weight_decay = -1.0", "weight_decay -1"),
            ("max_grad_norm = nan", "max_grad_norm"),
            ("init_std = -1.0", "init_std -1"),
            ("lora_alpha = -5.0", "lora_alpha -5"),
            ("num_train_epochs = 0", "num_train_epochs must be at least 1"),
            // Finite in f64, but inf or 0 in f32, where an adapter of NaN was saved with exit 0.
            ("learning_rate = 1e39", "learning_rate 1e39 is beyond what f32"),
            ("adam_epsilon = 1e-50", "adam_epsilon 1e-50 is beyond what f32"),
            ("lora_alpha = 1e300", "lora_alpha 1e300 is beyond what f32"),
        ] {
            let err = RunConfig::from_layers(&[("run.toml", table(text))]).unwrap_err().to_string();
            assert!(err.contains(needle) && !err.contains('\n'), "{text}: {err}");
        }
        assert!(RunConfig::from_layers(&[("run.toml", table("num_train_epochs = 0\nmax_steps = 5"))]).is_ok());
    }

    /// Proves: a new run refuses settings it would never read (LoRA's under --method full,
    /// the random init's without random weights); they were saved and ignored.
    #[test]
    fn settings_a_run_never_reads_are_refused() {
        let new = |text: &str| RunConfig::from_layers(&[("run.toml", table(text))]).unwrap().check_new().map_err(|e| e.to_string());
        assert!(new("method = \"full\"\nr = 4").unwrap_err().contains("r is only read with --method lora"));
        assert!(new("init_std = 5.0").unwrap_err().contains("init_std is only read with random weights"));
        assert!(new("previous_token_init = true").unwrap_err().contains("previous_token_init"));
        assert!(new("method = \"full\"").is_ok() && new("random_weights = true\ninit_std = 0.5").is_ok() && new("r = 4").is_ok());
    }

    #[test]
    fn gradient_checkpointing_takes_a_strategy_or_transformers_booleans() {
        let read = |v: &str| RunConfig::from_layers(&[("run.toml", table(&format!("gradient_checkpointing = {v}")))]).map(|c| c.gradient_checkpointing);
        assert_eq!(read("true").unwrap(), Checkpointing::Balanced);
        assert_eq!(read("false").unwrap(), Checkpointing::None);
        assert_eq!(read("\"layer\"").unwrap(), Checkpointing::Layer);
        assert_eq!(read("\"none\"").unwrap(), Checkpointing::None);
        let err = read("\"sometimes\"").unwrap_err().to_string();
        assert!(err.starts_with("run.toml: ") && err.contains("sometimes") && err.contains("layer") && !err.contains('\n'), "{err}");
        // Saved as the strategy's name; a run saved with a boolean (before `layer`) still reads.
        let c = RunConfig { gradient_checkpointing: Checkpointing::Layer, ..Default::default() };
        assert!(toml::to_string(&c).unwrap().contains("gradient_checkpointing = \"layer\""));
    }

    #[test]
    fn differences_are_listed_by_name() {
        let a = RunConfig::default();
        let b = RunConfig { lora: LoraConfig { r: 16, ..Default::default() }, save_steps: 7, ..Default::default() };
        assert_eq!(a.differences(&b).unwrap(), ["r", "save_steps"]);
    }
}
