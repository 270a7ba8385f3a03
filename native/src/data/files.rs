//! Reading inputs and writing outputs for `tiqu data check|import|split`: outputs never replace
//! an existing file unless `--force` says so, never replace an input even then, and appear whole
//! or not at all (written beside, then renamed), so a failed run loses nothing on disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use tiqu_core::dataset::Records;

/// `Permission denied (os error 13)` → `Permission denied`.
pub fn short(e: &std::io::Error) -> String {
    let msg = e.to_string();
    msg.split(" (os error").next().unwrap_or(&msg).to_string()
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        bail!("{}: is a folder, not a file", path.display());
    }
    fs::read(path).map_err(|e| anyhow!("cannot read {}: {}", path.display(), short(&e)))
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

/// `dir/name.ext` → `dir/name.<suffix>`.
pub fn beside(input: &Path, suffix: &str) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    input.with_file_name(format!("{stem}.{suffix}"))
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

/// Writes `lines` (each followed by a newline) to `path` through a temporary file beside it.
pub fn write_lines<S: AsRef<str>>(path: &Path, lines: &[S]) -> Result<()> {
    write_with(path, |w| {
        for line in lines {
            w.write_all(line.as_ref().as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Writes whatever `fill` writes to a file beside `path`, then renames it over `path`: a failure
/// (or a kill) at any point leaves `path` as it was.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let fail = |e: std::io::Error| anyhow!("cannot write {}: {}", path.display(), short(&e));
    tiqu_core::checkpoint::save::check_replaceable(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // create_dir_all says "File exists" when a file stands in the way: name it instead.
        if let Some(file) = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
            bail!("cannot write {}: {} is not a folder", path.display(), file.display());
        }
        fs::create_dir_all(dir).map_err(fail)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut w = std::io::BufWriter::new(fs::File::create(&tmp)?);
        fill(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// [`write_with`] for work that can fail on its own (a record read, a check): its error is
/// returned as it is, not as a write error of `path`, and `path` is left as it was.
pub fn write_checked<T>(path: &Path, fill: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> Result<T>) -> Result<T> {
    let mut result = None;
    let written = write_with(path, |w| {
        let r = fill(w);
        let failed = r.is_err();
        result = Some(r);
        if failed { Err(std::io::Error::other("not written")) } else { Ok(()) }
    });
    let value = result.transpose()?;
    written?;
    value.ok_or_else(|| anyhow!("{}: nothing was written", path.display()))
}
