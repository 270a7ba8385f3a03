//! LoRA against PEFT (tests/reference/make_peft_fixtures.py): with dropout 0 and PEFT's own
//! starting A and B, the loss and every lora_A/lora_B gradient of one backward agree within
//! 1e-4 relative, three AdamW steps with accumulation 2 land on PEFT's adapter weights within
//! 1e-4, and PEFT's adapters (rsLoRA, a subset of targets) give PEFT's eval loss. And training
//! really trains: after a few dozen steps no lora_B is zero and the loss has more than halved.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use serde_json::Value;
use tiqu_core::lora::LoraConfig;
use tiqu_core::loss::total_nll;
use tiqu_core::dataset::sft_records::parse_records;
use tiqu_core::sft::Example;
use tiqu_core::train::{linear_lr, trainable_names, AdamWConfig, Method, Trainer};
use tiqu_core::{Checkpoint, Qwen3Config, Qwen3ForCausalLM, RandomInit, SafetensorsFile, Tokenizer};

type Train = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn reference(dir: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(dir).join("reference.json")).unwrap()).unwrap()
}

fn examples(tok: &Tokenizer) -> Vec<Example> {
    let text = std::fs::read_to_string(fixtures().join("sft_small.jsonl")).unwrap();
    parse_records(&text, "sft_small.jsonl").unwrap().iter().map(|r| Example::new(&r.value, tok).unwrap()).collect()
}

fn base<B: Backend>(name: &str) -> (Qwen3ForCausalLM<B>, Tokenizer) {
    let dir = fixtures().join(name);
    let cfg = Checkpoint::open_dir(&dir).unwrap().config().clone();
    let model = Qwen3ForCausalLM::load(&cfg, &mut Checkpoint::open_dir(&dir).unwrap().weights().unwrap(), &Default::default()).unwrap();
    (model, Checkpoint::open_dir(&dir).unwrap().tokenizer(None).unwrap())
}

fn with_adapter<B: Backend>(name: &str, adapter: &str) -> (Qwen3ForCausalLM<B>, Tokenizer, LoraConfig) {
    let (mut model, tok) = base::<B>(name);
    let (cfg, mut weights) = { let a = tiqu_core::Adapter::open(&tiqu_core::files::Folder::new(fixtures().join(adapter))).unwrap(); (a.config, a.weights) };
    model.load_adapter(&cfg, &mut weights, adapter).unwrap();
    (model, tok, cfg)
}

fn read_all(path: &Path) -> SafetensorsFile {
    let file = std::fs::File::open(path).unwrap();
    SafetensorsFile::open(vec![(path.display().to_string(), Box::new(std::io::BufReader::new(file)))]).unwrap()
}

fn max_rel(ours: &[f32], theirs: &[f32]) -> f64 {
    let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() as f64 / scale.max(1e-12)).fold(0.0, f64::max)
}

fn eval_loss<B: Backend>(model: &Qwen3ForCausalLM<B>, examples: &[Example]) -> f64 {
    // One record per pass, as PEFT's reference numbers were computed.
    let (nll, tokens) = total_nll(model, examples, 1).unwrap();
    nll / tokens as f64
}

#[test]
fn one_backward_matches_peft_gradients() {
    one_backward_matches::<Train>();
}

/// The same gradients computed on an NVIDIA GPU (f32): the CUDA kernels of every op training uses.
#[cfg(feature = "cuda")]
#[test]
fn one_backward_on_cuda_matches_peft_gradients() {
    one_backward_matches::<Autodiff<burn::backend::Cuda>>();
}

fn one_backward_matches<B: burn::tensor::backend::AutodiffBackend>() {
    let r = reference("peft-train");
    let (model, tok, _) = with_adapter::<B>("tiny-untied", "peft-train/initial");
    let ex = examples(&tok);
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 0.0, 0).unwrap();
    let (loss, tokens, grads) = trainer.gradients(&[&ex[0..2]]).unwrap();
    let expected = r["one_step"]["loss"].as_f64().unwrap();
    assert_eq!(tokens as u64, r["one_step"]["tokens"].as_u64().unwrap());
    assert!((loss - expected).abs() / expected < 1e-4, "loss {loss} vs PEFT {expected}");
    let mut reference_grads = read_all(&fixtures().join("peft-train/grads.safetensors"));
    let names = trainable_names(&trainer.model, Method::Lora);
    assert_eq!(names.len(), 2 * 7 * 2, "two layers × seven projections × (A, B)");
    for (name, g) in names.iter().zip(grads) {
        let (shape, theirs) = reference_grads.read_f32(name).unwrap();
        assert_eq!(g.dims().to_vec(), shape, "{name}");
        let ours: Vec<f32> = g.into_data().convert::<f32>().to_vec().unwrap();
        let rel = max_rel(&ours, &theirs);
        assert!(rel < 1e-4, "{name}: gradient differs from PEFT by {rel:.2e} (relative to its largest entry)");
    }
}

#[test]
fn three_adamw_steps_with_accumulation_match_peft() {
    three_adamw_steps_match::<Train>();
}

#[cfg(feature = "cuda")]
#[test]
fn three_adamw_steps_on_cuda_match_peft() {
    three_adamw_steps_match::<Autodiff<burn::backend::Cuda>>();
}

fn three_adamw_steps_match<B: burn::tensor::backend::AutodiffBackend>() {
    let r = reference("peft-train");
    let steps = &r["three_steps"];
    let (model, tok, _) = with_adapter::<B>("tiny-untied", "peft-train/initial");
    let ex = examples(&tok);
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 0.0, 0).unwrap();
    let lr = steps["lr"].as_f64().unwrap();
    for step in 0..3 {
        let micro = [&ex[2 * step..2 * step + 1], &ex[2 * step + 1..2 * step + 2]];
        let stats = trainer.step(&micro, linear_lr(lr, step, 0, 3)).unwrap();
        let expected = steps["losses"][step].as_f64().unwrap();
        assert!((stats.loss - expected).abs() / expected < 1e-4, "step {step}: loss {} vs PEFT {expected}", stats.loss);
        assert!((stats.lr - steps["lrs"][step].as_f64().unwrap()).abs() < 1e-12);
    }
    let mut after = read_all(&fixtures().join("peft-train/after3/adapter_model.safetensors"));
    for (name, (shape, ours)) in trainer.model.adapter_tensors().unwrap() {
        let (their_shape, theirs) = after.read_f32(&name).unwrap();
        assert_eq!(shape, their_shape);
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: weights differ from PEFT's after 3 steps by {worst:.2e}");
    }
}

#[test]
fn peft_adapters_give_peft_eval_losses() {
    let r = reference("peft-train");
    let (model, tok, _) = with_adapter::<Flex>("tiny-untied", "peft-train/after3");
    let got = eval_loss(&model, &examples(&tok));
    let expected = r["eval"]["after3"].as_f64().unwrap();
    assert!((got - expected).abs() / expected < 1e-4, "after3: {got} vs PEFT {expected}");

    // rsLoRA scaling and a subset of target modules, on the bf16 tied base.
    let r = reference("peft-adapter-tied");
    let (model, tok, cfg) = with_adapter::<Flex>("tiny-tied", "peft-adapter-tied");
    assert!(cfg.use_rslora && cfg.target_modules.len() == 3);
    let got = eval_loss(&model, &examples(&tok));
    let expected = r["eval"]["adapter"].as_f64().unwrap();
    assert!((got - expected).abs() / expected < 1e-4, "rsLoRA adapter: {got} vs PEFT {expected}");
}

#[test]
fn adapter_shapes_that_do_not_fit_are_refused() {
    // The tied fixture's adapter has r=8 on a hidden-16 base; the untied base has hidden 8.
    let (mut model, _) = base::<Flex>("tiny-untied");
    let (cfg, mut weights) = { let a = tiqu_core::Adapter::open(&tiqu_core::files::Folder::new(fixtures().join("peft-adapter-tied"))).unwrap(); (a.config, a.weights) };
    let err = model.load_adapter(&cfg, &mut weights, "peft-adapter-tied").unwrap_err().to_string();
    assert!(err.contains("lora_A.weight") && err.contains("shape"), "{err}");
}

#[test]
fn lora_with_dropout_learns_and_no_b_stays_zero() {
    // A random base of moderate scale (loss ≈ ln(vocab) at the start), as a real model's would be.
    let config = Qwen3Config::from_json(
        br#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":151936,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,
            "max_position_embeddings":512,"rms_norm_eps":1e-6,"rope_theta":10000,"tie_word_embeddings":true}"#,
        "test config",
    )
    .unwrap();
    let mut model = Qwen3ForCausalLM::<Train>::load(&config, &mut RandomInit::new(3, 0.5), &Default::default()).unwrap();
    let (_, tok) = base::<Flex>("tiny-untied");
    let cfg = LoraConfig { r: 8, lora_alpha: 32.0, lora_dropout: 0.1, ..LoraConfig::default() };
    model.add_lora(&cfg, 42).unwrap();
    let ex = examples(&tok);
    let train = &ex[..4];
    let before = eval_loss(&model.valid(), train);
    let mut trainer = Trainer::new(model, Method::Lora, AdamWConfig::default(), 1.0, 42).unwrap();
    let steps = 40;
    for step in 0..steps {
        trainer.step(&[&train[..2], &train[2..]], linear_lr(3e-2, step, 0, steps)).unwrap();
    }
    for (name, (_, values)) in trainer.model.adapter_tensors().unwrap() {
        if name.contains("lora_B") {
            assert!(values.iter().any(|&v| v != 0.0), "{name} is still all zero: the adapter did not train");
        }
    }
    let after = eval_loss(&trainer.model.valid(), train);
    eprintln!("eval loss on the training records: {before:.3} -> {after:.3}");
    assert!(after < before / 2.0, "loss fell only from {before} to {after}");
}
