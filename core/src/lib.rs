//! tiqu-core: Qwen3 in burn — config, checkpoint loading, model, tokenizer + chat template,
//! generation and loss. Backend-generic and free of filesystem calls, so the same code runs
//! natively and in wasm32: files come in as bytes or readers.

#[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
mod attend;
#[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
mod causal;
pub mod chat;
#[cfg(feature = "templates")]
pub mod chat_template;
mod clock;
pub mod checkpoint;
pub mod config;
pub mod constrain;
pub mod dataset;
pub mod dtype;
pub mod entries;
pub mod engine;
pub mod error;
pub mod eval;
pub mod extract;
pub mod files;
pub mod format;
pub mod flex;
pub mod generate;
pub mod head_loss;
pub mod head_screen;
pub mod kv_cache;
pub mod layout;
pub mod linear;
#[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
pub mod matvec;
pub mod load;
pub mod lora;
pub mod loss;
pub mod merge;
pub mod model;
pub mod params;
pub mod positions;
pub mod previous_token;
pub mod quantize;
pub mod qmatmul;
mod read;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
pub mod schema;
pub mod score;
pub mod shard;
pub mod speculate;
pub mod sft;
pub mod synth;
pub mod tokenizer;
pub mod train;
pub mod vocab;
pub mod weights;

pub use chat::{ChatPrompt, Message};
pub use config::Qwen3Config;
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generated, Sampling};
pub use checkpoint::{Adapter, Checkpoint, Loaded};
pub use files::{Files, MemoryFiles};
#[cfg(not(target_arch = "wasm32"))]
pub use files::Folder;
pub use kv_cache::KvCache;
pub use load::{LoadOptions, RandomWeights};
pub use model::Qwen3ForCausalLM;
pub use tokenizer::Tokenizer;
pub use weights::{RandomInit, SafetensorsFile, WeightSource};
pub use constrain::Constrain;
pub use engine::{Engine, Request};
pub use extract::{ExtractOptions, Extraction, Extractor, Fields};
pub use schema::{Field, Schema};
pub use speculate::Speculate;
