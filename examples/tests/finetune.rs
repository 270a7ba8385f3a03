//! The `finetune` example end to end, through tiqu-core's API alone: a run trains a LoRA adapter
//! on the tiny fixture, the adapter it saved is the trained one (it lowers the loss against the
//! base, read back from disk), and extraction over base + adapter gives the schema's fields,
//! each copied from the text.

#[path = "../finetune.rs"]
mod finetune;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use tiqu_core::files::Folder;
use tiqu_core::loss::total_nll;
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::{Checkpoint, Files, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn loss(base: &Path, adapter: Option<&Path>, data: &Path) -> f64 {
    let adapter = adapter.map(Folder::new);
    let opts = LoadOptions { adapter: adapter.as_ref().map(|a| a as &dyn Files), ..Default::default() };
    let loaded = Checkpoint::open_dir(base).unwrap().load::<Flex>(&opts, &Default::default()).unwrap();
    let text = std::fs::read_to_string(data).unwrap();
    let examples: Vec<Example> = parse_records(&text, "data").unwrap().iter().map(|r| Example::new(&r.value, &loaded.tokenizer).unwrap()).collect();
    let (nll, tokens) = total_nll(&loaded.model, &examples, 8).unwrap();
    nll / tokens as f64
}

#[test]
fn fine_tune_save_reload_and_extract_through_the_core_api() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = (fixture("tiny-untied"), fixture("sft_small.jsonl"));
    let run = dir.path().join("run");
    let text = "王小明，上海市浦东新区世纪大道100号，xm@example.org，快递三天没到！";
    let (adapter, results) = finetune::finetune_and_extract(&base, &data, &run, 6, &[text]).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors", "config.toml", "metrics.jsonl", "summary.json", "checkpoint-6/optimizer.safetensors"] {
        assert!(run.join(f).is_file(), "the run folder lacks {f}");
    }
    let (trained, untrained) = (loss(&base, Some(&adapter), &data), loss(&base, None, &data));
    assert!(trained < 0.9 * untrained, "the saved adapter must be the trained one: loss {trained} against the base's {untrained}");
    let fields = results.into_iter().next().unwrap().unwrap().fields;
    assert_eq!(fields.names, ["name", "address", "email", "question"]);
    for value in fields.values.iter().flatten() {
        assert!(text.contains(value.as_str()), "`{value}` is not copied from the text");
    }
}
