//! tiqu-core: Qwen3 in burn — config, checkpoint loading, model, tokenizer + chat template,
//! generation and loss. Backend-generic and free of filesystem calls, so the same code runs
//! natively and in wasm32: files come in as bytes or readers.

pub mod chat;
pub mod config;
pub mod constrain;
pub mod dataset;
pub mod error;
pub mod extract;
pub mod flex;
#[cfg(not(target_arch = "wasm32"))]
pub mod folder;
pub mod generate;
pub mod lora;
pub mod loss;
pub mod merge;
pub mod model;
mod read;
pub mod params;
pub mod quantize;
pub mod schema;
pub mod score;
pub mod sft;
pub mod synth;
pub mod tokenizer;
pub mod train;
pub mod vocab;
pub mod weights;

pub use chat::{chat_prompt, Message};
pub use config::Qwen3Config;
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generated, Sampling};
pub use model::{KvCache, LoadOptions, Qwen3ForCausalLM};
pub use tokenizer::Tokenizer;
pub use weights::{RandomInit, SafetensorsFile, WeightSource};
pub use constrain::Constrain;
pub use extract::{ExtractOptions, Extraction, Extractor, Fields};
pub use schema::{Field, Schema};
