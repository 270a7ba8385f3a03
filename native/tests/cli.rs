//! The `tiqu` binary end to end: its output contract on the committed fixtures, and one clear
//! line (no panic, non-zero exit) for every bad input the foundation issue names.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", std::env::temp_dir().join("tiqu-test-empty-hf-home"))
        .output()
        .expect("run tiqu")
}

/// A failure with one `error:` line that contains every `needle`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "exit 101 means a panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line should name `{n}`: {}", lines[0]);
    }
}

fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tiqu failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(&fs::read(fixture(name).join("reference.json")).unwrap()).unwrap()
}

/// A copy of a fixture folder (tokenizer files copied, not linked) to damage.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    f(cfg.as_object_mut().unwrap());
    fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// Rewrites model.safetensors of `dir` through `f`, which may drop or replace tensors.
fn edit_weights(dir: &Path, f: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    f(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn prompt_of(name: &str, i: usize) -> (Option<String>, String) {
    let r = reference(name);
    let p = &r["prompts"][i];
    (p["system"].as_str().map(String::from), p["user"].as_str().unwrap().to_string())
}

#[test]
fn generate_json_matches_transformers_greedy() {
    for name in ["tiny-tied", "tiny-untied"] {
        let r = reference(name);
        let dir = fixture(name);
        let (system, user) = prompt_of(name, 0);
        let mut args = vec!["--backend", "cpu", "generate", "--model", dir.to_str().unwrap(), "--prompt", &user];
        let n = r["max_new_tokens"].to_string();
        args.extend(["--max-new-tokens", &n, "--json"]);
        if let Some(s) = &system {
            args.extend(["--system", s]);
        }
        let out = last_json(&tiqu(&args));
        assert_eq!(out["tokens"], r["greedy"][0]["ids"], "{name}: CLI greedy tokens differ from transformers");
        assert_eq!(out["text"], r["greedy"][0]["text"], "{name}");
        assert_eq!(out["prompt_tokens"].as_u64().unwrap() as usize, r["prompts"][0]["ids"].as_array().unwrap().len());
        assert!(out["tokens_per_s"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn eval_loss_only_matches_transformers() {
    for name in ["tiny-tied", "tiny-untied"] {
        let r = reference(name);
        let data = repo().join("tests/fixtures/sft_small.jsonl");
        let dir = fixture(name);
        let args =
            ["--backend", "cpu", "eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss-only", "--json"];
        let out = last_json(&tiqu(&args));
        let (loss, expected) = (out["loss"].as_f64().unwrap(), r["losses"]["loss"].as_f64().unwrap());
        assert!((loss - expected).abs() / expected <= 1e-4, "{name}: loss {loss} vs transformers {expected}");
        assert_eq!(out["tokens"], r["losses"]["tokens"]);
        assert_eq!(out["records"].as_u64(), r["losses"]["records"].as_u64());
    }
}

#[test]
fn random_weights_need_only_config_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        fs::copy(fixture("tiny-untied").join(f), dir.path().join(f)).unwrap();
    }
    let model = dir.path().to_str().unwrap();
    let out = last_json(&tiqu(&["generate", "--model", model, "--random-weights", "--prompt", "hi", "--max-new-tokens", "3", "--json"]));
    assert!(out["tokens"].as_array().unwrap().len() <= 3);
    // Without --random-weights the missing weights are named.
    assert_clean_error(&tiqu(&["generate", "--model", model, "--prompt", "hi"]), &["model.safetensors", "--random-weights"]);
    assert_clean_error(&tiqu(&["generate", "--model", model, "--random-weights", "--prompt", "hi", "--prompt", " "]), &["--prompt number 2 is empty"]);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let dir = fixture("tiny-untied");
    let run = |seed: &str| {
        let args = ["generate", "--model", dir.to_str().unwrap(), "--prompt", "你好", "--max-new-tokens", "8"];
        last_json(&tiqu(&[&args[..], &["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95", "--seed", seed, "--json"]].concat()))
    };
    assert_eq!(run("7")["tokens"], run("7")["tokens"]);
}

#[test]
fn missing_config_is_named() {
    let dir = copy_fixture("tiny-untied");
    fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_clean_error(&tiqu(&["generate", "--model", dir.path().to_str().unwrap(), "--prompt", "x"]), &["config.json"]);
}

#[test]
fn corrupt_and_truncated_safetensors_are_named() {
    let dir = copy_fixture("tiny-untied");
    let weights = dir.path().join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let model = dir.path().to_str().unwrap();
    assert_clean_error(&tiqu(&["generate", "--model", model, "--prompt", "x"]), &["model.safetensors", "truncated"]);
    fs::write(&weights, b"this is not a safetensors file at all").unwrap();
    assert_clean_error(&tiqu(&["generate", "--model", model, "--prompt", "x"]), &["model.safetensors", "not a valid safetensors"]);
}

/// Proves: what the safetensors library (and so transformers) refuses is refused here too —
/// bytes that belong to no tensor, `__metadata__` that is not text — and a weights "file" that
/// is a folder or a named pipe is named as such (the folder seemed 2⁶³ bytes long; the pipe hung
/// the load for ever), as is an index that names no shard.
#[test]
fn weights_the_format_refuses_are_named() {
    let dir = copy_fixture("tiny-untied");
    let model = dir.path().to_str().unwrap();
    let weights = dir.path().join("model.safetensors");
    let good = fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let generate = || tiqu(&["generate", "--model", model, "--prompt", "x", "--max-new-tokens", "1"]);

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 16]);
    fs::write(&weights, &trailing).unwrap();
    assert_clean_error(&generate(), &["model.safetensors", "16 bytes after the last tensor belong to no tensor"]);

    let mut header: Value = serde_json::from_slice(&good[8..8 + header_len]).unwrap();
    header["__metadata__"] = serde_json::json!({"format": 5});
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= header_len, "the edited header should fit the old one's bytes");
    text.resize(header_len, b' ');
    fs::write(&weights, [&good[..8], &text, &good[8 + header_len..]].concat()).unwrap();
    assert_clean_error(&generate(), &["model.safetensors", "`__metadata__` is not an object of strings"]);

    fs::remove_file(&weights).unwrap();
    fs::create_dir(&weights).unwrap();
    assert_clean_error(&generate(), &["model.safetensors: is a folder, not a file"]);
    fs::remove_dir(&weights).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&weights).status().unwrap();
    assert!(made.success());
    assert_clean_error(&generate(), &["model.safetensors: is not a regular file"]);
    fs::remove_file(&weights).unwrap();

    fs::write(dir.path().join("model.safetensors.index.json"), r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
    assert_clean_error(&generate(), &["model.safetensors.index.json: weight_map is empty"]);
}

/// Proves: a checkpoint whose chat template makes other prompts than tiqu's (here Qwen3's without
/// the empty think block, as Qwen3-2507's instruct models) is warned about, naming the file and
/// where the prompts part; the real Qwen3 template is not.
#[test]
fn a_foreign_chat_template_is_warned_about() {
    let dir = copy_fixture("tiny-tied");
    let model = dir.path().to_str().unwrap();
    let generate = || tiqu(&["generate", "--model", model, "--prompt", "x", "--max-new-tokens", "1"]);
    let quiet = generate();
    assert!(quiet.status.success() && !String::from_utf8_lossy(&quiet.stderr).contains("warning"), "{}", String::from_utf8_lossy(&quiet.stderr));
    let path = dir.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let template = config["chat_template"].as_str().unwrap().replace("{{- '<think>\\n\\n</think>\\n\\n' }}", "");
    config["chat_template"] = template.into();
    fs::write(&path, config.to_string()).unwrap();
    let warned = generate();
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    let warning = stderr.lines().find(|l| l.starts_with("warning: ")).unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(warning.contains("tokenizer_config.json") && warning.contains("<think>"), "{warning}");
}

/// Proves: a rope_theta so small that RoPE's frequencies overflow f32 is named in config.json;
/// the NaN rotations it made were blamed on the weights.
#[test]
fn a_rope_theta_past_f32_is_named() {
    // 2.5e-77: the highest frequency fits f32 (2e38 at head_dim 4), its angle at later positions does not.
    for (theta, named) in [(1e-300, "rope_theta 1e-300 is too small"), (2.5e-77, "rope_theta 2.5e-77 is too small")] {
        let dir = copy_fixture("tiny-untied");
        edit_config(dir.path(), |c| {
            c.remove("rope_parameters");
            c.insert("rope_theta".into(), serde_json::json!(theta));
        });
        let out = tiqu(&["generate", "--model", dir.path().to_str().unwrap(), "--prompt", "x"]);
        assert_clean_error(&out, &["config.json", named]);
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("tiny-untied");
    edit_weights(dir.path(), |t| t.retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight"));
    let out = tiqu(&["generate", "--model", dir.path().to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&out, &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = copy_fixture("tiny-untied");
    edit_weights(dir.path(), |t| {
        let entry = t.iter_mut().find(|(n, _, _)| n == "model.layers.0.mlp.gate_proj.weight").unwrap();
        let (rows, cols) = (entry.1[0], entry.1[1]);
        entry.1 = vec![cols, rows];
    });
    let out = tiqu(&["generate", "--model", dir.path().to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&out, &["model.layers.0.mlp.gate_proj.weight", "shape"]);
}

#[test]
fn unsupported_architectures_are_refused() {
    let dir = copy_fixture("tiny-untied");
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), serde_json::json!(["Qwen2ForCausalLM"]));
    });
    let model = dir.path().to_str().unwrap().to_string();
    assert_clean_error(&tiqu(&["generate", "--model", &model, "--prompt", "x"]), &["config.json", "Qwen2ForCausalLM"]);
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), serde_json::json!(["Qwen3MoeForCausalLM"]));
        c.insert("model_type".into(), serde_json::json!("qwen3_moe"));
        c.insert("num_experts".into(), serde_json::json!(8));
    });
    assert_clean_error(&tiqu(&["generate", "--model", &model, "--prompt", "x"]), &["config.json", "mixture-of-experts"]);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let dir = fixture("tiny-untied");
    let long = "很长的投诉".repeat(400);
    let out = tiqu(&["generate", "--model", dir.to_str().unwrap(), "--prompt", &long]);
    assert_clean_error(&out, &["max_position_embeddings", "512"]);
}

#[test]
fn uncached_hub_id_offline_says_how_to_download() {
    let out = tiqu(&["generate", "--model", "Qwen/Qwen3-0.6B", "--prompt", "x"]);
    assert_clean_error(&out, &["Qwen/Qwen3-0.6B", "huggingface-cli download", "--model"]);
}

#[test]
fn bad_eval_data_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-untied");
    let bad = dir.path().join("bad.jsonl");
    fs::write(&bad, "{\"instruction\": \"a\", \"output\": \"b\"}\n{not json\n").unwrap();
    let args = |data: &Path| -> Vec<String> {
        ["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss-only"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |data: &Path| tiqu(&args(data).iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&run(&bad), &["bad.jsonl:2"]);
    let no_output = dir.path().join("no_output.jsonl");
    fs::write(&no_output, "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"c\"}\n").unwrap();
    assert_clean_error(&run(&no_output), &["no_output.jsonl:3", "output"]);
}

#[test]
fn doctor_lists_backends() {
    let out = tiqu(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("cpu") && stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("default backend: "), "{stdout}");
    // A backend asked for is checked, not ignored: the CPU and its dtype answer, and a backend
    // that does not initialise here is an error (it printed the table and exit 0).
    let cpu = tiqu(&["--backend", "cpu", "--dtype", "f32", "doctor"]);
    assert!(cpu.status.success() && String::from_utf8_lossy(&cpu.stdout).contains("chosen backend: cpu (f32 for inference)"));
    if !stdout.contains("cuda  ok") {
        assert_clean_error(&tiqu(&["--backend", "cuda", "doctor"]), &["--backend cuda"]);
    }
}

/// Overwrites every value of `tensor` in a safetensors file with NaN.
fn poison(file: &Path, tensor: &str) {
    let mut bytes = fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let info = &header[tensor];
    let [start, end] = [0, 1].map(|i| 8 + len + info["data_offsets"][i].as_u64().unwrap() as usize);
    let nan: &[u8] = match info["dtype"].as_str().unwrap() {
        "F32" => &[0x00, 0x00, 0xc0, 0x7f],
        "BF16" => &[0xc0, 0x7f],
        "F16" => &[0x00, 0x7e],
        other => panic!("dtype {other}"),
    };
    for chunk in bytes[start..end].chunks_mut(nan.len()) {
        chunk.copy_from_slice(nan);
    }
    fs::write(file, bytes).unwrap();
}

/// Issue 14 case 7: a loss that is NaN is not a measurement: `eval` exits non-zero with one line.
#[test]
fn nan_loss_in_eval_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture("tiny-untied")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    poison(&dir.path().join("model.safetensors"), "model.norm.weight");
    let data = fixture("sft_small.jsonl");
    let out = tiqu(&["eval", "--model", dir.path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss-only"]);
    assert_clean_error(&out, &["sft_small.jsonl is NaN", "the weight `model.norm.weight` holds NaN"]);
}

/// Issue 14 case 8: `serve --demo` shows a folder's files to the network, so it serves only a
/// model folder (a Qwen3 config.json that parses) and an adapter folder, refused before it listens.
#[test]
fn serve_demo_refuses_folders_that_are_not_models() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("secrets.txt"), "token").unwrap();
    let d = dir.path().to_str().unwrap();
    assert_clean_error(&tiqu(&["serve", "--demo", "--model", d, "--port", "0"]), &["config.json", "not a model folder"]);
    let model = fixture("tiny-untied");
    let out = tiqu(&["serve", "--demo", "--model", model.to_str().unwrap(), "--adapter", d, "--port", "0"]);
    assert_clean_error(&out, &["adapter_config.json", "not an adapter folder"]);
    // The page's files are served without a key: a key would guard the API but not the weights.
    let out = tiqu(&["serve", "--demo", "--model", model.to_str().unwrap(), "--api-key", "k", "--port", "0"]);
    assert_clean_error(&out, &["--demo", "API key"]);
}

/// `bench verify --gather N` takes 1 to the vocabulary's size; anything else is one line naming
/// the flag and the vocabulary, before any model is built.
#[test]
fn bench_verify_refuses_a_gather_outside_the_vocabulary() {
    let config = fixture("tiny-untied").join("config.json");
    let config = config.to_str().unwrap();
    for n in ["0", "100000000"] {
        let out = tiqu(&["--backend", "cpu", "bench", "verify", "--config", config, "--gather", n]);
        assert_clean_error(&out, &["--gather", "vocabulary"]);
    }
}

/// Rows decoded at once and a benchmark's sizes are bounded before anything is allocated: a
/// typo's `--batch` used to abort with "capacity overflow" (exit 101) or an out-of-memory abort.
#[test]
fn huge_batches_and_lengths_are_refused_before_any_allocation() {
    let model = fixture("tiny-tied");
    let (model, config) = (model.to_str().unwrap(), model.join("config.json"));
    let config = config.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    fs::write(&input, "张三 zs@x.com 噪音\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let huge = "18446744073709551615";
    for batch in [huge, "10000000"] {
        let o = tiqu(&["--backend", "cpu", "extract", "--model", model, "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--batch", batch]);
        assert_clean_error(&o, &["--batch", "between 1 and 65536"]);
        assert!(!out.exists());
        let o = tiqu(&["--backend", "cpu", "bench", "generate", "--config", config, "--batch", batch, "--prompt-len", "4", "--new-tokens", "2"]);
        assert_clean_error(&o, &["--batch", "65536"]);
    }
    let o = tiqu(&["--backend", "cpu", "bench", "generate", "--config", config, "--batch", "1", "--prompt-len", huge, "--new-tokens", "2"]);
    assert_clean_error(&o, &["--prompt-len", "max_position_embeddings"]);
    // The answer's budget at the largest count: no room is left for the prompt (the sum with
    // the keys' budget overflowed: exit 101).
    let o = tiqu(&["--backend", "cpu", "extract", "--model", model, "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-new-tokens", huge]);
    assert_clean_error(&o, &["--max-new-tokens"]);
    // Within the row limit but far beyond any machine's memory: refused from arithmetic, before
    // weights are built (an allocation that large aborts the process).
    for args in [
        &["bench", "train", "--config", "qwen3-0.6b", "--batch", "4096", "--seq", "4096", "--steps", "1"][..],
        &["bench", "generate", "--config", "qwen3-0.6b", "--batch", "65536", "--prompt-len", "40000", "--new-tokens", "1"][..],
        &["bench", "verify", "--config", "qwen3-0.6b", "--batch", "65536", "--cache", "40000"][..],
    ] {
        let o = tiqu(&[&["--backend", "cpu"][..], args].concat());
        assert_clean_error(&o, &["takes at least", "GiB available"]);
    }
    for flag in ["--cache", "--positions"] {
        let o = tiqu(&["--backend", "cpu", "bench", "verify", "--config", "qwen3-0.6b", flag, "18446744073709551615"]);
        assert_clean_error(&o, &["exceed the model's context"]);
    }
    let o = tiqu(&["--backend", "cpu", "bench", "train", "--config", "qwen3-0.6b", "--seq", "100000000"]);
    assert_clean_error(&o, &["--seq", "max_position_embeddings"]);
    // Zero work is not a measurement (it printed 0 tokens/s, or records/s of nothing, exit 0).
    let o = tiqu(&["--backend", "cpu", "bench", "generate", "--config", config, "--new-tokens", "0"]);
    assert_clean_error(&o, &["--new-tokens must be at least 1"]);
    let tokenizer = fixture("tiny-tied");
    // Records that all fail measure nothing (it printed 0 tokens/s and records/s of errors).
    let o = tiqu(&["--backend", "cpu", "bench", "extract", "--config", config, "--tokenizer", tokenizer.to_str().unwrap(), "--records", "2", "--batch", "2", "--max-new-tokens", "100000"]);
    assert_clean_error(&o, &["every record failed", "lower --max-new-tokens"]);
    for (flag, value) in [("--records", "0"), ("--max-new-tokens", "0")] {
        let o = tiqu(&["--backend", "cpu", "bench", "extract", "--config", config, "--tokenizer", tokenizer.to_str().unwrap(), flag, value]);
        assert_clean_error(&o, &["--max-new-tokens and --records must be at least 1"]);
    }
    // More client threads than the OS gives: refused by name (was a panic on thread spawn).
    let o = tiqu(&["bench", "serve", "--url", "http://127.0.0.1:9", "--input", input.to_str().unwrap(), "--clients", "1,100000"]);
    assert_clean_error(&o, &["--clients 100000: at most 4096"]);
    // Semaphores bound their permits: tokio's panic (exit 101) after "serving http://…".
    let model = fixture("tiny-untied");
    for flag in ["--max-queue", "--max-connections"] {
        let o = tiqu(&["serve", "--model", model.to_str().unwrap(), "--port", "0", flag, "18446744073709551615"]);
        assert_clean_error(&o, &[flag, "above the limit of 1048576"]);
    }
}

/// Usage errors (a flag that does not exist, a value that does not parse, a missing required
/// flag, a negative number after a space) are one line like every other error, exit 2.
#[test]
fn usage_errors_are_one_line() {
    for (args, needles) in [
        (&["extract", "--temperature", "-1"][..], &["unexpected argument '-1'", "--flag=-1"][..]),
        (&["train", "--bogus"][..], &["--bogus"][..]),
        (&["serve", "--max-batch", "x"][..], &["--max-batch", "'x'"][..]),
        (&["merge"][..], &["required", "--model", "--out"][..]),
        // Not "must be positive, got 0": the value typed is positive, f32 cannot hold it.
        (&["extract", "--temperature", "1e-300"][..], &["--temperature", "1e-300 is too small for f32 (it rounds to 0)"][..]),
        // A block size alone quantized nothing, in silence.
        (&["generate", "--model", "m", "--prompt", "p", "--quantize-block", "16"][..], &["--quantize"][..]),
    ] {
        let out = tiqu(args);
        assert_clean_error(&out, needles);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let help = tiqu(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}

/// A checkpoint whose tensors hold more layers than its config.json says (a deeper model's
/// weights under a shallower config) is refused by tensor name, by every loader and by merge,
/// instead of loading the first layers and dropping the rest.
#[test]
fn tensors_of_layers_the_config_lacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("tiny-untied");
    let short = dir.path().join("short");
    fs::create_dir_all(&short).unwrap();
    for f in fs::read_dir(&base).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, short.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(short.join("config.json")).unwrap()).unwrap();
    let layers = cfg["num_hidden_layers"].as_u64().unwrap();
    cfg["num_hidden_layers"] = serde_json::json!(layers - 1);
    fs::write(short.join("config.json"), cfg.to_string()).unwrap();
    let data = fixture("sft_small.jsonl");
    let needle = format!("is of layer {}, but config.json says num_hidden_layers = {}", layers - 1, layers - 1);
    let out = tiqu(&["--backend", "cpu", "eval", "--model", short.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss-only"]);
    assert_clean_error(&out, &[&needle]);
    let merged = dir.path().join("merged");
    let adapter = fixture("peft-train/after3");
    let out = tiqu(&["merge", "--model", short.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert_clean_error(&out, &[&needle]);
    assert!(!merged.exists());
}

/// A tokenizer with ids past the model's vocabulary (another model's, or one edited) is refused
/// as the checkpoint loads, naming the file, the token and the size, instead of failing each
/// record that uses a high id.
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small-vocab");
    fs::create_dir_all(&small).unwrap();
    for f in fs::read_dir(fixture("tiny-untied")).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, small.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(small.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = serde_json::json!(1000);
    fs::write(small.join("config.json"), cfg.to_string()).unwrap();
    let out = tiqu(&["--backend", "cpu", "generate", "--model", small.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "2"]);
    assert_clean_error(&out, &["tokenizer.json: token `", "vocab_size 1000", "not this model's tokenizer"]);
}

/// A token budget of 0 (every answer empty, exit 0 before) and top_k 0 are refused by flag;
/// a budget past the context is said, not silently capped.
#[test]
fn zero_budgets_are_refused_and_capped_ones_said() {
    let model = fixture("tiny-untied");
    let (m, data) = (model.to_str().unwrap(), fixture("sft_small.jsonl"));
    let d = data.to_str().unwrap();
    for (args, needles) in [
        (vec!["generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "0"], vec!["--max-new-tokens"]),
        (vec!["generate", "--model", m, "--prompt", "hi", "--top-k", "0"], vec!["top_k"]),
        (vec!["eval", "--model", m, "--data", d, "--max-new-tokens", "0"], vec!["--max-new-tokens"]),
        (vec!["extract", "--model", m, "--max-new-tokens", "0"], vec!["--max-new-tokens"]),
    ] {
        assert_clean_error(&tiqu(&[&["--backend", "cpu"][..], &args[..]].concat()), &needles);
    }
    let out = tiqu(&["--backend", "cpu", "generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "100000", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not --max-new-tokens 100000"));
}

/// Proves: a reader that closes standard output early (`tiqu doctor | head -0`) gets one error
/// line and exit 1; `println!`'s panic was reported as an internal failure (exit 101).
#[test]
fn a_closed_standard_output_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(["data", "synth", "--n", "3", "--out", dir.path().join("s.jsonl").to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    assert_clean_error(&out, &["standard output", "Broken pipe"]);
}

/// Proves: a tensor no weight of the config reads (a projection's bias, a LoRA pair saved into
/// the base) is named, not dropped: loading ignored it and ran another model, exit 0.
#[test]
fn tensors_the_model_would_ignore_are_named() {
    for extra in ["model.layers.0.self_attn.q_proj.bias", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] {
        let dir = copy_fixture("tiny-untied");
        edit_weights(dir.path(), |t| t.push((extra.to_string(), vec![4], vec![0; 16])));
        let out = tiqu(&["--backend", "cpu", "generate", "--model", dir.path().to_str().unwrap(), "--prompt", "你好", "--max-new-tokens", "2"]);
        assert_clean_error(&out, &[extra, "not a weight of this Qwen3 config"]);
    }
}

/// Proves: weights holding NaN stop extraction with one clear line, in every constraint mode;
/// the copy constraint wrote all-null fields, exit 0 (a NaN logit compares false, so the argmax
/// fell on a masked token), and `--constrain none` named a token id of 4294967295 per record;
/// `generate` stops with the same line, greedy and sampled.
#[test]
fn nan_weights_are_named_not_answered() {
    let dir = copy_fixture("tiny-untied");
    edit_weights(dir.path(), |t| {
        let norm = t.iter_mut().find(|(n, _, _)| n == "model.norm.weight").unwrap();
        norm.2 = f32::NAN.to_le_bytes().repeat(norm.2.len() / 4);
    });
    let input = dir.path().join("in.txt");
    fs::write(&input, "张三 zs@x.com 噪音\n").unwrap();
    for constrain in ["copy", "json", "none"] {
        let out = tiqu(&["--backend", "cpu", "extract", "--model", dir.path().to_str().unwrap(), "--input", input.to_str().unwrap(), "--constrain", constrain]);
        assert_clean_error(&out, &["logits are NaN", "damaged checkpoint"]);
    }
    // `generate` printed whatever token the device's argmax settled on, greedy or sampled.
    let model = dir.path().to_str().unwrap();
    for sampling in [&[][..], &["--temperature", "0.7"]] {
        let mut args = vec!["--backend", "cpu", "generate", "--model", model, "--prompt", "你好", "--max-new-tokens", "4"];
        args.extend(sampling);
        assert_clean_error(&tiqu(&args), &["logits are NaN", "damaged checkpoint"]);
    }
}
