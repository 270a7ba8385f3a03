//! Attention of a whole pass without a cache (training, the loss) on the CPU, forward and
//! backward, head by head: `softmax(q·kᵀ · scale + mask) · v` straight from the projections'
//! layouts into the output projection's `[rows, t, heads · d]`, and its gradients with respect
//! to q, k and v from the kept softmax. Through burn's ops the same attention swapped heads and
//! tokens with copies, added a host-built mask, took its softmax with a libm `exp` per element,
//! scored every query against every key although the mask hides the upper triangle, and
//! backward did all of that again through the graph; strided copies and `exp` were a tenth of
//! a LoRA step on the 0.6B shape (BENCHMARKS.md).
//!
//! Products go to gemm in blocks of [`BLOCK`] queries, each against the keys its queries can see,
//! so the masked triangle is mostly skipped.

/// Queries (or keys) per product: gemm's register block is 64 rows.
const BLOCK: usize = 64;

use crate::attend::View4 as View;
use crate::positions::Visible;

/// The shapes of one pass: `q` `[rows, heads, t, d]`, `k` and `v` `[rows, kv_heads, keys, d]`.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    heads: usize,
    kv_heads: usize,
    t: usize,
    keys: usize,
    d: usize,
}

fn dims(q: &View, k: &View, v: &View, visible: &Visible) -> Option<Dims> {
    let [rows, heads, t, d] = q.shape;
    let [kr, kv_heads, keys, kd] = k.shape;
    let fits = kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && k.shape == v.shape
        && kr == rows
        && kd == d
        && keys == visible.keys
        && visible.valid.len() == rows * keys
        && keys >= t
        && [q, k, v].iter().all(|x| x.fits());
    fits.then_some(Dims { rows, heads, kv_heads, t, keys, d })
}

/// A pointer the tasks of one pass share: each writes its own rows.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks that receive it write disjoint elements (their own head's rows).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `dst[m, n] (+)= scale · a[m, k] · b[k, n]`, each with (row, column) strides, on this thread.
///
/// # Safety
/// Every element addressed through the pointers and strides lies in its buffer, and `dst`
/// overlaps neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let i = |s: usize| s as isize;
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(m, n, k, dst, 1, i(dst_rs), accumulate, a, i(a_cs), i(a_rs), b, i(b_cs), i(b_rs), 1.0, scale, false, false, false, gemm::Parallelism::None)
    };
}

/// The softmax of the pass, `[rows, heads, t, keys]`, kept for backward; zeros where masked.
pub(crate) struct Probs(Vec<f32>);

/// `softmax(q·kᵀ · scale + mask) · v` as `[rows, t, heads · d]`, with the softmax when `keep`.
/// Query heads share a KV head in groups of `heads / kv_heads` (transformers' `repeat_kv`).
/// `exp` is given `x ≤ 0`. `None` when the shapes disagree or a view reaches outside its buffer.
pub(crate) fn forward(q: View, k: View, v: View, visible: &Visible, scale: f32, keep: bool, exp: impl Fn(f32) -> f32 + Sync) -> Option<(Vec<f32>, Option<Probs>)> {
    use rayon::prelude::*;
    let dm = dims(&q, &k, &v, visible)?;
    let Dims { rows, heads, t, keys, d, .. } = dm;
    let groups = heads / dm.kv_heads;
    let mut out = vec![0f32; rows * t * heads * d];
    let dst = Shared(out.as_mut_ptr());
    let task = |(task, p): (usize, &mut [f32])| {
        let (r, head) = (task / heads, task % heads);
        let kv = head / groups;
        let valid = &visible.valid[r * keys..(r + 1) * keys];
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            let seen = visible.lim(r1 - 1);
            // SAFETY: `dims` checked the views against their buffers; `p` is `[t, keys]`.
            unsafe {
                product((r1 - r0, seen, d), p[r0 * keys..].as_mut_ptr(), keys, false, (q.ptr(r, head, r0), q.strides[2], 1), (k.ptr(r, kv, 0), 1, k.strides[2]), scale)
            };
            for i in r0..r1 {
                let row = &mut p[i * keys..(i + 1) * keys];
                let lim = visible.lim(i);
                softmax_row(&mut row[..lim], &valid[..lim], &exp);
                row[lim..].fill(0.0);
            }
            let at = dst;
            // SAFETY: rows `r0..r1` of this head in `out` (`[rows, t, heads, d]`) are this
            // task's alone; `p`'s rows are `[.., keys]` and `v`'s were checked.
            unsafe {
                product((r1 - r0, d, seen), at.0.add(((r * t + r0) * heads + head) * d), heads * d, false, (p[r0 * keys..].as_ptr(), keys, 1), (v.ptr(r, kv, 0), v.strides[2], 1), 1.0)
            };
        }
    };
    let work = rows * heads * t * keys * d;
    let parallel = work >= 1 << 20;
    if keep {
        let mut probs = vec![0f32; rows * heads * t * keys];
        if parallel {
            probs.par_chunks_mut(t * keys).enumerate().for_each(task);
        } else {
            probs.chunks_mut(t * keys).enumerate().for_each(task);
        }
        return Some((out, Some(Probs(probs))));
    }
    if parallel {
        (0..rows * heads).into_par_iter().for_each_init(|| vec![0f32; t * keys], |p, i| task((i, p.as_mut_slice())));
    } else {
        let mut p = vec![0f32; t * keys];
        (0..rows * heads).for_each(|i| task((i, p.as_mut_slice())));
    }
    Some((out, None))
}

/// One query's softmax over the keys not hidden by causality, in place; masked keys get 0.
fn softmax_row(row: &mut [f32], valid: &[bool], exp: &impl Fn(f32) -> f32) {
    let max = row.iter().zip(valid).fold(f32::NEG_INFINITY, |m, (&x, &ok)| if ok && (x > m || x.is_nan()) { x } else { m });
    let mut sum = 0f32;
    for (x, &ok) in row.iter_mut().zip(valid) {
        // A masked key's score may exceed the maximum: `exp` is only given `x ≤ 0`.
        let e = exp(if ok { *x - max } else { -100.0 });
        *x = if ok { e } else { 0.0 };
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Gradients `(dq, dk, dv)` of [`forward`] for the output's gradient `g` `[rows, t, heads · d]`
/// (contiguous): `[rows, heads, t, d]`, `[rows, kv_heads, keys, d]` twice.
#[allow(clippy::type_complexity)]
pub(crate) fn backward(g: &[f32], q: View, k: View, v: View, visible: &Visible, scale: f32, probs: &Probs) -> Option<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    use rayon::prelude::*;
    let dm = dims(&q, &k, &v, visible)?;
    let Dims { rows, heads, kv_heads, t, keys, d } = dm;
    if g.len() != rows * t * heads * d || probs.0.len() != rows * heads * t * keys {
        return None;
    }
    let groups = heads / kv_heads;
    let (mut dq, mut dk, mut dv) = (vec![0f32; rows * heads * t * d], vec![0f32; rows * kv_heads * keys * d], vec![0f32; rows * kv_heads * keys * d]);
    let task = |ds: &mut Vec<f32>, (task, ((dq, dk), dv)): (usize, ((&mut [f32], &mut [f32]), &mut [f32]))| {
        let (r, kv) = (task / kv_heads, task % kv_heads);
        ds.resize(t * keys, 0.0);
        for local in 0..groups {
            let head = kv * groups + local;
            let p = &probs.0[(r * heads + head) * t * keys..][..t * keys];
            let go = g[(r * t * heads + head) * d..].as_ptr();
            let go_rs = heads * d;
            // dv += pᵀ · g, key block by key block, over the queries that see the block.
            for j0 in (0..keys).step_by(BLOCK) {
                let j1 = (j0 + BLOCK).min(keys);
                let i0 = j0.saturating_sub(visible.past).min(t);
                // SAFETY: `p` is `[t, keys]`, `g` `[rows, t, heads · d]` (checked length), `dv`
                // this KV head's `[keys, d]`.
                unsafe {
                    product((j1 - j0, d, t - i0), dv[j0 * d..].as_mut_ptr(), d, true, (p[i0 * keys + j0..].as_ptr(), 1, keys), (go.add(i0 * go_rs), go_rs, 1), 1.0)
                };
            }
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let seen = visible.lim(r1 - 1);
                // dp = g · vᵀ into `ds`, then ds = p ⊙ (dp − Σ p ⊙ dp), row by row.
                // SAFETY: as above; `ds` is `[t, keys]`.
                unsafe {
                    product((r1 - r0, seen, d), ds[r0 * keys..].as_mut_ptr(), keys, false, (go.add(r0 * go_rs), go_rs, 1), (v.ptr(r, kv, 0), 1, v.strides[2]), 1.0)
                };
                for i in r0..r1 {
                    let lim = visible.lim(i);
                    let (row, pr) = (&mut ds[i * keys..(i + 1) * keys], &p[i * keys..(i + 1) * keys]);
                    let dot: f32 = row[..lim].iter().zip(&pr[..lim]).map(|(a, b)| a * b).sum();
                    row[..lim].iter_mut().zip(&pr[..lim]).for_each(|(x, &p)| *x = p * (*x - dot));
                    row[lim..].fill(0.0);
                }
                // dq = scale · ds · k.
                // SAFETY: `dq` is this group's `[groups, t, d]`; `k` was checked.
                unsafe {
                    product((r1 - r0, d, seen), dq[(local * t + r0) * d..].as_mut_ptr(), d, false, (ds[r0 * keys..].as_ptr(), keys, 1), (k.ptr(r, kv, 0), k.strides[2], 1), scale)
                };
            }
            // dk += scale · dsᵀ · q, key block by key block.
            for j0 in (0..keys).step_by(BLOCK) {
                let j1 = (j0 + BLOCK).min(keys);
                let i0 = j0.saturating_sub(visible.past).min(t);
                // SAFETY: `ds` is `[t, keys]` (zeros past each query's keys), `dk` `[keys, d]`.
                unsafe {
                    product((j1 - j0, d, t - i0), dk[j0 * d..].as_mut_ptr(), d, true, (ds[i0 * keys + j0..].as_ptr(), 1, keys), (q.ptr(r, head, i0), q.strides[2], 1), scale)
                };
            }
        }
    };
    if rows * heads * t * keys * d >= 1 << 20 {
        let chunks = dq.par_chunks_mut(groups * t * d).zip(dk.par_chunks_mut(keys * d)).zip(dv.par_chunks_mut(keys * d));
        chunks.enumerate().for_each_init(Vec::new, task);
    } else {
        let mut ds = Vec::new();
        let chunks = dq.chunks_mut(groups * t * d).zip(dk.chunks_mut(keys * d)).zip(dv.chunks_mut(keys * d));
        chunks.enumerate().for_each(|c| task(&mut ds, c));
    }
    Some((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                // A local xorshift: borrowing linear's hash would make causal -> linear -> flex -> causal a circle.
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    fn view(data: &[f32], shape: [usize; 4]) -> View<'_> {
        View { data, start: 0, shape, strides: [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3]] }
    }

    /// The textbook attention in f64 with its gradients by finite differences' exact counterpart:
    /// out[r, i, h, :] = Σ_j p_ij v_j, p = softmax over visible j of scale · q_i · k_j.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dimsq: [usize; 4], kvh: usize, vis: &Visible, scale: f64) -> Vec<f64> {
        let [rows, heads, t, d] = dimsq;
        let keys = vis.keys;
        let groups = heads / kvh;
        let mut out = vec![0f64; rows * t * heads * d];
        for r in 0..rows {
            for h in 0..heads {
                let kv = h / groups;
                for i in 0..t {
                    let seen: Vec<usize> = (0..keys).filter(|&j| vis.valid[r * keys + j] && j <= vis.past + i).collect();
                    let s: Vec<f64> = seen
                        .iter()
                        .map(|&j| (0..d).map(|x| q[((r * heads + h) * t + i) * d + x] as f64 * k[((r * kvh + kv) * keys + j) * d + x] as f64).sum::<f64>() * scale)
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (&j, e) in seen.iter().zip(&e) {
                        for x in 0..d {
                            out[((r * t + i) * heads + h) * d + x] += e / sum * v[((r * kvh + kv) * keys + j) * d + x] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    fn exp(x: f32) -> f32 {
        x.exp()
    }

    #[test]
    fn forward_and_backward_match_the_textbook_formula_with_padding_groups_and_a_past() {
        // Two rows (the second padded after 5 keys), 4 query heads over 2 KV heads, 70 queries
        // (a block of 64 and a tail) after 3 past keys, head width 6.
        let (rows, heads, kvh, t, past, d) = (2, 4, 2, 70, 3, 6);
        let keys = past + t;
        let mut valid = vec![true; rows * keys];
        valid[keys + 5..].iter_mut().for_each(|x| *x = false);
        let vis = Visible::new(past, keys, valid).expect("every query sees a key");
        let (q, k, v) = (values(rows * heads * t * d, 1), values(rows * kvh * keys * d, 2), values(rows * kvh * keys * d, 3));
        let scale = 0.7f32;
        let (qv, kv, vv) = (view(&q, [rows, heads, t, d]), view(&k, [rows, kvh, keys, d]), view(&v, [rows, kvh, keys, d]));
        let (out, probs) = forward(qv, kv, vv, &vis, scale, true, exp).expect("shapes fit");
        let want = reference(&q, &k, &v, [rows, heads, t, d], kvh, &vis, scale as f64);
        for (a, b) in out.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Gradients of L = Σ g ⊙ out, against central differences of the f64 reference.
        let g = values(out.len(), 4);
        let (dq, dk, dv) = backward(&g, qv, kv, vv, &vis, scale, &probs.expect("kept")).expect("shapes fit");
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            reference(q, k, v, [rows, heads, t, d], kvh, &vis, scale as f64).iter().zip(&g).map(|(o, &g)| o * g as f64).sum()
        };
        let eps = 1e-2f32;
        let check = |which: usize, grad: &[f32], at: usize| {
            let (mut a, mut b) = ((q.clone(), k.clone(), v.clone()), (q.clone(), k.clone(), v.clone()));
            let (pa, pb) = match which {
                0 => (&mut a.0, &mut b.0),
                1 => (&mut a.1, &mut b.1),
                _ => (&mut a.2, &mut b.2),
            };
            pa[at] += eps;
            pb[at] -= eps;
            let num = (loss(&a.0, &a.1, &a.2) - loss(&b.0, &b.1, &b.2)) / (2.0 * eps as f64);
            assert!((num - grad[at] as f64).abs() < 2e-3 * (1.0 + num.abs()), "tensor {which} element {at}: {} vs {num}", grad[at]);
        };
        // A spread of elements: both rows, every head, early and late queries and keys.
        for at in (0..q.len()).step_by(97) {
            check(0, &dq, at);
        }
        for at in (0..k.len()).step_by(53) {
            check(1, &dk, at);
            check(2, &dv, at);
        }
        // Keys no query may see (the second row's padding) get no gradient.
        for j in 5..keys {
            for x in 0..d {
                assert_eq!(dk[((kvh + 1) * keys + j) * d + x], 0.0);
                assert_eq!(dv[((kvh + 1) * keys + j) * d + x], 0.0);
            }
        }
        // Without keeping the softmax, the same output.
        let (again, none) = forward(qv, kv, vv, &vis, scale, false, exp).expect("shapes fit");
        assert!(none.is_none());
        assert_eq!(again, out);
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        // A left-padded row: its first query sees no key.
        assert!(Visible::new(0, 3, vec![false, true, true]).is_none());
        assert!(Visible::new(1, 3, vec![false, true, true]).is_some());
        let vis = Visible::new(0, 4, vec![true; 4]).expect("visible");
        let (q, k) = (vec![0f32; 16], vec![0f32; 12]);
        // Keys of another length than the mask's.
        assert!(forward(view(&q, [1, 1, 4, 4]), view(&k, [1, 1, 3, 4]), view(&k, [1, 1, 3, 4]), &vis, 1.0, false, exp).is_none());
        // A view reaching past its buffer.
        assert!(forward(view(&q[..15], [1, 1, 4, 4]), view(&q, [1, 1, 4, 4]), view(&q, [1, 1, 4, 4]), &vis, 1.0, false, exp).is_none());
    }
}
