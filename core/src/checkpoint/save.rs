//! Saving beside loading: PEFT adapter folders and standalone model folders, written so that a
//! crash or power cut never leaves a complete-looking folder with missing or truncated files.
//! Every file is written under a unique temporary name, synced, then renamed; a folder is built
//! under a unique temporary name that only this process owns, synced, then renamed into place.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::Backend;
use serde_json::json;

use super::{Adapter, Checkpoint, ADAPTER_CONFIG, ADAPTER_WEIGHTS, COMPANION_FILES, TOKENIZER_FILES, WEIGHTS};
use crate::config::Qwen3Config;
use crate::files::Files;
use crate::lora::LoraConfig;
use crate::model::Qwen3ForCausalLM;
use crate::params::{base_tensors, NamedTensor};
use crate::vocab::VocabMap;
use crate::weights::{encode, write_safetensors, Dtype, TensorEntry};
use crate::{Error, Result};

/// A name no other process (and no earlier run of this one) uses: pid, time and a counter.
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}-{n}", std::process::id())
}

/// The temporary files and folders this process is writing. A signal that stops the process
/// skips every destructor, so the CLI's handler removes these ([`remove_partials`]) before it
/// exits: an interrupted run leaves nothing behind.
static PARTIALS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn track(path: &Path) {
    PARTIALS.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
}

fn untrack(path: &Path) {
    PARTIALS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != path);
}

/// Removes every temporary file and folder still being written; the number removed. For a
/// signal handler that then exits: a rename in progress elsewhere either finished (its file is
/// whole and in place) or finds its source gone.
pub fn remove_partials() -> usize {
    let partials = std::mem::take(&mut *PARTIALS.lock().unwrap_or_else(|e| e.into_inner()));
    partials.iter().filter(|p| fs::remove_dir_all(p).or_else(|_| fs::remove_file(p)).is_ok()).count()
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Makes the renames and creations inside `dir` durable (a no-op where folders cannot be opened).
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir.display(), e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses to replace what a rename would destroy rather than write to: a symbolic link (the
/// link would become a file, its target untouched; a dangling one passed for "no file yet") or a
/// device, pipe or socket (`--out /dev/full --force` left a regular file in /dev).
pub fn check_replaceable(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        return Err(Error::Format(format!("{}: is a symbolic link; give the path of the file itself", path.display())));
    }
    if !meta.is_file() && !meta.is_dir() {
        return Err(Error::Format(format!("{}: is not a regular file (a device, pipe or socket); not replaced", path.display())));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a unique temporary file in the same folder, synced before
/// the rename: readers see the old file or the whole new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = PartialFile::beside(path)?;
    // Named by the file asked for: the temporary name beside it means nothing to the user.
    file.writer().write_all(bytes).map_err(|e| Error::io(path.display(), e))?;
    file.commit(path, true)
}

/// A file too large to hold in memory, written under a temporary name this process created:
/// [`PartialFile::commit`] syncs it and renames it into place; dropped uncommitted, it is removed,
/// so a failed or interrupted write never leaves a complete-looking file.
pub struct PartialFile {
    path: PathBuf,
    file: std::io::BufWriter<fs::File>,
    committed: bool,
}

impl PartialFile {
    pub fn beside(dest: &Path) -> Result<Self> {
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
        check_replaceable(dest)?;
        let path = parent_of(dest).join(format!(".{name}.tiqu-tmp-{}", unique_suffix()));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| Error::io(dest.display(), e))?;
        track(&path);
        Ok(Self { path, file: std::io::BufWriter::new(file), committed: false })
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        &mut self.file
    }

    /// Flushes and syncs what was written: a write error (a full disk) is found here.
    fn sync(&mut self, dest: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::io(dest.display(), e);
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_all().map_err(io)
    }

    /// Renames the file to `dest`, which must not exist unless `replace`.
    pub fn commit(mut self, dest: &Path, replace: bool) -> Result<()> {
        self.sync(dest)?;
        check_replaceable(dest)?;
        if dest.exists() && !replace {
            return Err(Error::Format(format!("{}: exists; not overwritten", dest.display())));
        }
        fs::rename(&self.path, dest).map_err(|e| Error::io(dest.display(), e))?;
        self.committed = true;
        untrack(&self.path);
        sync_dir(&parent_of(dest))
    }
}

/// Commits the outputs of one command together: every file is flushed and synced before the
/// first rename, so a write error (a full disk) leaves every destination as it was.
pub fn commit_all(files: Vec<(PartialFile, &Path)>, replace: bool) -> Result<()> {
    let mut files = files;
    for (file, dest) in &mut files {
        file.sync(dest)?;
    }
    files.into_iter().try_for_each(|(file, dest)| file.commit(dest, replace))
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
            untrack(&self.path);
        }
    }
}

/// A folder being written under a temporary name that this process created (and so owns):
/// [`PartialDir::commit`] renames it into place; dropped uncommitted, it is removed.
pub struct PartialDir {
    path: PathBuf,
    committed: bool,
}

impl PartialDir {
    /// Creates `.NAME.tiqu-tmp-…` beside `dest`, failing rather than reusing anything that exists.
    pub fn beside(dest: &Path) -> Result<Self> {
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
        if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::Format(format!("{}: is a symbolic link; give the path of the folder itself", dest.display())));
        }
        let parent = parent_of(dest);
        // create_dir_all says "File exists" when a file stands in the way: name it instead.
        if let Some(file) = parent.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
            return Err(Error::Format(format!("{}: {} is a file, not a folder", dest.display(), file.display())));
        }
        fs::create_dir_all(&parent).map_err(|e| Error::io(parent.display(), e))?;
        let path = parent.join(format!(".{name}.tiqu-tmp-{}", unique_suffix()));
        fs::create_dir(&path).map_err(|e| Error::io(dest.display(), e))?;
        track(&path);
        Ok(Self { path, committed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs every file inside, then renames the folder to `dest` (which must not exist, or be a
    /// folder that `replace` allows to go) and syncs the parent.
    pub fn commit(mut self, dest: &Path, replace: bool) -> Result<()> {
        let entries = fs::read_dir(&self.path).map_err(|e| Error::io(self.path.display(), e))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_file() {
                fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(p.display(), e))?;
            }
        }
        sync_dir(&self.path)?;
        if dest.exists() {
            if !replace {
                return Err(Error::Format(format!("{}: exists; not overwritten", dest.display())));
            }
            fs::remove_dir_all(dest).map_err(|e| Error::io(dest.display(), e))?;
        }
        fs::rename(&self.path, dest).map_err(|e| Error::io(dest.display(), e))?;
        self.committed = true;
        untrack(&self.path);
        sync_dir(&parent_of(dest))
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
            untrack(&self.path);
        }
    }
}

/// f32 tensors as the bytes of one safetensors file.
pub fn tensors_file(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let entries: Vec<TensorEntry> = tensors.iter().map(|(n, s, _)| TensorEntry { name: n.clone(), dtype: Dtype::F32, shape: s.clone() }).collect();
    let mut bytes = Vec::new();
    write_safetensors(&mut bytes, &entries, &[("format", "pt")], |i| Ok(encode(&tensors[i].2, Dtype::F32)))?;
    Ok(bytes)
}

/// Writes `adapter_config.json` + `adapter_model.safetensors` into `dir` (PEFT's layout).
pub fn save_adapter<B: Backend>(dir: &Path, model: &Qwen3ForCausalLM<B>, lora: &LoraConfig, base_model: &str) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let tensors: Vec<NamedTensor> = model.adapter_tensors()?.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
    write_atomically(&dir.join(ADAPTER_WEIGHTS), &tensors_file(&tensors)?)?;
    let config = serde_json::to_vec_pretty(&lora.to_peft_json(base_model)).map_err(|e| Error::Other(e.to_string()))?;
    write_atomically(&dir.join(ADAPTER_CONFIG), &config)
}

/// What a whole model needs, besides its weights, to be a standalone Hugging Face folder.
pub struct ModelFolder<'a> {
    pub config: &'a Qwen3Config,
    pub eos_token_ids: &'a [u32],
    /// Where `tokenizer.json` and `tokenizer_config.json` come from.
    pub tokenizer: &'a dyn Files,
    /// A model trained over a compact vocabulary is saved with Qwen3's ids again.
    pub vocab: Option<&'a VocabMap>,
}

impl ModelFolder<'_> {
    /// Writes config.json, generation_config.json, the tokenizer files and model.safetensors (f32,
    /// the full vocabulary) into `dir`.
    pub fn save<B: Backend>(&self, dir: &Path, model: &Qwen3ForCausalLM<B>) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let mut tensors = base_tensors(model)?;
        if let Some(vocab) = self.vocab {
            for (name, shape, values) in tensors.iter_mut() {
                if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                    *values = vocab.expand_rows(values, shape[1]);
                    shape[0] = vocab.full_size();
                }
            }
        }
        write_atomically(&dir.join(WEIGHTS), &tensors_file(&tensors)?)?;
        let mut config = self.config.raw.clone();
        let key = if config.get("dtype").is_some() { "dtype" } else { "torch_dtype" };
        config[key] = json!("float32");
        let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).map_err(|e| Error::Other(e.to_string()));
        write_atomically(&dir.join("config.json"), &pretty(&config)?)?;
        let generation = json!({"bos_token_id": self.config.bos_token_id, "eos_token_id": self.eos_token_ids});
        write_atomically(&dir.join("generation_config.json"), &pretty(&generation)?)?;
        for name in TOKENIZER_FILES {
            if self.tokenizer.exists(name) {
                write_atomically(&dir.join(name), &self.tokenizer.read(name)?)?;
            }
        }
        Ok(())
    }
}

/// Folds `adapter` into `base`'s weights and writes a standalone folder `out` (which must not
/// exist, or be empty): the merged `model.safetensors` in the base's dtype and the base's
/// companion files. Built under a temporary name of its own, renamed when complete. Returns the
/// number of weight matrices changed and the adapter's settings.
pub fn merge_folder(base: &Checkpoint, adapter: &dyn Files, out: &Path) -> Result<(usize, LoraConfig)> {
    if out.is_file() {
        return Err(Error::Format(format!("{}: is a file; merge writes a new folder", out.display())));
    }
    if out.exists() && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::Format(format!("{}: already exists and is not empty; merge writes a new folder", out.display())));
    }
    let Adapter { config: lora, weights: mut adapter_weights, .. } = Adapter::open(adapter)?;
    let mut weights = base.weights()?;
    let tmp = PartialDir::beside(out)?;
    let target = tmp.path().join(WEIGHTS);
    let file = fs::File::create(&target).map_err(|e| Error::io(target.display(), e))?;
    let mut writer = std::io::BufWriter::new(file);
    let merged = crate::merge::merge_into(&mut weights, base.config(), &lora, &mut adapter_weights, &mut writer)?;
    writer.flush().map_err(|e| Error::io(target.display(), e))?;
    drop(writer);
    let files = base.files();
    for name in COMPANION_FILES {
        if files.exists(name) {
            fs::write(tmp.path().join(name), files.read(name)?).map_err(|e| Error::io(tmp.path().join(name).display(), e))?;
        }
    }
    if out.exists() {
        // Empty (checked above): replaced by the complete folder.
        fs::remove_dir(out).map_err(|e| Error::io(out.display(), e))?;
    }
    tmp.commit(out, false)?;
    Ok((merged, lora))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_folders_are_unique_owned_and_removed_unless_committed() {
        let root = std::env::temp_dir().join(format!("tiqu-save-test-{}", unique_suffix()));
        fs::create_dir_all(root.join("merged.partial")).unwrap();
        let dest = root.join("merged.v2");
        let a = PartialDir::beside(&dest).unwrap();
        let b = PartialDir::beside(&dest).unwrap();
        assert_ne!(a.path(), b.path());
        write_atomically(&a.path().join("x"), b"1").unwrap();
        drop(b);
        a.commit(&dest, false).unwrap();
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"1");
        // Nothing left behind but the destination and the unrelated folder, which is untouched.
        let mut names: Vec<String> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        assert_eq!(names, ["merged.partial", "merged.v2"]);
        let again = PartialDir::beside(&dest).unwrap();
        let err = again.commit(&dest, false).unwrap_err().to_string();
        assert!(err.ends_with("merged.v2: exists; not overwritten"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
