//! What SwanLab gave the seed notebook, without an account: `summary.json` and `report.html`,
//! one offline file with the loss on a log axis (linear on a click), smoothing, values on
//! hover, the extraction quality at each checkpoint, the settings the run's method used and
//! where it ran. Everything is read back from the run folder (`config.toml`, `summary.json`,
//! `metrics.jsonl`), so a report can be rewritten for any run, old or unfinished, and this
//! module does not depend on the training code's types.

/// The title of `runs compare --html` pages, by which an earlier one is recognised.
pub const COMPARE_TITLE: &str = "tiqu runs compared";

mod chart;
mod compare;
mod page;
mod series;
mod settings;
mod ticks;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use chart::{Chart, Curve};
pub use compare::{compare_html, differs, setting_rows};
use series::series;
pub use settings::{figure, shown};


/// A run folder as read back.
pub struct Run {
    pub dir: PathBuf,
    /// `config.toml` as a plain value.
    pub config: Value,
    /// `summary.json`; `None` while the run has not finished.
    pub summary: Option<Value>,
    /// The readable lines of `metrics.jsonl`.
    pub metrics: Vec<Value>,
    /// Lines of `metrics.jsonl` that are not JSON (a line cut by a crash): skipped, counted.
    pub unreadable: usize,
}

/// Reads a run folder: `config.toml` must be there; `summary.json` and `metrics.jsonl` may be
/// missing (an unfinished run) but not broken.
pub fn load_run(dir: &Path) -> Result<Run> {
    let cfg_path = dir.join("config.toml");
    let text = fs::read_to_string(&cfg_path).map_err(|e| anyhow!("{}: {e} (not a tiqu run folder?)", cfg_path.display()))?;
    let config: toml::Value = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        anyhow!("{}{}: {}", cfg_path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), e.message().trim().replace('\n', "; "))
    })?;
    // Every run's config.toml names its model and data: another tool's config.toml (cargo's,
    // say) is not a run, and its folder's report.html is not ours to write.
    if !["model", "data"].iter().all(|k| config.get(k).is_some_and(toml::Value::is_str)) {
        bail!("{}: has no `model` and `data` settings: not a tiqu run folder", cfg_path.display());
    }
    let summary_path = dir.join("summary.json");
    let summary = match fs::read(&summary_path) {
        Ok(bytes) => match serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: {e}", summary_path.display()))? {
            summary @ Value::Object(_) => Some(summary),
            // `[]` or `null` read as "not finished": a damaged file, not an unfinished run.
            other => bail!("{}: not a JSON object (holds {})", summary_path.display(), if other.is_array() { "an array" } else { "a JSON value" }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("{}: {e}", summary_path.display())),
    };
    let metrics_path = dir.join("metrics.jsonl");
    let (metrics, unreadable) = match fs::read_to_string(&metrics_path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let metrics: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object)).collect();
            let unreadable = lines.len() - metrics.len();
            // Numbered as the file's lines, blank ones included.
            let is_record = |l: &str| l.trim().is_empty() || serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object());
            if let Some(first) = text.lines().position(|l| !is_record(l)) {
                eprintln!("warning: {}: {unreadable} line(s) are not JSON objects (the first: line {}), skipped", metrics_path.display(), first + 1);
            }
            (metrics, unreadable)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(anyhow!("{}: {e}", metrics_path.display())),
    };
    Ok(Run { dir: dir.to_path_buf(), config: serde_json::to_value(config)?, summary, metrics, unreadable })
}

/// Colours of the curves, in order (matplotlib's, which SwanLab's and TensorBoard's resemble).
pub const PALETTE: [&str; 10] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// The fields of `eval_per_field`, in the order the run wrote them.
fn eval_fields(metrics: &[Value]) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for m in metrics {
        for k in m.get("eval_per_field").and_then(Value::as_object).into_iter().flat_map(|o| o.keys()) {
            if !fields.contains(k) {
                fields.push(k.clone());
            }
        }
    }
    fields
}

fn curve(name: &str, color: &str, dashed: bool, smooth: bool, points: Vec<(f64, f64)>) -> Curve {
    Curve { name: name.into(), color: color.into(), dashed, smooth, points }
}

/// The extraction-quality chart: all-fields-exact, JSON-valid and each field's exact match.
fn eval_chart(id: &str, metrics: &[Value]) -> Option<Chart> {
    let mut curves = vec![
        curve("all fields exact", PALETTE[0], false, false, series(metrics, &["eval_all_fields_exact"])),
        curve("JSON valid", PALETTE[7], true, false, series(metrics, &["eval_json_valid"])),
    ];
    for (i, f) in eval_fields(metrics).iter().enumerate() {
        curves.push(curve(&format!("{f} exact"), PALETTE[(i + 2) % PALETTE.len()], false, false, series(metrics, &["eval_per_field", f, "exact"])));
    }
    curves.iter().any(|c| !c.points.is_empty()).then(|| Chart {
        id: id.into(),
        title: "extraction at checkpoints (share of eval records)".into(),
        curves,
        log: false,
        fixed: Some((0.0, 1.0)),
    })
}

fn rate(v: Option<&Value>) -> String {
    v.and_then(Value::as_f64).map_or("–".into(), |r| format!("{} %", ticks::fmt_sig(100.0 * r, 3)))
}

/// One row per checkpoint evaluation that measured extraction.
fn eval_table(metrics: &[Value]) -> Option<String> {
    let lines: Vec<&Value> = metrics.iter().filter(|m| m.get("eval_all_fields_exact").is_some() || m.get("eval_per_field").is_some()).collect();
    if lines.is_empty() {
        return None;
    }
    let fields = eval_fields(metrics);
    let mut header: Vec<String> = ["step", "eval loss", "records", "all fields exact", "JSON valid", "invented values"].map(String::from).to_vec();
    header.extend(fields.iter().map(|f| format!("{f} exact / F1")));
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|m| {
            let mut row = vec![
                figure(&m["step"]),
                m.get("eval_loss").map_or("–".into(), figure),
                m.get("eval_records").map_or("–".into(), figure),
                rate(m.get("eval_all_fields_exact")),
                rate(m.get("eval_json_valid")),
                m.get("eval_hallucinated").map_or("–".into(), figure),
            ];
            for f in &fields {
                let pf = &m["eval_per_field"][f];
                row.push(format!("{} / {}", rate(pf.get("exact")), rate(pf.get("f1"))));
            }
            row
        })
        .collect();
    Some(page::table("eval", &header, &rows, &[]))
}

/// The run's page.
pub fn run_html(run: &Run) -> String {
    let name = run.dir.display().to_string();
    let m = &run.metrics;
    let mut body = format!("<h1>tiqu run <code>{}</code></h1>", escape(&name));
    let trainable = run.summary.as_ref().and_then(|s| s["trainable"].as_str());
    if let Some(line) = trainable {
        body.push_str(&format!("<p><code>{}</code></p>", escape(line)));
    }
    if run.summary.is_none() {
        body.push_str("<p class='note'>No summary.json: the run has not finished (or was stopped); the curves show what metrics.jsonl holds.</p>");
    }
    if run.unreadable > 0 {
        body.push_str(&format!("<p class='note'>{} line(s) of metrics.jsonl are not JSON and were skipped.</p>", run.unreadable));
    }
    let summary = run.summary.as_ref().map(settings::summary_rows).unwrap_or_default();
    if !summary.is_empty() {
        let rows: Vec<Vec<String>> = summary.into_iter().map(|(k, v)| vec![k, v]).collect();
        body.push_str("<h2>Summary</h2>");
        body.push_str(&page::table("summary", &[], &rows, &[]));
    }
    body.push_str("<h2>Curves</h2>");
    body.push_str(&page::smoothing_control());
    let loss = Chart {
        id: "loss".into(),
        title: "loss".into(),
        curves: vec![
            curve("train loss", PALETTE[0], false, true, series(m, &["loss"])),
            curve("eval loss", PALETTE[1], true, false, series(m, &["eval_loss"])),
        ],
        log: true,
        fixed: None,
    };
    body.push_str(&loss.render());
    if let Some(chart) = eval_chart("eval", m) {
        body.push_str(&chart.render());
    }
    for (id, title, key, color, log) in [
        ("lr", "learning rate", "lr", PALETTE[2], false),
        ("grad-norm", "gradient norm (before clipping)", "grad_norm", PALETTE[3], true),
        ("throughput", "tokens/s", "tokens_per_s", PALETTE[4], false),
    ] {
        let points = series(m, &[key]);
        if !points.is_empty() {
            let chart = Chart { id: id.into(), title: title.into(), curves: vec![curve(title, color, false, key != "lr", points)], log, fixed: None };
            body.push_str(&chart.render());
        }
    }
    if let Some(table) = eval_table(m) {
        body.push_str("<h2>Evaluation at checkpoints</h2>");
        body.push_str(&table);
    }
    let rows: Vec<Vec<String>> = shown(&run.config).into_iter().map(|(k, v)| vec![k, v]).collect();
    body.push_str(&format!("<h2>Settings ({} method)</h2>", escape(settings::method(&run.config))));
    body.push_str(&page::table("settings", &[], &rows, &[]));
    page::page(&format!("tiqu run {name}"), &body)
}

/// Writes `path` whole or not at all (a temporary file renamed over it).
pub fn write_file(path: &Path, contents: &str) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, contents).and_then(|_| fs::rename(&tmp, path)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow!("{}: {e}", path.display())
    })
}

/// (Re)writes `run/report.html` from what the run folder holds; returns its path.
pub fn write_report(run: &Path) -> Result<PathBuf> {
    let loaded = load_run(run)?;
    let path = run.join("report.html");
    write_file(&path, &run_html(&loaded))?;
    Ok(path)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&#39;").replace('"', "&quot;")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A run folder made by hand: `steps` step lines with a decaying loss, a checkpoint every
    /// `save` steps with the eval line the training loop writes (extraction metrics when
    /// `extraction`, else only the loss, as older runs have).
    pub fn fixture(dir: &Path, method: &str, lr: f64, steps: usize, save: usize, extraction: bool) {
        fs::create_dir_all(dir).unwrap();
        let cfg = format!(
            "model = \"Qwen/Qwen3-0.6B\"\nmethod = \"{method}\"\nrandom_weights = false\ninit_std = 0.02\nqk_norm_init = 1.0\n\
             data = \"train.jsonl\"\neval_data = \"eval.jsonl\"\nr = 8\nlora_alpha = 32.0\nlora_dropout = 0.1\n\
             target_modules = [\"q_proj\", \"v_proj\"]\nuse_rslora = false\nlearning_rate = {lr:e}\nsave_steps = {save}\nseed = 42\n"
        );
        fs::write(dir.join("config.toml"), cfg).unwrap();
        let mut lines = String::new();
        for s in 1..=steps {
            let loss = 7.9 * (-(s as f64) / 40.0).exp() + 0.002 + 0.001 * ((s * 7919 % 13) as f64);
            lines.push_str(&format!(
                "{}\n",
                json!({"step": s, "epoch": s as f64 / 100.0, "loss": loss, "lr": lr * (1.0 - s as f64 / steps as f64), "grad_norm": 1.0 / s as f64,
                       "tokens": 512, "label_tokens": 64, "tokens_per_s": 900.0 + (s % 10) as f64, "step_s": 0.57, "elapsed_s": 0.57 * s as f64})
            ));
            if s % save == 0 {
                let q = (s as f64 / steps as f64).min(1.0);
                let eval = if extraction {
                    json!({"step": s, "eval_loss": 0.5 / s as f64 + 0.01, "eval_records": 32, "eval_all_fields_exact": q * 0.9, "eval_json_valid": 1.0,
                           "eval_hallucinated": 0, "eval_per_field": {"name": {"exact": q, "f1": q}, "address": {"exact": q * 0.95, "f1": 0.97},
                           "email": {"exact": q, "f1": 1.0}, "question": {"exact": q * 0.8, "f1": 0.9}}})
                } else {
                    json!({"step": s, "eval_loss": 0.5 / s as f64 + 0.01})
                };
                lines.push_str(&format!("{eval}\n"));
            }
        }
        fs::write(dir.join("metrics.jsonl"), lines).unwrap();
        let summary = json!({"steps": steps, "final_loss": 0.022380830720067024, "first_loss": 7.9, "tokens_per_s": 903.3333333,
                             "elapsed_s": 352.4, "trainable": "trainable params: 2,944 || all params: 100,000 || trainable%: 2.9440",
                             "records_cut": 0, "records_skipped": 0, "machine": "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz",
                             "backend": "cpu", "dtype": "f32", "tiqu_version": "0.1.0", "method": method});
        fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&summary).unwrap()).unwrap();
    }

    fn settings_table(html: &str) -> &str {
        let start = html.find("<table class='settings'>").unwrap();
        &html[start..start + html[start..].find("</table>").unwrap()]
    }

    #[test]
    fn a_run_page_shows_rounded_figures_the_environment_and_the_eval_chart() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), "lora", 2e-4, 300, 50, true);
        let html = run_html(&load_run(dir.path()).unwrap());
        assert!(html.contains("0.02238") && !html.contains("0.022380830720067024"), "figures rounded");
        for shown in ["Intel(R) Xeon(R) Platinum 8581C", ">cpu<", ">f32<", ">0.1.0<", "5 min 52 s", "trainable params: 2,944"] {
            assert!(html.contains(shown), "{shown} missing");
        }
        assert!(html.contains("id='chart-loss'") && html.contains("id='chart-eval'"), "loss and extraction charts");
        assert!(html.contains("name exact / F1") && html.contains(">90 %<"), "the eval table by field");
        assert!(settings_table(&html).contains(">lora_alpha<"), "a LoRA run lists its LoRA settings");
        assert!(!settings_table(&html).contains(">init_std<"), "no random-init settings without random weights");
        // Offline: no resource fetched from anywhere.
        assert!(!html.contains("src=") && !html.contains("href=") && !html.contains("@import"), "self-contained");
    }

    #[test]
    fn a_full_run_page_lists_no_lora_settings_and_old_runs_no_eval_chart() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), "full", 1e-3, 100, 50, false);
        let html = run_html(&load_run(dir.path()).unwrap());
        let table = settings_table(&html);
        for key in ["r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora"] {
            assert!(!table.contains(&format!(">{key}<")), "{key} shown for a full run");
        }
        assert!(table.contains(">learning_rate<") && table.contains(">1e-3<"));
        assert!(html.contains("id='chart-loss'") && !html.contains("id='chart-eval'") && !html.contains("Evaluation at checkpoints"));
    }

    #[test]
    fn unfinished_runs_and_cut_lines_still_give_a_page() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), "lora", 1e-4, 20, 10, true);
        fs::remove_file(dir.path().join("summary.json")).unwrap();
        let mut metrics = fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        metrics.push_str("{\"step\": 21, \"loss\": 0.");
        fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        let run = load_run(dir.path()).unwrap();
        assert_eq!((run.unreadable, run.metrics.len()), (1, 22));
        let html = run_html(&run);
        assert!(html.contains("has not finished") && html.contains("1 line(s) of metrics.jsonl are not JSON"));
    }

    #[test]
    fn ten_thousand_steps_make_a_light_page() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), "lora", 1e-4, 10_000, 50, true);
        let html = run_html(&load_run(dir.path()).unwrap());
        // 5 per-step curves thinned to ≤ 2000 points each, 200 checkpoints: well under a megabyte.
        assert!(html.len() < 600_000, "{} bytes", html.len());
        let points = html.matches("],[").count();
        assert!(points < 5 * 2 * series::MAX_POINTS + 200 * 10, "{points} points");
    }

    #[test]
    fn broken_files_are_named_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), "lora", 1e-4, 10, 5, false);
        fs::write(dir.path().join("config.toml"), "model = \"x\"\nlearning_rate = = 3\n").unwrap();
        let e = format!("{:#}", load_run(dir.path()).err().unwrap());
        assert!(e.contains("config.toml:2:") && !e.contains('\n'), "{e}");
        fs::write(dir.path().join("config.toml"), "[build]\njobs = 2\n").unwrap();
        let e = format!("{:#}", load_run(dir.path()).err().unwrap());
        assert!(e.contains("config.toml: has no `model` and `data` settings: not a tiqu run folder"), "{e}");
        fs::write(dir.path().join("config.toml"), "model = \"x\"\ndata = \"d\"\n").unwrap();
        fs::write(dir.path().join("summary.json"), "{\"steps\": ").unwrap();
        let e = format!("{:#}", load_run(dir.path()).err().unwrap());
        assert!(e.contains("summary.json") && !e.contains('\n'), "{e}");
        fs::write(dir.path().join("summary.json"), "[]").unwrap();
        let e = format!("{:#}", load_run(dir.path()).err().unwrap());
        assert!(e.contains("summary.json: not a JSON object"), "{e}");
        let e = format!("{:#}", load_run(&dir.path().join("nothing")).err().unwrap());
        assert!(e.contains("config.toml") && e.contains("not a tiqu run folder"), "{e}");
    }
}
