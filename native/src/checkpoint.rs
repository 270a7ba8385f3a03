//! Finds a checkpoint (a folder, or a Hub id in the Hugging Face cache) and loads it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::prelude::Backend;
use tiqu_core::folder::{has_weights, load_config, load_eos, load_tokenizer, open_weights, shard_names};
use tiqu_core::quantize::{Bits, Quantization};
use tiqu_core::{Qwen3Config, Qwen3ForCausalLM, RandomInit, Tokenizer, WeightSource};

/// Files of a Hub checkpoint that tiqu reads (weights are listed by the index).
const HUB_FILES: [&str; 4] = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"];

/// A loaded model with everything generation needs.
pub struct Loaded<B: Backend> {
    pub config: Qwen3Config,
    pub model: Qwen3ForCausalLM<B>,
    pub tokenizer: Tokenizer,
    pub eos_token_ids: Vec<u32>,
}

/// `--model`: an existing folder, or a Hub id (`Qwen/Qwen3-0.6B`) found in the standard cache
/// (HF_HOME or ~/.cache/huggingface/hub) or downloaded when online.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("{model}: --model must be a checkpoint folder (or a Hub id), not a file");
    }
    let looks_like_id = model.split('/').count() == 2 && !model.starts_with('.') && !model.contains('\\');
    if !looks_like_id {
        bail!("{model}: no such folder (and not a Hub id like Qwen/Qwen3-0.6B)");
    }
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(model.to_string());
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        if has_weights(&dir) {
            return Ok(dir);
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v != "0" && !v.is_empty());
    let how = format!(
        "download it on a machine with internet (`huggingface-cli download {model}`) and copy the cache to {}, \
         or pass --model with a folder holding config.json, *.safetensors and tokenizer.json",
        cache.path().display()
    );
    if offline {
        bail!("{model} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: {how}", cache.path().display());
    }
    download(model).map_err(|e| {
        anyhow!("{model} is not in the Hugging Face cache ({}) and downloading failed ({e}): {how}", cache.path().display())
    })
}

fn download(model: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).with_retries(0).build()?;
    let repo = api.model(model.to_string());
    let mut dir = None;
    for file in HUB_FILES {
        match repo.get(file) {
            Ok(p) => dir = p.parent().map(Path::to_path_buf),
            Err(e) if file == "config.json" => return Err(e.into()),
            Err(_) => {}
        }
    }
    let dir = dir.context("no files downloaded")?;
    let index = repo.get("model.safetensors.index.json");
    match index {
        Ok(index) => {
            for shard in shard_names(&index)? {
                repo.get(&shard)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors")?;
        }
    }
    Ok(dir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeName {
    None,
    Int8,
    Int4,
}

/// `--quantize` / `--quantize-block`, for commands that only run the model.
#[derive(clap::Args, Clone, Debug)]
pub struct QuantArgs {
    /// Store the seven projections of every layer quantized (burn's symmetric int8 or int4, one
    /// scale per block) and dequantize each just before its matmul: less memory for weights, at
    /// an accuracy cost measured in BENCHMARKS.md. Embeddings and norms stay unquantized.
    #[arg(long, value_enum, default_value = "none")]
    pub quantize: QuantizeName,
    /// Weights per quantization scale; must divide every projection's input size.
    #[arg(long, default_value_t = 32)]
    pub quantize_block: usize,
}

impl QuantArgs {
    pub fn get(&self) -> Option<Quantization> {
        let bits = match self.quantize {
            QuantizeName::None => return None,
            QuantizeName::Int8 => Bits::Int8,
            QuantizeName::Int4 => Bits::Int4,
        };
        Some(Quantization { bits, block: self.quantize_block })
    }

    /// `int8/32`-style, for benchmark reports; `None` unquantized.
    pub fn describe(&self) -> Option<String> {
        self.get().map(|q| format!("{:?}/{}", q.bits, q.block).to_lowercase())
    }

    /// The model from `src`, each layer quantized and cast to the dtype `--dtype` picks as it
    /// loads: the whole model is never f32 in memory.
    pub fn load<B: Backend>(&self, config: &Qwen3Config, src: &mut dyn WeightSource, device: &B::Device) -> Result<Qwen3ForCausalLM<B>> {
        let dtype = crate::backend::dtype::<B>(device, crate::backend::Use::Inference)?;
        let opts = tiqu_core::LoadOptions { quantize: self.get(), dtype: Some(dtype), ..Default::default() };
        let model = Qwen3ForCausalLM::load_with(config, src, device, &opts);
        Ok(if opts.quantize.is_some() { model.context("--quantize")? } else { model? })
    }
}

pub struct LoadOptions<'a> {
    pub model: &'a str,
    /// A LoRA adapter folder (PEFT layout) to apply on top.
    pub adapter: Option<&'a Path>,
    pub tokenizer: Option<&'a Path>,
    pub random_weights: bool,
    pub seed: u64,
    pub quant: &'a QuantArgs,
}

pub fn load<B: Backend>(opts: &LoadOptions, device: &B::Device) -> Result<Loaded<B>> {
    let dir = resolve(opts.model)?;
    let config = load_config(&dir)?;
    let tokenizer = load_tokenizer(&dir, opts.tokenizer)?;
    let eos_token_ids = load_eos(&dir, &config)?;
    let mut model = if opts.random_weights {
        opts.quant.load(&config, &mut RandomInit::new(opts.seed, 0.02), device)?
    } else {
        opts.quant.load(&config, &mut open_weights(&dir)?, device)?
    };
    if let Some(adapter) = opts.adapter {
        let (lora, mut weights) = tiqu_core::folder::open_adapter(adapter)?;
        model.load_adapter(&lora, &mut weights, &adapter.display().to_string())?;
    }
    Ok(Loaded { config, model, tokenizer, eos_token_ids })
}
