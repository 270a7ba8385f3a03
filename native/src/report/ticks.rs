//! Axis ticks and the rounding of figures: 1-2-5 steps on linear axes, decades (with 2 and 5
//! labelled when the axis spans few of them) on log axes, and numbers cut to the digits that
//! matter. Labels are made from the step, so two ticks never read the same.

/// One mark on an axis; an empty label is a minor mark.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: String,
}

/// An axis: the domain drawn (data range widened to round numbers) and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<Tick>,
}

/// `v` rounded to `sig` significant digits, in plain decimals between 1e-4 and 1e6 and in
/// scientific notation outside, without trailing zeros (`0.022380830720067024` → `0.02238`).
pub fn fmt_sig(v: f64, sig: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sig = sig.max(1);
    let exp = v.abs().log10().floor() as i32;
    let text = if (-4..6).contains(&exp) {
        let decimals = (sig as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}"))
    } else {
        let s = format!("{v:.prec$e}", prec = sig - 1);
        match s.split_once('e') {
            Some((mantissa, e)) => format!("{}e{e}", trim_zeros(mantissa)),
            None => s,
        }
    };
    if text == "-0" {
        "0".into()
    } else {
        text
    }
}

/// A measured figure as the report prints it: four significant digits.
pub fn fmt_figure(v: f64) -> String {
    fmt_sig(v, 4)
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about `target` intervals over `span`.
pub fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Labels for ticks `step` apart: as many significant digits as the largest needs to show
/// the step's last digit.
fn label_for(v: f64, step: f64, largest: f64) -> String {
    if v.abs() < step * 1e-9 {
        return "0".into();
    }
    let digits = largest.abs().log10().floor() - step.log10().floor() + 1.0;
    fmt_sig(v, digits.max(1.0) as usize)
}

/// A linear axis over [lo, hi] with about `target` intervals, its ends on multiples of the step.
pub fn linear(lo: f64, hi: f64, target: usize) -> Axis {
    let (lo, hi) = widen(lo, hi);
    let step = nice_step(hi - lo, target);
    let (first, last) = ((lo / step + 1e-9).floor() as i64, (hi / step - 1e-9).ceil() as i64);
    let (lo, hi) = (first as f64 * step, last as f64 * step);
    let largest = lo.abs().max(hi.abs());
    let ticks = (first..=last)
        .map(|i| {
            let value = i as f64 * step;
            Tick { value, label: label_for(value, step, largest) }
        })
        .collect();
    Axis { lo, hi, ticks }
}

/// A non-empty range around a single value.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else if lo == 0.0 {
        (0.0, 1.0)
    } else {
        let d = lo.abs() * 0.1;
        (lo - d, hi + d)
    }
}

/// The 1-2-5 multiples of powers of ten: the round numbers of a log axis.
fn round_below(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0].iter().map(|m| m * mag).find(|c| *c <= v * (1.0 + 1e-9)).unwrap_or(mag)
}

fn round_above(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|c| *c >= v * (1.0 - 1e-9)).unwrap_or(10.0 * mag)
}

/// A log axis over [lo, hi] (both > 0): the ends on 1-2-5 numbers, a mark at every m·10^k,
/// labels on the decades, also on 2 and 5 when fewer than three decades show. A range under a
/// factor of 3 gets linear ticks instead (placed on the log scale): there round numbers of a
/// log axis would leave the data a sliver. `None` when lo is not positive.
pub fn log(lo: f64, hi: f64) -> Option<Axis> {
    if !(lo > 0.0 && hi.is_finite()) {
        return None;
    }
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo * 0.9, hi * 1.1) };
    if hi / lo < 3.0 {
        let mut axis = linear(lo, hi, 4);
        if axis.lo <= 0.0 {
            axis.lo = lo;
            axis.ticks.retain(|t| t.value >= lo);
        }
        return Some(axis);
    }
    let (lo, hi) = (round_below(lo), round_above(hi));
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let inside = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let marks: Vec<(f64, u32, i32)> =
        (k0..=k1).flat_map(|k| (1..=9).map(move |m| (m as f64 * 10f64.powi(k), m, k))).filter(|(v, _, _)| inside(*v)).collect();
    let decades = marks.iter().filter(|(_, m, _)| *m == 1).count();
    let labelled: &[u32] = if decades >= 3 { &[1] } else { &[1, 2, 5] };
    let ticks = marks
        .iter()
        .map(|&(value, m, k)| Tick { value, label: if labelled.contains(&m) { decade_label(m, k) } else { String::new() } })
        .collect();
    Some(Axis { lo, hi, ticks })
}

/// m·10^k written exactly (`0.002`, `50`, `1e-6`).
fn decade_label(m: u32, k: i32) -> String {
    if (-4..6).contains(&k) {
        fmt_sig(m as f64 * 10f64.powi(k), 1)
    } else {
        format!("{m}e{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<&str> {
        axis.ticks.iter().map(|t| t.label.as_str()).filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn figures_keep_four_significant_digits_and_no_trailing_zeros() {
        assert_eq!(fmt_figure(0.022380830720067024), "0.02238");
        assert_eq!(fmt_figure(7.912345), "7.912");
        assert_eq!(fmt_figure(1234.56), "1235");
        assert_eq!(fmt_figure(0.5), "0.5");
        assert_eq!(fmt_figure(2.0), "2");
        assert_eq!(fmt_figure(0.0000224), "2.24e-5");
        assert_eq!(fmt_figure(12345678.0), "1.235e7");
        assert_eq!(fmt_figure(-0.00012346), "-0.0001235");
        assert_eq!(fmt_figure(0.0), "0");
    }

    #[test]
    fn linear_ticks_step_by_1_2_5_and_never_repeat_a_label() {
        // The loss axis: 7.9 down to 0.002.
        let a = linear(0.002, 7.9, 5);
        assert_eq!(labels(&a), ["0", "2", "4", "6", "8"]);
        assert_eq!((a.lo, a.hi), (0.0, 8.0));
        // A narrow range that once printed `0.002` twice.
        let a = linear(0.0021, 0.0029, 5);
        assert_eq!(labels(&a), ["0.002", "0.0022", "0.0024", "0.0026", "0.0028", "0.003"]);
        for (lo, hi) in [(0.0, 10000.0), (1.0, 317.0), (0.12345, 0.12346), (-3.0, 4.5), (1e-9, 3e-9), (5.0, 5.0)] {
            let a = linear(lo, hi, 6);
            let l = labels(&a);
            let mut unique = l.clone();
            unique.dedup();
            assert_eq!(l, unique, "{lo}..{hi}: {l:?}");
            assert!(a.lo <= lo && a.hi >= hi && (3..=12).contains(&l.len()), "{lo}..{hi}: {a:?}");
        }
        assert_eq!(labels(&linear(1.0, 10000.0, 6)), ["0", "2000", "4000", "6000", "8000", "10000"]);
    }

    #[test]
    fn log_ticks_label_decades_and_add_2_and_5_over_short_ranges() {
        let a = log(0.002, 7.9).unwrap();
        assert!((a.lo - 0.002).abs() < 1e-15 && (a.hi - 10.0).abs() < 1e-12, "{a:?}");
        assert_eq!(labels(&a), ["0.01", "0.1", "1", "10"]);
        assert!(a.ticks.iter().any(|t| t.label.is_empty() && (t.value - 0.05).abs() < 1e-12), "minor marks between decades");
        let a = log(0.03, 0.9).unwrap();
        assert_eq!(labels(&a), ["0.02", "0.05", "0.1", "0.2", "0.5", "1"]);
        let a = log(0.31, 0.95).unwrap();
        assert_eq!(labels(&a), ["0.2", "0.5", "1"]);
        assert_eq!(labels(&log(1e-7, 2e-5).unwrap()), ["1e-7", "1e-6", "1e-5"]);
        // Under a factor of 3: linear ticks hugging the data, still on a log scale.
        let a = log(1.001, 1.002).unwrap();
        assert!(a.lo <= 1.001 + 1e-12 && a.lo > 1.0 && a.hi >= 1.002 && a.hi < 1.003 && labels(&a).len() >= 3, "{a:?}");
        let a = log(0.11, 0.3).unwrap();
        assert!(a.lo > 0.0 && a.lo <= 0.11 && a.hi >= 0.3 && labels(&a).len() >= 3, "{a:?}");
        assert_eq!(log(0.0, 1.0), None);
        assert_eq!(log(-1.0, 1.0), None);
    }
}
