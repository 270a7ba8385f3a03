//! `tiqu runs compare … --html FILE`: several runs' curves on the same axes (one colour per
//! run; train loss solid, eval loss dashed) and their settings side by side, rows that differ
//! highlighted.

use super::chart::{Chart, Curve};
use super::series::series;
use super::settings::{self, shown};
use super::{escape, page, Run, PALETTE};

/// Rows of `(key, one cell per run)`: keys in the order the runs show them, `–` where a run
/// does not use the setting (a LoRA rank in a full run).
pub fn setting_rows(runs: &[Run]) -> Vec<(String, Vec<String>)> {
    let per_run: Vec<Vec<(String, String)>> = runs.iter().map(|r| shown(&r.config)).collect();
    let mut keys: Vec<String> = Vec::new();
    for rows in &per_run {
        for (k, _) in rows {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.into_iter()
        .map(|k| {
            let cells = per_run.iter().map(|rows| rows.iter().find(|r| r.0 == k).map_or("–".into(), |r| r.1.clone())).collect();
            (k, cells)
        })
        .collect()
}

/// Whether the cells of a row are not all the same.
pub fn differs(cells: &[String]) -> bool {
    cells.iter().any(|c| c != &cells[0])
}

/// Run names for legends and headers: the folder as given.
fn names(runs: &[Run]) -> Vec<String> {
    runs.iter().map(|r| r.dir.display().to_string()).collect()
}

pub fn compare_html(runs: &[Run]) -> String {
    let names = names(runs);
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let mut body = String::from("<h1>tiqu runs compared</h1><ul class='runs'>");
    for (i, n) in names.iter().enumerate() {
        body.push_str(&format!("<li><span style='color:{}'>■</span> <code>{}</code></li>", color(i), escape(n)));
    }
    body.push_str("</ul>");
    body.push_str(&page::smoothing_control());
    let mut loss = Vec::new();
    let mut exact = Vec::new();
    for (i, (run, name)) in runs.iter().zip(&names).enumerate() {
        let m = &run.metrics;
        loss.push(Curve { name: format!("{name} train"), color: color(i).into(), dashed: false, smooth: true, points: series(m, &["loss"]) });
        loss.push(Curve { name: format!("{name} eval"), color: color(i).into(), dashed: true, smooth: false, points: series(m, &["eval_loss"]) });
        exact.push(Curve {
            name: format!("{name} all fields exact"),
            color: color(i).into(),
            dashed: false,
            smooth: false,
            points: series(m, &["eval_all_fields_exact"]),
        });
    }
    body.push_str(&Chart { id: "loss".into(), title: "loss".into(), curves: loss, log: true, fixed: None }.render());
    if exact.iter().any(|c| !c.points.is_empty()) {
        let title = "all fields exact at checkpoints (share of eval records)".to_string();
        body.push_str(&Chart { id: "eval".into(), title, curves: exact, log: false, fixed: Some((0.0, 1.0)) }.render());
    }

    let mut header = vec!["setting".to_string()];
    header.extend(names.iter().cloned());
    let rows = setting_rows(runs);
    let marks: Vec<bool> = rows.iter().map(|r| differs(&r.1)).collect();
    let cells: Vec<Vec<String>> = rows.into_iter().map(|(k, c)| std::iter::once(k).chain(c).collect()).collect();
    let n = marks.iter().filter(|d| **d).count();
    body.push_str(&format!("<h2>Settings</h2><p>{n} setting(s) differ (highlighted).</p>"));
    body.push_str(&page::table("settings", &header, &cells, &marks));

    let summaries: Vec<Vec<(String, String)>> = runs.iter().map(|r| r.summary.as_ref().map(settings::summary_rows).unwrap_or_default()).collect();
    let mut labels: Vec<String> = Vec::new();
    for rows in &summaries {
        for (k, _) in rows {
            if !labels.contains(k) {
                labels.push(k.clone());
            }
        }
    }
    let mut header = vec!["result".to_string()];
    header.extend(names.iter().cloned());
    let cells: Vec<Vec<String>> = labels
        .iter()
        .map(|l| std::iter::once(l.clone()).chain(summaries.iter().map(|rows| rows.iter().find(|r| &r.0 == l).map_or("–".into(), |r| r.1.clone()))).collect())
        .collect();
    body.push_str("<h2>Results</h2>");
    body.push_str(&page::table("results", &header, &cells, &[]));
    page::page(super::COMPARE_TITLE, &body)
}

#[cfg(test)]
mod tests {
    use super::super::load_run;
    use super::super::tests::fixture;
    use super::*;

    #[test]
    fn compare_puts_every_run_on_the_charts_and_highlights_the_settings_that_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fixture(&a, "lora", 1e-4, 100, 50, true);
        fixture(&b, "full", 3e-4, 150, 50, true);
        let runs = [load_run(&a).unwrap(), load_run(&b).unwrap()];
        let rows = setting_rows(&runs);
        let row = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.1.clone()).unwrap();
        assert_eq!(row("learning_rate"), ["1e-4", "3e-4"]);
        assert_eq!(row("r"), ["8", "–"], "a full run has no LoRA rank");
        assert!(differs(&row("learning_rate")) && differs(&row("method")) && !differs(&row("seed")));
        let html = compare_html(&runs);
        assert_eq!(html.matches("<tr class='differs'>").count(), rows.iter().filter(|r| differs(&r.1)).count());
        let lr = html.find(">learning_rate<").unwrap();
        assert!(html[..lr].ends_with("<tr class='differs'><td"), "the learning rate row is highlighted");
        let seed = html.find(">seed<").unwrap();
        assert!(html[..seed].ends_with("<tr><td"), "the seed row is not");
        for curve in ["a train", "b train", "a eval", "b eval", "a all fields exact"] {
            assert!(html.contains(&format!("{}/{curve}", dir.path().display())), "{curve} missing");
        }
    }
}
