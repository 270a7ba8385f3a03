//! Training over the part of the vocabulary the data uses.
//!
//! Qwen3's output layer is 151,936 rows wide; a small model on one task uses a few thousand of
//! them, and on a CPU the full-width softmax would cost more than the rest of the model. Training
//! runs on a compact vocabulary: row 0 stands for every token the data does not use, the other
//! rows are the used tokens in id order. Saved models are mapped back to Qwen3 ids, every unused
//! row a copy of row 0, which the softmax has only ever pushed down: an unseen input token reads
//! as "unknown", and no unused token outranks what the model learned to emit.

use std::collections::HashMap;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::Qwen3ForCausalLM;
use crate::sft::Example;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabMap {
    /// Compact id → full id; entry 0 (the unknown row) holds `u32::MAX`.
    full: Vec<u32>,
    compact: HashMap<u32, u32>,
    full_size: usize,
}

impl VocabMap {
    /// The compact id every unused token maps to.
    pub const UNKNOWN: u32 = 0;

    /// The tokens of `examples` (prompts and responses) and `always` (such as end-of-sequence ids).
    pub fn from_examples(examples: &[Example], always: &[u32], full_size: usize) -> Result<Self> {
        let mut used = vec![false; full_size];
        let ids = examples.iter().flat_map(|e| e.prompt.iter().chain(&e.response)).chain(always);
        for &id in ids {
            let slot = used
                .get_mut(id as usize)
                .ok_or_else(|| Error::Limit(format!("token id {id} is outside the vocabulary ({full_size})")))?;
            *slot = true;
        }
        Self::from_ids((0..full_size as u32).filter(|&i| used[i as usize]).collect(), full_size)
    }

    /// From the used ids (as [`Self::ids`] returns them).
    pub fn from_ids(ids: Vec<u32>, full_size: usize) -> Result<Self> {
        if ids.windows(2).any(|w| w[0] >= w[1]) || ids.last().is_some_and(|&l| l as usize >= full_size) {
            return Err(Error::Format(format!("vocabulary map: ids must be increasing and below {full_size}")));
        }
        if ids.len() >= full_size {
            return Err(Error::Limit(format!("the data uses all {full_size} tokens: nothing to restrict")));
        }
        let mut full = vec![u32::MAX];
        full.extend(&ids);
        let compact = ids.iter().enumerate().map(|(i, &id)| (id, i as u32 + 1)).collect();
        Ok(Self { full, compact, full_size })
    }

    /// The used full ids, in order.
    pub fn ids(&self) -> &[u32] {
        &self.full[1..]
    }

    /// Rows of the compact vocabulary, the unknown row included.
    pub fn len(&self) -> usize {
        self.full.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn full_size(&self) -> usize {
        self.full_size
    }

    pub fn to_compact(&self, id: u32) -> u32 {
        self.compact.get(&id).copied().unwrap_or(Self::UNKNOWN)
    }

    pub fn example(&self, ex: &Example) -> Example {
        let map = |ids: &[u32]| ids.iter().map(|&i| self.to_compact(i)).collect();
        Example { prompt: map(&ex.prompt), response: map(&ex.response) }
    }

    /// Compact rows `[len, width]` → full rows `[full_size, width]`; unused rows copy row 0.
    pub fn expand_rows(&self, compact: &[f32], width: usize) -> Vec<f32> {
        let unknown = &compact[..width];
        let mut out = Vec::with_capacity(self.full_size * width);
        for id in 0..self.full_size as u32 {
            let row = self.to_compact(id) as usize;
            out.extend_from_slice(if row == 0 { unknown } else { &compact[row * width..(row + 1) * width] });
        }
        out
    }

    /// Full rows → compact rows; row 0 from the first unused token (all unused rows are equal in
    /// a model this map expanded).
    pub fn select_rows(&self, full: &[f32], width: usize) -> Vec<f32> {
        let unused = (0..self.full_size as u32).find(|id| !self.compact.contains_key(id)).unwrap_or(0) as usize;
        let mut out = Vec::with_capacity(self.len() * width);
        out.extend_from_slice(&full[unused * width..(unused + 1) * width]);
        for &id in self.ids() {
            out.extend_from_slice(&full[id as usize * width..(id as usize + 1) * width]);
        }
        out
    }
}

impl VocabMap {
    /// Narrows a full-vocabulary model's embedding (and untied output layer) to the compact rows;
    /// row 0 is the first unused token's row.
    pub fn restrict<B: Backend>(&self, model: &mut Qwen3ForCausalLM<B>) -> Result<()> {
        if model.vocab_size() != self.full_size {
            return Err(Error::Limit(format!(
                "the model has {} tokens, the vocabulary map {}",
                model.vocab_size(),
                self.full_size
            )));
        }
        let device = model.device();
        let unused = (0..self.full_size as u32).find(|id| !self.compact.contains_key(id)).unwrap_or(0);
        let rows: Vec<i64> = std::iter::once(unused).chain(self.ids().iter().copied()).map(i64::from).collect();
        let n = rows.len();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let narrow = |p: &Param<Tensor<B, 2>>| Param::from_tensor(p.val().select(0, rows.clone())).set_require_grad(false);
        model.model.embed_tokens.weight = narrow(&model.model.embed_tokens.weight);
        if let Some(head) = model.lm_head.as_mut() {
            head.weight = narrow(&head.weight);
        }
        model.head_screen = None;
        Ok(())
    }
}

impl VocabMap {
    /// A copy of a compact-vocabulary model with Qwen3's rows again (what saving does to the
    /// weights), so that it reads and emits Qwen3's ids.
    pub fn widen<B: Backend>(&self, model: &Qwen3ForCausalLM<B>) -> Result<Qwen3ForCausalLM<B>> {
        let mut wide = model.clone();
        let device = model.device();
        let expand = |p: &Param<Tensor<B, 2>>| -> Result<Param<Tensor<B, 2>>> {
            let [_, width] = p.dims();
            let dtype = p.val().dtype();
            let values: Vec<f32> = p.val().into_data().convert::<f32>().to_vec().map_err(|e| Error::Tensor(format!("{e:?}")))?;
            let rows = TensorData::new(self.expand_rows(&values, width), [self.full_size, width]);
            Ok(Param::from_tensor(Tensor::from_data(rows, (&device, dtype))).set_require_grad(false))
        };
        wide.model.embed_tokens.weight = expand(&model.model.embed_tokens.weight)?;
        if let Some(head) = wide.lm_head.as_mut() {
            head.weight = expand(&head.weight)?;
        }
        if wide.head_screen.is_some() {
            wide.screen_head();
        }
        Ok(wide)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_ids_map_back_and_rows_round_trip() {
        let ex = Example { prompt: vec![7, 3, 3], response: vec![9] };
        let map = VocabMap::from_examples(std::slice::from_ref(&ex), &[1], 12).unwrap();
        assert_eq!(map.ids(), [1, 3, 7, 9]);
        assert_eq!(map.len(), 5);
        assert_eq!(map.example(&ex), Example { prompt: vec![3, 2, 2], response: vec![4] });
        assert_eq!(map.to_compact(5), VocabMap::UNKNOWN);
        let compact: Vec<f32> = (0..10).map(|v| v as f32).collect(); // 5 rows of width 2
        let full = map.expand_rows(&compact, 2);
        assert_eq!(full.len(), 24);
        assert_eq!(&full[2 * 7..2 * 8], &[6.0, 7.0]); // id 7 is compact row 3
        assert_eq!(&full[2 * 5..2 * 6], &[0.0, 1.0]); // id 5 is unused: the unknown row
        assert_eq!(map.select_rows(&full, 2), compact);
        assert!(VocabMap::from_examples(&[Example { prompt: vec![12], response: vec![] }], &[], 12).is_err());
    }
}
