//! `--dtype` on the command line: `tiqu --dtype bf16 eval --loss-only` gives transformers' bf16
//! loss (tests/fixtures/half_precision.json), `auto` on the CPU stays f32, a LoRA run trains on a
//! bf16 base, `--quantize` runs, and what cannot work is refused in one line before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).env("HF_HUB_OFFLINE", "1").output().expect("run tiqu")
}

fn loss(dtype: &str) -> f64 {
    let model = repo().join("tests/fixtures/tiny-untied");
    let data = repo().join("tests/fixtures/sft_small.jsonl");
    let out = tiqu(&[
        "--backend", "cpu", "--dtype", dtype, "eval", "--model", model.to_str().unwrap(), "--data",
        data.to_str().unwrap(), "--loss-only", "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn eval_in_bf16_gives_transformers_bf16_loss_and_auto_is_f32_on_the_cpu() {
    let r: Value = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/half_precision.json")).unwrap()).unwrap();
    let want = |k: &str| r["models"]["tiny-untied"][k]["loss"].as_f64().unwrap();
    let bf16 = loss("bf16");
    assert!((bf16 - want("bf16")).abs() < 1e-5 * want("bf16"), "bf16 {bf16} vs transformers {}", want("bf16"));
    let auto = loss("auto");
    assert!((auto - want("f32")).abs() < 1e-5 * want("f32"), "auto {auto} vs transformers f32 {}", want("f32"));
}

#[test]
fn lora_trains_on_a_bf16_base_and_full_training_refuses_half_precision() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("tests/fixtures/tiny-untied");
    let data = repo().join("tests/fixtures/sft_small.jsonl");
    let run = dir.path().join("run");
    let args = |method: &'static str| {
        vec![
            "--backend".to_string(), "cpu".into(), "--dtype".into(), "bf16".into(), "train".into(), "--model".into(),
            model.display().to_string(), "--data".into(), data.display().to_string(), "--out".into(),
            run.display().to_string(), "--max-steps".into(), "2".into(), "--method".into(), method.into(),
        ]
    };
    let full = args("full");
    let out = tiqu(&full.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(stderr.contains("--dtype bf16") && stderr.contains("f32"), "{stderr}");
    assert!(!run.exists(), "nothing is created before the refusal");

    let lora = args("lora");
    let out = tiqu(&lora.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("base weights in bf16"), "{stderr}");
    assert!(run.join("adapter_model.safetensors").exists(), "the adapter is saved");
}

#[test]
fn quantized_eval_runs_and_a_block_that_does_not_fit_is_one_line() {
    let model = repo().join("tests/fixtures/tiny-tied");
    let data = repo().join("tests/fixtures/sft_small.jsonl");
    let run = |block: &str| {
        tiqu(&[
            "--backend", "cpu", "eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(),
            "--loss-only", "--json", "--quantize", "int8", "--quantize-block", block,
        ])
    };
    let out = run("8");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run("32");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(stderr.contains("q_proj.weight") && stderr.contains("32"), "{stderr}");
}
