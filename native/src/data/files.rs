//! Reading inputs and writing outputs for `tiqu data check|import|split`: outputs never replace
//! an existing file unless `--force` says so, never replace an input even then, and appear whole
//! or not at all (written beside, then renamed), so a failed run loses nothing on disk.

use std::ffi::OsStr;
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use tiqu_core::checkpoint::save::{commit_all, PartialFile};
use tiqu_core::dataset::Records;

/// `Permission denied (os error 13)` → `Permission denied`.
pub fn short(e: &std::io::Error) -> String {
    let msg = e.to_string();
    msg.split(" (os error").next().unwrap_or(&msg).to_string()
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open(path)?, &mut bytes).map_err(|e| anyhow!("cannot read {}: {}", path.display(), short(&e)))?;
    Ok(bytes)
}

/// The SFT records of `path`, a record at a time (a file is never held whole). A file without a
/// record is an error here, before anything is written.
pub fn records(path: &Path) -> Result<Records<std::io::BufReader<fs::File>>> {
    Ok(Records::open(open(path)?, &path.display().to_string())?)
}

/// `path` for reading a record at a time; errors name it.
pub fn open(path: &Path) -> Result<std::io::BufReader<fs::File>> {
    if path.is_dir() {
        bail!("{}: is a folder, not a file", path.display());
    }
    let file = fs::File::open(path).map_err(|e| anyhow!("cannot read {}: {}", path.display(), short(&e)))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, file))
}

/// A file that can be read twice: not a pipe, FIFO or device.
pub fn is_regular(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// `dir/name.ext` → `dir/name.<suffix>` (a name that is not UTF-8 kept as it is).
pub fn beside(input: &Path, suffix: &str) -> PathBuf {
    let mut name = input.file_stem().map(OsStr::to_os_string).unwrap_or_default();
    name.push(format!(".{suffix}"));
    input.with_file_name(name)
}

/// Whether two paths name one output: spelled differently (`x`, `./x`, `d/../x`, absolute), or
/// one a link to the other. Outputs may not exist yet, so their folders are compared.
pub fn same_output(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| -> Option<PathBuf> {
        let absolute = std::path::absolute(p).ok()?;
        let name = absolute.file_name()?.to_os_string();
        let dir = absolute.parent()?;
        // A folder that exists is resolved (links included); one to be created, lexically.
        let dir = dir.canonicalize().unwrap_or_else(|_| {
            dir.components().fold(PathBuf::new(), |mut d, c| {
                match c {
                    Component::ParentDir => _ = d.pop(),
                    Component::CurDir => {}
                    c => d.push(c),
                }
                d
            })
        });
        Some(dir.join(name))
    };
    crate::storage::same_file(a, b) || resolved(a).is_some_and(|ra| resolved(b) == Some(ra))
}

/// Refuses `out` when it is one of `inputs`, or exists and `replace` is false.
pub fn check_target(out: &Path, inputs: &[&Path], replace: bool, flag: &str) -> Result<()> {
    if let Some(input) = inputs.iter().find(|i| crate::storage::same_file(out, i)) {
        bail!("{flag} {} is the input {}: choose another path", out.display(), input.display());
    }
    if out.is_dir() {
        bail!("{flag} {} is a folder", out.display());
    }
    tiqu_core::checkpoint::save::check_replaceable(out).map_err(|e| anyhow!("{flag} {e}"))?;
    if out.exists() && !replace {
        bail!("{flag} {} exists; pass --force to replace it", out.display());
    }
    Ok(())
}

/// One output of a command, written beside its path (and removed if the command fails or is
/// interrupted) until [`commit`] puts the command's outputs in place together. Folders made for
/// it go again with it when nothing was put in them.
pub struct Output {
    path: PathBuf,
    file: Option<PartialFile>,
    /// The folders made for it, innermost first.
    made: Vec<PathBuf>,
}

impl Output {
    pub fn create(path: &Path) -> Result<Self> {
        if path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
            bail!("cannot write {}: a file name is needed, not a folder", path.display());
        }
        let mut made = Vec::new();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // create_dir_all says "File exists" when a file stands in the way: name it instead.
            if let Some(file) = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
                bail!("cannot write {}: {} is not a folder", path.display(), file.display());
            }
            made = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
            fs::create_dir_all(dir).map_err(|e| anyhow!("cannot write {}: {}", path.display(), short(&e)))?;
        }
        let mut out = Self { path: path.to_path_buf(), file: None, made };
        out.file = Some(PartialFile::beside(path).map_err(not_written)?);
        Ok(out)
    }

    /// Writes `line` and a newline; an error names the output.
    pub fn line(&mut self, line: &[u8]) -> Result<()> {
        let path = &self.path;
        let w = self.file.as_mut().ok_or_else(|| anyhow!("{}: already put in place", path.display()))?.writer();
        w.write_all(line).and_then(|()| w.write_all(b"\n")).map_err(|e| anyhow!("cannot write {}: {}", path.display(), short(&e)))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Uncommitted: the file beside its path goes first, then the folders made for it.
        if self.file.take().is_some() {
            for dir in &self.made {
                if fs::remove_dir(dir).is_err() {
                    break;
                }
            }
        }
    }
}

/// Puts a command's outputs in place, all or none: each is whole and synced before the first is
/// renamed, so a write error (a full disk) leaves every path as it was.
pub fn commit(mut outputs: Vec<Output>) -> Result<()> {
    let files: Vec<(PartialFile, &Path)> = outputs.iter_mut().filter_map(|o| Some((o.file.take()?, o.path.as_path()))).collect();
    commit_all(files, true).map_err(not_written)
}

/// Core's I/O error on an output, said as the data tools say it.
fn not_written(e: tiqu_core::Error) -> anyhow::Error {
    match e {
        tiqu_core::Error::Io { path, source } => anyhow!("cannot write {path}: {}", short(&source)),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_beside_an_input_keep_its_name_and_spellings_of_one_path_match() {
        assert_eq!(beside(Path::new("d/all.jsonl"), "train.jsonl"), Path::new("d/all.train.jsonl"));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let input = Path::new(OsStr::from_bytes(b"d/in\xfe.jsonl"));
            assert_eq!(beside(input, "eval.jsonl").as_os_str().as_bytes(), b"d/in\xfe.eval.jsonl", "not made UTF-8");
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("sub")).unwrap();
        assert!(same_output(&d.join("x"), &d.join("sub/../x")));
        assert!(same_output(&d.join("new/x"), &d.join("new/./y/../x")), "folders to be created compare lexically");
        assert!(!same_output(&d.join("x"), &d.join("sub/x")));
        assert!(same_output(Path::new("x.jsonl"), &std::env::current_dir().unwrap().join("x.jsonl")));
    }
}
