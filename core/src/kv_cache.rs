//! The KV cache: per layer, keys and values preallocated to a capacity and written in place.

use burn::prelude::*;

use crate::positions::RowPass;

/// Per-layer key/value cache, preallocated to its capacity.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub(crate) k: Tensor<B, 4>,
    pub(crate) v: Tensor<B, 4>,
    pub(crate) len: usize,
}

impl<B: Backend> LayerCache<B> {
    pub(crate) fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, kvh, t, d] = k.dims();
        let end = self.len + t;
        // Moved out, not cloned: a tensor with one owner is updated in place, a shared one would
        // be copied whole on every step.
        let dummy = || Tensor::<B, 4>::empty([0, 0, 0, 0], &k.device());
        let cache_k = std::mem::replace(&mut self.k, dummy());
        let cache_v = std::mem::replace(&mut self.v, dummy());
        self.k = crate::flex::assign_rows(cache_k, self.len, k);
        self.v = crate::flex::assign_rows(cache_v, self.len, v);
        self.len = end;
        (self.k.clone().slice([0..b, 0..kvh, 0..end, 0..d]), self.v.clone().slice([0..b, 0..kvh, 0..end, 0..d]))
    }

    /// Writes a [`RowPass`]'s keys and values at each row's own columns and returns the pass's
    /// rows over the columns it attends to. The shared length stays 0: a cache is used either
    /// through [`Self::append`] or through this.
    pub(crate) fn write_rows(&mut self, pass: &RowPass, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, kvh, _, d] = k.dims();
        let (first, keys) = (pass.first, pass.keys());
        let dummy = || Tensor::<B, 4>::empty([0, 0, 0, 0], &k.device());
        let cache_k = std::mem::replace(&mut self.k, dummy());
        let cache_v = std::mem::replace(&mut self.v, dummy());
        self.k = crate::flex::assign_rows_at(cache_k, first, &pass.starts, &pass.lens, k);
        self.v = crate::flex::assign_rows_at(cache_v, first, &pass.starts, &pass.lens, v);
        let rows = first..first + b;
        (self.k.clone().slice([rows.clone(), 0..kvh, 0..keys, 0..d]), self.v.clone().slice([rows, 0..kvh, 0..keys, 0..d]))
    }
}


/// The KV cache of a whole model for one batch.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    pub(crate) capacity: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows (sequences) the cache holds.
    pub fn rows(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dims()[0])
    }

    /// Pads the cache with zeros to `rows × capacity` (neither shrinks).
    pub(crate) fn grow(&mut self, rows: usize, capacity: usize) {
        for layer in &mut self.layers {
            let [b, h, c, d] = layer.k.dims();
            let (device, dtype) = (layer.k.device(), layer.k.dtype());
            for t in [&mut layer.k, &mut layer.v] {
                if capacity > c {
                    *t = Tensor::cat(vec![t.clone(), Tensor::zeros([b, h, capacity - c, d], (&device, dtype))], 2);
                }
                if rows > b {
                    *t = Tensor::cat(vec![t.clone(), Tensor::zeros([rows - b, h, capacity.max(c), d], (&device, dtype))], 0);
                }
            }
        }
        self.capacity = self.capacity.max(capacity);
    }
}
