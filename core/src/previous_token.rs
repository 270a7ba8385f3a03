//! An initialisation that starts a from-scratch model with a previous-token head: layer 0's
//! first query head attends from each position to the one before it.
//!
//! Extraction is copying: a value is a span of the input, and a transformer copies a span with
//! an induction circuit, a head that finds where the current token stood in the text and reads
//! the token after it. That circuit needs a previous-token head below it (each position must
//! carry which token preceded it), and from random weights gradient descent finds one late and at
//! a step that moves by hundreds with the seed (BENCHMARKS.md: the quickstart's eval loss stayed
//! near 1 until step 750 on one seed and 1,500 on another). Starting with the previous-token
//! head leaves only the induction head to learn.
//!
//! Attention by position alone needs a query and a key that do not depend on the token: every
//! embedding row gets the same component along the last hidden dimension, and layer 0's first
//! key head and first query head read it into a few rotary pairs. RoPE turns a query at
//! position i and a key at j by their positions, so with the query set to the key turned back by
//! one position (per pair p, θ_p = rope_theta^(−2p/head_dim): key (c_p, 0), query
//! c_p (cos θ_p, −sin θ_p), rotate-half layout), the score is Σ_p c_p² cos((j − i + 1) θ_p),
//! largest at j = i − 1. The query/key norm weights of those pairs start at 2 (so the head's
//! scores are sharp enough to pick one position) instead of 1. With tied embeddings the shared
//! component adds the same amount to every logit, which changes no probability.

/// The constant added to every embedding row along the last hidden dimension (the random part
/// of a row has norm 0.02·√hidden, 0.23 for hidden 128).
const SHARED: f32 = 0.3;
/// How much of the normalised shared component the designed query and key heads read.
const READ: f32 = 1.0;
/// The query/key norm weight of the rotary pairs the head uses.
const GAIN: f32 = 2.0;
/// Energy of the query/key in the first rotary pairs (fastest first; they sum to 1). Found by a random search
/// maximising, over distances up to 400, the gap between the score of the previous position and
/// the best other one, for head_dim 32 and rope_theta 10⁴ (the gap is 0.23 of the score's
/// range); on head_dim 64 / 128 and rope_theta 10⁶ the same weights keep a gap of 0.19–0.24.
const PAIRS: [f32; 6] = [0.448, 0.119, 0.147, 0.056, 0.067, 0.163];

/// Where the head goes: the model's attention head size and rotary base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviousTokenHead {
    pub head_dim: usize,
    pub rope_theta: f64,
}

impl PreviousTokenHead {
    fn pairs(&self) -> usize {
        PAIRS.len().min(self.head_dim / 2)
    }

    /// Adds the head to a freshly drawn tensor `name` of `shape` (others are left alone).
    pub fn apply(&self, name: &str, shape: &[usize], values: &mut [f32]) {
        let Some(&hidden) = shape.last() else { return };
        let shared = hidden - 1;
        let weights = PAIRS[..self.pairs()].iter().map(|w| w.sqrt());
        match name {
            "model.embed_tokens.weight" => values.chunks_mut(hidden).for_each(|row| row[shared] += SHARED),
            // The first key head: rows 0..head_dim of k_proj; (c_p, 0) in pair p.
            "model.layers.0.self_attn.k_proj.weight" => {
                for (p, c) in weights.enumerate() {
                    values[p * hidden + shared] += READ * c;
                }
            }
            // The first query head: the key turned back by one position.
            "model.layers.0.self_attn.q_proj.weight" => {
                for (p, c) in weights.enumerate() {
                    let theta = (self.rope_theta as f32).powf(-2.0 * p as f32 / self.head_dim as f32);
                    values[p * hidden + shared] += READ * c * theta.cos();
                    values[(p + self.head_dim / 2) * hidden + shared] -= READ * c * theta.sin();
                }
            }
            "model.layers.0.self_attn.q_norm.weight" | "model.layers.0.self_attn.k_norm.weight" => {
                for p in 0..self.pairs() {
                    values[p] = GAIN;
                    values[p + self.head_dim / 2] = GAIN;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Tensors drawn as the random init draws them (normal(0, 0.02), norm weights 1), with the
    /// head when given.
    struct Draw {
        rng: StdRng,
        head: Option<PreviousTokenHead>,
    }

    impl Draw {
        fn load(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
            let n = shape.iter().product();
            let mut values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let normal = Normal::new(0.0f32, 0.02).unwrap();
                (0..n).map(|_| normal.sample(&mut self.rng)).collect()
            };
            if let Some(head) = &self.head {
                head.apply(name, shape, &mut values);
            }
            values
        }
    }

    /// RMSNorm without weight, then `w`.
    fn norm(x: &[f32], w: &[f32]) -> Vec<f32> {
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-6).sqrt();
        x.iter().zip(w).map(|(v, g)| v / rms * g).collect()
    }

    /// Head 0 of layer 0's attention over a random token sequence, as transformers' Qwen3
    /// computes it (RMSNorm, q/k projections, per-head q/k norms, rotate-half RoPE, causal
    /// softmax): the mean weight each position from the 10th on puts on the one before it.
    fn attention_on_previous(init: &mut Draw, hidden: usize, head_dim: usize, heads: usize, kv: usize, theta: f64) -> f32 {
        let vocab = 300;
        let embed = init.load("model.embed_tokens.weight", &[vocab, hidden]);
        let q_proj = init.load("model.layers.0.self_attn.q_proj.weight", &[heads * head_dim, hidden]);
        let k_proj = init.load("model.layers.0.self_attn.k_proj.weight", &[kv * head_dim, hidden]);
        let q_norm = init.load("model.layers.0.self_attn.q_norm.weight", &[head_dim]);
        let k_norm = init.load("model.layers.0.self_attn.k_norm.weight", &[head_dim]);
        let ones = vec![1.0; hidden];
        let t = 80;
        let tokens: Vec<usize> = (0..t).map(|i| (i * 7919 + 13) % vocab).collect();
        let project = |w: &[f32], x: &[f32]| -> Vec<f32> { (0..head_dim).map(|r| w[r * hidden..(r + 1) * hidden].iter().zip(x).map(|(a, b)| a * b).sum()).collect() };
        let rope = |v: &[f32], pos: usize| -> Vec<f32> {
            let h = head_dim / 2;
            let mut out = v.to_vec();
            for p in 0..h {
                let angle = pos as f64 * theta.powf(-2.0 * p as f64 / head_dim as f64);
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                out[p] = v[p] * c - v[p + h] * s;
                out[p + h] = v[p + h] * c + v[p] * s;
            }
            out
        };
        let (mut q, mut k) = (Vec::new(), Vec::new());
        for (i, &tok) in tokens.iter().enumerate() {
            let x = norm(&embed[tok * hidden..(tok + 1) * hidden], &ones);
            q.push(rope(&norm(&project(&q_proj, &x), &q_norm), i));
            k.push(rope(&norm(&project(&k_proj, &x), &k_norm), i));
        }
        let mut total = 0.0;
        for i in 10..t {
            let scores: Vec<f32> = (0..=i).map(|j| q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f32>() / (head_dim as f32).sqrt()).collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            total += (scores[i - 1] - max).exp() / sum;
        }
        total / (t - 10) as f32
    }

    /// With the head, layer 0's first head attends to the previous position (over 0.9 of its
    /// weight), on the quickstart's shape and on a Qwen3-0.6B-like head (128, rotary base 10⁶);
    /// the plain random init spreads its attention (under 0.2).
    #[test]
    fn the_first_head_attends_to_the_previous_position() {
        for (hidden, head_dim, heads, kv, theta) in [(128, 32, 4, 2, 1e4), (256, 128, 2, 1, 1e6)] {
            let mut plain = Draw { rng: StdRng::seed_from_u64(3), head: None };
            let before = attention_on_previous(&mut plain, hidden, head_dim, heads, kv, theta);
            let mut init = Draw { rng: StdRng::seed_from_u64(3), head: Some(PreviousTokenHead { head_dim, rope_theta: theta }) };
            let after = attention_on_previous(&mut init, hidden, head_dim, heads, kv, theta);
            eprintln!("head_dim {head_dim}: attention on the previous position {before:.3} plain, {after:.3} with the head");
            assert!(before < 0.2, "head_dim {head_dim}: plain init {before}");
            assert!(after > 0.9, "head_dim {head_dim}: with the head {after}");
        }
    }
}
