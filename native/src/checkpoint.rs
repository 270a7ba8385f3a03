//! The command line's model options, turned into the core loader's: every command loads
//! through [`tiqu_core::Checkpoint`].

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use tiqu_core::files::Folder;
use tiqu_core::quantize::{Bits, Quantization};
use tiqu_core::{Checkpoint, Files, Loaded, RandomWeights};

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
    #[arg(long, default_value_t = 32, requires = "quantize")]
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

    /// A model of `config`'s shape with seeded random weights (benchmarks), quantized and cast as
    /// it loads, like a checkpoint.
    pub fn random_model<B: Backend>(&self, config: &tiqu_core::Qwen3Config, device: &B::Device) -> Result<tiqu_core::Qwen3ForCausalLM<B>> {
        let opts = tiqu_core::LoadOptions {
            quantize: self.get(),
            dtype: Some(crate::backend::dtype::<B>(device, crate::backend::Use::Inference)?),
            ..Default::default()
        };
        let model = tiqu_core::Qwen3ForCausalLM::load_with(config, &mut RandomWeights::new(42).source(config), device, &opts);
        Ok(if opts.quantize.is_some() { model.context("--quantize")? } else { model? })
    }

    /// `int8/32`-style, for benchmark reports; `None` unquantized.
    pub fn describe(&self) -> Option<String> {
        self.get().map(|q| format!("{:?}/{}", q.bits, q.block).to_lowercase())
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

/// The model of `--model` (a folder or a Hub id), each layer quantized and cast to the dtype
/// `--dtype` picks as it loads, with `--adapter` attached.
pub fn load<B: Backend>(opts: &LoadOptions, device: &B::Device) -> Result<Loaded<B>> {
    let checkpoint = resolve(opts.model)?;
    let adapter = opts.adapter.map(Folder::new);
    let tokenizer = opts.tokenizer.map(Folder::new);
    let load = tiqu_core::LoadOptions {
        quantize: opts.quant.get(),
        dtype: Some(crate::backend::dtype::<B>(device, crate::backend::Use::Inference)?),
        adapter: adapter.as_ref().map(|a| a as &dyn Files),
        tokenizer: tokenizer.as_ref().map(|t| t as &dyn Files),
        random_weights: opts.random_weights.then(|| RandomWeights::new(opts.seed)),
        ..Default::default()
    };
    let loaded = checkpoint.load(&load, device).map_err(|e| {
        let text = e.to_string();
        if text.contains("no model.safetensors") {
            anyhow::anyhow!("{text}; use --random-weights to run without weights")
        } else {
            e.into()
        }
    });
    let loaded = if load.quantize.is_some() { loaded.context("--quantize")? } else { loaded? };
    let sources: Vec<&dyn Files> = load.tokenizer.into_iter().chain([checkpoint.files()]).collect();
    if let Some(warning) = tiqu_core::chat_template::warning(&sources) {
        eprintln!("{warning}");
    }
    Ok(loaded)
}

/// `--model` as a checkpoint: core's lookup, with the flag named in its advice.
pub fn resolve(model: &str) -> Result<Checkpoint> {
    // A folder on object storage is copied into the local cache first (kept for the next run).
    let model = &crate::storage::model_folder(model)?;
    Checkpoint::resolve(model).map_err(|e| {
        let text = e.to_string();
        if text.contains("Hugging Face cache") {
            anyhow::anyhow!("{text} (with --model)")
        } else {
            e.into()
        }
    })
}
