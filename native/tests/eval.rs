//! `tiqu eval` by field on the committed tiny checkpoint: the JSON contract, the mistakes file,
//! and records whose reference output is unusable (counted, not a crash).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).env("HF_HUB_OFFLINE", "1").output().expect("run tiqu")
}

#[test]
fn eval_reports_fields_counts_bad_references_and_writes_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("records.jsonl");
    let good = fs::read_to_string(repo().join("tests/fixtures/sft_small.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let mut bad_output: Value = serde_json::from_str(first).unwrap();
    bad_output["output"] = "not json".into();
    let mut missing: Value = serde_json::from_str(first).unwrap();
    missing["output"] = r#"{"name": "张伟"}"#.into();
    // Nothing to extract from: scored, it counted as a record the model got wrong.
    let mut empty: Value = serde_json::from_str(first).unwrap();
    (empty["input"], empty["instruction"]) = (" ".into(), "".into());
    fs::write(&data, format!("{good}{bad_output}\n{missing}\n{{oops\n{empty}\n")).unwrap();
    let model = repo().join("tests/fixtures/tiny-untied").display().to_string();
    let mistakes = dir.path().join("m.jsonl");
    let out = tiqu(&[
        "--backend", "cpu", "eval", "--model", &model, "--data", data.to_str().unwrap(), "--max-new-tokens", "12",
        "--mistakes", mistakes.to_str().unwrap(), "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let records = good.lines().count() as u64;
    assert_eq!(r["records"], records, "{r}");
    assert_eq!(r["bad_records"], 4, "a non-JSON output, a missing field, a non-JSON line and an empty text: {r}");
    for key in ["all_fields_exact", "json_valid", "hallucinated", "records_per_s", "loss"] {
        assert!(r[key].is_number(), "{key} missing: {r}");
    }
    // Copy-constrained decoding: always an object, never a value that is not in the text.
    assert_eq!((r["json_valid"].as_f64(), r["hallucinated"].as_f64()), (Some(1.0), Some(0.0)));
    for field in ["name", "address", "email", "question"] {
        let f = &r["per_field"][field];
        assert!(f["exact"].as_f64().unwrap() <= f["char_f1"].as_f64().unwrap() + 1e-12, "{field}: {f}");
    }
    assert!(stdout.contains("all fields exact") && stdout.contains("char F1"), "the table: {stdout}");
    // The table only counts them: the first unusable record is named, with its line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named = format!("records.jsonl:{}: reference output is not valid JSON", records + 1);
    assert!(stderr.contains(&named) && stderr.contains("4 unusable records, this the first"), "{stderr}");
    // A random tiny model gets records wrong: each is listed with what was expected and got.
    let lines: Vec<Value> = fs::read_to_string(&mistakes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.get("error").is_some() && l.get("text").is_none()).count(), 4);
    let wrong = lines.iter().filter(|l| l.get("expected").is_some()).count() as u64;
    let exact = (r["all_fields_exact"].as_f64().unwrap() * records as f64).round() as u64;
    assert_eq!(wrong + exact, records);

    // Only unusable references: no score (was "0 records … 0.0%", exit 0), the mistakes say why.
    fs::write(&data, format!("{bad_output}\n{missing}\n")).unwrap();
    let out = tiqu(&["--backend", "cpu", "eval", "--model", &model, "--data", data.to_str().unwrap(), "--max-new-tokens", "4", "--mistakes", mistakes.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && stderr.lines().count() == 1 && stderr.contains("no record has a usable reference output (2 unusable"), "{stderr}");
    assert_eq!(fs::read_to_string(&mistakes).unwrap().lines().count(), 2);
}

#[test]
fn eval_without_a_readable_data_file_is_one_line() {
    let model = repo().join("tests/fixtures/tiny-untied").display().to_string();
    let out = tiqu(&["--backend", "cpu", "eval", "--model", &model, "--data", "/nonexistent/x.jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/x.jsonl"), "{stderr}");
}

/// The mistakes file is rewritten by every eval: a path naming the data, or any file that is not
/// an earlier eval's mistakes, is refused before anything is read or written; an earlier
/// mistakes file is replaced. A file with no usable record is an error, not a table of NaNs.
#[test]
fn eval_never_writes_its_mistakes_over_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("records.jsonl");
    let good = fs::read_to_string(repo().join("tests/fixtures/sft_small.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    fs::write(&data, format!("{first}\n")).unwrap();
    let model = repo().join("tests/fixtures/tiny-untied").display().to_string();
    let eval = |mistakes: &Path| {
        tiqu(&["--backend", "cpu", "eval", "--model", &model, "--data", data.to_str().unwrap(), "--max-new-tokens", "4", "--mistakes", mistakes.to_str().unwrap()])
    };
    let refused = |out: &Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    };
    refused(&eval(&data), "is the --data file");
    assert_eq!(fs::read_to_string(&data).unwrap(), format!("{first}\n"));
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "my notes\n").unwrap();
    refused(&eval(&notes), "not a mistakes file");
    assert_eq!(fs::read_to_string(&notes).unwrap(), "my notes\n");

    let mistakes = dir.path().join("m.jsonl");
    for _ in 0..2 {
        let out = eval(&mistakes);
        assert!(out.status.success(), "an earlier mistakes file is replaced: {}", String::from_utf8_lossy(&out.stderr));
    }

    let unusable = dir.path().join("bad.jsonl");
    fs::write(&unusable, "{oops\n").unwrap();
    let out = tiqu(&["--backend", "cpu", "eval", "--model", &model, "--data", unusable.to_str().unwrap()]);
    // The line and why, not only a count.
    refused(&out, "bad.jsonl:1: ");
    refused(&out, "no usable record");

    // An eval that fails leaves the earlier mistakes file as it was (it was emptied at the
    // start), and makes none where there was none.
    let before = fs::read(&mistakes).unwrap();
    assert!(!before.is_empty(), "the random model gets the record wrong");
    let broken = dir.path().join("broken");
    fs::create_dir(&broken).unwrap();
    for entry in fs::read_dir(repo().join("tests/fixtures/tiny-untied")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
    }
    // An infinite norm weight: the loss is NaN, found after the mistakes file was opened.
    let weights = broken.join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    let norm = tensors.iter_mut().find(|(n, _, _)| n == "model.norm.weight").unwrap();
    norm.2[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())).collect();
    fs::write(&weights, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = tiqu(&["--backend", "cpu", "eval", "--model", broken.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-new-tokens", "4", "--mistakes", mistakes.to_str().unwrap()]);
    refused(&out, "model.norm.weight");
    assert_eq!(fs::read(&mistakes).unwrap(), before);
    let fresh = dir.path().join("fresh.jsonl");
    let out = tiqu(&["--backend", "cpu", "eval", "--model", broken.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-new-tokens", "4", "--mistakes", fresh.to_str().unwrap()]);
    refused(&out, "model.norm.weight");
    assert!(!fresh.exists());
    assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("tiqu-tmp")), "no temporary file left");

    // Extraction's settings beside --loss-only did nothing: refused.
    let out = tiqu(&["--backend", "cpu", "eval", "--model", &model, "--data", data.to_str().unwrap(), "--loss-only", "--mistakes", fresh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss-only"));
}
