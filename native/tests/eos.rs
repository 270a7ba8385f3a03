//! eos as transformers finds it: a folder saved by transformers from a Qwen3Config made without
//! special-token ids (`"eos_token_id": null` in config.json and generation_config.json, made by
//! tests/reference/make_null_eos_fixture.py) loads; its loss equals transformers' on the same
//! records, `eval --loss-only` needs no eos at all, and generation stops on the tokenizer's
//! `eos_token` (tokenizer_config.json), or on `<|im_end|>` when no file names one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).env("HF_HUB_OFFLINE", "1").output().expect("run tiqu")
}

/// tiny-untied's weights and tokenizer under the null-eos config files.
fn null_eos_folder(dir: &Path, with_tokenizer_config: bool) -> PathBuf {
    let folder = dir.join(if with_tokenizer_config { "with" } else { "without" });
    fs::create_dir_all(&folder).unwrap();
    for f in ["config.json", "generation_config.json"] {
        fs::copy(fixtures().join("null-eos").join(f), folder.join(f)).unwrap();
    }
    let mut files = vec!["model.safetensors", "tokenizer.json"];
    if with_tokenizer_config {
        files.push("tokenizer_config.json");
    }
    for f in files {
        fs::copy(fixtures().join("tiny-untied").join(f), folder.join(f)).unwrap();
    }
    folder
}

#[test]
fn a_folder_with_null_eos_ids_loads_and_matches_transformers_loss() {
    let dir = tempfile::tempdir().unwrap();
    let reference: Value = serde_json::from_slice(&fs::read(fixtures().join("null-eos/reference.json")).unwrap()).unwrap();
    let data = fixtures().join("sft_small.jsonl");
    for with in [true, false] {
        let model = null_eos_folder(dir.path(), with);
        let out = tiqu(&["--backend", "cpu", "eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss-only", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let last: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        let (got, want) = (last["loss"].as_f64().unwrap(), reference["loss"].as_f64().unwrap());
        assert!((got - want).abs() / want < 1e-4, "loss {got} vs transformers {want}");
        let out = tiqu(&["--backend", "cpu", "generate", "--model", model.to_str().unwrap(), "--prompt", "你好", "--max-new-tokens", "4", "--json"]);
        assert!(out.status.success(), "generation needs an eos and finds one: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// An eos id of the wrong type (a quoted id, a list holding a name) is an error naming the file,
/// never "unset" (which would decode every record to the token limit); one outside the
/// vocabulary is refused before any record.
#[test]
fn an_eos_id_that_is_not_an_id_is_refused_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = null_eos_folder(dir.path(), true);
    let m = model.to_str().unwrap();
    let input = dir.path().join("in.txt");
    fs::write(&input, "龙琳，邮箱 nafan@example.com\n").unwrap();
    let extract = || tiqu(&["--backend", "cpu", "extract", "--model", m, "--input", input.to_str().unwrap(), "--out", "-", "--max-new-tokens", "4"]);
    let generate = || tiqu(&["--backend", "cpu", "generate", "--model", m, "--prompt", "你好", "--max-new-tokens", "4"]);
    let cases = [
        ("{\"eos_token_id\": \"151645\"}", "generation_config.json: eos_token_id"),
        ("{\"eos_token_id\": [151645, \"<|im_end|>\"]}", "generation_config.json: eos_token_id"),
        // Named with its file, and refused by `generate` too (it ran to its token limit).
        ("{\"eos_token_id\": 200000}", "generation_config.json: eos_token_id 200000 is outside the model's vocabulary"),
        ("[]", "generation_config.json: not a JSON object"),
    ];
    for (body, needle) in cases {
        fs::write(model.join("generation_config.json"), body).unwrap();
        for out in [extract(), generate()] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && out.stdout.is_empty(), "{body}: {stderr}");
            assert!(stderr.lines().count() == 1 && stderr.contains(needle), "{body}: {stderr}");
        }
    }
}
