//! Opening and saving checkpoints: one loader for every caller (the command line, `Extractor`,
//! the browser, apps) over any [`Files`] source, and, beside it, the savers of PEFT adapter
//! folders and whole model folders.
//!
//! ```no_run
//! # use tiqu_core::checkpoint::Checkpoint;
//! # use tiqu_core::files::Folder;
//! # type B = burn::backend::Flex;
//! let ckpt = Checkpoint::resolve("Qwen/Qwen3-0.6B")?;              // a folder, or a Hub id in the cache
//! let adapter = Folder::new("runs/first");
//! let opts = tiqu_core::LoadOptions { adapter: Some(&adapter), ..Default::default() };
//! let loaded = ckpt.load::<B>(&opts, &Default::default())?;         // model + tokenizer + eos
//! # Ok::<(), tiqu_core::Error>(())
//! ```

mod eos;
#[cfg(not(target_arch = "wasm32"))]
mod hub;
#[cfg(not(target_arch = "wasm32"))]
pub mod save;

use burn::prelude::Backend;

use crate::config::Qwen3Config;
use crate::files::{stays_inside, Files};
use crate::load::LoadOptions;
use crate::lora::LoraConfig;
use crate::model::Qwen3ForCausalLM;
use crate::tokenizer::Tokenizer;
use crate::weights::{ReadSeek, SafetensorsFile, WeightSource};
use crate::{Error, Result};

pub use eos::eos_token_ids;
#[cfg(not(target_arch = "wasm32"))]
pub use hub::resolve_dir;

/// The files of a model folder besides its weights, as the Hub ships them: read when present,
/// copied as they are into merged folders, fetched with the weights from the Hub.
pub const COMPANION_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
];

/// The files of a tokenizer, copied into saved model folders.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// A model folder whose `config.json` has been read; weights, tokenizer and adapter are read on
/// [`Checkpoint::load`].
pub struct Checkpoint {
    files: Box<dyn Files>,
    config: Qwen3Config,
}

/// A loaded model with everything generation and extraction need. A clone shares the weights.
#[derive(Clone)]
pub struct Loaded<B: Backend> {
    pub config: Qwen3Config,
    pub model: Qwen3ForCausalLM<B>,
    pub tokenizer: Tokenizer,
    /// Empty when no file names one and the tokenizer has no `<|im_end|>`: fine for a loss,
    /// refused by generation and extraction.
    pub eos_token_ids: Vec<u32>,
}

impl<B: Backend> Loaded<B> {
    /// The eos ids, or why there are none.
    pub fn require_eos(&self) -> Result<&[u32]> {
        if self.eos_token_ids.is_empty() {
            return Err(Error::Format(
                "no eos token: generation_config.json, config.json and tokenizer_config.json set none, and the tokenizer has no <|im_end|>".into(),
            ));
        }
        Ok(&self.eos_token_ids)
    }
}

impl Checkpoint {
    /// Reads `config.json` from `files`.
    pub fn open(files: Box<dyn Files>) -> Result<Self> {
        let path = files.path("config.json");
        if !files.exists("config.json") {
            return Err(files.missing("config.json", "not a model folder"));
        }
        let config = Qwen3Config::from_json(&files.read("config.json")?, &path)?;
        Ok(Self { files, config })
    }

    /// A checkpoint folder on disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        Self::open(Box::new(crate::files::Folder::new(dir)))
    }

    /// A folder, or a Hub id (`Qwen/Qwen3-0.6B`) found in the Hugging Face cache or downloaded
    /// into it when the Hub is reachable.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn resolve(model: &str) -> Result<Self> {
        Self::open_dir(&resolve_dir(model)?)
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    pub fn files(&self) -> &dyn Files {
        self.files.as_ref()
    }

    /// `tokenizer.json` from `from` if given, else from the checkpoint.
    pub fn tokenizer(&self, from: Option<&dyn Files>) -> Result<Tokenizer> {
        let files = from.unwrap_or(self.files.as_ref());
        let tokenizer = Self::tokenizer_in(files)?;
        check_vocabulary(&tokenizer, &self.config, &files.path("tokenizer.json"))?;
        Ok(tokenizer)
    }

    /// `tokenizer.json` of any folder.
    pub fn tokenizer_in(files: &dyn Files) -> Result<Tokenizer> {
        let path = files.path("tokenizer.json");
        if !files.exists("tokenizer.json") {
            return Err(files.missing("tokenizer.json", "the tokenizer can be read from another folder"));
        }
        Tokenizer::from_bytes(&files.read("tokenizer.json")?, &path)
    }

    /// The eos ids as transformers finds them (see [`eos_token_ids`]); `tokenizer_files` is
    /// where `tokenizer_config.json` is looked for besides the checkpoint.
    pub fn eos_token_ids(&self, tokenizer: &Tokenizer, tokenizer_files: Option<&dyn Files>) -> Result<Vec<u32>> {
        eos_token_ids(self.files.as_ref(), tokenizer_files, &self.config, tokenizer)
    }

    /// The names of the safetensors files that hold the weights: `model.safetensors`, else the
    /// index's shards, else every `*.safetensors` but an adapter's. transformers' order: a folder
    /// holding both a single file and an index loads the same weights here as there.
    pub fn weight_files(&self) -> Result<Vec<String>> {
        let files = self.files.as_ref();
        let names = if files.exists(WEIGHTS) {
            vec![WEIGHTS.to_string()]
        } else if files.exists(WEIGHTS_INDEX) {
            shard_names(&files.read(WEIGHTS_INDEX)?, &files.path(WEIGHTS_INDEX))?
        } else {
            files.list()?.into_iter().filter(|n| n.ends_with(".safetensors") && n != ADAPTER_WEIGHTS).collect()
        };
        if names.is_empty() {
            return Err(Error::Format(format!("{}: no model.safetensors (or model.safetensors.index.json)", files.label())));
        }
        Ok(names)
    }

    /// The weights, their headers checked against config.json: every tensor it implies is there
    /// in its shape, and none is left unread. No tensor's data is read.
    pub fn checked_weights(&self) -> Result<SafetensorsFile> {
        let weights = self.weights()?;
        let label = self.files.label();
        self.config.check_layer_indices(weights.names(), &label)?;
        self.config.check_unexpected(weights.names(), &label)?;
        weights.check(&self.config.tensor_shapes())?;
        Ok(weights)
    }

    /// The weights, read lazily tensor by tensor.
    pub fn weights(&self) -> Result<SafetensorsFile> {
        let files = self.files.as_ref();
        let shards = self
            .weight_files()?
            .into_iter()
            .map(|n| Ok((files.path(&n), files.open(&n)?)))
            .collect::<Result<Vec<(String, Box<dyn ReadSeek>)>>>()?;
        SafetensorsFile::open(shards)
    }

    /// The model alone: the checkpoint's weights (or seeded random ones), each layer cast and
    /// quantized as it loads, with the adapter of `opts` attached.
    pub fn load_model<B: Backend>(&self, opts: &LoadOptions, device: &B::Device) -> Result<Qwen3ForCausalLM<B>> {
        let mut model = match opts.random_weights {
            Some(random) => Qwen3ForCausalLM::load_with(&self.config, &mut random.source(&self.config), device, opts)?,
            None => Qwen3ForCausalLM::load_with(&self.config, &mut self.checked_weights()?, device, opts)?,
        };
        if let Some(files) = opts.adapter {
            Adapter::open(files)?.attach(&mut model)?;
        }
        Ok(model)
    }

    /// Model, tokenizer and eos ids.
    pub fn load<B: Backend>(&self, opts: &LoadOptions, device: &B::Device) -> Result<Loaded<B>> {
        // Checked before the weights load: ids past the embedding would fail every record.
        let tokenizer = self.tokenizer(opts.tokenizer)?;
        let eos_token_ids = self.eos_token_ids(&tokenizer, opts.tokenizer)?;
        let model = self.load_model(opts, device)?;
        Ok(Loaded { config: self.config.clone(), model, tokenizer, eos_token_ids })
    }
}

/// Refuses a tokenizer with a token the model has no embedding row for (`path` names its file):
/// such a token failed deep in a forward pass, naming neither the file nor the token, and only
/// once a text used it.
pub fn check_vocabulary(tokenizer: &Tokenizer, config: &Qwen3Config, path: &str) -> Result<()> {
    let vocab = config.vocab_size;
    match tokenizer.inner().get_vocab(true).into_iter().filter(|(_, id)| *id as usize >= vocab).max_by_key(|(_, id)| *id) {
        Some((token, id)) => Err(Error::Format(format!(
            "{path}: token `{token}` has id {id}, beyond the model's vocabulary (vocab_size {vocab} in config.json): not this model's tokenizer"
        ))),
        None => Ok(()),
    }
}

/// Shard file names listed by `model.safetensors.index.json`, sorted, each once; each must stay
/// inside the folder (the index is untrusted input).
pub fn shard_names(index: &[u8], path: &str) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(index).map_err(|e| Error::json(path, e))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Format(format!("{path}: no weight_map")))?;
    if map.is_empty() {
        return Err(Error::Format(format!("{path}: weight_map is empty (it names no shard)")));
    }
    let mut names = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Format(format!("{path}: the file of `{tensor}` is not a string")))?;
        if !stays_inside(file) || !file.ends_with(".safetensors") {
            return Err(Error::Format(format!("{path}: shard name `{file}` (for `{tensor}`) is not a .safetensors file inside the folder")));
        }
        names.push(file.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// A LoRA adapter in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.
pub struct Adapter {
    pub config: LoraConfig,
    pub weights: SafetensorsFile,
    label: String,
}

impl Adapter {
    pub fn open(files: &dyn Files) -> Result<Self> {
        let config_path = files.path(ADAPTER_CONFIG);
        if !files.exists(ADAPTER_CONFIG) {
            return Err(files.missing(ADAPTER_CONFIG, "not an adapter folder"));
        }
        let config = LoraConfig::from_peft_json(&files.read(ADAPTER_CONFIG)?, &config_path)?;
        let weights = SafetensorsFile::open(vec![(files.path(ADAPTER_WEIGHTS), files.open(ADAPTER_WEIGHTS)?)])?;
        Ok(Self { config, weights, label: files.label() })
    }

    /// Attaches the adapter to `model`, checking every shape against it.
    pub fn attach<B: Backend>(mut self, model: &mut Qwen3ForCausalLM<B>) -> Result<()> {
        model.load_adapter(&self.config, &mut self.weights, &self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_inside_the_folder() {
        let index = |file: &str| serde_json::json!({"weight_map": {"a": file, "b": "model-1.safetensors"}}).to_string();
        assert_eq!(shard_names(index("model-1.safetensors").as_bytes(), "i.json").unwrap(), ["model-1.safetensors"]);
        for bad in ["../secret.safetensors", "/etc/x.safetensors", "a/../../x.safetensors", "config.json"] {
            let err = shard_names(index(bad).as_bytes(), "m/model.safetensors.index.json").unwrap_err().to_string();
            assert!(err.starts_with("m/model.safetensors.index.json: shard name ") && err.contains(bad), "{err}");
        }
    }
}
