//! Half precision as transformers computes it (tests/reference/make_half_fixtures.py): with the
//! base weights cast to bf16 or f16 (`cast_base`), the response-token loss of the tiny
//! checkpoints lands on transformers' loss in that dtype, and a PEFT adapter on a bf16 base stays
//! f32 and gives PEFT's bf16 loss. The untied fixture matches to 1e-6 in bf16 — the same roundings
//! in the same places. The tied one (hidden 16, logits in the hundreds) is held to 3e-4: there the
//! f32 accumulation order inside the matmuls already flips bf16 roundings (summing in f64 instead
//! moves transformers' own loss by 3e-5). Also: LoRA training on a bf16 base keeps f32 adapters
//! and learns.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde_json::Value;
use tiqu_core::lora::LoraConfig;
use tiqu_core::loss::total_nll;
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::train::{AdamWConfig, Method, Trainer};
use tiqu_core::{Checkpoint, Qwen3ForCausalLM, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("half_precision.json")).unwrap()).unwrap()
}

fn examples(tok: &Tokenizer) -> Vec<Example> {
    let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
    parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, tok).unwrap()).collect()
}

fn model<B: Backend>(name: &str, adapter: Option<&str>, dtype: FloatDType) -> (Qwen3ForCausalLM<B>, Vec<Example>) {
    let dir = fixtures().join(name);
    let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let mut model = Qwen3ForCausalLM::load(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), &Default::default()).unwrap();
    if let Some(adapter) = adapter {
        let (lora, mut weights) = { let a = tiqu_core::Adapter::open(&tiqu_core::files::Folder::new(fixtures().join(adapter))).unwrap(); (a.config, a.weights) };
        model.load_adapter(&lora, &mut weights, adapter).unwrap();
    }
    let tok = Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap();
    (model.cast_base(dtype), examples(&tok))
}

fn loss<B: Backend>(model: &Qwen3ForCausalLM<B>, examples: &[Example]) -> f64 {
    let (nll, tokens) = total_nll(model, examples, 1).unwrap();
    nll / tokens as f64
}

/// Our loss in `dtype` against transformers' in that dtype and in f32.
fn check(entry: &str, name: &str, adapter: Option<&str>, key: &str, dtype: FloatDType, rel: f64) {
    check_on::<Flex>(entry, name, adapter, key, dtype, rel)
}

fn check_on<B: Backend>(entry: &str, name: &str, adapter: Option<&str>, key: &str, dtype: FloatDType, rel: f64) {
    let r = &reference()["models"][entry];
    let theirs = r[key]["loss"].as_f64().unwrap();
    let f32_loss = r["f32"]["loss"].as_f64().unwrap();
    let (model, examples) = model::<B>(name, adapter, dtype);
    assert_eq!(model.dtype(), dtype);
    let ours = loss(&model, &examples);
    let (off, gap) = ((ours - theirs).abs(), (theirs - f32_loss).abs());
    eprintln!("{entry} {key}: ours {ours}, transformers {theirs}, f32 {f32_loss}");
    let tolerance = rel * theirs.abs();
    assert!(off < tolerance, "{entry} {key}: {ours} vs transformers {theirs} (f32: {f32_loss})");
    if gap > 2.0 * tolerance {
        assert!(off < gap / 2.0, "{entry} {key}: {ours} is nearer f32's {f32_loss} than transformers' {theirs}");
    }
}

#[test]
fn bf16_losses_match_transformers_bf16() {
    check("tiny-untied", "tiny-untied", None, "bf16", FloatDType::BF16, 1e-6);
    check("tiny-tied", "tiny-tied", None, "bf16", FloatDType::BF16, 3e-4);
}

#[test]
fn f16_losses_match_transformers_f16() {
    check("tiny-untied", "tiny-untied", None, "f16", FloatDType::F16, 1e-5);
    check("tiny-tied", "tiny-tied", None, "f16", FloatDType::F16, 1e-4);
}

#[test]
fn peft_adapter_on_a_bf16_base_gives_pefts_bf16_loss() {
    check("tiny-tied+peft-adapter-tied", "tiny-tied", Some("peft-adapter-tied"), "bf16", FloatDType::BF16, 4e-4);
    // f32 stays the f32 computation.
    check("tiny-tied+peft-adapter-tied", "tiny-tied", Some("peft-adapter-tied"), "f32", FloatDType::F32, 1e-6);
}

#[test]
fn lora_training_on_a_bf16_base_keeps_f32_adapters_and_learns() {
    type B = Autodiff<Flex>;
    let (mut model, examples) = model::<B>("tiny-untied", None, FloatDType::BF16);
    model.add_lora(&LoraConfig { lora_dropout: 0.0, ..LoraConfig::default() }, 7).unwrap();
    let before = loss(&model, &examples);
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 1.0, 7).unwrap();
    for _ in 0..40 {
        trainer.step(&[&examples[..]], 1e-2).unwrap();
    }
    let lora = trainer.model.model.layers[0].self_attn.q_proj.lora.as_ref().unwrap();
    assert_eq!(lora.lora_B.val().dtype(), DType::F32);
    assert_eq!(trainer.model.model.layers[0].self_attn.q_proj.weight.val().dtype(), DType::BF16);
    let after = loss(&trainer.model, &examples);
    assert!(after < 0.5 * before, "bf16 base + f32 LoRA: loss {before} -> {after}");
}

/// f16 inference on the wgpu backend (lavapipe in CI), where the adapter supports f16: the loss
/// transformers computes in f16. An adapter without f16 must say so through `supports_dtype`,
/// which `--dtype auto` consults; then this test checks nothing and says so.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_f16_losses_match_transformers_f16() {
    use burn::backend::Wgpu;
    if !<Wgpu as Backend>::supports_dtype(&Default::default(), DType::F16) {
        eprintln!("this wgpu adapter has no f16: skipped");
        return;
    }
    let r = &reference()["models"]["tiny-untied"];
    let theirs = r["f16"]["loss"].as_f64().unwrap();
    let (model, examples) = model::<Wgpu>("tiny-untied", None, FloatDType::F16);
    let ours = loss(&model, &examples);
    eprintln!("wgpu f16: ours {ours}, transformers {theirs}");
    assert!((ours - theirs).abs() < 1e-4 * theirs, "wgpu f16 {ours} vs transformers {theirs}");
}

/// bf16 on an NVIDIA GPU, the dtype `--dtype auto` picks there: transformers' bf16 loss, not its
/// f32 one (the kernels sum in another order than the CPU's, hence the wider bound than flex's).
#[cfg(feature = "cuda")]
#[test]
fn cuda_bf16_losses_match_transformers_bf16() {
    use burn::backend::Cuda;
    check_on::<Cuda>("tiny-untied", "tiny-untied", None, "bf16", FloatDType::BF16, 1e-3);
    check_on::<Cuda>("tiny-tied", "tiny-tied", None, "bf16", FloatDType::BF16, 1e-3);
    check_on::<Cuda>("tiny-tied+peft-adapter-tied", "tiny-tied", Some("peft-adapter-tied"), "bf16", FloatDType::BF16, 1e-3);
}
