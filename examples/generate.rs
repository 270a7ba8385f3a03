//! Embedding tiqu-core in an app: load a checkpoint folder and answer one prompt greedily.
//!
//! cargo run -p tiqu-examples --example generate -- tests/fixtures/tiny-tied "你好"

use std::path::Path;

use burn::backend::Flex;
use tiqu_core::generate::{generate, GenerateOptions, Sampling};
use tiqu_core::{ChatPrompt, Checkpoint};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "tests/fixtures/tiny-tied".into());
    let prompt = args.next().unwrap_or_else(|| "你好".into());

    let loaded = Checkpoint::open_dir(Path::new(&dir))?.load::<Flex>(&Default::default(), &Default::default())?;
    let eos = loaded.require_eos()?.to_vec();
    let ids = ChatPrompt::new(None, &prompt).encode(&loaded.tokenizer)?;
    let opts = GenerateOptions { max_new_tokens: 32, sampling: Sampling::Greedy, pad_token_id: eos[0], eos_token_ids: eos };
    let out = generate(&loaded.model, &[ids], &opts)?;
    println!("{}", loaded.tokenizer.decode(&out[0].tokens, true)?);
    Ok(())
}
