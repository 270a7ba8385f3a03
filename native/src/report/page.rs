//! The HTML shell every report shares: one file with its style and script inline, so it opens
//! offline and can be mailed or archived as it is.

use super::escape;

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// The smoothing slider (TensorBoard's default weight, 0.6); it applies to every per-step curve.
pub fn smoothing_control() -> String {
    "<div class='controls'><label for='smoothing'>smoothing</label>\
     <input type='range' id='smoothing' min='0' max='0.99' step='0.01' value='0.6'>\
     <output id='smoothing-value'>0.60</output></div>"
        .into()
}

pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width,initial-scale=1'>\
         <title>{}</title><style>{CSS}</style></head><body>{body}<script>{JS}</script></body></html>\n",
        escape(title)
    )
}

/// A table: a header row (empty: none) and rows of cells; `differs[i]` marks row i.
pub fn table(class: &str, header: &[String], rows: &[Vec<String>], differs: &[bool]) -> String {
    let mut html = format!("<table class='{class}'>");
    if !header.is_empty() {
        html.push_str("<thead><tr>");
        for h in header {
            html.push_str(&format!("<th>{}</th>", escape(h)));
        }
        html.push_str("</tr></thead>");
    }
    html.push_str("<tbody>");
    for (i, row) in rows.iter().enumerate() {
        html.push_str(if differs.get(i).copied().unwrap_or(false) { "<tr class='differs'>" } else { "<tr>" });
        for (j, cell) in row.iter().enumerate() {
            html.push_str(if j == 0 { "<td>" } else { "<td class='num'>" });
            html.push_str(&escape(cell));
            html.push_str("</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}
