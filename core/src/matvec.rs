//! `x · wᵀ` for one row `x` `[k]` and an f32 weight `w` `[n, k]` (row-major, the checkpoint's
//! layout): one dot product per weight row, the rows split over the pool. Decoding one row is
//! bound by reading the weights; burn's product of one row ran on one thread and read them at
//! half the rate llama.cpp does on the same two cores (BENCHMARKS.md).
//!
//! On x86-64 the dot products use AVX-512 or AVX2+FMA, picked at run time; elsewhere a portable
//! loop of 16 independent lanes, as [`crate::qmatmul`].

use rayon::prelude::*;

/// Output rows per parallel task: 64 rows of 1024 weights, 256 KiB, amortize a task.
const ROWS_PER_TASK: usize = 64;

/// `[n]` = `x` `[k]` times the transpose of `w` `[n, k]`; `None` when the sizes do not agree.
pub fn matvec_t(x: &[f32], w: &[f32], n: usize) -> Option<Vec<f32>> {
    let k = x.len();
    if k == 0 || w.len() != n * k {
        return None;
    }
    let dot = select_dot();
    let mut out = vec![0f32; n];
    let task = |(chunk, out): (usize, &mut [f32])| {
        for (j, o) in out.iter_mut().enumerate() {
            let row = chunk * ROWS_PER_TASK + j;
            *o = dot(x, &w[row * k..(row + 1) * k]);
        }
    };
    if n * k >= 1 << 16 {
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(task);
    } else {
        out.chunks_mut(ROWS_PER_TASK).enumerate().for_each(task);
    }
    Some(out)
}

type Dot = fn(&[f32], &[f32]) -> f32;

fn select_dot() -> Dot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `matvec_t` passes slices of equal length.
            return |x, w| unsafe { dot_avx512(x, w) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, with AVX2 and FMA.
            return |x, w| unsafe { dot_avx2(x, w) };
        }
    }
    dot_portable
}

/// Four accumulators of 16 lanes (independent chains for the FMA latency), then the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(x: &[f32], w: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (px, pw) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    while j + 64 <= n {
        for (a, lane) in acc.iter_mut().zip((0..64).step_by(16)) {
            // SAFETY: j + lane + 16 <= j + 64 <= n, inside both slices.
            let (xv, wv) = unsafe { (_mm512_loadu_ps(px.add(j + lane)), _mm512_loadu_ps(pw.add(j + lane))) };
            *a = _mm512_fmadd_ps(xv, wv, *a);
        }
        j += 64;
    }
    while j + 16 <= n {
        // SAFETY: j + 16 <= n.
        let (xv, wv) = unsafe { (_mm512_loadu_ps(px.add(j)), _mm512_loadu_ps(pw.add(j))) };
        acc[0] = _mm512_fmadd_ps(xv, wv, acc[0]);
        j += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let tail: f32 = x[j..n].iter().zip(&w[j..n]).map(|(a, b)| a * b).sum();
    _mm512_reduce_add_ps(sum) + tail
}

/// As [`dot_avx512`], 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(x: &[f32], w: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (px, pw) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    while j + 32 <= n {
        for (a, lane) in acc.iter_mut().zip((0..32).step_by(8)) {
            // SAFETY: j + lane + 8 <= j + 32 <= n, inside both slices.
            let (xv, wv) = unsafe { (_mm256_loadu_ps(px.add(j + lane)), _mm256_loadu_ps(pw.add(j + lane))) };
            *a = _mm256_fmadd_ps(xv, wv, *a);
        }
        j += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let tail: f32 = x[j..n].iter().zip(&w[j..n]).map(|(a, b)| a * b).sum();
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1))) + tail
}

fn dot_portable(x: &[f32], w: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (xc, wc) = (x.chunks_exact(16), w.chunks_exact(16));
    let tail: f32 = xc.remainder().iter().zip(wc.remainder()).map(|(a, b)| a * b).sum();
    for (xs, ws) in xc.zip(wc) {
        for ((l, a), b) in lanes.iter_mut().zip(xs).zip(ws) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel the CPU offers against an f64 sum, on lengths with and without a tail.
    #[test]
    fn dot_products_match_a_plain_sum() {
        let mut kernels: Vec<(&str, Dot)> = vec![("portable", dot_portable), ("selected", select_dot())];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            kernels.push(("avx2", |x, w| unsafe { dot_avx2(x, w) }));
        }
        for k in [1, 7, 16, 63, 64, 65, 1024, 1031] {
            let x: Vec<f32> = (0..k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let w: Vec<f32> = (0..k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
            let want: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = x.iter().zip(&w).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            for (name, dot) in &kernels {
                let got = dot(&x, &w) as f64;
                assert!((got - want).abs() <= 1e-6 * scale.max(1.0), "{name}, k {k}: {got} vs {want}");
            }
        }
        let x = [1.0, 2.0];
        let w = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(matvec_t(&x, &w, 3), Some(vec![11.0, 17.0, 23.0]));
        assert_eq!(matvec_t(&x, &w, 2), None, "sizes that do not agree");
    }
}
