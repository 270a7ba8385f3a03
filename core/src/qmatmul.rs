//! `x · wᵀ` read straight from a weight quantized per block (symmetric, one f32 scale per block
//! of consecutive weights of a row, as burn's flex stores int8 and int4: one i8 per weight).
//! Decoding a few rows is bound by memory traffic: dequantizing first writes and reads a whole f32
//! matrix (four bytes a weight, twice) for every product, while this reads each i8 once and
//! converts it in registers, so int8 decode moves about a quarter of f32's bytes.
//!
//! On x86-64 the dot products use AVX-512 or AVX2+FMA, picked at run time (the compiler did not
//! vectorize the portable loop well: 4-wide with shuffles); elsewhere a portable loop of 16
//! independent lanes. Rows are spread over rayon's threads in flex builds off wasm, computed on
//! one thread elsewhere (the int8 head screen in the browser).

#[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
use rayon::prelude::*;

/// Lanes of the vectorized dot product.
const LANES: usize = 16;
/// Output rows per parallel task: enough work to amortize a task (64 rows of 1024 weights).
const ROWS_PER_TASK: usize = 64;

/// `[m, n]` = `x` `[m, k]` (row-major) times the transpose of the `[n, k]` weight `q` (row-major,
/// i8) whose block `b` of `block` consecutive weights has scale `scales[b]`. `None` when the
/// sizes do not agree.
pub fn matmul_t(x: &[f32], m: usize, k: usize, q: &[i8], n: usize, scales: &[f32], block: usize) -> Option<Vec<f32>> {
    if block == 0 || !k.is_multiple_of(block) || x.len() != m * k || q.len() != n * k || scales.len() != n * (k / block) {
        return None;
    }
    let dot = select_dot(block);
    let per_row = k / block;
    // Transposed output `[n, m]`: each task owns whole weight rows, read once for all of x's rows.
    let mut out_t = vec![0f32; n * m];
    let task = |(chunk, out): (usize, &mut [f32])| {
        for (j, o) in out.chunks_exact_mut(m).enumerate() {
            let row = chunk * ROWS_PER_TASK + j;
            let (w, s) = (&q[row * k..(row + 1) * k], &scales[row * per_row..(row + 1) * per_row]);
            for (i, v) in o.iter_mut().enumerate() {
                *v = dot(&x[i * k..(i + 1) * k], w, s, block);
            }
        }
    };
    // Threads where rayon runs them (flex builds off wasm); one thread elsewhere.
    #[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
    if n * k >= 1 << 16 {
        out_t.par_chunks_mut(ROWS_PER_TASK * m.max(1)).enumerate().for_each(task);
        return Some(transposed(out_t, m, n));
    }
    out_t.chunks_mut(ROWS_PER_TASK * m.max(1)).enumerate().for_each(task);
    Some(transposed(out_t, m, n))
}

/// `out` = the weights `q` times their blocks' scales, as f32 (`out` as long as `q`).
pub fn dequantize(q: &[i8], scales: &[f32], block: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if block.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { dequantize_avx512(q, scales, block, out) };
    }
    dequantize_portable(q, scales, block, out)
}

fn dequantize_portable(q: &[i8], scales: &[f32], block: usize, out: &mut [f32]) {
    for ((o, w), &scale) in out.chunks_exact_mut(block).zip(q.chunks_exact(block)).zip(scales) {
        for (o, &w) in o.iter_mut().zip(w) {
            *o = w as f32 * scale;
        }
    }
}

/// 16 weights at a time, as [`dot_avx512`] reads them. Needs `block` a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dequantize_avx512(q: &[i8], scales: &[f32], block: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = (q.len().min(out.len()) / block).min(scales.len()) * block;
    for (b, &scale) in scales.iter().enumerate().take(n / block) {
        let s = _mm512_set1_ps(scale);
        let mut j = b * block;
        while j < (b + 1) * block {
            // SAFETY: j + 16 <= n, within both slices.
            unsafe {
                let w = _mm_loadu_si128(q.as_ptr().add(j) as *const __m128i);
                _mm512_storeu_ps(out.as_mut_ptr().add(j), _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w))));
            }
            j += 16;
        }
    }
}

/// `[m, n]` from its transpose.
fn transposed(out_t: Vec<f32>, m: usize, n: usize) -> Vec<f32> {
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for (o, row) in out_t.chunks_exact(m).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * n + o] = v;
        }
    }
    out
}

type Dot = fn(&[f32], &[i8], &[f32], usize) -> f32;

// `block` only decides between the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn select_dot(block: usize) -> Dot {
    #[cfg(target_arch = "x86_64")]
    {
        if block.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `matmul_t` passes slices of `scales.len() * block`
            // weights and inputs.
            return |x, w, s, b| unsafe { dot_avx512(x, w, s, b) };
        }
        if block.is_multiple_of(8) && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, with AVX2 and FMA.
            return |x, w, s, b| unsafe { dot_avx2(x, w, s, b) };
        }
    }
    dot_blocks
}

/// 16 weights at a time: sign-extend the i8 to i32, convert to f32, fused multiply-add; each
/// block's sum scaled once. Needs `block` a multiple of 16.
///
/// Bound by memory latency, not arithmetic: one 16-byte load per four instructions keeps few
/// cache lines in flight (out-of-order execution looks ~40 iterations ahead, 10 lines), so the
/// weights were read at half the rate the f32 product reads its own. A software prefetch
/// [`PREFETCH`] bytes ahead of each block keeps enough lines in flight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(x: &[f32], w: &[i8], scales: &[f32], block: usize) -> f32 {
    use std::arch::x86_64::*;
    assert!(x.len() >= scales.len() * block && w.len() >= scales.len() * block);
    // Two running totals, even and odd blocks: one would chain every block's scaling on the
    // previous one's (4 cycles each).
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for (b, &scale) in scales.iter().enumerate() {
        let mut acc = _mm512_setzero_ps();
        let mut j = b * block;
        let end = j + block;
        // Past the end it is a hint the CPU drops, never a read.
        _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(j + PREFETCH));
        while j < end {
            // SAFETY: j + 16 <= end <= the slices' lengths (asserted above).
            let (q, xv) = unsafe { (_mm_loadu_si128(w.as_ptr().add(j) as *const __m128i), _mm512_loadu_ps(x.as_ptr().add(j))) };
            acc = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), acc);
            j += 16;
        }
        if b & 1 == 0 {
            even = _mm512_fmadd_ps(_mm512_set1_ps(scale), acc, even);
        } else {
            odd = _mm512_fmadd_ps(_mm512_set1_ps(scale), acc, odd);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(even, odd))
}

/// How far ahead of the block being read the weights are prefetched, in bytes.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// 8 weights at a time, as [`dot_avx512`]. Needs `block` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(x: &[f32], w: &[i8], scales: &[f32], block: usize) -> f32 {
    use std::arch::x86_64::*;
    assert!(x.len() >= scales.len() * block && w.len() >= scales.len() * block);
    let mut total = _mm256_setzero_ps();
    for (b, &scale) in scales.iter().enumerate() {
        let mut acc = _mm256_setzero_ps();
        let mut j = b * block;
        let end = j + block;
        while j < end {
            // SAFETY: j + 8 <= end <= the slices' lengths (asserted above).
            let (q, xv) = unsafe { (_mm_loadl_epi64(w.as_ptr().add(j) as *const __m128i), _mm256_loadu_ps(x.as_ptr().add(j))) };
            acc = _mm256_fmadd_ps(xv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), acc);
            j += 8;
        }
        total = _mm256_fmadd_ps(_mm256_set1_ps(scale), acc, total);
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// Σ over blocks of `scale · Σ x·w`: the block's sum in lanes, scaled once per block.
fn dot_blocks(x: &[f32], w: &[i8], scales: &[f32], block: usize) -> f32 {
    let mut total = [0f32; LANES];
    for ((xb, wb), &scale) in x.chunks_exact(block).zip(w.chunks_exact(block)).zip(scales) {
        let mut acc = [0f32; LANES];
        let (xc, wc) = (xb.chunks_exact(LANES), wb.chunks_exact(LANES));
        let (xr, wr) = (xc.remainder(), wc.remainder());
        for (xl, wl) in xc.zip(wc) {
            for l in 0..LANES {
                acc[l] += xl[l] * wl[l] as f32;
            }
        }
        for (l, (&xv, &wv)) in xr.iter().zip(wr).enumerate() {
            acc[l] += xv * wv as f32;
        }
        for l in 0..LANES {
            total[l] += scale * acc[l];
        }
    }
    total.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Against dequantize-then-multiply in f64, for blocks that take the AVX-512 kernel (16 | block),
    /// the AVX2 one (8 | block) and the portable one, several rows, and more weight rows than one
    /// task takes; and the portable kernel alone, which a CPU with AVX2 never runs here.
    #[test]
    fn equals_dequantized_product() {
        let mut rng = StdRng::seed_from_u64(3);
        for (m, k, n, block) in [(1, 64, 5, 32), (3, 96, 130, 32), (2, 24, 7, 8), (1, 1024, 200, 64), (5, 40, 3, 40), (1, 48, 2, 16)] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127..=127)).collect();
            let scales: Vec<f32> = (0..n * k / block).map(|_| rng.random_range(0.001..0.02)).collect();
            let got = matmul_t(&x, m, k, &q, n, &scales, block).unwrap();
            for i in 0..m {
                for o in 0..n {
                    let want: f64 = (0..k).map(|j| x[i * k + j] as f64 * (scales[(o * k + j) / block] * q[o * k + j] as f32) as f64).sum();
                    let g = got[i * n + o] as f64;
                    assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{m}x{k}x{n}/{block} at {i},{o}: {g} vs {want}");
                }
            }
        }
        assert!(matmul_t(&[0.0; 4], 1, 4, &[0; 8], 2, &[1.0; 2], 3).is_none(), "a block that does not divide a row");
        let x: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
        let q: Vec<i8> = (0..64).map(|_| rng.random_range(-127..=127)).collect();
        let scales = [0.01, 0.02];
        let want: f32 = (0..64).map(|j| x[j] * scales[j / 32] * q[j] as f32).sum();
        assert!((dot_blocks(&x, &q, &scales, 32) - want).abs() < 1e-4);
        let (mut fast, mut portable) = (vec![0f32; 64], vec![0f32; 64]);
        dequantize(&q, &scales, 32, &mut fast);
        dequantize_portable(&q, &scales, 32, &mut portable);
        assert_eq!(fast, portable, "the vectorized dequantization computes the same products");
        assert_eq!(portable[40], scales[1] * q[40] as f32);
        assert!((select_dot(32)(&x, &q, &scales, 32) - want).abs() < 1e-4);
    }
}
