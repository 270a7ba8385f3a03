//! `tiqu data synth` end to end: the files it writes, and one clear line for bad input.

use std::fs;
use std::process::{Command, Output};

use serde_json::Value;

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).output().expect("run tiqu")
}

/// A failure with one `error:` line that contains every `needle`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line should name `{n}`: {}", lines[0]);
    }
}

/// Every line a record whose output holds the four keys, each value found in the input.
fn check_records(text: &str) -> usize {
    let mut n = 0;
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).expect("a JSON line");
        let input = rec["input"].as_str().expect("input");
        assert_eq!(rec["instruction"], "");
        assert!(rec["system"].as_str().unwrap().starts_with("将文本中的name、address、email、question提取出来"));
        let out: Value = serde_json::from_str(rec["output"].as_str().expect("output")).expect("output is JSON");
        let obj = out.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["name", "address", "email", "question"]);
        for v in obj.values() {
            let v = v.as_str().unwrap();
            assert!(!v.is_empty() && input.contains(v), "`{v}` not in `{input}`");
        }
        n += 1;
    }
    n
}

#[test]
fn synth_splits_into_train_and_heldout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/synth.jsonl");
    let o = tiqu(&["data", "synth", "--n", "50", "--seed", "3", "--split", "0.8", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let heldout = dir.path().join("sub/synth.heldout.jsonl");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(out.to_str().unwrap()) && stdout.contains(heldout.to_str().unwrap()), "{stdout}");
    let (train_text, heldout_text) = (fs::read_to_string(&out).unwrap(), fs::read_to_string(&heldout).unwrap());
    assert_eq!(check_records(&train_text), 40);
    assert_eq!(check_records(&heldout_text), 10);

    // The same seed gives the same records, split or not.
    let all = dir.path().join("all.jsonl");
    let o = tiqu(&["data", "synth", "--n", "50", "--seed", "3", "--out", all.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(fs::read_to_string(&all).unwrap(), train_text + &heldout_text);
    assert!(!dir.path().join("all.heldout.jsonl").exists());
}

/// `--styles` writes records of those styles only: rows of values without labels.
#[test]
fn synth_writes_the_styles_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rows.jsonl");
    let o = tiqu(&["data", "synth", "--n", "30", "--styles", "row", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = fs::read_to_string(&out).unwrap();
    assert_eq!(check_records(&text), 30);
    for line in text.lines() {
        let input = serde_json::from_str::<Value>(line).unwrap()["input"].as_str().unwrap().to_string();
        assert!(!["姓名", "邮箱", "地址", "Email", "Name"].iter().any(|l| input.contains(l)), "a labelled row: {input}");
    }
}

#[test]
fn synth_bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");
    let out = out.to_str().unwrap();
    assert_clean_error(&tiqu(&["data", "synth", "--n", "0", "--out", out]), &["--n must be between 1 and 10000000, got 0"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "9223372036854775807", "--out", out]), &["--n must be between 1 and 10000000"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "5", "--split", "1.5", "--out", out]), &["--split"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "1", "--split", "0.9", "--out", out]), &["held-out", "empty"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "3", "--styles", "row,tabs", "--out", out]), &["--styles", "`tabs`", "letter"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "3", "--styles", "none", "--out", out]), &["--styles", "at least one"]);

    // A path under a file, and one under /proc.
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let under_file = file.join("y.jsonl");
    let under_file = under_file.to_str().unwrap();
    assert_clean_error(&tiqu(&["data", "synth", "--n", "3", "--out", under_file]), &["cannot write", under_file, "is not a folder"]);
    assert_clean_error(&tiqu(&["data", "synth", "--n", "3", "--out", "/proc/x/y.jsonl"]), &["cannot write", "/proc/x"]);

    // An existing output, or held-out file, is left as it was unless --force says otherwise.
    let kept = dir.path().join("kept.jsonl");
    fs::write(&kept, "keep\n").unwrap();
    let kept_str = kept.to_str().unwrap();
    assert_clean_error(&tiqu(&["data", "synth", "--n", "3", "--out", kept_str]), &["--out", kept_str, "exists", "--force"]);
    assert_eq!(fs::read_to_string(&kept).unwrap(), "keep\n");
    let fresh = dir.path().join("fresh.jsonl");
    fs::write(dir.path().join("fresh.heldout.jsonl"), "keep\n").unwrap();
    assert_clean_error(&tiqu(&["data", "synth", "--n", "4", "--split", "0.5", "--out", fresh.to_str().unwrap()]), &["held-out", "exists", "--force"]);
    assert!(!fresh.exists(), "nothing is written when one of the files is refused");
    assert!(tiqu(&["data", "synth", "--n", "3", "--out", kept_str, "--force"]).status.success());
    assert_eq!(check_records(&fs::read_to_string(&kept).unwrap()), 3);

    // A link (dangling: it passed for "no file yet"; live: --force replaced the link, not its
    // target) and a pipe are refused, --force or not, and stay what they were.
    let dangling = dir.path().join("dangling.jsonl");
    std::os::unix::fs::symlink(dir.path().join("nowhere/z.jsonl"), &dangling).unwrap();
    let live = dir.path().join("live.jsonl");
    std::os::unix::fs::symlink(&kept, &live).unwrap();
    for (link, force) in [(&dangling, false), (&live, true)] {
        let mut args = vec!["data", "synth", "--n", "2", "--out", link.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        assert_clean_error(&tiqu(&args), &["is a symbolic link"]);
        assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
    }
    let fifo = dir.path().join("pipe.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_clean_error(&tiqu(&["data", "synth", "--n", "2", "--out", fifo.to_str().unwrap(), "--force"]), &["not a regular file"]);
    assert!(!fs::metadata(&fifo).unwrap().is_file(), "the pipe is still a pipe");
}

/// The hand-written complaints `tiqu quickstart` measures its model on are usable records:
/// every value verbatim in its text (or null), no duplicates, nothing `data check --strict`
/// would refuse.
#[test]
fn the_hand_written_complaints_pass_data_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/handwritten-complaints.jsonl");
    let findings = dir.path().join("findings.jsonl");
    let out = tiqu(&["data", "check", file, "--strict", "--findings", findings.to_str().unwrap()]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("24 records, 24 usable") && said.contains("findings: 0"), "{said}");
}
