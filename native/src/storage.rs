//! Files where a job array keeps them: a local path, or object storage through the
//! `object_store` crate (`s3://`, `gs://`, `az://`, `http(s)://`), with credentials and endpoints
//! from the usual environment variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`…). Reads are streamed as ranged GETs
//! (a shard fetches only its byte range); writes go to a local file first and are uploaded
//! whole when complete, so a reader never sees half an object.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

/// Bytes fetched per ranged GET when streaming an object.
const CHUNK: u64 = 8 << 20;

/// Whether two paths name one file (hard links and symlinks included), so `--out` can never
/// overwrite or append to the input it reads.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        std::fs::canonicalize(a).ok().is_some_and(|ca| std::fs::canonicalize(b).ok() == Some(ca))
    }
}

/// Where a file or folder is: on this machine, or in an object store.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    url: String,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// Whether `spec` names object storage rather than a local path.
pub fn is_url(spec: &str) -> bool {
    ["s3://", "gs://", "az://", "abfs://", "http://", "https://"].iter().any(|p| spec.starts_with(p))
}

impl Location {
    pub fn parse(spec: &str) -> Result<Self> {
        if !is_url(spec) {
            return Ok(Self::Local(PathBuf::from(spec)));
        }
        let url: url::Url = spec.parse().map_err(|e| anyhow!("{spec}: not a URL: {e}"))?;
        let (store, path): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "s3" => {
                let s = object_store::aws::AmazonS3Builder::from_env().with_url(spec).build();
                (Arc::new(s.with_context(|| format!("{spec}: S3 (set AWS_* variables)"))?), path_of(&url)?)
            }
            "gs" => {
                let s = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(spec).build();
                (Arc::new(s.with_context(|| format!("{spec}: Google Cloud Storage (set GOOGLE_* variables)"))?), path_of(&url)?)
            }
            "az" | "abfs" => {
                let s = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(spec).build();
                (Arc::new(s.with_context(|| format!("{spec}: Azure (set AZURE_* variables)"))?), path_of(&url)?)
            }
            _ => {
                let base = format!("{}://{}", url.scheme(), url.authority());
                let s = object_store::http::HttpBuilder::new().with_url(base).build();
                (Arc::new(s.with_context(|| format!("{spec}: HTTP"))?), path_of(&url)?)
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
        Ok(Self::Remote(Remote { store, path, url: spec.to_string(), runtime: Arc::new(runtime) }))
    }

    /// `name` inside this folder.
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(p.join(name)),
            Self::Remote(r) => {
                let url = format!("{}/{name}", r.url.trim_end_matches('/'));
                Self::Remote(Remote { path: r.path.child(name), url, ..r.clone() })
            }
        }
    }

    pub fn display(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Remote(r) => r.url.clone(),
        }
    }

    /// The size in bytes, `None` if there is no such file.
    pub fn size(&self) -> Result<Option<u64>> {
        match self {
            Self::Local(p) => match std::fs::metadata(p) {
                // A folder's size is its directory entry's (4096), not an input's.
                Ok(m) if m.is_dir() => bail!("{}: a folder, not a file", p.display()),
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => bail!("{}: {e}", p.display()),
            },
            Self::Remote(r) => match r.runtime.block_on(r.store.head(&r.path)) {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => bail!("{}: {}", r.url, one_line(&e)),
            },
        }
    }

    /// The whole file (small files: markers, configs).
    pub fn read(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Local(p) => match std::fs::read(p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => bail!("{}: {e}", p.display()),
            },
            Self::Remote(r) => match r.runtime.block_on(async { r.store.get(&r.path).await?.bytes().await }) {
                Ok(bytes) => Ok(Some(bytes.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => bail!("{}: {}", r.url, one_line(&e)),
            },
        }
    }

    /// A reader that can seek: a local file, or ranged GETs of `CHUNK` bytes.
    pub fn open(&self) -> Result<(u64, Box<dyn ReadSeekSend>)> {
        match self {
            Self::Local(p) => {
                let f = std::fs::File::open(p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
                let size = f.metadata().map_err(|e| anyhow!("{}: {e}", p.display()))?.len();
                Ok((size, Box::new(f)))
            }
            Self::Remote(r) => {
                let size = self.size()?.ok_or_else(|| anyhow!("{}: no such object", r.url))?;
                Ok((size, Box::new(RangeReader { remote: r.clone(), size, pos: 0, buf: Vec::new(), buf_start: 0 })))
            }
        }
    }

    /// Uploads (or copies) the local file `from` to this location as one object.
    pub fn put_file(&self, from: &Path) -> Result<()> {
        match self {
            Self::Local(p) => {
                tiqu_core::checkpoint::save::write_atomically(p, &std::fs::read(from).map_err(|e| anyhow!("{}: {e}", from.display()))?)?;
                Ok(())
            }
            Self::Remote(r) => {
                let mut file = std::fs::File::open(from).map_err(|e| anyhow!("{}: {e}", from.display()))?;
                r.runtime.block_on(async {
                    let upload = r.store.put_multipart(&r.path).await?;
                    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, CHUNK as usize);
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = file.read(&mut buf).map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
                        if n == 0 {
                            break;
                        }
                        writer.write(&buf[..n]);
                    }
                    writer.finish().await.map(|_| ())
                })
                .map_err(|e| anyhow!("{}: upload failed: {}", r.url, one_line(&e)))
            }
        }
    }

    /// Writes small `bytes` as the whole file.
    pub fn put(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Self::Local(p) => Ok(tiqu_core::checkpoint::save::write_atomically(p, bytes)?),
            Self::Remote(r) => r
                .runtime
                .block_on(r.store.put(&r.path, bytes.to_vec().into()))
                .map(|_| ())
                .map_err(|e| anyhow!("{}: {}", r.url, one_line(&e))),
        }
    }

    /// The local folder of a model: itself, or a copy of the remote folder's files under
    /// `cache` (kept between runs, refreshed when a size differs), for the loader.
    pub fn local_folder(&self, cache: &Path) -> Result<PathBuf> {
        let r = match self {
            Self::Local(p) => return Ok(p.clone()),
            Self::Remote(r) => r,
        };
        let listing = r
            .runtime
            .block_on(r.store.list_with_delimiter(Some(&r.path)))
            .map_err(|e| anyhow!("{}: {}", r.url, one_line(&e)))?;
        if listing.objects.is_empty() {
            bail!("{}: no files in this folder", r.url);
        }
        let dir = cache.join(sanitize(&r.url));
        std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        for object in listing.objects {
            let Some(name) = object.location.filename().map(str::to_string) else { continue };
            if !tiqu_core::files::stays_inside(&name) {
                continue;
            }
            let local = dir.join(&name);
            if std::fs::metadata(&local).is_ok_and(|m| m.len() == object.size) {
                continue;
            }
            let tmp = dir.join(format!(".{name}.part"));
            let mut out = std::fs::File::create(&tmp).map_err(|e| anyhow!("{}: {e}", tmp.display()))?;
            let (_, mut reader) = self.join(&name).open()?;
            std::io::copy(&mut reader, &mut out).map_err(|e| anyhow!("{}/{name}: {e}", r.url))?;
            out.sync_all().map_err(|e| anyhow!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &local).map_err(|e| anyhow!("{}: {e}", local.display()))?;
        }
        Ok(dir)
    }
}

/// tiqu's cache folder: `$TIQU_CACHE`, else `~/.cache/tiqu`.
fn cache_dir() -> PathBuf {
    std::env::var_os("TIQU_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tiqu")))
        .unwrap_or_else(|| std::env::temp_dir().join("tiqu-cache"))
}

/// A model folder given as `--model`: downloaded to the cache when it is a URL.
pub fn model_folder(spec: &str) -> Result<String> {
    if !is_url(spec) {
        return Ok(spec.to_string());
    }
    Ok(Location::parse(spec)?.local_folder(&cache_dir().join("models"))?.display().to_string())
}

/// A file deleted on close, in the cache folder (not /tmp, often a small RAM disk): where a shard's
/// range of an object is kept while it is answered.
pub fn spool_file() -> Result<std::fs::File> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    tempfile::tempfile_in(&dir).map_err(|e| anyhow!("{}: a spool file: {e}", dir.display()))
}

/// The local folder where a shard writes the part it uploads to `out` when complete: a task
/// restarted on the same machine resumes from it.
pub fn spool_dir(out: &Location) -> PathBuf {
    cache_dir().join("parts").join(sanitize(&out.display()))
}

fn path_of(url: &url::Url) -> Result<ObjectPath> {
    ObjectPath::from_url_path(url.path()).map_err(|e| anyhow!("{url}: {e}"))
}

fn sanitize(url: &str) -> String {
    url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

/// object_store's errors span lines (sources, retries); the CLI prints one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

pub trait ReadSeekSend: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeekSend for T {}

/// Read + Seek over an object: ranged GETs of `CHUNK` bytes, fetched as the reader reaches them.
struct RangeReader {
    remote: Remote,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let end = (self.pos + CHUNK).min(self.size);
            let r = &self.remote;
            let bytes = r
                .runtime
                .block_on(r.store.get_range(&r.path, self.pos..end))
                .map_err(|e| std::io::Error::other(format!("{}: {}", r.url, one_line(&e))))?;
            self.buf = bytes.to_vec();
            self.buf_start = self.pos;
            if self.buf.is_empty() {
                return Err(std::io::Error::other(format!("{}: empty range {}..{end}", r.url, self.pos)));
            }
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
