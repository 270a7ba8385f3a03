//! A run's checkpoints: `checkpoint-N/` holds the trainable weights (a PEFT adapter, or a whole
//! model for full training), the AdamW moments (`optimizer.safetensors`) and where the run stood
//! (`trainer_state.json`, with the settings it ran under). Each is built under a temporary name
//! and renamed once every file is synced, so a folder named `checkpoint-N` is complete; one
//! damaged anyway (a disk error, a hand edit) is skipped on resume for the one before it.

use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::checkpoint::save::{save_adapter, tensors_file, write_atomically, ModelFolder, PartialDir};
use crate::params::NamedTensor;
use crate::train::{trainable_names, Method, Trainer};
use crate::weights::SafetensorsFile;
use crate::{Error, Result};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where the run stands; saved in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: usize,
    pub total_steps: usize,
    pub elapsed_s: f64,
    /// The settings the checkpoint was trained under (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    /// [`super::data::digest`] of the training examples (absent in older checkpoints): a resume
    /// over other data, or the same file under another tokenizer, is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// The base weights' dtype (`f32`, `bf16`, `f16`; absent in older checkpoints): resumed in
    /// another, the curve would go on from other numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

impl TrainerState {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::json(path.display(), e))
    }
}

fn to_vec<B: Backend>(t: Tensor<B, 2>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = t.dims().to_vec();
    let values = t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| Error::Tensor(format!("{name}: {e:?}")))?;
    Ok((shape, values))
}

/// Writes `checkpoint-{state.global_step}` into `run` and returns its path.
pub fn save<B: AutodiffBackend>(run: &Path, trainer: &Trainer<B>, cfg: &RunConfig, folder: &ModelFolder, state: &TrainerState) -> Result<PathBuf> {
    let dest = run.join(format!("checkpoint-{}", state.global_step));
    let tmp = PartialDir::beside(&dest)?;
    match trainer.method {
        Method::Lora => save_adapter(tmp.path(), &trainer.model, &cfg.lora, &cfg.model)?,
        Method::Full => folder.save(tmp.path(), &trainer.model)?,
    }
    let mut moments: Vec<NamedTensor> = Vec::new();
    for (i, name) in trainable_names(&trainer.model, trainer.method).iter().enumerate() {
        let (s, m) = to_vec(trainer.state.exp_avg[i].clone(), name)?;
        let (_, v) = to_vec(trainer.state.exp_avg_sq[i].clone(), name)?;
        moments.push((format!("{name}.exp_avg"), s.clone(), m));
        moments.push((format!("{name}.exp_avg_sq"), s, v));
    }
    write_atomically(&tmp.path().join(OPTIMIZER_FILE), &tensors_file(&moments)?)?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
    write_atomically(&tmp.path().join(STATE_FILE), &state_json)?;
    // A checkpoint of the same step exists when a resumed run passes it again: same numbers.
    tmp.commit(&dest, true)?;
    Ok(dest)
}

/// The run's checkpoints (folders `checkpoint-N`), newest first. One without its trainer state
/// is listed too: it is a damaged checkpoint, not none (a resume that took it for none would
/// start over and write over it).
pub fn checkpoints(run: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = fs::read_dir(run)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
                    e.path().is_dir().then_some((step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found
}

/// The AdamW moments of `dir` into `trainer`, each checked against the shape of the weight it
/// belongs to.
pub fn restore_moments<B: AutodiffBackend>(trainer: &mut Trainer<B>, dir: &Path, step: usize) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let file = fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
    let label = path.display().to_string();
    let mut moments = SafetensorsFile::open(vec![(label.clone(), Box::new(std::io::BufReader::new(file)))])?;
    let device = trainer.model.device();
    for (i, name) in trainable_names(&trainer.model, trainer.method).iter().enumerate() {
        let expected = trainer.state.exp_avg[i].dims();
        for (which, slot) in [("exp_avg", &mut trainer.state.exp_avg[i]), ("exp_avg_sq", &mut trainer.state.exp_avg_sq[i])] {
            let key = format!("{name}.{which}");
            let (shape, values) = moments.read_f32(&key)?;
            if shape != expected {
                return Err(Error::Tensor(format!("{label}: tensor `{key}` has shape {shape:?}, but `{name}` is {expected:?}")));
            }
            // Resumed from, a NaN moment makes every later step's weights NaN.
            if values.iter().any(|v| !v.is_finite() || (which == "exp_avg_sq" && *v < 0.0)) {
                return Err(Error::Tensor(format!("{label}: tensor `{key}` holds NaN, infinite or (for exp_avg_sq) negative values")));
            }
            *slot = Tensor::<B, 2>::from_data(TensorData::new(values, expected), &device).inner();
        }
    }
    trainer.state.step = step;
    Ok(())
}
