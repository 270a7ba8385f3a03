//! `tiqu runs compare A B …`: settings and final metrics of runs, side by side.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Print a table of settings and final metrics of two or more run folders.
    Compare { runs: Vec<PathBuf> },
}

fn load(run: &Path) -> Result<(Value, Value)> {
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| anyhow!("{}: {e} (not a tiqu run folder?)", cfg_path.display()))?;
    let cfg: toml::Value = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
    let summary_path = run.join("summary.json");
    let summary = match std::fs::read(&summary_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: {e}", summary_path.display()))?,
        Err(_) => serde_json::json!({"status": "unfinished"}),
    };
    Ok((serde_json::to_value(cfg)?, summary))
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() && f != 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
            Some(f) if n.is_f64() => format!("{f:.6}").trim_end_matches('0').trim_end_matches('.').to_string(),
            _ => n.to_string(),
        },
        Some(v) => v.to_string(),
    }
}

pub fn run(cmd: &RunsCommand) -> Result<()> {
    let RunsCommand::Compare { runs } = cmd;
    if runs.len() < 2 {
        bail!("runs compare takes at least two run folders");
    }
    let loaded = runs.iter().map(|r| load(r)).collect::<Result<Vec<_>>>()?;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push(("run".into(), runs.iter().map(|r| r.display().to_string()).collect()));
    // Settings (config.toml), then final metrics (summary.json).
    for pick in [0usize, 1] {
        let keys: BTreeSet<String> =
            loaded.iter().flat_map(|l| [&l.0, &l.1][pick].as_object().into_iter().flatten().map(|(k, _)| k.clone())).collect();
        for k in keys {
            if k == "trainable" {
                continue;
            }
            rows.push((k.clone(), loaded.iter().map(|l| cell([&l.0, &l.1][pick].get(&k))).collect()));
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let cols: Vec<usize> = (0..runs.len()).map(|i| rows.iter().map(|r| r.1[i].chars().count()).max().unwrap_or(0)).collect();
    for (name, cells) in &rows {
        let differs = cells.iter().any(|c| c != &cells[0]);
        let mark = if differs && name != "run" { "*" } else { " " };
        let mut line = format!("{mark}{name:width$}");
        for (c, w) in cells.iter().zip(&cols) {
            line.push_str(&format!("  {c:>w$}"));
        }
        println!("{}", line.trim_end());
    }
    println!("(* = differs)");
    Ok(())
}
