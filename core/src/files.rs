//! Where a checkpoint's files come from: a folder on disk, files held in memory (the browser's,
//! or an app's), a Hugging Face cache snapshot (a folder too). The loader and the savers only
//! see this trait, so every caller loads through the same code.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Arc;

use crate::weights::ReadSeek;
use crate::{Error, Result};

pub trait Files {
    /// How messages name the whole set: the folder's path, or a label.
    fn label(&self) -> String;
    /// Whether the file `name` (relative to the set) exists.
    fn exists(&self, name: &str) -> bool;
    /// A reader over the file `name`.
    fn open(&self, name: &str) -> Result<Box<dyn ReadSeek>>;
    /// The names of the files in the set (the top level of a folder).
    fn list(&self) -> Result<Vec<String>>;

    /// How messages name the file `name`.
    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.label())
    }

    /// The error for a file `name` that is not there; `what` says what the set is not then
    /// ("not an adapter folder").
    fn missing(&self, name: &str, what: &str) -> Error {
        Error::Format(format!("{}: missing ({what})", self.path(name)))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(name)?.read_to_end(&mut bytes).map_err(|e| Error::io(self.path(name), e))?;
        Ok(bytes)
    }
}

/// Whether `name`, taken from a file such as `model.safetensors.index.json`, stays inside the
/// folder it is relative to: a relative path of plain components (no `..`, no root, no drive,
/// no NUL). Names from checkpoint files are untrusted.
pub fn stays_inside(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && !name.contains('\\')
        && !name.starts_with('/')
        && !name.contains(':')
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Files held in memory, by name.
#[derive(Clone, Default)]
pub struct MemoryFiles {
    label: String,
    files: BTreeMap<String, Arc<[u8]>>,
}

impl MemoryFiles {
    pub fn new(label: &str) -> Self {
        Self { label: label.to_string(), files: BTreeMap::new() }
    }

    pub fn insert(&mut self, name: &str, bytes: impl Into<Arc<[u8]>>) -> &mut Self {
        self.files.insert(name.to_string(), bytes.into());
        self
    }
}

impl Files for MemoryFiles {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn exists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    fn open(&self, name: &str) -> Result<Box<dyn ReadSeek>> {
        let bytes = self.files.get(name).ok_or_else(|| Error::Format(format!("{}: missing", self.path(name))))?;
        Ok(Box::new(Cursor::new(bytes.clone())))
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }
}

/// A folder on disk.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct Folder {
    dir: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl Folder {
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn file(&self, name: &str) -> Result<std::path::PathBuf> {
        if !stays_inside(name) {
            return Err(Error::Format(format!("{}: file name `{name}` leaves the folder", self.dir.display())));
        }
        Ok(self.dir.join(name))
    }

    /// `name`'s path when it is a regular file (through links). A folder read as a file seemed
    /// 2⁶³ bytes long to a seek, and opening a named pipe waited for a writer forever.
    fn regular_file(&self, name: &str) -> Result<std::path::PathBuf> {
        let path = self.file(name)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Err(Error::Format(format!("{}: is a folder, not a file", path.display()))),
            Ok(m) if !m.is_file() => Err(Error::Format(format!("{}: is not a regular file (a device, pipe or socket)", path.display()))),
            _ => Ok(path),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Files for Folder {
    fn label(&self) -> String {
        self.dir.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A file given where its folder belongs (`--adapter run/adapter_config.json`) or a folder
    /// that is not there is named as such, not as `…/adapter_config.json/adapter_config.json`.
    fn missing(&self, name: &str, what: &str) -> Error {
        let dir = self.dir.display();
        match std::fs::metadata(&self.dir) {
            Ok(m) if !m.is_dir() => Error::Format(format!("{dir}: is a file; give the folder that holds {name}")),
            Err(_) => Error::Format(format!("{dir}: no such folder")),
            Ok(_) => Error::Format(format!("{}: missing ({what})", self.path(name))),
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.file(name).is_ok_and(|p| p.is_file())
    }

    fn open(&self, name: &str) -> Result<Box<dyn ReadSeek>> {
        let path = self.regular_file(name)?;
        let file = std::fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
        Ok(Box::new(std::io::BufReader::new(file)))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.regular_file(name)?;
        std::fs::read(&path).map_err(|e| Error::io(path.display(), e))
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(self.dir.display(), e))?;
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(String::from)).collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for bad in ["../x.safetensors", "/etc/passwd", "a/../../b", "", "a//b", "./a", "C:\\x", "c:x", "a\\..\\b", "x\0y"] {
            assert!(!stays_inside(bad), "{bad:?}");
        }
        for good in ["model-00001-of-00002.safetensors", "shards/model.safetensors", "a..b.safetensors"] {
            assert!(stays_inside(good), "{good:?}");
        }
    }

    #[test]
    fn memory_files_read_back_what_was_put_in() {
        let mut files = MemoryFiles::new("mem");
        files.insert("config.json", b"{}".to_vec());
        assert!(files.exists("config.json") && !files.exists("x"));
        assert_eq!(files.read("config.json").unwrap(), b"{}");
        assert_eq!(files.read("x").unwrap_err().to_string(), "mem/x: missing");
    }
}
