//! Curves out of `metrics.jsonl`, thinned for the page: a 10,000-step run would otherwise put
//! tens of thousands of points per curve into the file and into the browser's SVG.

use serde_json::Value;

/// Points kept per curve at most; more are thinned by `thin`.
pub const MAX_POINTS: usize = 2000;

/// (step, value) of every line carrying `key` as a number (nested keys: `["eval_per_field", "name", "exact"]`).
pub fn series(metrics: &[Value], path: &[&str]) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter_map(|m| {
            let v = path.iter().try_fold(m, |v, k| v.get(k))?;
            Some((m.get("step")?.as_f64()?, v.as_f64()?))
        })
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// A curve as drawn: `points` (every point, or per bucket its first, lowest, highest and last
/// one in step order, so spikes and the envelope survive) and, when thinned, `means` (one
/// (mean step, mean value) per bucket) which smoothing runs over so that it averages what the
/// buckets held rather than their extremes.
#[derive(Debug, Clone, PartialEq)]
pub struct Thinned {
    pub points: Vec<(f64, f64)>,
    pub means: Option<Vec<(f64, f64)>>,
}

/// At most `max` points (max ≥ 8) out of `points`.
pub fn thin(points: &[(f64, f64)], max: usize) -> Thinned {
    if points.len() <= max {
        return Thinned { points: points.to_vec(), means: None };
    }
    // Up to four points a bucket.
    let buckets = (max / 4).max(2);
    let size = points.len().div_ceil(buckets);
    let mut kept = Vec::with_capacity(max);
    let mut means = Vec::with_capacity(buckets);
    for chunk in points.chunks(size) {
        let lowest = (0..chunk.len()).min_by(|&a, &b| chunk[a].1.total_cmp(&chunk[b].1)).unwrap_or(0);
        let highest = (0..chunk.len()).max_by(|&a, &b| chunk[a].1.total_cmp(&chunk[b].1)).unwrap_or(0);
        let mut picks = [0, lowest, highest, chunk.len() - 1];
        picks.sort_unstable();
        let mut last = usize::MAX;
        for i in picks {
            if i != last {
                kept.push(chunk[i]);
                last = i;
            }
        }
        let n = chunk.len() as f64;
        means.push((chunk.iter().map(|p| p.0).sum::<f64>() / n, chunk.iter().map(|p| p.1).sum::<f64>() / n));
    }
    Thinned { points: kept, means: Some(means) }
}

/// The usual distance between consecutive steps (1 for per-step curves, the checkpoint interval
/// for eval curves): the page's smoothing weighs a gap of `unit` steps as one point.
pub fn unit(points: &[(f64, f64)]) -> f64 {
    let mut gaps: Vec<f64> = points.windows(2).map(|w| w[1].0 - w[0].0).filter(|g| *g > 0.0).collect();
    if gaps.is_empty() {
        return 1.0;
    }
    gaps.sort_by(f64::total_cmp);
    gaps[gaps.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn series_take_the_lines_that_carry_the_key() {
        let m = vec![
            json!({"step": 1, "loss": 2.5}),
            json!({"step": 2, "eval_loss": 1.5, "eval_per_field": {"name": {"exact": 0.5}}}),
            json!({"step": 3, "loss": "nan"}),
            json!({"loss": 1.0}),
        ];
        assert_eq!(series(&m, &["loss"]), [(1.0, 2.5)]);
        assert_eq!(series(&m, &["eval_per_field", "name", "exact"]), [(2.0, 0.5)]);
        assert_eq!(series(&m, &["eval_per_field", "email", "exact"]), []);
    }

    #[test]
    fn thinning_keeps_ends_extremes_and_means_within_the_limit() {
        let pts: Vec<(f64, f64)> = (1..=10_000).map(|s| (s as f64, 1.0 / s as f64 + if s == 7777 { 5.0 } else { 0.0 })).collect();
        let t = thin(&pts, MAX_POINTS);
        assert!(t.points.len() <= MAX_POINTS, "{} points", t.points.len());
        assert_eq!(t.points.first(), pts.first());
        assert_eq!(t.points.last(), pts.last());
        assert!(t.points.contains(&(7777.0, 1.0 / 7777.0 + 5.0)), "the spike survives");
        assert!(t.points.windows(2).all(|w| w[0].0 < w[1].0), "in step order");
        let means = t.means.unwrap();
        let total: f64 = pts.iter().map(|p| p.1).sum();
        let size = 10_000usize.div_ceil(MAX_POINTS / 4) as f64;
        let approx: f64 = means.iter().map(|m| m.1 * size).sum();
        assert!((approx - total).abs() / total < 1e-9, "bucket means add back up to the sum");
        let short = [(1.0, 1.0), (2.0, 2.0)];
        assert_eq!(thin(&short, MAX_POINTS), Thinned { points: short.to_vec(), means: None });
    }

    #[test]
    fn the_unit_is_the_usual_step_gap() {
        assert_eq!(unit(&[(50.0, 1.0), (100.0, 1.0), (150.0, 1.0), (160.0, 1.0)]), 50.0);
        assert_eq!(unit(&[(1.0, 1.0)]), 1.0);
    }
}
