//! `tiqu runs report` and `tiqu runs compare --html` on run folders made here by hand (no
//! training): what they write, and that each bad input gives one `error:` line, a non-zero exit
//! and leaves every file as it was.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

fn tiqu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiqu")).args(args).output().expect("run tiqu")
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "tiqu failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A refusal: exactly one `error:` line holding every needle, exit 1 (not a panic's 101).
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "error should name `{n}`: {}", errors[0]);
    }
}

/// Every file under `dir` with its bytes, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn make_run(dir: &Path, method: &str, lr: &str, steps: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("config.toml"),
        format!("model = \"m\"\ndata = \"d.jsonl\"\nmethod = \"{method}\"\nr = 8\nlora_alpha = 32.0\nlearning_rate = {lr}\nsave_steps = 5\nseed = 42\n"),
    )
    .unwrap();
    let mut lines = String::new();
    for s in 1..=steps {
        lines.push_str(&format!("{}\n", json!({"step": s, "loss": 5.0 / s as f64, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 100.0})));
        if s % 5 == 0 {
            lines.push_str(&format!("{}\n", json!({"step": s, "eval_loss": 4.0 / s as f64, "eval_all_fields_exact": s as f64 / steps as f64})));
        }
    }
    fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    fs::write(dir.join("summary.json"), json!({"steps": steps, "final_loss": 5.0 / steps as f64, "trainable": "trainable params: 10"}).to_string()).unwrap();
}

#[test]
fn runs_report_and_compare_html_write_self_contained_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_run(&a, "lora", "1e-4", 20);
    make_run(&b, "full", "3e-4", 30);
    let out = ok(tiqu(&["runs", "report", a.to_str().unwrap()]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a.join("report.html").display().to_string());
    let page = fs::read_to_string(a.join("report.html")).unwrap();
    assert!(page.contains("id='chart-loss'") && page.contains("id='chart-eval'") && page.contains("0.25"), "charts and the rounded final loss");

    let html = dir.path().join("compare.html");
    fs::write(&html, "the user's own page").unwrap();
    let compare = |extra: &[&str]| tiqu(&[&["runs", "compare", a.to_str().unwrap(), b.to_str().unwrap(), "--html", html.to_str().unwrap()][..], extra].concat());
    assert_error(&compare(&[]), &["compare.html", "--force"]);
    assert_eq!(fs::read_to_string(&html).unwrap(), "the user's own page");
    ok(compare(&["--force"]));
    // An earlier compare page is replaced without --force.
    let out = ok(compare(&[]));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.lines().any(|l| l.starts_with("*learning_rate") && l.contains("1e-4") && l.contains("3e-4")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("*r ") && l.trim_end().ends_with('-')), "a full run has no LoRA rank: {table}");
    assert!(table.lines().any(|l| l.starts_with(" seed")), "{table}");
    let page = fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<tr class='differs'><td>learning_rate</td>"), "the page is written");
    assert!(!page.contains("src=") && !page.contains("href="), "nothing to fetch");
    assert!(snapshot(dir.path()).iter().all(|(p, _)| !p.ends_with(".tmp")), "no temporary file left");
}

#[test]
fn bad_inputs_are_refused_in_one_line_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_run(&a, "lora", "1e-4", 10);
    make_run(&b, "lora", "2e-4", 10);
    ok(tiqu(&["runs", "report", a.to_str().unwrap()]));
    let html = dir.path().join("old.html");
    fs::write(&html, "keep me").unwrap();
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let metrics = a.join("metrics.jsonl");
    let missing = dir.path().join("no/such/folder/c.html");
    let nothing = dir.path().join("nothing");
    let report = a.join("report.html");
    let fresh = dir.path().join("new.html");
    let site = dir.path().join("site");
    fs::create_dir(&site).unwrap();
    fs::write(site.join("config.toml"), "[build]\njobs = 2\n").unwrap();
    fs::write(site.join("report.html"), "mine").unwrap();
    let before = snapshot(dir.path());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // A slip that would overwrite a run's metrics.
        (vec!["runs", "compare", sa, sb, "--html", metrics.to_str().unwrap()], vec!["metrics.jsonl", "not an .html file name"]),
        (vec!["runs", "compare", sa, sb, "--html", sa], vec!["is a folder"]),
        (vec!["runs", "compare", sa, sb, "--html", missing.to_str().unwrap()], vec!["does not exist"]),
        (vec!["runs", "compare", sa, dir.path().to_str().unwrap(), "--html", fresh.to_str().unwrap()], vec!["config.toml", "not a tiqu run folder"]),
        (vec!["runs", "compare", sa, "--html", fresh.to_str().unwrap()], vec!["at least two run folders"]),
        // Existing pages `runs compare` did not write: the user's, a run's report.
        (vec!["runs", "compare", sa, sb, "--html", html.to_str().unwrap()], vec!["old.html", "--force"]),
        (vec!["runs", "compare", sa, sb, "--html", report.to_str().unwrap()], vec!["report.html", "--force"]),
        (vec!["runs", "report", nothing.to_str().unwrap()], vec!["config.toml", "not a tiqu run folder"]),
        // Another tool's config.toml is no run: its folder's report.html was replaced.
        (vec!["runs", "report", site.to_str().unwrap()], vec!["config.toml", "not a tiqu run folder"]),
    ];
    for (args, needles) in &cases {
        assert_error(&tiqu(args), needles);
        assert_eq!(snapshot(dir.path()), before, "{args:?} changed a file");
    }
    // Broken files of a run: named with their line, the old report kept.
    ok(tiqu(&["runs", "report", sb]));
    let cfg = fs::read(b.join("config.toml")).unwrap();
    fs::write(b.join("config.toml"), "model = \"m\"\nlearning_rate = = 3\n").unwrap();
    let before = snapshot(dir.path());
    assert_error(&tiqu(&["runs", "report", sb]), &["config.toml:2:"]);
    assert_error(&tiqu(&["runs", "compare", sa, sb, "--html", fresh.to_str().unwrap()]), &["config.toml:2:"]);
    assert_eq!(snapshot(dir.path()), before);
    fs::write(b.join("config.toml"), cfg).unwrap();
    fs::write(b.join("summary.json"), "{\"steps\": ").unwrap();
    let before = snapshot(dir.path());
    assert_error(&tiqu(&["runs", "report", sb]), &["summary.json", "EOF"]);
    assert_eq!(snapshot(dir.path()), before);
}
