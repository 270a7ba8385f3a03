//! What SwanLab gave the seed notebook, without an account: a run summary and `report.html`
//! with the loss curves as inline SVG, the hyperparameters and the timings.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Result};
use serde_json::Value;


fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn series(metrics: &[Value], key: &str) -> Vec<(f64, f64)> {
    metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m[key].as_f64()?))).collect()
}

/// One curve of a chart: name, colour, (step, value) points.
type Curve<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// An SVG line chart of one or two series.
fn chart(title: &str, lines: &[Curve]) -> String {
    let (w, h, pad) = (640.0, 280.0, 48.0);
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    if all.is_empty() {
        return format!("<p>{title}: no data</p>");
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > y0 { y1 } else { y0 + 1.0 });
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let mut svg = format!(
        "<figure><figcaption>{title}</figcaption><svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}'>\
         <rect width='100%' height='100%' fill='white' stroke='#ccc'/>"
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(svg, "<text x='4' y='{:.1}' font-size='10'>{y:.3}</text><line x1='{pad}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='#eee'/>", sy(y) + 3.0, w - pad, sy(y), sy(y));
    }
    let _ = write!(svg, "<text x='{pad}' y='{}' font-size='10'>step {x0:.0}</text><text x='{}' y='{}' font-size='10' text-anchor='end'>step {x1:.0}</text>", h - 8.0, w - pad, h - 8.0);
    for (i, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(svg, "<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{}'/>", path.join(" "));
        let _ = write!(svg, "<text x='{}' y='{}' font-size='11' fill='{color}'>{name}</text>", w - pad - 90.0, pad + 14.0 * i as f64);
    }
    svg.push_str("</svg></figure>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `report.html` in `run`, from the run folder's `metrics.jsonl`, `summary.json` and `config.toml`.
pub fn write_html(run: &Path) -> Result<()> {
    let m = read_metrics(&run.join("metrics.jsonl"))?;
    let summary_path = run.join("summary.json");
    let summary: Value = serde_json::from_slice(&fs::read(&summary_path).map_err(|e| anyhow!("{}: {e}", summary_path.display()))?)?;
    let cfg_path = run.join("config.toml");
    let cfg: toml::Value = toml::from_str(&fs::read_to_string(&cfg_path).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?)?;
    let mut html = String::from("<!doctype html><meta charset='utf-8'><title>tiqu run</title><style>body{font-family:sans-serif;max-width:720px;margin:2em auto}td{padding:2px 12px}</style>");
    let _ = write!(html, "<h1>tiqu run {}</h1><p><code>{}</code></p>", escape(&run.display().to_string()), escape(summary["trainable"].as_str().unwrap_or("")));
    html.push_str(&chart("loss", &[("train loss", "#1f77b4", series(&m, "loss")), ("eval loss", "#d62728", series(&m, "eval_loss"))]));
    html.push_str(&chart("learning rate", &[("lr", "#2ca02c", series(&m, "lr"))]));
    html.push_str("<h2>Summary</h2><table>");
    for (k, v) in summary.as_object().into_iter().flatten() {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(&v.to_string()));
    }
    html.push_str("</table><h2>Hyperparameters</h2><table>");
    let cfg = serde_json::to_value(cfg)?;
    for (k, v) in cfg.as_object().into_iter().flatten() {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(&v.to_string()));
    }
    html.push_str("</table>");
    let path = run.join("report.html");
    fs::write(&path, html).map_err(|e| anyhow!("{}: {e}", path.display()))
}
