//! `tiqu runs compare A B …`: settings and final metrics of runs, side by side (and with
//! `--html FILE` their curves on the same axes); `tiqu runs report RUN`: a run's report.html
//! written again from its folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;

use crate::report;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Print a table of settings and final metrics of two or more run folders.
    Compare {
        runs: Vec<PathBuf>,
        /// Also write one HTML page with the runs' curves on the same axes and their settings
        /// side by side, differences highlighted (a name ending in .html; an earlier compare
        /// page there is replaced, any other file only with --force).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Replace an existing --html file that is not an earlier compare page.
        #[arg(long, requires = "html")]
        force: bool,
    },
    /// Write a run folder's report.html again from its config.toml, metrics.jsonl and
    /// summary.json (an older or an unfinished run).
    Report { run: PathBuf },
}

/// Refuses an `--html` target that is not an .html file name, so that a slip of the keyboard
/// cannot replace a run's config or metrics, and an existing page that `runs compare` did not
/// write (a run's report.html, the user's own page) unless `force`.
fn check_html_target(path: &Path, force: bool) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if path.is_dir() {
        bail!("--html {}: is a folder; give a file name ending in .html", path.display());
    }
    if !matches!(ext.as_deref(), Some("html" | "htm")) {
        bail!("--html {}: not an .html file name; give a file name ending in .html", path.display());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("--html {}: the folder {} does not exist", path.display(), parent.display());
    }
    if path.exists() && !force && !is_compare_page(path) {
        bail!("--html {}: exists and is not a page `runs compare` wrote; pass --force to replace it", path.display());
    }
    Ok(())
}

/// Whether the file starts as the pages `runs compare` writes (their title is in the head).
fn is_compare_page(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    read.is_ok() && String::from_utf8_lossy(&head).contains(&format!("<title>{}</title>", report::COMPARE_TITLE))
}

fn summary_cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(v) => report::figure(v),
    }
}

fn print_table(runs: &[PathBuf], loaded: &[report::Run]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push(("run".into(), runs.iter().map(|r| r.display().to_string()).collect()));
    // Settings the runs' methods use (config.toml), then final metrics (summary.json).
    rows.extend(report::setting_rows(loaded).into_iter().map(|(k, cells)| (k, cells.into_iter().map(|c| if c == "–" { "-".into() } else { c }).collect())));
    let unfinished = serde_json::json!({"status": "unfinished"});
    let summaries: Vec<&Value> = loaded.iter().map(|l| l.summary.as_ref().unwrap_or(&unfinished)).collect();
    let keys: BTreeSet<String> = summaries.iter().flat_map(|s| s.as_object().into_iter().flatten().map(|(k, _)| k.clone())).collect();
    for k in keys {
        if k != "trainable" {
            rows.push((k.clone(), summaries.iter().map(|s| summary_cell(s.get(&k))).collect()));
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let cols: Vec<usize> = (0..runs.len()).map(|i| rows.iter().map(|r| r.1[i].chars().count()).max().unwrap_or(0)).collect();
    for (name, cells) in &rows {
        let mark = if name != "run" && report::differs(cells) { "*" } else { " " };
        let mut line = format!("{mark}{name:width$}");
        for (c, w) in cells.iter().zip(&cols) {
            line.push_str(&format!("  {c:>w$}"));
        }
        println!("{}", line.trim_end());
    }
    println!("(* = differs)");
}

pub fn run(cmd: &RunsCommand) -> Result<()> {
    match cmd {
        RunsCommand::Compare { runs, html, force } => {
            if runs.len() < 2 {
                bail!("runs compare takes at least two run folders");
            }
            if let Some(path) = html {
                check_html_target(path, *force)?;
            }
            let loaded = runs.iter().map(|r| report::load_run(r)).collect::<Result<Vec<_>>>()?;
            print_table(runs, &loaded);
            if let Some(path) = html {
                report::write_file(path, &report::compare_html(&loaded))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        RunsCommand::Report { run } => {
            let path = report::write_report(run)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
