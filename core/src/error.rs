//! One error type for the whole crate. Every message is one line that names the file, tensor or
//! limit at fault, so a command line can print it as is; I/O and parse errors are kept as the
//! error's source. The type is `Clone` (sources are shared) so that one failure can be reported
//! for each record of a batch without losing its kind.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A JSON file (or record) that does not parse.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// One record of a data file that cannot be used; the others may still be.
    #[error("{path}:{line}: {message}")]
    Record { path: String, line: usize, message: String },
    /// A file is missing or not what its name promises.
    #[error("{0}")]
    Format(String),
    /// A well-formed input that tiqu does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A checkpoint tensor that is missing or has the wrong shape or dtype.
    #[error("{0}")]
    Tensor(String),
    /// A request that exceeds a limit (context length, batch size…).
    #[error("{0}")]
    Limit(String),
    /// Training produced a NaN or infinite loss or gradient.
    #[error("loss became {loss} at step {step}")]
    NonFinite { step: usize, loss: f64 },
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io { path: path.to_string(), source: Arc::new(source) }
    }

    /// A JSON parse failure in `path`.
    pub fn json(path: impl std::fmt::Display, source: serde_json::Error) -> Self {
        Self::Json { path: path.to_string(), source: Arc::new(source) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_kept_and_messages_name_the_file_on_one_line() {
        let e = Error::io("model/config.json", std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"));
        assert_eq!(e.to_string(), "model/config.json: No such file or directory");
        let source = std::error::Error::source(&e).expect("the I/O error is the source");
        assert!(source.to_string().contains("No such file"));
        let json = Error::json("a.json", serde_json::from_str::<serde_json::Value>("{x").unwrap_err());
        assert!(json.to_string().starts_with("a.json: not valid JSON: "), "{json}");
        assert!(!json.to_string().contains('\n'));
        // A clone keeps the kind (a batch reports one failure per record).
        assert!(matches!(json.clone(), Error::Json { .. }));
    }
}
