//! One chart of a report: the frame and both y axes (linear and log, one shown at a time) as
//! inline SVG, and the curves as JSON that the page's script draws, smooths and reads out on
//! hover. Axes are computed here from the raw data, so smoothing never moves them and the
//! tick rules live in one place (`ticks.rs`).

use std::fmt::Write as _;

use super::escape;
use super::series::{thin, unit, MAX_POINTS};
use super::ticks::{self, fmt_sig, Axis};

/// The SVG's coordinate system; the plot box travels in the chart's JSON for the page script.
const W: f64 = 720.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 28.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 38.0;

pub struct Curve {
    pub name: String,
    pub color: String,
    pub dashed: bool,
    /// Whether the smoothing slider applies (per-step curves, not checkpoint evaluations).
    pub smooth: bool,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    /// The figure's id, `chart-{id}`.
    pub id: String,
    pub title: String,
    pub curves: Vec<Curve>,
    /// Open on the log axis (when the data allow one).
    pub log: bool,
    /// A fixed y range (rates in [0, 1]) instead of the data's; no log axis then.
    pub fixed: Option<(f64, f64)>,
}

/// A number for the embedded JSON: integers whole, others to 6 significant digits.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        fmt_sig(v, 6)
    }
}

fn pairs(points: &[(f64, f64)]) -> String {
    let items: Vec<String> = points.iter().map(|(x, y)| format!("[{},{}]", num(*x), num(*y))).collect();
    format!("[{}]", items.join(","))
}

fn y_of(axis: &Axis, v: f64, log: bool) -> f64 {
    let f = |v: f64| if log { v.log10() } else { v };
    TOP + (H - TOP - BOTTOM) * (1.0 - (f(v) - f(axis.lo)) / (f(axis.hi) - f(axis.lo)))
}

fn y_ticks(svg: &mut String, class: &str, axis: &Axis, log: bool) {
    let _ = write!(svg, "<g class='ax {class}'>");
    for t in &axis.ticks {
        let y = y_of(axis, t.value, log);
        if t.label.is_empty() {
            let _ = write!(svg, "<line class='minor' x1='{}' x2='{LEFT}' y1='{y:.1}' y2='{y:.1}'/>", LEFT - 4.0);
        } else {
            let _ = write!(
                svg,
                "<line class='grid' x1='{LEFT}' x2='{}' y1='{y:.1}' y2='{y:.1}'/><text x='{}' y='{:.1}' text-anchor='end'>{}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                escape(&t.label)
            );
        }
    }
    svg.push_str("</g>");
}

impl Chart {
    /// The figure, or a line saying there is nothing to draw.
    pub fn render(&self) -> String {
        let all: Vec<(f64, f64)> = self.curves.iter().flat_map(|c| c.points.iter().copied()).collect();
        if all.is_empty() {
            return format!("<p class='empty'>{}: no data yet</p>", escape(&self.title));
        }
        let fold = |f: fn(&(f64, f64)) -> f64| all.iter().map(f).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (x0, x1) = fold(|p| p.0);
        let (y0, y1) = self.fixed.unwrap_or_else(|| fold(|p| p.1));
        let x = ticks::linear(x0, x1, 6);
        let lin = match self.fixed {
            Some((lo, hi)) => ticks::linear(lo, hi, 5),
            None => ticks::linear(y0, y1, 5),
        };
        let positive = all.iter().map(|p| p.1).filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
        let log = if self.fixed.is_none() && positive < f64::MAX { ticks::log(positive, y1) } else { None };
        let scale = if self.log && log.is_some() { "log" } else { "lin" };

        let mut svg = format!("<svg viewBox='0 0 {W} {H}' role='img' aria-label='{}'>", escape(&self.title));
        let _ = write!(svg, "<g class='ax ax-x'>");
        for t in &x.ticks {
            let px = LEFT + (t.value - x.lo) / (x.hi - x.lo) * (W - LEFT - RIGHT);
            let _ = write!(
                svg,
                "<line class='grid' x1='{px:.1}' x2='{px:.1}' y1='{TOP}' y2='{}'/><text x='{px:.1}' y='{}' text-anchor='middle'>{}</text>",
                H - BOTTOM,
                H - BOTTOM + 16.0,
                escape(&t.label)
            );
        }
        let _ = write!(svg, "<text class='unit' x='{}' y='{}' text-anchor='end'>step</text></g>", W - RIGHT, H - 4.0);
        y_ticks(&mut svg, "ax-lin", &lin, false);
        if let Some(log) = &log {
            y_ticks(&mut svg, "ax-log", log, true);
        }
        let _ = write!(
            svg,
            "<rect class='frame' x='{LEFT}' y='{TOP}' width='{}' height='{}'/><g class='lines'></g>\
             <line class='guide' y1='{TOP}' y2='{}' x1='-10' x2='-10'/><g class='dots'></g></svg>",
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            H - BOTTOM
        );

        let mut data = format!(
            "{{\"box\":[{LEFT},{TOP},{},{}],\"x\":[{},{}],\"lin\":[{},{}],",
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            num(x.lo),
            num(x.hi),
            num(lin.lo),
            num(lin.hi)
        );
        match &log {
            Some(l) => {
                let _ = write!(data, "\"log\":[{},{}],", num(l.lo), num(l.hi));
            }
            None => data.push_str("\"log\":null,"),
        }
        data.push_str("\"curves\":[");
        let mut legend = String::new();
        for (i, c) in self.curves.iter().enumerate() {
            if c.points.is_empty() {
                continue;
            }
            let t = thin(&c.points, MAX_POINTS);
            let _ = write!(
                data,
                "{}{{\"name\":{},\"color\":{},\"dash\":{},\"smooth\":{},\"unit\":{},\"pts\":{},\"means\":{}}}",
                if data.ends_with('[') { "" } else { "," },
                serde_json::Value::from(c.name.as_str()),
                serde_json::Value::from(c.color.as_str()),
                c.dashed,
                c.smooth,
                num(unit(&c.points)),
                pairs(&t.points),
                t.means.as_deref().map_or_else(|| "null".into(), pairs),
            );
            let _ = write!(
                legend,
                "<span class='key{}' data-curve='{i}'><i style='border-color:{}'></i>{}</span>",
                if c.dashed { " dashed" } else { "" },
                escape(&c.color),
                escape(&c.name)
            );
        }
        data.push_str("]}");
        let toggle = if log.is_some() {
            format!(
                "<span class='scale'><button type='button' data-scale='log'{}>log</button><button type='button' data-scale='lin'{}>linear</button></span>",
                if scale == "log" { " class='on'" } else { "" },
                if scale == "lin" { " class='on'" } else { "" }
            )
        } else {
            String::new()
        };
        format!(
            "<figure class='chart {scale}' id='chart-{}' data-scale='{scale}'><figcaption>{}{toggle}</figcaption>{svg}\
             <div class='legend'>{legend}</div><div class='tip' hidden></div>\
             <script type='application/json' class='data'>{}</script></figure>",
            escape(&self.id),
            escape(&self.title),
            data.replace("</", "<\\/")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<(f64, f64)>, fixed: Option<(f64, f64)>) -> Chart {
        Chart {
            id: "loss".into(),
            title: "loss".into(),
            curves: vec![Curve { name: "train </script>".into(), color: "#1f77b4".into(), dashed: false, smooth: true, points }],
            log: true,
            fixed,
        }
    }

    fn data(html: &str) -> serde_json::Value {
        let start = html.find("class='data'>").unwrap() + "class='data'>".len();
        let end = html[start..].find("</script>").unwrap() + start;
        serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap()
    }

    #[test]
    fn a_loss_chart_opens_on_a_log_axis_with_both_axes_drawn() {
        let pts: Vec<(f64, f64)> = (1..=300).map(|s| (s as f64, 7.9 * (-(s as f64) / 30.0).exp() + 0.002)).collect();
        let html = chart(pts, None).render();
        assert!(html.contains("class='chart log'") && html.contains("data-scale='lin'"), "log first, a toggle to linear");
        for label in [">0.01<", ">0.1<", ">1<", ">10<", ">0<", ">8<", ">100<", ">300<"] {
            assert!(html.contains(label), "tick {label} missing");
        }
        let d = data(&html);
        assert_eq!(d["log"], serde_json::json!([0.002, 10]));
        assert_eq!(d["curves"][0]["name"], "train </script>", "names survive, escaped for the script tag");
        assert!(!html.contains("train </script>"));
        assert_eq!(d["curves"][0]["pts"].as_array().unwrap().len(), 300);
    }

    #[test]
    fn rates_have_a_fixed_linear_axis_and_empty_charts_say_so() {
        let html = chart(vec![(50.0, 0.25), (100.0, 0.5)], Some((0.0, 1.0))).render();
        assert!(html.contains("class='chart lin'") && !html.contains("data-scale='log'") && !html.contains("ax-log"));
        assert_eq!(data(&html)["lin"], serde_json::json!([0, 1]));
        assert_eq!(chart(vec![], None).render(), "<p class='empty'>loss: no data yet</p>");
        // Losses that are all zero or below cannot go on a log axis: linear only.
        let html = chart(vec![(1.0, 0.0), (2.0, 0.0)], None).render();
        assert!(html.contains("class='chart lin'") && data(&html)["log"].is_null());
    }
}
