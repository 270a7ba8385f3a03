//! An app that fine-tunes, saves, reloads and extracts with tiqu-core alone (no command line):
//! a LoRA run on SFT records, the adapter saved in PEFT's layout, then loaded over the base to
//! extract fields.
//!
//! cargo run --release -p tiqu-examples --example finetune -- BASE_MODEL_DIR TRAIN.jsonl RUN_DIR

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use tiqu_core::files::Folder;
use tiqu_core::run::{Event, Observer, Run, RunConfig, RunOptions};
use tiqu_core::{Checkpoint, ExtractOptions, Extraction, Files, LoadOptions, Schema};

/// Prints each step's loss (an app would update its own progress display here).
struct PrintLoss;

impl Observer for PrintLoss {
    fn event(&mut self, event: &Event) -> tiqu_core::Result<()> {
        if let Event::Step(s) = event {
            println!("step {:>3}  loss {:.4}", s.step, s.loss);
        }
        Ok(())
    }
}

/// Trains a LoRA adapter on `data` over `base` into `run_dir` (the seed recipe with a few
/// settings changed), reloads base + adapter from disk and extracts the fields of `texts`.
pub fn finetune_and_extract(base: &Path, data: &Path, run_dir: &Path, steps: usize, texts: &[&str]) -> anyhow::Result<(PathBuf, Vec<tiqu_core::Result<Extraction>>)> {
    let mut settings = RunConfig {
        model: base.display().to_string(),
        data: data.display().to_string(),
        max_steps: steps,
        save_steps: steps,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 1,
        ..RunConfig::default()
    };
    settings.optimizer.learning_rate = 1e-2;
    let run = Run::create(run_dir, settings)?;
    let device = Default::default();
    let done = run.execute::<Flex>(&[device], &RunOptions { threads: 1, ..Default::default() }, &mut PrintLoss)?;

    // Reload from disk, as another process (or a later run of the app) would.
    let adapter = Folder::new(&done.output);
    let opts = LoadOptions { adapter: Some(&adapter as &dyn Files), ..Default::default() };
    let loaded = Checkpoint::open_dir(base)?.load::<Flex>(&opts, &device)?;
    let extractor = loaded.into_extractor(Schema::default(), ExtractOptions { max_new_tokens: 64, ..Default::default() })?;
    Ok((done.output, extractor.extract_batch(texts)))
}

#[allow(dead_code)] // Also compiled into the examples' test, which calls the function directly.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = PathBuf::from(args.next().unwrap_or_else(|| "tests/fixtures/tiny-untied".into()));
    let data = PathBuf::from(args.next().unwrap_or_else(|| "tests/fixtures/sft_small.jsonl".into()));
    let run_dir = PathBuf::from(args.next().unwrap_or_else(|| "runs/example-finetune".into()));
    let text = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业不管。";
    let (adapter, results) = finetune_and_extract(&base, &data, &run_dir, 6, &[text])?;
    println!("adapter: {}", adapter.display());
    for r in results {
        println!("{}", r?.fields.to_json());
    }
    Ok(())
}
