//! Embedding tiqu-core in an app: load a checkpoint folder and answer one prompt greedily.
//!
//! cargo run -p tiqu-examples --example generate -- tests/fixtures/tiny-tied "你好"

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use burn::backend::Flex;
use tiqu_core::generate::{generate, GenerateOptions, Sampling};
use tiqu_core::weights::ReadSeek;
use tiqu_core::{chat_prompt, Qwen3Config, Qwen3ForCausalLM, SafetensorsFile, Tokenizer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "tests/fixtures/tiny-tied".into());
    let prompt = args.next().unwrap_or_else(|| "你好".into());
    let dir = Path::new(&dir);

    let config = Qwen3Config::from_json(&std::fs::read(dir.join("config.json"))?, "config.json")?;
    let tokenizer = Tokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json"))?, "tokenizer.json")?;
    let mut shards: Vec<(String, Box<dyn ReadSeek>)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            shards.push((path.display().to_string(), Box::new(BufReader::new(File::open(&path)?))));
        }
    }
    let device = Default::default();
    let model = Qwen3ForCausalLM::<Flex>::load(&config, &mut SafetensorsFile::open(shards)?, &device)?;

    let ids = tokenizer.encode(&chat_prompt(None, &prompt))?;
    let opts = GenerateOptions {
        max_new_tokens: 32,
        sampling: Sampling::Greedy,
        eos_token_ids: config.eos_token_ids.clone(),
        pad_token_id: config.eos_token_ids.first().copied().unwrap_or(0),
    };
    let out = generate(&model, &[ids], &opts)?;
    println!("{}", tokenizer.decode(&out[0].tokens, true)?);
    Ok(())
}
