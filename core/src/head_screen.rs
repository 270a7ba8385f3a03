//! Greedy decoding at batch 1 on the CPU through an int8 copy of the output layer, giving the
//! tokens of the f32 layer. Decoding one row reads every weight once, and with int8 projections
//! the f32 output layer (151,936 × 1,024 on Qwen3-0.6B, 622 MB) is more than half of the bytes
//! of a step. The copy (one i8 per weight, one f32 scale per 32, 175 MB, made on the first
//! greedy step) is read instead. Each
//! row's screened logit is within `max scale / 2 · ‖x‖₁` of its f32 logit (a weight rounds by
//! at most half its block's scale), so every token whose f32 logit may be the largest is kept and
//! computed again from its f32 row with the same dot product the whole layer uses; the largest
//! of those, lowest id first on a tie, is the f32 layer's argmax. Sampling needs every
//! probability and keeps the f32 layer, as do training and the loss.

use std::fmt;
use std::sync::OnceLock;

/// Weights per scale.
const BLOCK: usize = 32;

/// The int8 copy of an output layer `[rows, cols]`.
pub struct HeadScreen {
    values: Vec<i8>,
    scales: Vec<f32>,
    /// Half of each row's largest block scale: the row's rounding bound per unit of `‖x‖₁`.
    half_max_scale: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl fmt::Debug for HeadScreen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeadScreen {{ rows: {}, cols: {} }}", self.rows, self.cols)
    }
}

/// A model's screen, made on first use: loads that never decode greedily at batch 1 (extraction,
/// evaluation, the service) neither spend the quantization at start-up nor hold the copy.
#[derive(Debug, Default)]
pub struct LazyScreen(OnceLock<Option<HeadScreen>>);

impl LazyScreen {
    /// The screen, made by `make` the first time (`None` when it cannot be made).
    pub fn get_or_make(&self, make: impl FnOnce() -> Option<HeadScreen>) -> Option<&HeadScreen> {
        self.0.get_or_init(make).as_ref()
    }
}

impl HeadScreen {
    /// Whether a layer of `cols` columns can be screened (32 divides its rows).
    pub fn fits(cols: usize) -> bool {
        cols > 0 && cols.is_multiple_of(BLOCK)
    }

    /// Quantizes `w` `[rows, cols]` (row-major): symmetric, one scale per 32 consecutive weights of
    /// a row. `None` when 32 does not divide `cols` or a weight is not finite.
    pub fn new(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !Self::fits(cols) || w.len() != rows * cols || !w.iter().all(|v| v.is_finite()) {
            return None;
        }
        let mut values = vec![0i8; w.len()];
        let mut scales = vec![0f32; w.len() / BLOCK];
        for ((block, q), s) in w.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)).zip(&mut scales) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = max / 127.0;
            if max > 0.0 {
                for (q, v) in q.iter_mut().zip(block) {
                    *q = (v / *s).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        // A rounded weight is within half a scale of the weight. Both dot products also round in
        // f32, each by at most cols·ε·Σ|x·w| ≤ cols·ε·127·scale·‖x‖₁ (and `v / s` by less): that
        // much again per product widens the bound.
        let slack = 1.0 + 4.0 * cols as f32 * f32::EPSILON * 127.0;
        let half_max_scale = scales.chunks_exact(cols / BLOCK).map(|r| 0.5 * slack * r.iter().fold(0f32, |m, &s| m.max(s))).collect();
        Some(Self { values, scales, half_max_scale, rows, cols })
    }

    /// The rows (token ids, ascending) whose f32 logit for `x` `[cols]` may be the largest.
    pub fn candidates(&self, x: &[f32]) -> Option<Vec<u32>> {
        if x.len() != self.cols {
            return None;
        }
        let approx = self.logits(x)?;
        // Summing ‖x‖₁ rounds too, by far less than the slack.
        let norm1: f32 = x.iter().map(|v| v.abs()).sum::<f32>() * (1.0 + 1e-4);
        let bound = |v: usize| self.half_max_scale[v] * norm1;
        let floor = approx.iter().enumerate().map(|(v, a)| a - bound(v)).fold(f32::NEG_INFINITY, f32::max);
        if !floor.is_finite() {
            return None;
        }
        Some((0..self.rows).filter(|&v| approx[v] + bound(v) >= floor).map(|v| v as u32).collect())
    }

    /// The screened logits `[rows]`.
    fn logits(&self, x: &[f32]) -> Option<Vec<f32>> {
        crate::qmatmul::matmul_t(x, 1, self.cols, &self.values, self.rows, &self.scales, BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// On random layers and inputs (scaled so that many logits crowd the top), the candidates
    /// always hold the f32 argmax, and are few.
    #[test]
    fn candidates_hold_the_f32_argmax() {
        let mut rng = StdRng::seed_from_u64(3);
        let (rows, cols) = (5000, 256);
        let mut total = 0;
        for trial in 0..40 {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-0.05f32..0.05)).collect();
            let screen = HeadScreen::new(&w, rows, cols).unwrap();
            let spread = [0.01f32, 1.0, 30.0][trial % 3];
            let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-spread..spread)).collect();
            let exact: Vec<f32> = w.chunks_exact(cols).map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum()).collect();
            let best = (0..rows).fold(0, |b, v| if exact[v] > exact[b] { v } else { b });
            let c = screen.candidates(&x).unwrap();
            assert!(c.contains(&(best as u32)), "trial {trial}: argmax {best} not among {} candidates", c.len());
            assert!(c.windows(2).all(|p| p[0] < p[1]));
            total += c.len();
        }
        assert!(total < 40 * rows / 10, "{total} candidates over 40 trials of {rows} rows");
        assert!(HeadScreen::new(&[0.0; 31], 1, 31).is_none());
        assert!(HeadScreen::new(&[f32::NAN; 32], 1, 32).is_none());
    }
}
