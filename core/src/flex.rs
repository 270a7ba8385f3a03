//! What burn's CPU backend (flex) does slowly for tiqu's shapes, done directly on its
//! buffers; every other backend takes burn's generic ops.
//!
//! - `x · wᵀ` for a projection weight `w` `[out, in]` (the checkpoint's layout). flex hands the
//!   `gemm` crate the transposed view, and gemm then repacks all of `w` on every call: 137
//!   GFLOP/s on one core for 256 × 1024 · 1024 × 3072, against 234 when the same product is asked
//!   for as `w · xᵀ`, where the repacked operand is `x` (12 times smaller here), and 240 for
//!   the backward's `grad · w`, which is already in gemm's own layout (BENCHMARKS.md). So the
//!   forward computes `w · xᵀ` and transposes the result, and, under autodiff, the backward is
//!   still `grad · w` (as `w · xᵀ` through burn's ops would make it `wᵀ · gradᵀ`, slower). Only
//!   for a weight that receives no gradient (LoRA's frozen base, the output layer); full
//!   fine-tuning and half precision take burn's matmul.
//! - The rotary embedding: through burn's ops it is a narrow, a negation, a concatenation, two
//!   products and a sum, most of them over a strided view (the heads swapped to the front), and
//!   was 8 % of a LoRA training step; here one pass each way.
//! - Whether the backend is flex at all, for LoRA dropout masks drawn on the host (see `lora`).
//!
//! The backend is recognised by its type (`TypeId`), since burn has no specialisation: the
//! primitives are moved out through `Any`, which only ever succeeds for the type just checked.

use burn::prelude::*;

/// True when `B` is burn's CPU backend (flex), with or without autodiff.
pub fn is_cpu<B: Backend>() -> bool {
    imp::is_cpu::<B>()
}

/// `f` of the values of a row-major f32 matrix held by flex, read in place; `None` elsewhere.
pub fn with_f32<B: Backend, R>(t: &Tensor<B, 2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    imp::with_f32(t, f)
}

/// `x · wᵀ` for `x` `[rows, in]` and a weight `w` `[out, in]`: `[rows, out]`.
pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    imp::linear(x, w)
}

/// `x · wᵀ` for a weight quantized per block, on flex, for f32 rows without autodiff: up to 8 rows
/// (decoding) from its i8 blocks without dequantizing it ([`crate::qmatmul`]), more rows
/// (prefill) a dequantized tile at a time; `None` where burn's dequantize-then-multiply applies
/// (other backends, training).
pub fn quantized_linear<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    imp::quantized_linear(x, w)
}

/// One chunk of the fused output layer and loss ([`crate::head_loss`]) on flex, for hidden rows
/// `h` `[n, hidden]`, the output weight's row blocks and the rows' targets: the summed NLL,
/// `softmax · W` `[n, hidden]` (the hidden rows' gradient less the target rows) and, for each
/// block marked trained, its whole gradient. The logits are computed as `W · hᵀ` (`[vocab, n]`,
/// no transpose), reduced along the vocabulary with every row's columns side by side, and
/// exponentiated in place with a vectorised `exp` (burn's is a scalar libm call per element):
/// one buffer of `vocab × n` floats, two passes over it between the products. `None` where
/// burn's ops apply (other backends, half precision, layouts gemm is not given).
pub type HeadChunk<B> = (f64, Tensor<B, 2>, Vec<Option<Tensor<B, 2>>>);

pub fn head_chunk<B: Backend>(h: &Tensor<B, 2>, blocks: &[Tensor<B, 2>], trained: &[bool], targets: &[u32]) -> Option<HeadChunk<B>> {
    imp::head_chunk(h, blocks, trained, targets)
}

/// HF's rotary embedding `x·cos + rotate_half(x)·sin` for `x` `[batch, heads, seq, head_dim]`
/// and tables `[batch or 1, 1, seq, head_dim]`, in one pass over `x` (and one for its gradient);
/// `None` where the caller's generic ops apply (not flex, not f32). Bit-identical to those ops:
/// the same products and sums, in the same order.
pub fn rope<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    imp::rope(x, cos, sin)
}

/// Attention of a continuous-batching pass ([`crate::attend`]) on flex: queries `q`
/// `[rows, heads, t, d]` (after the rotary embedding) against the pass's cache rows `k`, `v`
/// `[rows, kv_heads, keys, d]`, row `r`'s query `i` seeing keys `..starts[r] + i + 1` when
/// `i < lens[r]`; `[rows, heads, t, d]`, zeros at padding queries. `None` where burn's ops apply
/// (other backends, half precision, layouts it does not read).
pub fn row_attention<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, starts: &[usize], lens: &[usize], scale: f32) -> Option<Tensor<B, 4>> {
    imp::row_attention(q, k, v, starts, lens, scale)
}

/// Attention of a pass without a cache (training, the loss), `[rows, t, heads · d]` for `q`
/// `[rows, heads, t, d]` and `k`, `v` `[rows, kv_heads, keys, d]`, with its own backward under
/// autodiff (see `causal`); `None` elsewhere or for layouts it does not take.
pub(crate) fn causal_attention<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, visible: &crate::positions::Visible, scale: f32) -> Option<Tensor<B, 3>> {
    imp::causal_attention(q, k, v, visible, scale)
}

/// `silu(gate) · up`, the MLP's gate, in one pass each way (with its backward under autodiff);
/// through burn's ops it was a sigmoid of two libm `exp`s and a log, a product and their graph.
/// `None` elsewhere.
pub(crate) fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    imp::swiglu(gate, up)
}

/// `cache[:, :, start..start + t, :] = value` for a KV cache `[batch, heads, capacity, head_dim]`
/// and `value` `[batch, heads, t, head_dim]`. flex's `slice_assign` copies the whole cache on
/// every call (it keeps a second handle on the buffer while writing, so its copy-on-write always
/// copies: 28 % of a batch-32 extraction); on flex the rows are written in place when nothing else
/// holds the buffer.
pub fn assign_rows<B: Backend>(cache: Tensor<B, 4>, start: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
    imp::assign_rows(cache, start, value)
}

/// `cache[first + r, :, starts[r]..starts[r] + lens[r], :] = value[r, :, ..lens[r], :]` for each row
/// `r` of `value` `[rows, heads, t, head_dim]`: the continuous-batching write, where every row
/// has its own length. In place on flex as [`assign_rows`]; elsewhere one `slice_assign` per row
/// that feeds tokens (a kernel each on a GPU, the price of rows of different lengths).
pub fn assign_rows_at<B: Backend>(cache: Tensor<B, 4>, first: usize, starts: &[usize], lens: &[usize], value: Tensor<B, 4>) -> Tensor<B, 4> {
    imp::assign_rows_at(cache, first, starts, lens, value)
}

fn slice_assign_rows_at<B: Backend>(mut cache: Tensor<B, 4>, first: usize, starts: &[usize], lens: &[usize], value: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, h, _, d] = value.dims();
    for (r, (&s, &l)) in starts.iter().zip(lens).enumerate().filter(|(_, (_, &l))| l > 0) {
        let part = value.clone().slice([r..r + 1, 0..h, 0..l, 0..d]);
        cache = cache.slice_assign([first + r..first + r + 1, 0..h, s..s + l, 0..d], part);
    }
    cache
}

fn slice_assign_rows<B: Backend>(cache: Tensor<B, 4>, start: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = value.dims();
    cache.slice_assign([0..b, 0..h, start..start + t, 0..d], value)
}

#[cfg(not(all(feature = "flex", not(target_arch = "wasm32"))))]
mod imp {
    use burn::prelude::*;

    pub fn is_cpu<B: Backend>() -> bool {
        false
    }

    pub fn with_f32<B: Backend, R>(_: &Tensor<B, 2>, _: impl FnOnce(&[f32]) -> R) -> Option<R> {
        None
    }

    pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(w.transpose())
    }

    pub fn quantized_linear<B: Backend>(_: &Tensor<B, 2>, _: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }

    pub fn rope<B: Backend>(_: &Tensor<B, 4>, _: &Tensor<B, 4>, _: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        None
    }

    pub fn head_chunk<B: Backend>(_: &Tensor<B, 2>, _: &[Tensor<B, 2>], _: &[bool], _: &[u32]) -> Option<super::HeadChunk<B>> {
        None
    }

    pub fn row_attention<B: Backend>(_: &Tensor<B, 4>, _: &Tensor<B, 4>, _: &Tensor<B, 4>, _: &[usize], _: &[usize], _: f32) -> Option<Tensor<B, 4>> {
        None
    }

    pub(crate) fn causal_attention<B: Backend>(_: &Tensor<B, 4>, _: &Tensor<B, 4>, _: &Tensor<B, 4>, _: &crate::positions::Visible, _: f32) -> Option<Tensor<B, 3>> {
        None
    }

    pub(crate) fn swiglu<B: Backend>(_: &Tensor<B, 3>, _: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }

    pub fn assign_rows<B: Backend>(cache: Tensor<B, 4>, start: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
        super::slice_assign_rows(cache, start, value)
    }

    pub fn assign_rows_at<B: Backend>(cache: Tensor<B, 4>, first: usize, starts: &[usize], lens: &[usize], value: Tensor<B, 4>) -> Tensor<B, 4> {
        super::slice_assign_rows_at(cache, first, starts, lens, value)
    }
}

#[cfg(all(feature = "flex", not(target_arch = "wasm32")))]
mod imp {
    use std::any::{Any, TypeId};

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::*;
    use burn::tensor::backend::BackendTypes;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{DType, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;

    use crate::positions::Visible;
    use std::sync::Arc;

    /// One row takes [`row_times`] (burn's product ran it on one thread). From two rows on this one:
    /// burn's product for 2 to 15 rows took 3.5× the time of one row
    /// on the 0.6B shape (`tiqu bench verify`: 703 ms for 2 positions against 203 for 1), this
    /// one 1.2-1.5× — which is what a speculative pass or a pick with its forced tokens feeds.
    const MIN_ROWS: usize = 2;
    /// Products smaller than this (m·n·k) stay on the calling thread, as flex decides.
    const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

    type Ad<C> = Autodiff<Flex, C>;
    type AdTensor<C> = <Ad<C> as BackendTypes>::FloatTensorPrimitive;

    fn same<A: 'static, B: 'static>() -> bool {
        TypeId::of::<A>() == TypeId::of::<B>()
    }

    /// Moves a value to the type `same` has just said it is.
    fn cast<T: 'static, U: 'static>(value: T) -> U {
        *(Box::new(value) as Box<dyn Any>).downcast::<U>().unwrap_or_else(|_| unreachable!("checked by TypeId"))
    }

    pub fn is_cpu<B: Backend>() -> bool {
        same::<B, Flex>() || same::<B, Ad<NoCheckpointing>>() || same::<B, Ad<BalancedCheckpointing>>()
    }

    pub fn with_f32<B: Backend, R>(t: &Tensor<B, 2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        if !same::<B, Flex>() || t.dtype() != DType::F32 {
            return None;
        }
        let p: FlexTensor = cast(t.clone().into_primitive().tensor());
        let ((n, k), (ptr, (rs, cs))) = (dims(&p), view(&p)?);
        if cs != 1 || (n > 1 && rs != k as isize) {
            return None;
        }
        // SAFETY: `view` checked that every element the view addresses lies in its buffer: with
        // these strides, `n · k` consecutive floats from `ptr`; `p` holds the buffer meanwhile.
        let values = unsafe { std::slice::from_raw_parts(ptr, n * k) };
        Some(f(values))
    }

    pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
        // Shapes that do not fit go to burn's product, which reports them.
        let fits = x.dims()[0] >= MIN_ROWS && x.dims()[1] == w.dims()[1] && x.dtype() == DType::F32 && w.dtype() == DType::F32;
        let one_row = x.dims()[0] == 1 && x.dims()[1] == w.dims()[1] && x.dtype() == DType::F32 && w.dtype() == DType::F32;
        if one_row && same::<B, Flex>() {
            let (xp, wp): (FlexTensor, FlexTensor) = (cast(x.clone().into_primitive().tensor()), cast(w.clone().into_primitive().tensor()));
            if let Some(out) = row_times(&xp, &wp) {
                return Tensor::from_primitive(TensorPrimitive::Float(cast(out)));
            }
        }
        if fits && same::<B, Flex>() {
            let (xp, wp): (FlexTensor, FlexTensor) = (cast(x.clone().into_primitive().tensor()), cast(w.clone().into_primitive().tensor()));
            if let Some(out) = forward(&xp, &wp) {
                return Tensor::from_primitive(TensorPrimitive::Float(cast(out)));
            }
        }
        if fits && same::<B, Ad<NoCheckpointing>>() {
            return tracked::<B, NoCheckpointing>(x, w);
        }
        if fits && same::<B, Ad<BalancedCheckpointing>>() {
            return tracked::<B, BalancedCheckpointing>(x, w);
        }
        x.matmul(w.transpose())
    }

    /// Rows up to which the product is read from the i8 blocks one dot product at a time: beyond,
    /// [`tiled_product`]'s blocked products win.
    const MAX_QUANTIZED_ROWS: usize = 8;
    /// Most weights [`tiled_product`] dequantizes at a time (8 MiB of f32): fewer, larger products
    /// won over tiles that fit in L2, since each product packs all of x again and gemm blocks for
    /// the cache itself (2¹⁷ weights a tile ran at 0.3–0.7× f32 on the 0.6B shapes, 2²¹ or one
    /// tile per thread at 0.75–1.1×, 2 cores, 9 to 512 rows).
    const TILE_WEIGHTS: usize = 1 << 21;

    pub fn quantized_linear<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        use burn::tensor::quantization::{QTensorPrimitive, QuantLevel};
        let ([m, k], [n, wk]) = (x.dims(), w.dims());
        if !same::<B, Flex>() || x.dtype() != DType::F32 || k != wk || m == 0 {
            return None;
        }
        let TensorPrimitive::QFloat(q) = w.clone().into_primitive() else { return None };
        let q: burn_flex::FlexQTensor = cast(q);
        let QuantLevel::Block(size) = q.scheme().level else { return None };
        let values: &[i8] = q.tensor().as_slice()?;
        let x: FlexTensor = cast(x.clone().into_primitive().tensor());
        let x = x.to_contiguous();
        let xs: &[f32] = x.as_slice()?;
        let out = if m <= MAX_QUANTIZED_ROWS {
            crate::qmatmul::matmul_t(xs, m, k, values, n, q.scales(), size.num_elements())?
        } else {
            tiled_product(xs, m, k, values, n, q.scales(), size.num_elements())?
        };
        Some(Tensor::from_primitive(TensorPrimitive::Float(cast(FlexTensor::from_data(TensorData::new(out, [m, n]))))))
    }

    /// `x · wᵀ` `[m, n]` for many rows of `x` and the weight's i8 blocks: each thread dequantizes
    /// a tile of the weight's rows (its share, at most [`TILE_WEIGHTS`]) into a buffer it keeps
    /// and multiplies it by gemm. burn's path dequantized the whole weight into a new tensor
    /// through its generic ops for every product: int8 prefill ran at a quarter of f32's
    /// (BENCHMARKS.md).
    fn tiled_product(x: &[f32], m: usize, k: usize, q: &[i8], n: usize, scales: &[f32], block: usize) -> Option<Vec<f32>> {
        use rayon::prelude::*;
        if block == 0 || !k.is_multiple_of(block) || x.len() != m * k || q.len() != n * k || scales.len() != n * (k / block) {
            return None;
        }
        let tile = (TILE_WEIGHTS / k).min(n.div_ceil(rayon::current_num_threads())).max(16);
        let per_row = k / block;
        // The transpose `[n, m]`: each tile owns whole rows of it.
        let mut out_t = vec![0f32; n * m];
        let task = |buf: &mut Vec<f32>, (t, dst): (usize, &mut [f32])| {
            let (first, rows) = (t * tile, dst.len() / m);
            buf.resize(rows * k, 0.0);
            crate::qmatmul::dequantize(&q[first * k..(first + rows) * k], &scales[first * per_row..(first + rows) * per_row], block, buf);
            // `dst` `[rows, m]` row-major, asked of gemm as its column-major transpose `[m, rows]`
            // = x `[m, k]` · bufᵀ `[k, rows]`: gemm then packs x, not the tile (asked the other
            // way round, packing the tile was half of an int8 prefill). One thread per product:
            // the tiles are what runs in parallel.
            // SAFETY: `x` is `[m, k]` and `buf` `[rows, k]` row-major, `dst` `rows · m` floats.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    dst.as_mut_ptr(),
                    m as isize,
                    1,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    buf.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        };
        if m * n * k >= PARALLEL_THRESHOLD {
            out_t.par_chunks_mut(tile * m).enumerate().for_each_init(Vec::new, task);
        } else {
            let mut buf = Vec::new();
            out_t.chunks_mut(tile * m).enumerate().for_each(|c| task(&mut buf, c));
        }
        Some(transpose(&out_t, n, m))
    }

    fn tracked<B: Backend, C: CheckpointStrategy>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
        let x: AdTensor<C> = cast(x.into_primitive().tensor());
        let w: AdTensor<C> = cast(w.into_primitive().tensor());
        let fast = if w.is_tracked() { None } else { forward(&x.primitive, &w.primitive) };
        let out = match fast {
            Some(out) => match FrozenLinear.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(w.primitive, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            },
            // A weight being trained needs its own gradient, and a layout the fast path does not
            // take stays with burn: its product computes both.
            None => Ad::<C>::float_matmul(x, Ad::<C>::float_transpose(w)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(cast(out)))
    }

    /// Backward of `x · wᵀ` for a frozen `w` (the state): `grad · w`.
    #[derive(Debug)]
    struct FrozenLinear;

    impl Backward<Flex, 1> for FrozenLinear {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let w = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let (rows, out) = dims(&grad);
                let (w_out, inp) = dims(&w);
                match (view(&grad), view(&w)) {
                    (Some(g), Some(wv)) if w_out == out => {
                        let mut dx = vec![0f32; rows * inp];
                        // SAFETY: `view` checked that every element the views address lies in
                        // its buffer; `dx` is `[rows, inp]` row-major; the inner sizes agree.
                        unsafe { product(rows, inp, out, dx.as_mut_ptr(), inp as isize, 1, g, wv) };
                        tensor(dx, [rows, inp])
                    }
                    _ => Flex::float_matmul(grad, w),
                }
            })
        }
    }

    thread_local! {
        /// [`head_chunk`]'s logits, kept between calls.
        static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    pub fn head_chunk<B: Backend>(h: &Tensor<B, 2>, blocks: &[Tensor<B, 2>], trained: &[bool], targets: &[u32]) -> Option<super::HeadChunk<B>> {
        if !same::<B, Flex>() || h.dtype() != DType::F32 || blocks.iter().any(|w| w.dtype() != DType::F32) || blocks.len() != trained.len() {
            return None;
        }
        let h: FlexTensor = cast(h.clone().into_primitive().tensor());
        let ws: Vec<FlexTensor> = blocks.iter().map(|w| cast(w.clone().into_primitive().tensor())).collect();
        let (n, d) = dims(&h);
        let vocab: usize = ws.iter().map(|w| dims(w).0).sum();
        if n != targets.len() || n == 0 || ws.iter().any(|w| dims(w).1 != d) || targets.iter().any(|&t| t as usize >= vocab) {
            return None;
        }
        let (hv, (h_rs, h_cs)) = view(&h)?;
        let wvs: Vec<_> = ws.iter().map(view).collect::<Option<_>>()?;
        // The logits, transposed: `[vocab, n]`, in this thread's buffer (tens of MB, over
        // glibc's largest mmap threshold: a new one came as fresh pages the kernel zeroed, 1 % of
        // a 0.6B LoRA step). gemm writes every element.
        let mut e = LOGITS.with(|c| c.take());
        e.resize(vocab * n, 0.0);
        let mut offset = 0;
        for (w, &wv) in ws.iter().zip(&wvs) {
            let v = dims(w).0;
            // SAFETY: `view` checked both operands; rows `offset..offset + v` of `e` are `[v, n]`.
            unsafe { product(v, n, d, e[offset * n..].as_mut_ptr(), n as isize, 1, wv, (hv, (h_cs, h_rs))) };
            offset += v;
        }
        let target: Vec<f32> = targets.iter().enumerate().map(|(j, &t)| e[t as usize * n + j]).collect();
        let (max, sum) = softmax_columns(&mut e, n);
        let nll: f64 = (0..n).map(|j| sum[j].ln() + max[j] as f64 - target[j] as f64).sum();
        let inv: Vec<f32> = sum.iter().map(|s| (1.0 / s) as f32).collect();
        // `softmax · W` = `(eᵀ · W) / sum`, `[n, d]`, summed over the blocks. Asked of gemm
        // column by column (`gᵀ` row-major) and transposed after: in `g`'s own layout gemm packs
        // all of W for every chunk (158 against 191 GFLOP/s for 64 rows of the 0.6B shape).
        let mut gt = vec![0f32; d * n];
        let mut offset = 0;
        for (w, &wv) in ws.iter().zip(&wvs) {
            let v = dims(w).0;
            // SAFETY: as above; `eᵀ` is `e`'s rows `offset..offset + v` with their strides swapped;
            // `gt` is `[d, n]` row-major, `g` `[n, d]` with its strides swapped.
            unsafe { product_acc(n, d, v, gt.as_mut_ptr(), (1, n as isize), offset > 0, (e[offset * n..].as_ptr(), (1, n as isize)), wv) };
            offset += v;
        }
        let mut g = transpose(&gt, d, n);
        for (row, s) in g.chunks_exact_mut(d).zip(&inv) {
            row.iter_mut().for_each(|x| *x *= s);
        }
        // A trained block's gradient: `softmax_blockᵀ · h` less `h` at the targets' rows.
        let hc = h.to_contiguous();
        let hs: &[f32] = hc.storage();
        let scaled: Vec<f32> = hs.chunks_exact(d).zip(&inv).flat_map(|(row, s)| row.iter().map(move |x| x * s)).collect();
        let mut grads = Vec::with_capacity(ws.len());
        let mut offset = 0;
        for (w, &train) in ws.iter().zip(trained) {
            let v = dims(w).0;
            grads.push(train.then(|| {
                let mut gw = vec![0f32; v * d];
                // SAFETY: `e`'s rows `offset..offset + v` are `[v, n]`; `scaled` is `[n, d]`.
                unsafe { product(v, d, n, gw.as_mut_ptr(), d as isize, 1, (e[offset * n..].as_ptr(), (n as isize, 1)), (scaled.as_ptr(), (d as isize, 1))) };
                for (j, &t) in targets.iter().enumerate() {
                    let t = t as usize;
                    if (offset..offset + v).contains(&t) {
                        let row = &mut gw[(t - offset) * d..][..d];
                        row.iter_mut().zip(&hs[j * d..][..d]).for_each(|(x, y)| *x -= y);
                    }
                }
                Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(cast(tensor(gw, [v, d]))))
            }));
            offset += v;
        }
        LOGITS.with(|c| c.replace(e));
        Some((nll, Tensor::from_primitive(TensorPrimitive::Float(cast(tensor(g, [n, d])))), grads))
    }

    /// For logits `e` `[vocab, n]` (one column per row of the batch): each column's maximum and
    /// the sum of `exp(logit − max)` (in f64, over f32 partial sums of 256 logits), with `e`
    /// replaced by those exponentials.
    fn softmax_columns(e: &mut [f32], n: usize) -> (Vec<f32>, Vec<f64>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { softmax_columns_avx512(e, n) };
        }
        softmax_columns_portable(e, n)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_columns_avx512(e: &mut [f32], n: usize) -> (Vec<f32>, Vec<f64>) {
        softmax_columns_portable(e, n)
    }

    #[inline(always)]
    fn softmax_columns_portable(e: &mut [f32], n: usize) -> (Vec<f32>, Vec<f64>) {
        let mut max = vec![f32::NEG_INFINITY; n];
        for row in e.chunks_exact(n) {
            // `f32::max` would skip a NaN logit; this keeps it, so the loss is NaN too.
            max.iter_mut().zip(row).for_each(|(m, &x)| *m = if x > *m || x.is_nan() { x } else { *m });
        }
        let (mut sum, mut part) = (vec![0f64; n], vec![0f32; n]);
        for rows in e.chunks_mut(256 * n) {
            part.iter_mut().for_each(|p| *p = 0.0);
            for row in rows.chunks_exact_mut(n) {
                for ((x, p), &m) in row.iter_mut().zip(&mut part).zip(&max) {
                    *x = exp_nonpositive(*x - m);
                    *p += *x;
                }
            }
            sum.iter_mut().zip(&part).for_each(|(s, &p)| *s += p as f64);
        }
        (max, sum)
    }

    /// `e^x` for `x ≤ 0` (Cephes' `expf`: `2^k · e^r`, `r = x − k·ln 2`, a degree-5 polynomial
    /// for `e^r`, `2^k` written into the exponent bits), within 2 ulp; `e^−87` (1.6e−38, next to
    /// nothing beside the maximum's 1) below −87; NaN stays NaN.
    /// Branch-free, so the loops above are vectorised.
    #[inline(always)]
    fn exp_nonpositive(x: f32) -> f32 {
        let x = if x < -87.0 { -87.0 } else { x };
        // Rounded to the nearest integer by adding and removing 1.5 · 2²³.
        let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
        let y = p * r * r + r + 1.0;
        // k + 127 (1 to 127) lands in the low mantissa bits of 1.5 · 2²³ + k + 127; shifted up by
        // 23 it is the exponent field of 2^k.
        y * f32::from_bits((k + 12_583_039.0).to_bits() << 23)
    }

    pub(crate) fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
            return None;
        }
        let p = |t: &Tensor<B, 3>| t.clone().into_primitive().tensor();
        let out: B::FloatTensorPrimitive = if same::<B, Flex>() {
            let (g, u): (FlexTensor, FlexTensor) = (cast(p(gate)), cast(p(up)));
            cast(swiglu_forward(&g.to_contiguous(), &u.to_contiguous()))
        } else if same::<B, Ad<NoCheckpointing>>() {
            cast(swiglu_tracked::<NoCheckpointing>(cast(p(gate)), cast(p(up))))
        } else if same::<B, Ad<BalancedCheckpointing>>() {
            cast(swiglu_tracked::<BalancedCheckpointing>(cast(p(gate)), cast(p(up))))
        } else {
            return None;
        };
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn swiglu_tracked<C: CheckpointStrategy>(gate: AdTensor<C>, up: AdTensor<C>) -> AdTensor<C> {
        let (g, u) = (gate.primitive.to_contiguous(), up.primitive.to_contiguous());
        let out = swiglu_forward(&g, &u);
        match SwiGlu.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((g, u), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    /// Backward of `silu(g) · u`: `∂/∂g = dy · u · σ(g) · (1 + g · (1 − σ(g)))`, `∂/∂u = dy · silu(g)`.
    #[derive(Debug)]
    struct SwiGlu;

    impl Backward<Flex, 2> for SwiGlu {
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (g, u) = ops.state;
            let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
            let shape = g.layout().shape().clone();
            let (gs, us, dys) = (contiguous_f32(&g), contiguous_f32(&u), contiguous_f32(&dy));
            let (mut dg, mut du) = (vec![0f32; gs.len()], vec![0f32; gs.len()]);
            elementwise(|| {
                for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(&mut du).zip(gs).zip(us).zip(dys) {
                    let s = sigmoid(g);
                    *dg = dy * u * s * (1.0 + g * (1.0 - s));
                    *du = dy * g * s;
                }
            });
            let [pg, pu] = ops.parents;
            for (parent, grad) in [(pg, dg), (pu, du)] {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape.clone())));
                }
            }
        }
    }

    fn contiguous_f32(t: &FlexTensor) -> &[f32] {
        let (start, end) = t.layout().contiguous_offsets().unwrap_or_else(|| unreachable!("made contiguous by the caller"));
        &t.storage::<f32>()[start..end]
    }

    fn swiglu_forward(g: &FlexTensor, u: &FlexTensor) -> FlexTensor {
        let (gs, us) = (contiguous_f32(g), contiguous_f32(u));
        let mut out = vec![0f32; gs.len()];
        elementwise(|| {
            for ((o, &g), &u) in out.iter_mut().zip(gs).zip(us) {
                *o = g * sigmoid(g) * u;
            }
        });
        FlexTensor::from_data(TensorData::new(out, g.layout().shape().clone()))
    }

    /// Runs `f` compiled for AVX-512 where the CPU has it, so its loop over [`sigmoid`] is
    /// vectorised sixteen lanes wide.
    #[inline(always)]
    fn elementwise(f: impl FnOnce()) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide(f: impl FnOnce()) {
                f()
            }
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { wide(f) };
        }
        f()
    }

    /// `1 / (1 + e^−x)` from `exp` of a non-positive value only (branch-free, so loops over it
    /// vectorise); NaN stays NaN.
    #[inline(always)]
    fn sigmoid(x: f32) -> f32 {
        let e = exp_nonpositive(-x.abs());
        let r = 1.0 / (1.0 + e);
        if x >= 0.0 { r } else { e * r }
    }

    pub fn row_attention<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, starts: &[usize], lens: &[usize], scale: f32) -> Option<Tensor<B, 4>> {
        if !same::<B, Flex>() || [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let primitive = |t: &Tensor<B, 4>| -> FlexTensor { cast(t.clone().into_primitive().tensor()) };
        let (qp, kp, vp) = (primitive(q), primitive(k), primitive(v));
        let out = crate::attend::rows(view4(&qp)?, view4(&kp)?, view4(&vp)?, starts, lens, scale, exp_nonpositive)?;
        Some(Tensor::from_primitive(TensorPrimitive::Float(cast(FlexTensor::from_data(TensorData::new(out, q.dims()))))))
    }

    pub(crate) fn causal_attention<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, visible: &Visible, scale: f32) -> Option<Tensor<B, 3>> {
        if [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let p = |t: &Tensor<B, 4>| t.clone().into_primitive().tensor();
        let out: B::FloatTensorPrimitive = if same::<B, Flex>() {
            let (qp, kp, vp): (FlexTensor, FlexTensor, FlexTensor) = (cast(p(q)), cast(p(k)), cast(p(v)));
            let (out, _) = crate::causal::forward(view4(&qp)?, view4(&kp)?, view4(&vp)?, visible, scale, false, exp_nonpositive)?;
            cast(out_tensor(out, q.dims()))
        } else if same::<B, Ad<NoCheckpointing>>() {
            cast(causal_tracked::<NoCheckpointing>(cast(p(q)), cast(p(k)), cast(p(v)), visible, scale)?)
        } else if same::<B, Ad<BalancedCheckpointing>>() {
            cast(causal_tracked::<BalancedCheckpointing>(cast(p(q)), cast(p(k)), cast(p(v)), visible, scale)?)
        } else {
            return None;
        };
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn out_tensor(out: Vec<f32>, [b, h, t, d]: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(out, [b, t, h * d]))
    }

    fn causal_tracked<C: CheckpointStrategy>(q: AdTensor<C>, k: AdTensor<C>, v: AdTensor<C>, visible: &Visible, scale: f32) -> Option<AdTensor<C>> {
        let shape = q.primitive.layout().shape();
        let [b, h, t, d] = [shape[0], shape[1], shape[2], shape[3]];
        let tracked = [&q, &k, &v].iter().any(|x| x.is_tracked());
        let views = (view4(&q.primitive)?, view4(&k.primitive)?, view4(&v.primitive)?);
        let (out, probs) = crate::causal::forward(views.0, views.1, views.2, visible, scale, tracked, exp_nonpositive)?;
        let out = out_tensor(out, [b, h, t, d]);
        Some(match CausalAttention.prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = CausalState { q: q.primitive, k: k.primitive, v: v.primitive, visible: Arc::new(visible.clone()), scale, probs: Arc::new(probs?) };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        })
    }

    #[derive(Debug)]
    struct CausalAttention;

    #[derive(Clone)]
    struct CausalState {
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        visible: Arc<Visible>,
        scale: f32,
        probs: Arc<crate::causal::Probs>,
    }

    impl std::fmt::Debug for CausalState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CausalState").field("q", &self.q.layout().shape()).field("k", &self.k.layout().shape()).finish_non_exhaustive()
        }
    }

    impl Backward<Flex, 3> for CausalAttention {
        type State = CausalState;

        fn backward(self, ops: Ops<CausalState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let s = ops.state;
            let g = grads.consume::<Flex>(&ops.node).to_contiguous();
            let views = (view4(&s.q), view4(&s.k), view4(&s.v));
            let (Some(q), Some(k), Some(v)) = views else { unreachable!("the forward took these views") };
            let (dq, dk, dv) = crate::causal::backward(contiguous_f32(&g), q, k, v, &s.visible, s.scale, &s.probs)
                .unwrap_or_else(|| unreachable!("the forward checked these shapes"));
            let [pq, pk, pv] = ops.parents;
            for (parent, grad, shape) in [(pq, dq, q.shape), (pk, dk, k.shape), (pv, dv, v.shape)] {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape)));
                }
            }
        }
    }

    /// A 4-d f32 tensor as [`crate::attend::View4`]: only with non-negative strides and
    /// contiguous last dimension (the view checks that it stays in its buffer).
    fn view4(t: &FlexTensor) -> Option<crate::attend::View4<'_>> {
        let layout = t.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if shape.len() != 4 || strides.len() != 4 || strides.iter().any(|&s| s < 0) || (strides[3] != 1 && shape[3] > 1) {
            return None;
        }
        Some(crate::attend::View4 {
            data: t.storage(),
            start: layout.start_offset(),
            shape: [shape[0], shape[1], shape[2], shape[3]],
            strides: [strides[0] as usize, strides[1] as usize, strides[2] as usize],
        })
    }

    pub fn rope<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        let [b, _, t, d] = x.dims();
        let [cb, _, ct, cd] = cos.dims();
        let f32s = [x.dtype(), cos.dtype(), sin.dtype()].iter().all(|&d| d == DType::F32);
        if !f32s || cos.dims() != sin.dims() || (cb != b && cb != 1) || ct != t || cd != d || d % 2 != 0 {
            return None;
        }
        let tables = |c: &Tensor<B, 4>, s: &Tensor<B, 4>| (c.clone().into_primitive().tensor(), s.clone().into_primitive().tensor());
        let x = x.clone().into_primitive().tensor();
        let out: B::FloatTensorPrimitive = if same::<B, Flex>() {
            let (c, s) = tables(cos, sin);
            let x: FlexTensor = cast(x);
            if !readable(&x) {
                return None;
            }
            cast(rope_forward(&x, &cast(c), &cast(s)))
        } else if same::<B, Ad<NoCheckpointing>>() {
            cast(rope_tracked::<NoCheckpointing>(cast(x), tables(cos, sin))?)
        } else if same::<B, Ad<BalancedCheckpointing>>() {
            cast(rope_tracked::<BalancedCheckpointing>(cast(x), tables(cos, sin))?)
        } else {
            return None;
        };
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn rope_tracked<C: CheckpointStrategy>(
        x: AdTensor<C>,
        (cos, sin): (impl Any, impl Any),
    ) -> Option<AdTensor<C>> {
        let (cos, sin): (AdTensor<C>, AdTensor<C>) = (cast(cos), cast(sin));
        if cos.is_tracked() || sin.is_tracked() || !readable(&x.primitive) {
            return None;
        }
        let out = rope_forward(&x.primitive, &cos.primitive, &sin.primitive);
        Some(match Rope.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((cos.primitive, sin.primitive), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        })
    }

    /// Backward of the rotary embedding: `g·cos + rotate_halfᵀ(g·sin)`, where `rotate_halfᵀ`
    /// maps `[u, v]` to `[v, -u]`.
    #[derive(Debug)]
    struct Rope;

    impl Backward<Flex, 1> for Rope {
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (cos, sin) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
                let g = if readable(&g) { g } else { g.to_contiguous() };
                rope_pass(&g, &cos, &sin, |g, c, s, i, h| {
                    if i < h { g[i] * c[i] + g[i + h] * s[i + h] } else { g[i] * c[i] + -(g[i - h] * s[i - h]) }
                })
            })
        }
    }

    /// Whether the one-pass rotary embedding can read `x`: four dimensions, no negative stride,
    /// every addressed element inside the buffer (anything else takes burn's ops).
    fn readable(x: &FlexTensor) -> bool {
        let layout = x.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if shape.len() != 4 || strides.len() != 4 || x.dtype() != DType::F32 || strides.iter().any(|&s| s < 0) {
            return false;
        }
        if shape.contains(&0) {
            return true;
        }
        let reach = shape.iter().zip(strides).try_fold(layout.start_offset(), |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s as usize)?));
        reach.is_some_and(|last| last < x.storage::<f32>().len())
    }

    fn rope_forward(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> FlexTensor {
        // As `x.mul(cos).add(cat([-x2, x1]).mul(sin))`, product by product.
        rope_pass(x, cos, sin, |x, c, s, i, h| if i < h { x[i] * c[i] + -x[i + h] * s[i] } else { x[i] * c[i] + x[i - h] * s[i] })
    }

    /// Applies `f(row, cos_row, sin_row, i, half)` to every element of every head row of `x`
    /// (any strides, logical `[b, heads, t, d]`), giving a contiguous `[b, heads, t, d]`.
    fn rope_pass(
        x: &FlexTensor,
        cos: &FlexTensor,
        sin: &FlexTensor,
        f: impl Fn(&[f32], &[f32], &[f32], usize, usize) -> f32,
    ) -> FlexTensor {
        let shape = x.layout().shape();
        let [b, heads, t, d] = [shape[0], shape[1], shape[2], shape[3]];
        let strides = x.layout().strides();
        let data: &[f32] = x.storage();
        // Tables shared by the batch (`[1, 1, t, d]`) repeat for every row of it.
        let per_batch = if cos.layout().shape()[0] == b { t * d } else { 0 };
        let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
        let (cos, sin): (&[f32], &[f32]) = (cos.storage(), sin.storage());
        let mut out = vec![0f32; b * heads * t * d];
        let mut row = vec![0f32; d];
        let mut dst = out.chunks_exact_mut(d);
        for bi in 0..b {
            for hi in 0..heads {
                for ti in 0..t {
                    let start = x.layout().start_offset() as isize
                        + bi as isize * strides[0]
                        + hi as isize * strides[1]
                        + ti as isize * strides[2];
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = data[(start + i as isize * strides[3]) as usize];
                    }
                    let table = bi * per_batch + ti * d;
                    let (c, s) = (&cos[table..table + d], &sin[table..table + d]);
                    let line = dst.next().expect("one output row per input row");
                    for (i, o) in line.iter_mut().enumerate() {
                        *o = f(&row, c, s, i, d / 2);
                    }
                }
            }
        }
        FlexTensor::from_data(TensorData::new(out, [b, heads, t, d]))
    }

    pub fn assign_rows<B: Backend>(cache: Tensor<B, 4>, start: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
        if !same::<B, Flex>() || cache.dtype() != value.dtype() {
            return super::slice_assign_rows(cache, start, value);
        }
        let mut c: FlexTensor = cast(cache.into_primitive().tensor());
        // flex's `to_contiguous` copies unless the tensor covers its whole buffer in order.
        let v = cast::<_, FlexTensor>(value.into_primitive().tensor()).to_contiguous();
        let written = match c.dtype() {
            DType::F32 => write_rows::<f32>(&mut c, &v, start),
            DType::F16 => write_rows::<half::f16>(&mut c, &v, start),
            DType::BF16 => write_rows::<half::bf16>(&mut c, &v, start),
            _ => false,
        };
        let back = |t: FlexTensor| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(cast(t)));
        if written { back(c) } else { super::slice_assign_rows(back(c), start, back(v)) }
    }

    pub fn assign_rows_at<B: Backend>(cache: Tensor<B, 4>, first: usize, starts: &[usize], lens: &[usize], value: Tensor<B, 4>) -> Tensor<B, 4> {
        if !same::<B, Flex>() || cache.dtype() != value.dtype() {
            return super::slice_assign_rows_at(cache, first, starts, lens, value);
        }
        let mut c: FlexTensor = cast(cache.into_primitive().tensor());
        let v = cast::<_, FlexTensor>(value.into_primitive().tensor()).to_contiguous();
        let written = match c.dtype() {
            DType::F32 => write_rows_at::<f32>(&mut c, &v, first, starts, lens),
            DType::F16 => write_rows_at::<half::f16>(&mut c, &v, first, starts, lens),
            DType::BF16 => write_rows_at::<half::bf16>(&mut c, &v, first, starts, lens),
            _ => false,
        };
        let back = |t: FlexTensor| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(cast(t)));
        if written { back(c) } else { super::slice_assign_rows_at(back(c), first, starts, lens, back(v)) }
    }

    /// [`write_rows`] with a start and a count per row; false (nothing written) unless every
    /// row's columns fit.
    fn write_rows_at<E: burn::tensor::Element + bytemuck::Pod>(cache: &mut FlexTensor, value: &FlexTensor, first: usize, starts: &[usize], lens: &[usize]) -> bool {
        let (cs, vs) = (cache.layout().shape(), value.layout().shape());
        let [b, h, cap, d] = [cs[0], cs[1], cs[2], cs[3]];
        let [rows, t] = [vs[0], vs[2]];
        let fits = [vs[1], vs[3]] == [h, d]
            && first + rows <= b
            && starts.len() == rows
            && lens.len() == rows
            && starts.iter().zip(lens).all(|(&s, &l)| l <= t && s + l <= cap);
        if !fits || !cache.is_contiguous() || cache.layout().start_offset() != 0 {
            return false;
        }
        let src: &[E] = value.storage();
        let Some(dst) = cache.try_storage_mut::<E>() else { return false };
        for r in 0..rows {
            let (s, l) = (starts[r], lens[r]);
            for head in 0..h {
                let from = ((r * h + head) * t) * d;
                let at = (((first + r) * h + head) * cap + s) * d;
                dst[at..at + l * d].copy_from_slice(&src[from..from + l * d]);
            }
        }
        true
    }

    /// Copies contiguous `value` rows into `cache` if its buffer is its own; false otherwise.
    fn write_rows<E: burn::tensor::Element + bytemuck::Pod>(cache: &mut FlexTensor, value: &FlexTensor, start: usize) -> bool {
        let (cs, vs) = (cache.layout().shape(), value.layout().shape());
        let [b, h, cap, d] = [cs[0], cs[1], cs[2], cs[3]];
        let t = vs[2];
        let fits = [vs[0], vs[1], vs[3]] == [b, h, d] && start + t <= cap;
        if !fits || !cache.is_contiguous() || cache.layout().start_offset() != 0 {
            return false;
        }
        let src: &[E] = value.storage();
        let Some(dst) = cache.try_storage_mut::<E>() else { return false };
        for (i, rows) in src.chunks_exact(t * d).enumerate() {
            let at = (i * cap + start) * d;
            dst[at..at + t * d].copy_from_slice(rows);
        }
        true
    }

    /// `x · wᵀ` for one row `x` by [`crate::matvec`] (the rows of `w` split over the pool); `None`
    /// unless both are laid out row by row.
    fn row_times(x: &FlexTensor, w: &FlexTensor) -> Option<FlexTensor> {
        let ((n, k), (_, xk)) = (dims(w), dims(x));
        let ((wp, (w_rs, w_cs)), (xp, (_, x_cs))) = (view(w)?, view(x)?);
        if xk != k || w_cs != 1 || w_rs != k as isize || x_cs != 1 {
            return None;
        }
        // SAFETY: `view` checked that every element the views address lies in its buffer: with
        // these strides, `n · k` consecutive floats from `wp` and `k` from `xp`.
        let (ws, xs) = unsafe { (std::slice::from_raw_parts(wp, n * k), std::slice::from_raw_parts(xp, k)) };
        Some(tensor(crate::matvec::matvec_t(xs, ws, n)?, [1, n]))
    }

    /// `x · wᵀ` computed as `(w · xᵀ)ᵀ`; `None` for shapes or layouts this path does not take.
    fn forward(x: &FlexTensor, w: &FlexTensor) -> Option<FlexTensor> {
        let (rows, inp) = dims(x);
        let (out, w_inp) = dims(w);
        if w_inp != inp {
            return None;
        }
        let (xv, (x_rs, x_cs)) = view(x)?;
        let wv = view(w)?;
        let mut t = vec![0f32; out * rows];
        // SAFETY: `view` checked that every element the views address lies in its buffer; `t` is
        // `[out, rows]` row-major; xᵀ is x's buffer with its strides swapped; inner sizes agree.
        unsafe { product(out, rows, inp, t.as_mut_ptr(), rows as isize, 1, wv, (xv, (x_cs, x_rs))) };
        Some(tensor(transpose(&t, out, rows), [rows, out]))
    }

    fn dims(t: &FlexTensor) -> (usize, usize) {
        let shape = t.layout().shape();
        (shape.first().copied().unwrap_or(0), shape.get(1).copied().unwrap_or(0))
    }

    /// First element and (row, column) strides of a 2-d f32 tensor, for gemm: only when its
    /// strides are not negative and every element it addresses lies inside its buffer, so that no
    /// arguments can make the product read past it. `None` sends the caller to burn's ops.
    fn view(t: &FlexTensor) -> Option<(*const f32, (isize, isize))> {
        let layout = t.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if shape.len() != 2 || strides.len() != 2 || t.dtype() != DType::F32 || strides.iter().any(|&s| s < 0) {
            return None;
        }
        let data: &[f32] = t.storage();
        let start = layout.start_offset();
        if shape[0] > 0 && shape[1] > 0 {
            let reach = |n: usize, s: isize| (n - 1).checked_mul(s as usize);
            let last = start.checked_add(reach(shape[0], strides[0])?)?.checked_add(reach(shape[1], strides[1])?)?;
            if last >= data.len() {
                return None;
            }
        } else if start > data.len() {
            return None;
        }
        Some((data[start..].as_ptr(), (strides[0], strides[1])))
    }

    fn tensor(values: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
        // `TensorData::new` keeps the vector's allocation (no copy).
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// `dst[m, n] = a[m, k] · b[k, n]`, `dst` with row stride `dst_rs` and column stride `dst_cs`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: isize,
        dst_cs: isize,
        (a, (a_rs, a_cs)): (*const f32, (isize, isize)),
        (b, (b_rs, b_cs)): (*const f32, (isize, isize)),
    ) {
        // `Rayon(0)` is the current pool's size: one thread inside a training micro-batch.
        let parallelism =
            if m * n * k >= PARALLEL_THRESHOLD { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        unsafe {
            gemm::gemm(m, n, k, dst, dst_cs, dst_rs, false, a, a_cs, a_rs, b, b_cs, b_rs, 0.0, 1.0, false, false, false, parallelism)
        };
    }

    /// [`product`] added to `dst` when `accumulate`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_acc(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        (dst_rs, dst_cs): (isize, isize),
        accumulate: bool,
        (a, (a_rs, a_cs)): (*const f32, (isize, isize)),
        (b, (b_rs, b_cs)): (*const f32, (isize, isize)),
    ) {
        let parallelism =
            if m * n * k >= PARALLEL_THRESHOLD { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        unsafe {
            gemm::gemm(m, n, k, dst, dst_cs, dst_rs, accumulate, a, a_cs, a_rs, b, b_cs, b_rs, 1.0, 1.0, false, false, false, parallelism)
        };
    }

    /// `[rows, cols]` row-major → `[cols, rows]` row-major. 16 × 16 blocks through a fixed-size
    /// array (the compiler turns them into register shuffles), 64 × 64 tiles for the cache:
    /// 0.6 ns an element for `[3072, 256]`, against 5.6 for plain tiles, whose stores stride by
    /// a power of two and collide in the cache.
    fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        const B: usize = 16;
        const TILE: usize = 64;
        let mut dst = vec![0f32; rows * cols];
        let (rows_b, cols_b) = (rows / B * B, cols / B * B);
        for r1 in (0..rows_b).step_by(TILE) {
            for c1 in (0..cols_b).step_by(TILE) {
                for r0 in (r1..(r1 + TILE).min(rows_b)).step_by(B) {
                    for c0 in (c1..(c1 + TILE).min(cols_b)).step_by(B) {
                        let mut block = [[0f32; B]; B];
                        for (i, line) in block.iter_mut().enumerate() {
                            line.copy_from_slice(&src[(r0 + i) * cols + c0..][..B]);
                        }
                        for j in 0..B {
                            let out = &mut dst[(c0 + j) * rows + r0..][..B];
                            for (o, line) in out.iter_mut().zip(&block) {
                                *o = line[j];
                            }
                        }
                    }
                }
            }
        }
        // The ragged right and bottom edges.
        for r in 0..rows {
            let from = if r < rows_b { cols_b } else { 0 };
            for c in from..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
        dst
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use burn::tensor::backend::AutodiffBackend;
        use burn::tensor::Distribution;

        /// One row (a decode step): the dot products of [`crate::matvec`] against burn's product,
        /// for a weight of 3 000 rows (split over the pool) and for a row that is a view into a
        /// larger tensor.
        #[test]
        fn one_row_matches_burns_matmul() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let w = Tensor::<Flex, 2>::random([3000, 72], normal, &device);
            let rows = Tensor::<Flex, 2>::random([3, 72], normal, &device);
            for x in [rows.clone().narrow(0, 0, 1), rows.narrow(0, 2, 1)] {
                close(linear(x.clone(), w.clone()), x.matmul(w.clone().transpose()));
            }
        }

        #[test]
        fn exp_of_non_positive_values_is_within_two_ulp_and_keeps_nan() {
            let mut worst = 0f64;
            for i in 0..=1_930_000u32 {
                let x = -(i as f32) * 4.5e-5;
                let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
                worst = worst.max((got - want).abs() / want);
            }
            assert!(worst <= 2.0 * f32::EPSILON as f64, "relative error {worst:e}");
            assert_eq!(exp_nonpositive(-200.0), (-87f32).exp());
            assert!(exp_nonpositive(f32::NAN).is_nan());
            let mut e = vec![0.5, f32::NAN, -1.0, 2.0];
            let (_, sum) = softmax_columns(&mut e, 2);
            assert!(sum[1].is_nan() && (sum[0] - (-1.5f64).exp() - 1.0).abs() < 1e-6, "{sum:?}");
        }

        #[test]
        fn views_the_fast_path_cannot_read_safely_take_burns_product() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let w = Tensor::<Flex, 2>::random([24, 8], normal, &device);
            let x = Tensor::<Flex, 2>::random([32, 8], normal, &device);
            // Reversed rows and columns (negative strides in flex), and a narrowed view.
            for x in [x.clone().flip([0, 1]), x.clone().narrow(1, 0, 8), x.clone().slice([4..24, 0..8])] {
                close(linear(x.clone(), w.clone()), x.clone().matmul(w.clone().transpose()));
            }
            let flipped_w = w.clone().flip([1]);
            close(linear(x.clone(), flipped_w.clone()), x.clone().matmul(flipped_w.transpose()));
            // Inner sizes that disagree never reach gemm: burn's product refuses them.
            let wrong = Tensor::<Flex, 2>::random([24, 5], normal, &device);
            let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| linear(x.clone(), wrong.clone()).into_data()));
            assert!(refused.is_err());
        }

        fn close<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) {
            close_n(a, b, 1e-5);
        }

        fn close_n<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, tol: f32) {
            let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
            }
        }

        /// Against burn's own `x.matmul(wᵀ)`: the product, the gradient reaching `x` (contiguous
        /// and a transposed view), and a weight that is itself trained (burn's path, gradient too).
        fn matches_burns_matmul<B: AutodiffBackend>() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let w = Tensor::<B, 2>::random([56, 24], normal, &device);
            let upstream = Tensor::<B, 2>::random([40, 56], normal, &device);
            for x in [
                Tensor::<B, 2>::random([40, 24], normal, &device),
                Tensor::<B, 2>::random([24, 40], normal, &device).transpose(),
            ] {
                let x = x.require_grad();
                let ours = linear(x.clone(), w.clone());
                let theirs = x.clone().matmul(w.clone().transpose());
                close(ours.clone().inner(), theirs.clone().inner());
                let g_ours = x.grad(&ours.mul(upstream.clone()).sum().backward()).unwrap();
                let g_theirs = x.grad(&theirs.mul(upstream.clone()).sum().backward()).unwrap();
                close(g_ours, g_theirs);
            }
            let (x, w) = (Tensor::<B, 2>::random([40, 24], normal, &device), w.require_grad());
            let grads = linear(x.clone(), w.clone()).mul(upstream.clone()).sum().backward();
            let expected = upstream.transpose().matmul(x).inner();
            close(w.grad(&grads).unwrap(), expected);
        }

        fn close4<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) {
            let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
            assert_eq!(a, b, "not bit-identical");
        }

        /// HF's definition through burn's ops, as `model::apply_rope` computes it elsewhere.
        fn reference<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
            let d = x.dims()[3];
            let rotated = Tensor::cat(vec![x.clone().narrow(3, d / 2, d / 2).neg(), x.clone().narrow(3, 0, d / 2)], 3);
            x.mul(cos).add(rotated.mul(sin))
        }

        /// Heads swapped to the front (a strided view, as attention makes it), tables shared by
        /// the batch or one per row; the output and the gradient reaching `x` bit for bit.
        fn rope_matches<B: AutodiffBackend>() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            for table_batch in [1, 3] {
                let x = Tensor::<B, 4>::random([3, 5, 4, 8], normal, &device).require_grad();
                let cos = Tensor::<B, 4>::random([table_batch, 1, 5, 8], normal, &device);
                let sin = Tensor::<B, 4>::random([table_batch, 1, 5, 8], normal, &device);
                let upstream = Tensor::<B, 4>::random([3, 4, 5, 8], normal, &device);
                let ours = rope(&x.clone().swap_dims(1, 2), &cos, &sin).expect("flex, f32");
                let theirs = reference(x.clone().swap_dims(1, 2), cos, sin);
                close4(ours.clone().inner(), theirs.clone().inner());
                let g_ours = x.grad(&ours.mul(upstream.clone()).sum().backward()).unwrap();
                let g_theirs = x.grad(&theirs.mul(upstream).sum().backward()).unwrap();
                close4(g_ours, g_theirs);
            }
        }

        /// Against burn's `silu(g) · u`: the output and both gradients, values from −12 to 12
        /// (both branches of the sigmoid and its flat tails).
        fn swiglu_matches<B: AutodiffBackend>() {
            let device = Default::default();
            let range = Distribution::Uniform(-12.0, 12.0);
            let g = Tensor::<B, 3>::random([2, 7, 37], range, &device).require_grad();
            let u = Tensor::<B, 3>::random([2, 7, 37], range, &device).require_grad();
            let upstream = Tensor::<B, 3>::random([2, 7, 37], range, &device);
            let ours = swiglu(&g, &u).expect("flex, f32");
            let theirs = burn::tensor::activation::silu(g.clone()).mul(u.clone());
            close_n(ours.clone().inner(), theirs.clone().inner(), 1e-5);
            let (go, gt) = (ours.mul(upstream.clone()).sum().backward(), theirs.mul(upstream).sum().backward());
            close_n(g.grad(&go).unwrap(), g.grad(&gt).unwrap(), 1e-5);
            close_n(u.grad(&go).unwrap(), u.grad(&gt).unwrap(), 1e-5);
        }

        #[test]
        fn swiglu_equals_burns_silu_times_up() {
            swiglu_matches::<Autodiff<Flex>>();
            swiglu_matches::<Autodiff<Flex, BalancedCheckpointing>>();
            let device = Default::default();
            let g = Tensor::<Flex, 3>::random([3, 4, 5], Distribution::Default, &device);
            let u = Tensor::<Flex, 3>::random([3, 4, 5], Distribution::Default, &device);
            close_n(swiglu(&g, &u).unwrap(), burn::tensor::activation::silu(g).mul(u), 1e-6);
        }

        /// Against the attention `model.rs` computes through burn's ops (host mask of −1e9,
        /// softmax, query heads folded per KV group): the output and the gradients reaching q, k
        /// and v, for right-padded rows longer than one block of queries, 4 query heads on 2 KV
        /// heads, and v a strided view as attention hands it over.
        fn causal_matches<B: AutodiffBackend>() {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let (b, h, kvh, t, d) = (2, 4, 2, 70, 8);
            let lens = [70, 33];
            let valid: Vec<bool> = lens.iter().flat_map(|&l| (0..t).map(move |j| j < l)).collect();
            let visible = crate::positions::Visible::new(0, t, valid.clone()).expect("right padding");
            let mask: Vec<f32> = (0..b * t * t).map(|i| (i / (t * t), (i / t) % t, i % t)).map(|(r, i, j)| if valid[r * t + j] && j <= i { 0.0 } else { -1e9 }).collect();
            let mask = Tensor::<B, 4>::from_data(TensorData::new(mask, [b, 1, t, t]), &device);
            let q = Tensor::<B, 4>::random([b, h, t, d], normal, &device).require_grad();
            let k = Tensor::<B, 4>::random([b, kvh, t, d], normal, &device).require_grad();
            let v = Tensor::<B, 4>::random([b, t, kvh, d], normal, &device).require_grad();
            let upstream = Tensor::<B, 3>::random([b, t, h * d], normal, &device);
            let scale = (d as f64).powf(-0.5);
            let ours = causal_attention(&q, &k, &v.clone().swap_dims(1, 2), &visible, scale as f32).expect("flex, f32");
            let scores = q.clone().reshape([b, kvh, 2 * t, d]).matmul(k.clone().swap_dims(2, 3)).mul_scalar(scale).reshape([b, h, t, t]).add(mask);
            let probs = burn::tensor::activation::softmax(scores, 3).reshape([b, kvh, 2 * t, t]);
            let theirs = probs.matmul(v.clone().swap_dims(1, 2)).reshape([b, h, t, d]).swap_dims(1, 2).reshape([b, t, h * d]);
            close_n(ours.clone().inner(), theirs.clone().inner(), 1e-5);
            let (go, gt) = (ours.mul(upstream.clone()).sum().backward(), theirs.mul(upstream).sum().backward());
            for (a, b) in [(q.grad(&go), q.grad(&gt)), (k.grad(&go), k.grad(&gt)), (v.grad(&go), v.grad(&gt))] {
                close_n(a.unwrap(), b.unwrap(), 1e-4);
            }
        }

        #[test]
        fn causal_attention_equals_burns_masked_attention() {
            causal_matches::<Autodiff<Flex>>();
            causal_matches::<Autodiff<Flex, BalancedCheckpointing>>();
        }

        #[test]
        fn rope_equals_hfs_formula_through_burns_ops() {
            rope_matches::<Autodiff<Flex>>();
            rope_matches::<Autodiff<Flex, BalancedCheckpointing>>();
            let device = Default::default();
            let x = Tensor::<Flex, 4>::random([2, 3, 4, 6], Distribution::Default, &device);
            let cos = Tensor::<Flex, 4>::random([2, 1, 4, 6], Distribution::Default, &device);
            let sin = Tensor::<Flex, 4>::random([2, 1, 4, 6], Distribution::Default, &device);
            close4(rope(&x, &cos, &sin).unwrap(), reference(x, cos, sin));
        }

        fn buffer(t: &Tensor<Flex, 4>) -> *const f32 {
            let t: FlexTensor = t.clone().into_primitive().tensor();
            t.storage::<f32>().as_ptr()
        }

        /// The rows land where `slice_assign` puts them; in place when the cache's buffer is its
        /// own, and a handle kept elsewhere still sees the old contents (copy-on-write).
        #[test]
        fn assign_rows_writes_in_place_only_when_the_buffer_is_unshared() {
            let device = Default::default();
            let cache = Tensor::<Flex, 4>::random([2, 3, 10, 4], Distribution::Default, &device);
            let value = Tensor::<Flex, 4>::random([2, 3, 4, 4], Distribution::Default, &device);
            let expected = cache.clone().slice_assign([0..2, 0..3, 5..9, 0..4], value.clone());
            let original = Tensor::<Flex, 4>::from_data(cache.to_data(), &device);
            let kept = cache.clone();
            let shared = assign_rows(cache, 5, value.clone());
            close4(shared.clone(), expected.clone());
            close4(kept.clone(), original);
            assert_ne!(buffer(&kept), buffer(&shared), "a shared buffer must not be written");
            drop(kept);
            let before = buffer(&shared);
            let again = assign_rows(shared, 1, value.clone());
            assert_eq!(buffer(&again), before, "an unshared buffer is written in place");
            close4(again, expected.slice_assign([0..2, 0..3, 1..5, 0..4], value));
        }

        #[test]
        fn linear_equals_burns_matmul_with_and_without_autodiff() {
            matches_burns_matmul::<Autodiff<Flex>>();
            matches_burns_matmul::<Autodiff<Flex, BalancedCheckpointing>>();
            let device = Default::default();
            let x = Tensor::<Flex, 2>::random([33, 24], Distribution::Default, &device);
            let w = Tensor::<Flex, 2>::random([70, 24], Distribution::Default, &device);
            close(linear(x.clone(), w.clone()), x.matmul(w.transpose()));
            assert!(is_cpu::<Flex>() && is_cpu::<Autodiff<Flex>>());
        }

        #[test]
        fn transpose_covers_blocks_tiles_and_ragged_edges() {
            for (rows, cols) in [(37, 70), (130, 16), (16, 130), (5, 3), (64, 64)] {
                let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
                let dst = transpose(&src, rows, cols);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}x{cols} at {r},{c}");
                    }
                }
            }
        }
    }
}
