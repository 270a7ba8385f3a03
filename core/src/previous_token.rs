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
//!
//! Its tests are in [`crate::weights`], beside the random init that draws it (a test here would
//! import the init that imports this).

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
