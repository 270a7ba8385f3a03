//! `tiqu train`, `merge` and `runs compare` end to end on the committed tiny checkpoints:
//! PEFT's layout and numbers, reproducibility, exact resume after kill -9, and the bad inputs
//! the LoRA issue names.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> String {
    repo().join("tests/fixtures").join(name).display().to_string()
}

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).env("HF_HUB_OFFLINE", "1").output().expect("run tiqu")
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "tiqu failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A failure with exactly one `error:` line holding every needle (notes may precede it).
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "error should name `{n}`: {}", errors[0]);
    }
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--backend", "cpu", "train", "--model", "", "--data", "", "--out", out];
    v.extend_from_slice(&["--epochs", "2", "--batch-size", "2", "--grad-accum", "1", "--save-steps", "2", "--lr", "1e-2"]);
    v.extend_from_slice(extra);
    v
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let (model, data) = (fixture("tiny-untied"), fixture("sft_small.jsonl"));
    let out = out.display().to_string();
    let mut args = train_args(&out, extra);
    args[4] = &model;
    args[6] = &data;
    tiqu(&args)
}

/// `tiqu train --out RUN --resume`, as the README shows it: no other flag.
fn resume(out: &Path) -> Output {
    tiqu(&["--backend", "cpu", "train", "--out", out.to_str().unwrap(), "--resume"])
}

fn metrics(run: &Path) -> Vec<Value> {
    fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run).iter().filter_map(|m| Some((m["step"].as_u64()?, m["loss"].as_f64()?))).collect()
}

/// A copy of the model folder `from` at `to`, its config.json edited by `edit`.
fn copy_with_config(from: &str, to: &Path, edit: impl FnOnce(&mut Value)) {
    fs::create_dir_all(to).unwrap();
    for f in fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value = serde_json::from_slice(&fs::read(to.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    fs::write(to.join("config.json"), cfg.to_string()).unwrap();
}

fn eval_loss(model: &str, adapter: Option<&Path>) -> f64 {
    let data = fixture("sft_small.jsonl");
    let mut args = vec!["eval", "--model", model, "--data", &data, "--loss-only", "--json"];
    let adapter = adapter.map(|a| a.display().to_string());
    if let Some(a) = &adapter {
        args.extend(["--adapter", a]);
    }
    let out = ok(tiqu(&args));
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn dry_run_prints_the_seed_line_for_qwen3_0_6b() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","vocab_size":151936,
        "hidden_size":1024,"intermediate_size":3072,"num_hidden_layers":28,"num_attention_heads":16,
        "num_key_value_heads":8,"head_dim":128,"max_position_embeddings":40960,"rms_norm_eps":1e-6,
        "rope_theta":1000000,"tie_word_embeddings":true,"torch_dtype":"bfloat16","eos_token_id":151645});
    fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    fs::copy(repo().join("assets/qwen3-tokenizer/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let out = ok(tiqu(&["train", "--model", dir.path().to_str().unwrap(), "--random-weights", "--dry-run"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "trainable params: 5,046,272 || all params: 601,096,192 || trainable%: 0.8395"
    );
}

#[test]
fn a_run_writes_peft_adapters_metrics_and_a_report_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(train(&a, &[]));
    ok(train(&b, &[]));
    assert_eq!(losses(&a), losses(&b), "same seed and backend must give the same loss curve");
    assert_eq!(losses(&a).len(), 6, "6 records, batch 2, 2 epochs: 6 steps, one line each");
    for step in ["checkpoint-2", "checkpoint-4", "checkpoint-6", "."] {
        let cfg: Value = serde_json::from_slice(&fs::read(a.join(step).join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some("LORA"), Some(8), Some(32.0)));
        let bytes = fs::read(a.join(step).join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let a0 = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
        let b0 = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap();
        assert_eq!((a0.shape(), b0.shape()), (&[8usize, 8][..], &[8usize, 8][..]));
        assert_eq!(st.len(), 2 * 7 * 2);
    }
    let report = fs::read_to_string(a.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("trainable params: 2,944"), "report.html lacks the curve or the line");
    let cfg = fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(cfg.contains("learning_rate = 0.01") && cfg.contains("gradient_accumulation_steps = 1"), "{cfg}");
    // A dry run of a resume reads the run's settings (it took the flags alone: "`: no such folder").
    let dry = ok(tiqu(&["train", "--out", a.to_str().unwrap(), "--resume", "--dry-run"]));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("trainable params: 2,944"), "{}", String::from_utf8_lossy(&dry.stdout));
    // The adapter changes the model: tiqu's own eval with --adapter sees it.
    assert!(eval_loss(&fixture("tiny-untied"), Some(&a)) < eval_loss(&fixture("tiny-untied"), None));

    let table = String::from_utf8_lossy(&ok(tiqu(&["runs", "compare", a.to_str().unwrap(), b.to_str().unwrap()])).stdout).to_string();
    assert!(table.contains("final_loss") && table.contains("learning_rate"), "{table}");
}

/// A training process on the fixtures into `out`, returned once `out/made` exists.
fn training_until(out: &Path, extra: &[&str], made: &str) -> std::process::Child {
    let (model, data, out_s) = (fixture("tiny-untied"), fixture("sft_small.jsonl"), out.display().to_string());
    let mut args = train_args(&out_s, extra);
    args[4] = &model;
    args[6] = &data;
    let child = Command::new(env!("CARGO_BIN_EXE_tiqu")).args(&args).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !out.join(made).exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn resume_after_kill_9_continues_the_exact_curve() {
    let dir = tempfile::tempdir().unwrap();
    let (full, killed) = (dir.path().join("full"), dir.path().join("killed"));
    let long = ["--save-steps", "1", "--epochs", "6"];
    ok(train(&full, &long));
    let mut child = training_until(&killed, &long, "checkpoint-2");
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(!killed.join("adapter_model.safetensors").exists(), "the run finished before it was killed");
    let out = ok(resume(&killed));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    assert_eq!(losses(&killed), losses(&full), "the resumed run must follow the uninterrupted curve exactly");
    let final_a = fs::read(full.join("adapter_model.safetensors")).unwrap();
    let final_b = fs::read(killed.join("adapter_model.safetensors")).unwrap();
    assert_eq!(final_a, final_b, "same final adapter bytes");
}

/// Proves: a step whose records keep no labelled token (each prompt fills --max-length) has no
/// loss: null in metrics.jsonl (it was 0.0, a perfect step on the curve), and the summary's
/// losses are those of the steps that had one.
#[test]
fn a_step_without_labels_has_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mixed.jsonl");
    let good = fs::read_to_string(fixture("sft_small.jsonl")).unwrap();
    let long = serde_json::json!({"instruction": "投诉".repeat(400), "input": "", "output": "{}"});
    fs::write(&data, format!("{}\n{long}\n", good.lines().next().unwrap())).unwrap();
    let run = dir.path().join("run");
    let out = tiqu(&[
        "--backend", "cpu", "train", "--model", &fixture("tiny-untied"), "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(),
        "--batch-size", "1", "--grad-accum", "1", "--epochs", "1", "--max-length", "200",
    ]);
    ok(out);
    let lines: Vec<Value> = fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let losses: Vec<&Value> = lines.iter().filter(|l| l.get("loss").is_some()).map(|l| &l["loss"]).collect();
    assert_eq!(losses.len(), 2, "{lines:?}");
    assert_eq!(losses.iter().filter(|l| l.is_null()).count(), 1, "{lines:?}");
    let summary: Value = serde_json::from_slice(&fs::read(run.join("summary.json")).unwrap()).unwrap();
    let labelled = losses.iter().find_map(|l| l.as_f64()).unwrap();
    assert_eq!((summary["first_loss"].as_f64(), summary["final_loss"].as_f64()), (Some(labelled), Some(labelled)));
}

/// Proves: while a run trains, a second trainer on its folder is refused (both went on, writing
/// the same checkpoints and metrics from two points of the run). The kill test resumes the same
/// way once the trainer is gone.
#[test]
fn a_run_folder_takes_one_trainer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("busy");
    let mut child = training_until(&run, &["--epochs", "500", "--save-steps", "1"], "checkpoint-1");
    assert_error(&resume(&run), &["another process is training in this run folder"]);
    assert!(child.try_wait().unwrap().is_none(), "the first trainer still runs");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn merged_folder_gives_the_loss_of_base_plus_adapter() {
    let dir = tempfile::tempdir().unwrap();
    for (base, adapter) in [("tiny-untied", fixture("peft-train/after3")), ("tiny-tied", fixture("peft-adapter-tied"))] {
        let merged = dir.path().join(format!("merged-{base}"));
        ok(tiqu(&["merge", "--model", &fixture(base), "--adapter", &adapter, "--out", merged.to_str().unwrap()]));
        for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
            assert!(merged.join(f).is_file(), "merged folder lacks {f}");
        }
        let with_adapter = eval_loss(&fixture(base), Some(Path::new(&adapter)));
        let merged_loss = eval_loss(merged.to_str().unwrap(), None);
        // bf16 bases are merged in f32 then rounded to bf16, as PEFT's merge_and_unload + save does.
        let tol = if base == "tiny-tied" { 5e-3 } else { 1e-4 };
        assert!((merged_loss - with_adapter).abs() / with_adapter < tol, "{base}: merged {merged_loss} vs base+adapter {with_adapter}");
    }
}

/// `tiqu merge` refuses what loading refuses, before any folder appears: an adapter with LoRA
/// tensors its config does not target or with tensors that are not LoRA's, an adapter holding NaN, a base whose tensors are not
/// what its config.json says.
#[test]
fn merge_refuses_what_loading_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = Path::new(&fixture("peft-train/after3")).to_path_buf();
    let bytes = fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let write_adapter = |name: &str, tensors: &[(String, Vec<usize>, Vec<u8>)]| {
        let folder = dir.path().join(name);
        fs::create_dir_all(&folder).unwrap();
        fs::copy(adapter.join("adapter_config.json"), folder.join("adapter_config.json")).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, shape, data)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &folder.join("adapter_model.safetensors")).unwrap();
        folder
    };
    let merge = |base: &str, adapter: &Path, out: &str| tiqu(&["merge", "--model", base, "--adapter", adapter.to_str().unwrap(), "--out", dir.path().join(out).to_str().unwrap()]);
    let base = fixture("tiny-untied");

    let mut extra = tensors.clone();
    let (name, shape, data) = tensors[0].clone();
    extra.push((name.replace("layers.0.", "layers.7."), shape, data));
    assert_error(&merge(&base, &write_adapter("extra", &extra), "m1"), &["LoRA tensors", "another model"]);
    // A tensor that is no LoRA weight (PEFT's trainable tokens) was dropped: the merge came out
    // as if the adapter did not hold it.
    let mut tokens = tensors.clone();
    tokens.push(("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta".into(), vec![1, 1], 1f32.to_le_bytes().to_vec()));
    assert_error(&merge(&base, &write_adapter("tokens", &tokens), "m1"), &["trainable_tokens_delta", "not a LoRA weight"]);

    let mut nan = tensors.clone();
    nan[1].2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_adapter = write_adapter("nan", &nan);
    assert_error(&merge(&base, &nan_adapter, "m2"), &[&nan[1].0, "NaN"]);
    // Training and eval on it name the same tensor (they said "loss became NaN", or blamed the
    // data file). PEFT's key `base_model.model.X.lora_A.weight` is the model's `X.lora_A.weight`.
    let key = nan[1].0.trim_start_matches("base_model.model.").to_string();
    let (a, data) = (nan_adapter.to_str().unwrap(), fixture("sft_small.jsonl"));
    let run_out = dir.path().join("nan-run");
    let out = tiqu(&["--backend", "cpu", "train", "--model", &base, "--adapter", a, "--data", &data, "--max-steps", "1", "--out", run_out.to_str().unwrap()]);
    assert_error(&out, &["loss became NaN at step 1", &format!("the weight `{key}` holds NaN")]);
    let out = tiqu(&["--backend", "cpu", "eval", "--model", &base, "--adapter", a, "--data", &data, "--loss-only"]);
    assert_error(&out, &[&format!("the weight `{key}` holds NaN")]);

    // Finite tensors whose product overflows, and a base holding infinity, were merged with
    // exit 0 into a model of infinite weights.
    let mut huge = tensors.clone();
    for (_, _, data) in huge.iter_mut().filter(|(n, _, _)| n.contains("lora_B")) {
        for chunk in data.chunks_mut(4) {
            chunk.copy_from_slice(&f32::MAX.to_le_bytes());
        }
    }
    assert_error(&merge(&base, &write_adapter("huge", &huge), "m4"), &["overflows", "far too large"]);
    let inf_base = dir.path().join("inf-base");
    copy_dir(Path::new(&base), &inf_base);
    edit_f32_tensors(&inf_base.join("model.safetensors"), |weights| {
        let norm = weights.iter_mut().find(|(n, _, _)| n == "model.norm.weight").unwrap();
        norm.2[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    assert_error(&merge(inf_base.to_str().unwrap(), &adapter, "m5"), &["model.norm.weight", "NaN or infinite"]);
    // --dtype was accepted and ignored: the output kept the base's dtype.
    let out = tiqu(&["--dtype", "bf16", "merge", "--model", &base, "--adapter", adapter.to_str().unwrap(), "--out", dir.path().join("m6").to_str().unwrap()]);
    assert_error(&out, &["--dtype bf16", "base checkpoint's own dtype"]);

    let wrong = dir.path().join("wrong-base");
    copy_with_config(&base, &wrong, |cfg| cfg["intermediate_size"] = serde_json::json!(cfg["intermediate_size"].as_u64().unwrap() * 2));
    assert_error(&merge(wrong.to_str().unwrap(), &adapter, "m3"), &["gate_proj", "config.json says"]);
    // Training on it is refused as the weights are read, after the run folder was made: the
    // folder goes again (it was left empty).
    let run = dir.path().join("wrong-run");
    let out = tiqu(&["--backend", "cpu", "train", "--model", wrong.to_str().unwrap(), "--data", &data, "--max-steps", "1", "--out", run.to_str().unwrap()]);
    assert_error(&out, &["gate_proj", "config.json implies"]);
    assert!(!run.exists(), "a run refused as its weights are read leaves no folder");
    // A file where --out needs a folder is named (it said "File exists (os error 17)").
    fs::write(dir.path().join("a-file"), "x").unwrap();
    assert_error(&merge(&base, &adapter, "a-file/merged"), &["a-file is a file, not a folder"]);
    for out in ["m1", "m2", "m3", "m4", "m5", "m6"] {
        assert!(!dir.path().join(out).exists(), "{out}: a refused merge leaves no folder");
    }
    assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")), "no partial folder left");
}

#[test]
fn peft_adapter_loads_with_peft_eval_loss() {
    let reference: Value = serde_json::from_slice(&fs::read(repo().join("tests/fixtures/peft-train/reference.json")).unwrap()).unwrap();
    let expected = reference["eval"]["after3"].as_f64().unwrap();
    let got = eval_loss(&fixture("tiny-untied"), Some(&repo().join("tests/fixtures/peft-train/after3")));
    assert!((got - expected).abs() / expected < 1e-4, "tiqu eval --adapter {got} vs PEFT {expected}");
}

#[test]
fn bad_training_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = fs::read_to_string(fixture("sft_small.jsonl")).unwrap();
    let data = dir.path().join("bad.jsonl");
    fs::write(&data, format!("{good}{{broken\n")).unwrap();
    let model = fixture("tiny-untied");
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["train", "--model", &model, "--data", data.to_str().unwrap(), "--out", out, "--max-steps", "1"];
        args.extend_from_slice(extra);
        tiqu(&args)
    };
    let out1 = dir.path().join("r1").display().to_string();
    assert_error(&run(&[], &out1), &["bad.jsonl:7", "--skip-bad-records"]);
    let out2 = dir.path().join("r2").display().to_string();
    // Prompts of 83 to 93 tokens: all six cut, four of them to no response token at all.
    let skipped = ok(run(&["--skip-bad-records", "--max-length", "88"], &out2));
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(stderr.contains("skipped 1 record"), "{stderr}");
    assert!(stderr.contains("records longer than 88 tokens were cut"), "{stderr}");
    assert!(stderr.contains("4 records keep no response token under max_length 88"), "{stderr}");
    let summary: Value = serde_json::from_slice(&fs::read(Path::new(&out2).join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["records_skipped"], 1);
    assert_eq!(summary["records_cut"], 6);
    // A max_length that the prompts alone fill leaves nothing to learn: refused, not 0 labels.
    let out5 = dir.path().join("r5").display().to_string();
    assert_error(&run(&["--skip-bad-records", "--max-length", "8"], &out5), &["no record keeps a response token under max_length 8", "the shortest prompt takes 83 tokens", "raise max_length"]);

    fs::write(&data, "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"no output here\"}\n").unwrap();
    let out3 = dir.path().join("r3").display().to_string();
    assert_error(&run(&[], &out3), &["bad.jsonl:2", "output"]);

    // An existing run folder is never overwritten.
    assert_error(&run(&["--skip-bad-records"], &out2), &["--resume"]);

    // Devices the backend does not have, more devices than micro-batches, a quantized base.
    let out4 = dir.path().join("r4");
    let out4s = out4.display().to_string();
    assert_error(&run(&["--devices", "cpu,cpu", "--grad-accum", "2"], &out4s), &["--devices", "one device"]);
    assert_error(&run(&["--devices", "cpu,cpu", "--grad-accum", "1"], &out4s), &["--devices", "--grad-accum 2"]);
    assert_error(&run(&["--quantize", "int8"], &out4s), &["--quantize", "unquantized"]);
    assert_error(&run(&["--quantize", "int8", "--dry-run"], &out4s), &["--quantize", "unquantized"]);
    // A fresh run refused after taking its (empty, existing) folder leaves it empty for the next
    // try: its lock file is no content ("exists and is not empty; pass --resume", which then
    // found no config.toml).
    let pre = dir.path().join("pre");
    fs::create_dir(&pre).unwrap();
    let odd_base = dir.path().join("odd-base");
    copy_with_config(&model, &odd_base, |_| {});
    let weights = odd_base.join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    tensors.push(("model.layers.0.self_attn.q_proj.bias".into(), vec![1], vec![0; 4]));
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, shape, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &weights).unwrap();
    fs::write(&data, &good).unwrap();
    let odd = tiqu(&["train", "--model", odd_base.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", pre.to_str().unwrap(), "--max-steps", "1"]);
    assert_error(&odd, &["q_proj.bias"]);
    ok(run(&[], pre.to_str().unwrap()));
    // A link to a folder that is gone (it said "File exists (os error 17)").
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
    assert_error(&run(&[], dangling.to_str().unwrap()), &["dangling", "symbolic link to nothing"]);
    // Refused with a reason, so not offered in the help.
    let help = tiqu(&["train", "--help"]);
    assert!(help.status.success() && !String::from_utf8_lossy(&help.stdout).contains("--quantize"));
    // Sizes whose step arithmetic overflowed (a panic after the folder was made), settings that
    // meant nothing (a checkpoint every 0 steps, a module listed twice, an adapter that full
    // training would ignore), and 0 threads: refused before anything is made.
    let adapter = fixture("peft-adapter-tied");
    for (extra, needles) in [
        (&["--batch-size", "9223372036854775807"][..], &["--batch-size", "above the limit of 1048576"][..]),
        (&["--grad-accum", "4294967296"][..], &["--grad-accum", "above the limit"][..]),
        (&["--save-steps", "0"][..], &["save_steps must be at least 1"][..]),
        (&["--target-modules", "q_proj,q_proj"][..], &["target_modules lists `q_proj` twice"][..]),
        (&["--r", "100000000"][..], &["LoRA r must be between 1 and 65536"][..]),
        (&["--adapter", adapter.as_str(), "--method", "full"][..], &["--method full", "merge the adapter first"][..]),
        (&["--threads", "0"][..], &["--threads", "0 is not in 1..=4096"][..]),
    ] {
        assert_error(&run(extra, &out4s), needles);
    }
    assert!(!out4.exists(), "refused runs create nothing");

    // A model whose context is shorter than the records after the cut to max_length: the first
    // such record is named by file and line before the run starts.
    let short = dir.path().join("short-context");
    copy_with_config(&model, &short, |cfg| cfg["max_position_embeddings"] = 64.into());
    let sft = fixture("sft_small.jsonl");
    let out = tiqu(&["train", "--model", short.to_str().unwrap(), "--data", &sft, "--out", &out4s, "--max-steps", "1"]);
    assert_error(&out, &["sft_small.jsonl:1", "under max_length 1024, more than the model's max_position_embeddings (64)", "--max-length 64"]);
    assert!(!out4.exists(), "refused runs create nothing");
}

/// Inputs as editors and other tools write them: a JSONL with a byte-order mark trains (as
/// `data check` reads it); a bad record of a pretty-printed JSON array is named by its line in
/// the file; a setting of the wrong type in a TOML file is named by key; `--out` naming a file is
/// said so. No refused run leaves a folder behind.
#[test]
fn inputs_from_other_tools_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (model, good) = (fixture("tiny-untied"), fs::read_to_string(fixture("sft_small.jsonl")).unwrap());
    let train = |data: &Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["--backend", "cpu", "train", "--model", &model, "--data", data.to_str().unwrap(), "--max-steps", "1"];
        let o = out.to_str().unwrap().to_string();
        args.extend(["--out", &o]);
        args.extend_from_slice(extra);
        (tiqu(&args), out)
    };
    let bom = dir.path().join("bom.jsonl");
    fs::write(&bom, format!("\u{feff}{good}")).unwrap();
    ok(train(&bom, "bom-run", &[]).0);

    let mut records: Vec<Value> = good.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    records[2]["output"] = serde_json::json!(5);
    let pretty = dir.path().join("pretty.json");
    let text = serde_json::to_string_pretty(&records).unwrap();
    fs::write(&pretty, &text).unwrap();
    let line = text.lines().position(|l| l.contains("\"output\": 5")).unwrap() + 1;
    let (out, run) = train(&pretty, "pretty-run", &[]);
    assert_error(&out, &[&format!("pretty.json:{line}: record 3 of the array"), "expected a string"]);
    assert!(!run.exists(), "a refused run leaves no folder");

    let toml = dir.path().join("run.toml");
    for (text, needles) in [
        ("learning_rate = \"fast\"\n", &["run.toml", "`learning_rate`", "expected f64"][..]),
        ("gradient_checkpointing = 5\n", &["`gradient_checkpointing`", "none, balanced, layer, true or false"][..]),
        // Syntax errors are named by line (the parser's message alone has no position).
        ("r = 8\n[oops\n", &["run.toml:2: invalid table header"][..]),
        ("max_steps = 3\nmax_steps = 4\n", &["run.toml:2: duplicate key `max_steps`"][..]),
    ] {
        fs::write(&toml, text).unwrap();
        let (out, run) = train(Path::new(&fixture("sft_small.jsonl")), "toml-run", &["--config", toml.to_str().unwrap()]);
        assert_error(&out, needles);
        assert!(!out.stderr.is_empty() && !String::from_utf8_lossy(&out.stderr).contains("untagged"));
        assert!(!run.exists());
    }
    // A line that is not UTF-8 is a bad record like any other: named by line (once, not the
    // whole file's error repeated), skipped with --skip-bad-records.
    let mut bytes = good.lines().take(3).map(|l| format!("{l}\n")).collect::<String>().into_bytes();
    bytes.extend_from_slice(b"\xff\xfe not text\n");
    bytes.extend_from_slice(good.lines().skip(3).map(|l| format!("{l}\n")).collect::<String>().as_bytes());
    let latin = dir.path().join("latin.jsonl");
    fs::write(&latin, &bytes).unwrap();
    let (out, _) = train(&latin, "latin-run", &[]);
    assert_error(&out, &["latin.jsonl:4: not valid UTF-8", "--skip-bad-records"]);
    ok(train(&latin, "latin-run", &["--skip-bad-records"]).0);
    fs::write(dir.path().join("a-file"), "x").unwrap();
    assert_error(&train(Path::new(&fixture("sft_small.jsonl")), "a-file", &[]).0, &["a-file: is a file, not a run folder"]);
}

#[test]
fn adapter_that_does_not_fit_the_base_is_refused() {
    let data = fixture("sft_small.jsonl");
    let out = tiqu(&["eval", "--model", &fixture("tiny-untied"), "--adapter", &fixture("peft-adapter-tied"), "--data", &data, "--loss-only"]);
    assert_error(&out, &["lora_A.weight", "shape"]);
}

/// Continuing a PEFT adapter (r 8 on three projections, rsLoRA) saves an adapter whose
/// adapter_config.json describes its weights, so that it loads again; a setting that contradicts
/// the adapter is refused by name before anything is written.
#[test]
fn continuing_an_adapter_keeps_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, adapter) = (fixture("tiny-tied"), fixture("sft_small.jsonl"), fixture("peft-adapter-tied"));
    let run = dir.path().join("more");
    let base = ["--backend", "cpu", "train", "--model", &model, "--data", &data, "--adapter", &adapter, "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1"];
    let conflicting = dir.path().join("conflicting");
    let out = tiqu(&[&base[..], &["--out", conflicting.to_str().unwrap(), "--r", "16"]].concat());
    assert_error(&out, &["r 16", "adapter_config.json has 8"]);
    assert!(!conflicting.exists(), "refused runs create nothing");
    ok(tiqu(&[&base[..], &["--out", run.to_str().unwrap()]].concat()));
    let cfg: Value = serde_json::from_slice(&fs::read(run.join("adapter_config.json")).unwrap()).unwrap();
    let mut targets: Vec<&str> = cfg["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    targets.sort();
    assert_eq!((targets, cfg["use_rslora"].as_bool(), cfg["r"].as_u64()), (vec!["down_proj", "q_proj", "v_proj"], Some(true), Some(8)));
    // It loads (a config of seven modules would name tensors the file does not hold).
    let loss = eval_loss(&model, Some(&run));
    assert!(loss.is_finite(), "{loss}");
    assert!(fs::read_to_string(run.join("config.toml")).unwrap().contains("adapter = "), "the run records what it continues");

    // Stopped before its first checkpoint, it starts over from the adapter (not fresh pairs):
    // at a learning rate of 1e-12 the saved pairs are the adapter's own.
    let nan = dir.path().join("nan");
    let out = tiqu(&[&base[..9], &["--max-steps", "3", "--out", nan.to_str().unwrap(), "--lr", "1e30", "--max-grad-norm", "0", "--save-steps", "50"]].concat());
    assert_error(&out, &["loss became", "no checkpoint was saved yet"]);
    ok(tiqu(&["--backend", "cpu", "train", "--out", nan.to_str().unwrap(), "--resume", "--lr", "1e-12", "--max-grad-norm", "1"]));
    let read = |dir: &Path| {
        let bytes = fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
        t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>()
    };
    let (theirs, ours) = (read(Path::new(&adapter)), read(&nan));
    assert!(theirs.iter().any(|&x| x != 0.0), "the fixture's B is trained");
    assert!(theirs.iter().zip(&ours).all(|(a, b)| (a - b).abs() < 1e-5), "started over from the adapter");
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let out = train(&run, &["--lr", "1e30", "--max-grad-norm", "0", "--save-steps", "1"]);
    assert_error(&out, &["loss became", "at step 2", "checkpoint-1"]);
    assert!(run.join("checkpoint-1/adapter_model.safetensors").is_file());
    assert!(!run.join("checkpoint-2").exists());
}

/// A run that fails before its first checkpoint can be started over with `--resume`, under
/// other settings (it trained nothing to keep), and its metrics hold the new attempt only.
#[test]
fn a_run_that_failed_before_any_checkpoint_resumes_from_step_0() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let out = train(&run, &["--lr", "1e30", "--max-grad-norm", "0", "--save-steps", "50"]);
    assert_error(&out, &["loss became", "no checkpoint was saved yet", "--resume starts the run over"]);
    let again = tiqu(&["--backend", "cpu", "train", "--out", run.to_str().unwrap(), "--resume", "--lr", "1e-2", "--max-grad-norm", "1"]);
    let stderr = String::from_utf8_lossy(&ok(again).stderr).to_string();
    assert!(stderr.contains("no checkpoint yet; starting the run over from step 0"), "{stderr}");
    let steps: Vec<u64> = metrics(&run).iter().filter_map(|m| m["step"].as_u64().filter(|_| m.get("loss").is_some())).collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>(), "one line per step of the new attempt");
    assert!(losses(&run).iter().all(|(_, l)| l.is_finite()));
    assert!(fs::read_to_string(run.join("config.toml")).unwrap().contains("learning_rate = 0.01"));
}

/// Unused rows of a saved restricted-vocabulary model all hold the unknown row.
fn embedding_rows(model: &Path, name: &str, ids: &[usize]) -> Vec<Vec<f32>> {
    let bytes = fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.shape()[0], 151936, "{name} must be mapped back to Qwen3's vocabulary");
    let width = t.shape()[1];
    let values: Vec<f32> = t.data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    ids.iter().map(|&i| values[i * width..(i + 1) * width].to_vec()).collect()
}

#[test]
fn full_training_from_scratch_on_the_datas_vocabulary_saves_a_qwen3_folder_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let full = ["--method", "full", "--random-weights", "--restrict-vocab", "true", "--previous-token-init", "true", "--epochs", "5", "--lr", "3e-2"];
    ok(train(&a, &full));
    let settings = fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(settings.contains("previous_token_init = true"), "{settings}");
    let curve = losses(&a);
    assert!(curve.last().unwrap().1 < curve[0].1 * 0.8, "from scratch, the loss must fall: {curve:?}");
    let model = a.join("model");
    let cfg: Value = serde_json::from_slice(&fs::read(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], 151936);
    assert!(model.join("tokenizer.json").exists() && model.join("generation_config.json").exists());
    // Ids 100000 and 140000 are not in the fixture's records: both are the unknown row.
    let rows = embedding_rows(&model, "lm_head.weight", &[100000, 140000]);
    assert_eq!(rows[0], rows[1]);
    let vocab: Value = serde_json::from_slice(&fs::read(a.join("vocab.json")).unwrap()).unwrap();
    let used = vocab["ids"].as_array().unwrap().len();
    assert!(used > 20 && used < 2000, "{used} tokens");
    // The saved folder is a plain Qwen3 checkpoint: eval loads it, and it learned the data.
    let model_path = model.display().to_string();
    let saved = eval_loss(&model_path, None);
    assert!(saved < (151936f64).ln() && saved < eval_loss(&fixture("tiny-untied"), None), "{saved}");

    // Resume from the step-2 checkpoint (what a kill -9 after it leaves): the same curve and the
    // same final weights.
    ok(train(&b, &full));
    for entry in fs::read_dir(&b).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "model" || (name.starts_with("checkpoint-") && name != "checkpoint-2") {
            fs::remove_dir_all(&path).unwrap();
        } else if name == "summary.json" || name == "report.html" {
            fs::remove_file(&path).unwrap();
        }
    }
    let out = ok(resume(&b));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    assert_eq!(losses(&b), curve);
    assert_eq!(fs::read(b.join("model/model.safetensors")).unwrap(), fs::read(model.join("model.safetensors")).unwrap());
}

/// Every file under `dir` with its bytes, to check that a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn resume_refuses_changed_settings_and_edited_configs_and_finds_its_data_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(train(&run, &["--max-steps", "2"]));
    let before = snapshot(&run);
    let r = run.to_str().unwrap();
    // Flags given with --resume that would change the run are refused by name, not ignored.
    let out = tiqu(&["--backend", "cpu", "train", "--out", r, "--resume", "--data", "/nonexistent", "--max-steps", "80"]);
    assert_error(&out, &["cannot change", "data", "max_steps"]);
    // A resume may change save_steps, but not to 0 (refused for new runs, accepted here).
    let out = tiqu(&["--backend", "cpu", "train", "--out", r, "--resume", "--save-steps", "0"]);
    assert_error(&out, &["save_steps must be at least 1"]);
    // A setting given again with its stored value, and one a resume may change, are fine.
    ok(tiqu(&["--backend", "cpu", "train", "--out", r, "--resume", "--max-steps", "2", "--save-steps", "1"]));
    // config.toml edited after the start (r 8 -> 16): refused, naming the setting and the file.
    let cfg = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("r = 8"), "{cfg}");
    fs::write(run.join("config.toml"), cfg.replace("r = 8", "r = 16")).unwrap();
    let edited = snapshot(&run);
    assert_error(&resume(&run), &["config.toml", "r changed since the run started"]);
    assert_eq!(snapshot(&run), edited, "a refused resume changes nothing");
    fs::write(run.join("config.toml"), &cfg).unwrap();
    // Data paths are stored absolute: a resume from another working directory finds them.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tiqu"))
        .args(["--backend", "cpu", "train", "--out", r, "--resume"])
        .current_dir(elsewhere.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    ok(out);
    assert!(fs::read_to_string(run.join("config.toml")).unwrap().contains(&fixture("sft_small.jsonl")));
    assert!(before.iter().any(|(p, _)| p.ends_with("checkpoint-2/optimizer.safetensors")));

    // The data file edited since the checkpoint (one record dropped): refused, nothing changed.
    let data = dir.path().join("data.jsonl");
    let records = fs::read_to_string(fixture("sft_small.jsonl")).unwrap();
    fs::write(&data, &records).unwrap();
    let moved = dir.path().join("moved");
    let mut args = train_args(moved.to_str().unwrap(), &["--max-steps", "4", "--save-steps", "2"]);
    let model = fixture("tiny-untied");
    args[4] = &model;
    args[6] = data.to_str().unwrap();
    ok(tiqu(&args));
    fs::remove_dir_all(moved.join("checkpoint-4")).unwrap();
    fs::write(&data, records.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let kept = snapshot(&moved);
    assert_error(&resume(&moved), &["data.jsonl", "differ from those checkpoint-2 was trained on"]);
    assert_eq!(snapshot(&moved), kept, "a refused resume changes nothing");
    fs::write(&data, &records).unwrap();
    ok(resume(&moved));
}

/// Proves: a run keeps its `--tokenizer` and resumes with it (a resume without the flag read the
/// model's tokenizer and refused the unchanged data as edited), and a resume that would hold the
/// base in another dtype is refused, naming the run's (it went on with other numbers, exit 0).
#[test]
fn a_resume_keeps_the_runs_tokenizer_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    // A tokenizer that splits the records otherwise than the model's: fewer merges.
    let tok = dir.path().join("tok");
    fs::create_dir(&tok).unwrap();
    let mut json: Value = serde_json::from_slice(&fs::read(Path::new(&fixture("tiny-tied")).join("tokenizer.json")).unwrap()).unwrap();
    json["model"]["merges"].as_array_mut().unwrap().drain(..2000);
    fs::write(tok.join("tokenizer.json"), json.to_string()).unwrap();
    let run = dir.path().join("run");
    ok(train(&run, &["--max-steps", "2", "--save-steps", "1", "--tokenizer", tok.to_str().unwrap()]));
    assert!(fs::read_to_string(run.join("config.toml")).unwrap().contains("tokenizer = "));
    // As a kill after checkpoint 1 leaves the folder.
    let unfinish = || {
        for f in ["adapter_model.safetensors", "adapter_config.json", "summary.json", "report.html"] {
            let _ = fs::remove_file(run.join(f));
        }
        fs::remove_dir_all(run.join("checkpoint-2")).unwrap();
    };
    unfinish();
    let kept = snapshot(&run);
    let out = tiqu(&["--backend", "cpu", "--dtype", "bf16", "train", "--out", run.to_str().unwrap(), "--resume"]);
    assert_error(&out, &["checkpoint-1 was trained with the base weights in f32", "--dtype f32"]);
    assert_eq!(snapshot(&run), kept, "a refused resume changes nothing");
    ok(resume(&run));

    // A run from before the tokenizer was stored: its flag, given again, is taken and recorded.
    unfinish();
    let config = run.join("config.toml");
    let stored: String = fs::read_to_string(&config).unwrap().lines().filter(|l| !l.starts_with("tokenizer = ")).map(|l| format!("{l}\n")).collect();
    fs::write(&config, stored).unwrap();
    let state = run.join("checkpoint-1/trainer_state.json");
    let mut json: Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    json["config"].as_object_mut().unwrap().remove("tokenizer").unwrap();
    fs::write(&state, json.to_string()).unwrap();
    assert_error(&resume(&run), &["differ from those checkpoint-1 was trained on", "another tokenizer"]);
    ok(tiqu(&["--backend", "cpu", "train", "--out", run.to_str().unwrap(), "--resume", "--tokenizer", tok.to_str().unwrap()]));
    assert!(fs::read_to_string(&config).unwrap().contains("tokenizer = "));
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (full, broken) = (dir.path().join("full"), dir.path().join("broken"));
    let long = ["--save-steps", "1"];
    ok(train(&full, &long));
    ok(train(&broken, &long));
    let finals = ["adapter_model.safetensors", "adapter_config.json", "summary.json", "report.html"];
    // As a kill after checkpoint `newest` leaves the run folder.
    let unfinish = |run: &Path, newest: usize| {
        for f in finals {
            let _ = fs::remove_file(run.join(f));
        }
        for step in newest + 1..=6 {
            let _ = fs::remove_dir_all(run.join(format!("checkpoint-{step}")));
        }
    };
    // The newest checkpoint cut short (a power cut without fsync could leave this).
    unfinish(&broken, 4);
    let opt = broken.join("checkpoint-4/optimizer.safetensors");
    let bytes = fs::read(&opt).unwrap();
    fs::write(&opt, &bytes[..bytes.len() / 2]).unwrap();
    let out = ok(resume(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("checkpoint-4") && stderr.contains("trying the checkpoint before it"), "{stderr}");
    assert_eq!(losses(&broken), losses(&full), "resumed from checkpoint-3, the curve is the uninterrupted one");
    assert_eq!(fs::read(broken.join("adapter_model.safetensors")).unwrap(), fs::read(full.join("adapter_model.safetensors")).unwrap());

    // Moments of the wrong shape (1-d) are named, then skipped the same way.
    unfinish(&broken, 3);
    edit_f32_tensors(&broken.join("checkpoint-3/optimizer.safetensors"), |tensors| {
        for (_, shape, _) in tensors.iter_mut() {
            *shape = vec![shape.iter().product()];
        }
    });
    let out = ok(resume(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint-3") && stderr.contains("has shape"), "{stderr}");
    assert_eq!(losses(&broken), losses(&full));

    // A NaN moment made every step after the resume NaN (and the saved adapter, exit 0): named,
    // then skipped the same way.
    unfinish(&broken, 3);
    edit_f32_tensors(&broken.join("checkpoint-3/optimizer.safetensors"), |tensors| {
        tensors.sort();
        tensors[0].2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let out = ok(resume(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint-3") && stderr.contains("holds NaN"), "{stderr}");
    assert_eq!(losses(&broken), losses(&full));

    // A checkpoint copied under a later step's name holds the earlier weights: it resumed them
    // at the name's step. Its state says which step it is: skipped like a damaged one.
    unfinish(&broken, 2);
    copy_dir(&broken.join("checkpoint-1"), &broken.join("checkpoint-3"));
    let out = ok(resume(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint-3") && stderr.contains("global_step is 1, but the folder is checkpoint-3"), "{stderr}");
    assert_eq!(losses(&broken), losses(&full));

    // Dropout is the run's setting, not what a checkpoint's adapter_config.json says (an edit
    // there changed the curve without a word).
    unfinish(&broken, 2);
    let config = broken.join("checkpoint-2/adapter_config.json");
    let mut adapter: Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    adapter["lora_dropout"] = serde_json::json!(0.5);
    fs::write(&config, adapter.to_string()).unwrap();
    ok(resume(&broken));
    assert_eq!(losses(&broken), losses(&full));

    // A metrics file cut short loses the curve's first steps: said, not silent.
    unfinish(&broken, 2);
    let metrics = broken.join("metrics.jsonl");
    let first_line = fs::read_to_string(&metrics).unwrap().lines().next().unwrap().to_string();
    fs::write(&metrics, format!("{first_line}\n")).unwrap();
    let out = ok(resume(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.jsonl lacks step 2 (damaged or edited)"), "{stderr}");

    // Nothing restores: one line saying so.
    unfinish(&broken, 1);
    fs::write(broken.join("checkpoint-1/trainer_state.json"), "{not json").unwrap();
    assert_error(&resume(&broken), &["no checkpoint restores", "checkpoint-1/trainer_state.json"]);
    // A checkpoint without its state is a damaged one, not none: the run started over and wrote
    // over it.
    fs::remove_file(broken.join("checkpoint-1/trainer_state.json")).unwrap();
    assert_error(&resume(&broken), &["no checkpoint restores", "checkpoint-1/trainer_state.json"]);
    assert!(broken.join("checkpoint-1/adapter_model.safetensors").exists());
}

/// Rewrites the f32 safetensors file `path` with its (name, shape, bytes) edited by `edit`.
fn edit_f32_tensors(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())).collect();
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_broken_trainer_state_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(train(&run, &["--max-steps", "2"]));
    fs::write(run.join("checkpoint-2/trainer_state.json"), "{not json").unwrap();
    let out = resume(&run);
    assert_error(&out, &["checkpoint-2/trainer_state.json", "not valid JSON"]);
}
