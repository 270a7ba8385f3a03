//! Attention of a continuous-batching pass ([`crate::positions::RowPass`]) on the CPU, read
//! straight from the KV cache: each real query against its own row's keys up to itself, and
//! nothing else. Through burn's ops the same pass is a rectangle: every row's queries (padding
//! columns included) against the longest row's keys, a mask of `rows × columns × keys` added,
//! the softmax over all of it, and three copies to swap heads and rows; at batch 32 on the
//! quickstart model that was a third of a decoding pass, and a draft in one row made every
//! row pay its columns.

/// A 4-d view `[a, b, c, d]` of f32 values with element strides, the last one 1 (keys and
/// values: `d` for the third).
#[derive(Clone, Copy)]
pub(crate) struct View4<'a> {
    pub data: &'a [f32],
    pub start: usize,
    pub shape: [usize; 4],
    pub strides: [usize; 3],
}

impl View4<'_> {
    /// The `d` values at `[a, b, c, ..]`.
    fn at(&self, a: usize, b: usize, c: usize) -> &[f32] {
        let at = self.start + a * self.strides[0] + b * self.strides[1] + c * self.strides[2];
        &self.data[at..at + self.shape[3]]
    }

    /// The `n` first `[a, b, ..n, ..]` rows, which lie one after another (`strides[2] == d`).
    fn run(&self, a: usize, b: usize, n: usize) -> &[f32] {
        let at = self.start + a * self.strides[0] + b * self.strides[1];
        &self.data[at..at + n * self.shape[3]]
    }

    /// First element of `[a, b, c, ..]`, for gemm.
    pub(crate) fn ptr(&self, a: usize, b: usize, c: usize) -> *const f32 {
        self.data[self.start + a * self.strides[0] + b * self.strides[1] + c * self.strides[2]..].as_ptr()
    }

    /// Whether every element the view addresses lies in its buffer.
    pub(crate) fn fits(&self) -> bool {
        if self.shape.contains(&0) {
            return self.start <= self.data.len();
        }
        let last = self.shape[..3].iter().zip(&self.strides).try_fold(self.start + self.shape[3] - 1, |at, (&n, &s)| {
            (n - 1).checked_mul(s).and_then(|r| at.checked_add(r))
        });
        last.is_some_and(|l| l < self.data.len())
    }
}

/// Work (keys × head width × heads) under which one thread does the whole pass.
const PARALLEL_WORK: usize = 1 << 16;

/// `softmax(q·kᵀ · scale) · v` `[rows, heads, t, d]` for queries `q` `[rows, heads, t, d]` and
/// the pass's cache rows `k`, `v` `[rows, kv_heads, keys, d]`: query `i` of row `r` sees keys
/// `0..starts[r] + i + 1` of its row when `i < lens[r]`; padding queries give zeros (they are
/// never read). Query heads share a KV head in groups of `heads / kv_heads`, as in
/// transformers' `repeat_kv`. `exp` is given `x ≤ 0`. `None` when the shapes disagree or a
/// view reaches outside its buffer.
pub(crate) fn rows(q: View4, k: View4, v: View4, starts: &[usize], lens: &[usize], scale: f32, exp: impl Fn(f32) -> f32 + Copy + Sync) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    let [b, h, t, d] = q.shape;
    let kvh = k.shape[1];
    let fits = kvh > 0
        && h.is_multiple_of(kvh)
        && k.shape == v.shape
        && k.shape[0] == b
        && k.shape[3] == d
        && starts.len() == b
        && lens.len() == b
        && starts.iter().zip(lens).all(|(&s, &l)| l <= t && s + l <= k.shape[2])
        && [k, v].iter().all(|x| x.strides[2] == d)
        && [q, k, v].iter().all(View4::fits);
    if !fits {
        return None;
    }
    let mut out = vec![0f32; b * h * t * d];
    if t == 0 || d == 0 {
        return Some(out);
    }
    let groups = h / kvh;
    let task = |scores: &mut Vec<f32>, (i, dst): (usize, &mut [f32])| {
        let (r, head) = (i / h, i % h);
        let one = Head { q, k, v, r, head, kv: head / groups, start: starts[r], len: lens[r], scale };
        head_rows(one, exp, scores, dst);
    };
    let work: usize = starts.iter().zip(lens).map(|(s, l)| (s + l) * l).sum::<usize>() * d * h;
    if work >= PARALLEL_WORK {
        out.par_chunks_mut(t * d).enumerate().for_each_init(Vec::new, task);
    } else {
        let mut scores = Vec::new();
        out.chunks_mut(t * d).enumerate().for_each(|c| task(&mut scores, c));
    }
    Some(out)
}

/// One query head of one row: queries `q[r, head, ..len]` against keys and values
/// `[r, kv, ..start + len]`.
#[derive(Clone, Copy)]
struct Head<'a> {
    q: View4<'a>,
    k: View4<'a>,
    v: View4<'a>,
    r: usize,
    head: usize,
    kv: usize,
    start: usize,
    len: usize,
    scale: f32,
}

/// One query head of one row: `dst` `[t, d]`.
fn head_rows(one: Head, exp: impl Fn(f32) -> f32 + Copy, scores: &mut Vec<f32>, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has just said it runs AVX-512F.
        return unsafe { head_rows_avx512(one, exp, scores, dst) };
    }
    head_rows_portable(one, exp, scores, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn head_rows_avx512(one: Head, exp: impl Fn(f32) -> f32 + Copy, scores: &mut Vec<f32>, dst: &mut [f32]) {
    head_rows_portable(one, exp, scores, dst)
}

#[inline(always)]
fn head_rows_portable(one: Head, exp: impl Fn(f32) -> f32 + Copy, scores: &mut Vec<f32>, dst: &mut [f32]) {
    let Head { q, k, v, r, head, kv, start, len, scale } = one;
    let d = q.shape[3];
    // The row's keys and values of this head, one after another (checked by `rows`).
    let (keys, values) = (k.run(r, kv, start + len), v.run(r, kv, start + len));
    for (i, out) in dst.chunks_exact_mut(d).take(len).enumerate() {
        let query = q.at(r, head, i);
        let visible = start + i + 1;
        scores.clear();
        scores.extend(keys.chunks_exact(d).take(visible).map(|key| dot(query, key) * scale));
        // Each step its own loop over the scores, so that each is vectorised (a running sum or
        // maximum is one dependent operation per key).
        let max = lanes(scores, f32::NEG_INFINITY, |m, x| if x > m || x.is_nan() { x } else { m });
        scores.iter_mut().for_each(|s| *s = exp(*s - max));
        let sum = lanes(scores, 0.0, |a, x| a + x);
        scores.iter_mut().for_each(|s| *s /= sum);
        // A block of output columns at a time over all the keys, so that it stays in registers
        // (adding each key's row into `out` in memory waited on the previous store every time);
        // blocks of up to four vectors, so that the additions of one key do not wait on each
        // other either.
        let mut done = 0;
        if d.is_multiple_of(64) {
            done = weighted::<64>(scores, values, d, out);
        } else if d.is_multiple_of(32) {
            done = weighted::<32>(scores, values, d, out);
        } else if d >= 16 {
            done = weighted::<16>(scores, values, d, out);
        }
        for c in done..d {
            out[c] = scores.iter().zip(values.chunks_exact(d)).fold(0.0, |a, (&p, value)| a + p * value[c]);
        }
    }
}

/// `out[c] = Σ_j p[j] · values[j][c]` for the columns of whole blocks of `W`; returns how many
/// columns that is.
#[inline(always)]
fn weighted<const W: usize>(p: &[f32], values: &[f32], d: usize, out: &mut [f32]) -> usize {
    let whole = d - d % W;
    for (c, o) in out[..whole].chunks_exact_mut(W).enumerate() {
        let mut acc = [0f32; W];
        for (&p, value) in p.iter().zip(values.chunks_exact(d)) {
            let v = &value[c * W..c * W + W];
            for l in 0..W {
                acc[l] += p * v[l];
            }
        }
        o.copy_from_slice(&acc);
    }
    whole
}

/// `f` folded over `x` in sixteen lanes, then across them by halves.
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    for chunk in chunks {
        for l in 0..16 {
            acc[l] = f(acc[l], chunk[l]);
        }
    }
    for half in [8, 4, 2, 1] {
        for l in 0..half {
            acc[l] = f(acc[l], acc[l + half]);
        }
    }
    f(acc[0], tail)
}

/// A dot product in sixteen lanes, so that it is vectorised, summed by halves at the end
/// ([`lanes`]): a lane-by-lane sum is fifteen dependent additions per key.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16.remainder().iter().zip(b16.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a16.zip(b16) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    lanes(&acc, 0.0, |a, x| a + x) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(data: &[f32], shape: [usize; 4]) -> View4<'_> {
        View4 { data, start: 0, shape, strides: [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3]] }
    }

    /// The textbook formula, one query at a time in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], [b, h, t, d]: [usize; 4], (kvh, keys): (usize, usize), starts: &[usize], lens: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; b * h * t * d];
        let scale = (d as f64).powf(-0.5);
        for r in 0..b {
            for head in 0..h {
                let kv = head / (h / kvh);
                for i in 0..lens[r] {
                    let qi = &q[((r * h + head) * t + i) * d..][..d];
                    let key = |j: usize| &k[((r * kvh + kv) * keys + j) * d..][..d];
                    let val = |j: usize| &v[((r * kvh + kv) * keys + j) * d..][..d];
                    let s: Vec<f64> = (0..starts[r] + i + 1).map(|j| qi.iter().zip(key(j)).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale).collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        out[((r * h + head) * t + i) * d + c] = e.iter().enumerate().map(|(j, p)| p / z * val(j)[c] as f64).sum::<f64>() as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn each_query_sees_its_own_rows_keys_up_to_itself() {
        // Three rows: one feeding three new tokens after two cached, one feeding one after
        // eighteen (nineteen keys: sixteen lanes and a tail), one free; four query heads on two
        // KV heads; head width 20 (a sixteen-lane part and a tail). Keys beyond a row's length
        // hold large values: any leak shows.
        let ([b, h, t, d], kvh, keys) = ([3, 4, 3, 20], 2, 22);
        let (starts, lens) = ([2, 18, 0], [3, 1, 0]);
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin() * 1.7).collect::<Vec<f32>>();
        let q = wave(b * h * t * d, 0.37);
        let (mut k, mut v) = (wave(b * kvh * keys * d, 0.53), wave(b * kvh * keys * d, 0.71));
        for r in 0..b {
            for kv in 0..kvh {
                for j in starts[r] + lens[r]..keys {
                    let at = ((r * kvh + kv) * keys + j) * d;
                    k[at..at + d].fill(1e4);
                    v[at..at + d].fill(1e4);
                }
            }
        }
        let exact = |x: f32| x.exp();
        let got = rows(view(&q, [b, h, t, d]), view(&k, [b, kvh, keys, d]), view(&v, [b, kvh, keys, d]), &starts, &lens, (d as f32).powf(-0.5), exact).unwrap();
        let want = reference(&q, &k, &v, [b, h, t, d], (kvh, keys), &starts, &lens);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "element {i}: {g} against {w}");
        }
        // Padding queries and the free row stay zero.
        let row1_pad = ((h + 1) * t + 1) * d;
        assert!(got[row1_pad..row1_pad + d].iter().all(|&x| x == 0.0));
        assert!(got[2 * h * t * d..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn shapes_that_disagree_or_reach_past_the_buffer_are_refused() {
        let data = vec![0f32; 64];
        let q = view(&data, [1, 2, 1, 8]);
        let kv = view(&data, [1, 1, 4, 8]);
        assert!(rows(q, kv, kv, &[3], &[1], 1.0, f32::exp).is_some());
        assert!(rows(q, kv, kv, &[4], &[1], 1.0, f32::exp).is_none(), "a row past its keys");
        let three = vec![0f32; 96];
        let kv3 = view(&three, [1, 3, 4, 8]);
        assert!(rows(q, kv3, kv3, &[0], &[1], 1.0, f32::exp).is_none(), "heads not a multiple of KV heads");
        let past = View4 { start: 40, ..kv };
        assert!(rows(q, past, past, &[0], &[1], 1.0, f32::exp).is_none(), "a view past its buffer");
    }
}
