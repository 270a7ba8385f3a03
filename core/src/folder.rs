//! Reading a checkpoint folder as the Hub ships it. Native only: the rest of the crate takes
//! bytes and readers, so wasm builds supply files their own way.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::generation_eos;
use crate::weights::ReadSeek;
use crate::{Error, Qwen3Config, Result, SafetensorsFile, Tokenizer};

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Format(format!("{}: {e}", path.display())))
}

/// Shard file names listed by `model.safetensors.index.json`, sorted, each once.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(&read(index)?)
        .map_err(|e| Error::Format(format!("{}: not valid JSON: {e}", index.display())))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Format(format!("{}: no weight_map", index.display())))?;
    let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether `dir` holds weights (a single file or an index).
pub fn has_weights(dir: &Path) -> bool {
    dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists()
}

/// The safetensors files of a checkpoint folder: the index's shards, else `model.safetensors`,
/// else every `*.safetensors` in the folder.
pub fn open_weights(dir: &Path) -> Result<SafetensorsFile> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        shard_names(&index)?.into_iter().map(|n| dir.join(n)).collect()
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Format(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && !p.ends_with("adapter_model.safetensors"))
            .collect();
        found.sort();
        found
    };
    if files.is_empty() {
        return Err(Error::Format(format!(
            "{}: no model.safetensors (or model.safetensors.index.json); use --random-weights to run without weights",
            dir.display()
        )));
    }
    let mut shards: Vec<(String, Box<dyn ReadSeek>)> = Vec::new();
    for f in files {
        let file = File::open(&f).map_err(|e| Error::Format(format!("{}: {e}", f.display())))?;
        shards.push((f.display().to_string(), Box::new(std::io::BufReader::new(file))));
    }
    SafetensorsFile::open(shards)
}

pub fn load_config(dir: &Path) -> Result<Qwen3Config> {
    let path = dir.join("config.json");
    Qwen3Config::from_json(&read(&path)?, &path.display().to_string())
}

/// `tokenizer.json` from `tokenizer_dir` if given, else from the model folder.
pub fn load_tokenizer(dir: &Path, tokenizer_dir: Option<&Path>) -> Result<Tokenizer> {
    let path = tokenizer_dir.unwrap_or(dir).join("tokenizer.json");
    if !path.exists() {
        return Err(Error::Format(format!("{}: missing (pass --tokenizer DIR to read it from elsewhere)", path.display())));
    }
    Tokenizer::from_bytes(&read(&path)?, &path.display().to_string())
}

/// generation_config.json's eos ids; absent → config.json's `eos_token_id`.
pub fn load_eos(dir: &Path, config: &Qwen3Config) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    let from_gen = if path.exists() { generation_eos(&read(&path)?, &path.display().to_string())? } else { None };
    let eos = from_gen.unwrap_or_else(|| config.eos_token_ids.clone());
    if eos.is_empty() {
        return Err(Error::Format(format!("{}: no eos_token_id in generation_config.json or config.json", dir.display())));
    }
    Ok(eos)
}

/// An adapter folder in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.
pub fn open_adapter(dir: &Path) -> Result<(crate::lora::LoraConfig, SafetensorsFile)> {
    let config_path = dir.join("adapter_config.json");
    let config = crate::lora::LoraConfig::from_peft_json(&read(&config_path)?, &config_path.display().to_string())?;
    let weights_path = dir.join("adapter_model.safetensors");
    let file = File::open(&weights_path).map_err(|e| Error::Format(format!("{}: {e}", weights_path.display())))?;
    let weights = SafetensorsFile::open(vec![(weights_path.display().to_string(), Box::new(std::io::BufReader::new(file)))])?;
    Ok((config, weights))
}
