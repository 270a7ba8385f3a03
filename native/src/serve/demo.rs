//! `tiqu serve --demo`: the browser page (wasm/www, built by scripts/build-wasm) and the files
//! the page fetches to run the served model in the tab. Only what the page needs is served: the
//! page's folder without hidden files, the model folder's checkpoint files (never anything else
//! that happens to lie beside them), the adapter's two files, and `/demo.json`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tiqu_core::checkpoint::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, COMPANION_FILES, WEIGHTS_INDEX};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::limits::ApiError;

pub struct Site {
    www: PathBuf,
    model: PathBuf,
    adapter: Option<PathBuf>,
    /// `/demo.json`: where the page finds the served model.
    demo: serde_json::Value,
}

impl Site {
    pub fn new(model: &Path, adapter: Option<&Path>, www: Option<&Path>) -> Result<Self> {
        // A folder whose config.json is not a model's is not served, whatever else it holds; nor
        // is an adapter folder whose adapter_config.json and weights do not open.
        tiqu_core::Checkpoint::open_dir(model)?;
        if let Some(a) = adapter {
            tiqu_core::Adapter::open(&tiqu_core::Folder::new(a))?;
        }
        let www = www.map(Path::to_path_buf).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm/www"));
        if !www.join("index.html").is_file() {
            return Err(anyhow!("{}: no index.html (pass --www DIR)", www.display()));
        }
        if !www.join("pkg/tiqu_wasm_bg.wasm").is_file() {
            eprintln!("warning: {}: not built yet; run scripts/build-wasm", www.join("pkg").display());
        }
        let demo = json!({
            "model": "model/",
            "model_name": model.file_name().map(|n| n.to_string_lossy().to_string()),
            "adapter": adapter.map(|_| "adapter/"),
        });
        Ok(Self { www, model: model.to_path_buf(), adapter: adapter.map(Path::to_path_buf), demo })
    }

    /// The file a request path names, if it is one this server shows.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        let parts: Vec<&str> = rel.split('/').collect();
        let file = match parts.as_slice() {
            ["model", name] if plain(name) && checkpoint_file(name) => self.model.join(name),
            ["adapter", name] if *name == ADAPTER_CONFIG || *name == ADAPTER_WEIGHTS => self.adapter.as_ref()?.join(name),
            ["model" | "adapter", ..] => return None,
            parts if parts.iter().all(|p| plain(p)) => self.www.join(rel),
            _ => return None,
        };
        file.is_file().then_some(file)
    }

    /// GET or HEAD of a page file, a model file or `/demo.json`.
    pub async fn answer(&self, request: Request) -> Response {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{}: GET or HEAD only", request.uri().path())).into_response();
        }
        let path = request.uri().path().to_string();
        if path == "/demo.json" {
            return axum::Json(self.demo.clone()).into_response();
        }
        let Some(file) = self.file(&path) else {
            return ApiError::new(StatusCode::NOT_FOUND, format!("{path}: not found")).into_response();
        };
        match ServeFile::new(&file).oneshot(request).await {
            Ok(response) => {
                let mut response = response.into_response();
                response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")).into_response(),
        }
    }
}

/// One path segment that names a file: no separators, no `..`, no hidden files.
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// What a checkpoint folder holds that the page may load.
fn checkpoint_file(name: &str) -> bool {
    COMPANION_FILES.contains(&name) || name == WEIGHTS_INDEX || name.ends_with(".safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_and_the_checkpoints_files_are_served() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let fixture = root.join("tests/fixtures/tiny-untied");
        let site = Site::new(&fixture, None, None).unwrap();
        assert!(site.file("/").is_some_and(|f| f.ends_with("index.html")));
        assert!(site.file("/app.js").is_some());
        assert!(site.file("/model/config.json").is_some());
        assert!(site.file("/model/model.safetensors").is_some());
        assert!(site.file("/model/tokenizer.json").is_some());
        // In the fixture folder, but not a checkpoint file.
        assert!(site.file("/model/reference.json").is_none());
        assert!(site.file("/model/../config.json").is_none());
        assert!(site.file("/../Cargo.toml").is_none());
        assert!(site.file("/model/sub/config.json").is_none());
        assert!(site.file("/adapter/adapter_config.json").is_none());
        assert!(site.file("/.git/config").is_none());
        // A folder without a model's config.json is refused before anything is served.
        let err = Site::new(&root.join("wasm/www"), None, None).err().unwrap().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
