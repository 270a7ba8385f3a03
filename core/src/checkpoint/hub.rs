//! A Hub id (`Qwen/Qwen3-0.6B`) as a folder: the snapshot in the standard Hugging Face cache
//! (`$HF_HOME/hub` or `~/.cache/huggingface/hub`), downloaded into it when the Hub is reachable.

use std::path::{Path, PathBuf};

use super::{shard_names, COMPANION_FILES, WEIGHTS, WEIGHTS_INDEX};
use crate::{Error, Result};

/// `model` as a folder: an existing folder as is, else a Hub id from the cache (or downloaded).
pub fn resolve_dir(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::Format(format!("{model}: a model must be a checkpoint folder (or a Hub id), not a file")));
    }
    // `owner/name` of the Hub's characters: `/nonexistent` or `runs/x/` is a path, not an id.
    let part = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let looks_like_id = model.split_once('/').is_some_and(|(owner, name)| part(owner) && part(name));
    if !looks_like_id {
        return Err(Error::Format(format!("{model}: no such folder (and not a Hub id like Qwen/Qwen3-0.6B)")));
    }
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(model.to_string());
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.join(WEIGHTS).exists() || dir.join(WEIGHTS_INDEX).exists() {
            return Ok(dir);
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v != "0" && !v.is_empty());
    let how = format!(
        "download it on a machine with internet (`huggingface-cli download {model}`) and copy the cache to {}, \
         or give a folder holding config.json, *.safetensors and tokenizer.json",
        cache.path().display()
    );
    if offline {
        return Err(Error::Format(format!("{model} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: {how}", cache.path().display())));
    }
    download(model).map_err(|e| {
        Error::Format(format!("{model} is not in the Hugging Face cache ({}) and downloading failed ({e}): {how}", cache.path().display()))
    })
}

fn download(model: &str) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).with_retries(0).build().map_err(|e| e.to_string())?;
    let repo = api.model(model.to_string());
    let mut dir = None;
    for file in COMPANION_FILES {
        match repo.get(file) {
            Ok(p) => dir = p.parent().map(Path::to_path_buf),
            Err(e) if file == "config.json" => return Err(e.to_string()),
            Err(_) => {}
        }
    }
    let dir = dir.ok_or("no files downloaded")?;
    match repo.get(WEIGHTS_INDEX) {
        Ok(index) => {
            let bytes = std::fs::read(&index).map_err(|e| format!("{}: {e}", index.display()))?;
            // Checked before any name reaches the download or a path.
            for shard in shard_names(&bytes, &index.display().to_string()).map_err(|e| e.to_string())? {
                repo.get(&shard).map_err(|e| e.to_string())?;
            }
        }
        Err(_) => {
            repo.get(WEIGHTS).map_err(|e| e.to_string())?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that does not exist is named as a missing folder, never sent to the Hub (an
    /// absolute path used to end in a DNS failure for https://huggingface.co//nonexistent).
    #[test]
    fn paths_are_not_hub_ids() {
        for path in ["/nonexistent", "/no/such", "runs/x/", "./a/b", "a/b/c", "a/../b", "a b/c"] {
            let err = resolve_dir(path).unwrap_err().to_string();
            assert!(err.contains("no such folder (and not a Hub id"), "{path}: {err}");
        }
    }
}
