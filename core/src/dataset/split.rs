//! Records split into training and evaluation sets by a seed, with every copy of a text on the
//! same side: texts that differ only in whitespace or punctuation width ([`super::span::fold`])
//! count as one, as in `check`'s duplicate and overlap findings, so an evaluation never scores a
//! text the model was trained on.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::span::fold;
use crate::{Error, Result};

/// Which records go to evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// One flag per record, in input order: true for the evaluation set.
    pub eval: Vec<bool>,
    /// Groups of identical texts kept together.
    pub duplicate_groups: usize,
}

impl Split {
    pub fn eval_count(&self) -> usize {
        self.eval.iter().filter(|&&e| e).count()
    }
}

/// Puts about `fraction` of the records (`round(fraction·n)`, never more) into evaluation: the
/// groups of identical texts in a seeded random order, each taken whole while it still fits.
pub fn split(texts: &[&str], fraction: f64, seed: u64) -> Result<Split> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Format(format!("--eval-fraction must be between 0 and 1 (exclusive), got {fraction:?}")));
    }
    let target = (fraction * texts.len() as f64).round() as usize;
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let g = *index.entry(fold(text)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let duplicate_groups = groups.iter().filter(|g| g.len() > 1).count();
    groups.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut eval = vec![false; texts.len()];
    let mut taken = 0;
    for group in &groups {
        if taken + group.len() <= target {
            taken += group.len();
            for &i in group {
                eval[i] = true;
            }
        }
    }
    if taken == 0 || taken == texts.len() {
        let empty = if taken == 0 { "evaluation" } else { "training" };
        return Err(Error::Format(format!(
            "--eval-fraction {fraction:?} of {} records ({} distinct texts) leaves the {empty} set empty",
            texts.len(),
            groups.len()
        )));
    }
    Ok(Split { eval, duplicate_groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_stay_together_and_the_seed_decides() {
        let texts: Vec<String> = (0..100).map(|i| format!("投诉{}", i % 40)).collect();
        let mut texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        texts.push("投诉 1"); // the same text as "投诉1" up to whitespace
        let a = split(&texts, 0.2, 7).unwrap();
        assert_eq!(a, split(&texts, 0.2, 7).unwrap());
        assert_ne!(a.eval, split(&texts, 0.2, 8).unwrap().eval);
        assert_eq!(a.duplicate_groups, 40);
        assert!(a.eval_count() <= 20 && a.eval_count() >= 15, "{}", a.eval_count());
        for (i, t) in texts.iter().enumerate() {
            for (j, u) in texts.iter().enumerate() {
                if fold(t) == fold(u) {
                    assert_eq!(a.eval[i], a.eval[j], "{t} and {u} are split apart");
                }
            }
        }
        assert!(split(&texts, 1.0, 7).unwrap_err().to_string().contains("--eval-fraction"));
        let e = split(&["a", "a"], 0.5, 7).unwrap_err().to_string();
        assert!(e.contains("leaves the evaluation set empty"), "{e}");
        // A tiny fraction is written as typed, not as 300 digits of decimal expansion.
        let e = split(&texts, 1e-300, 7).unwrap_err().to_string();
        assert!(e.contains("--eval-fraction 1e-300 of"), "{e}");
    }
}
