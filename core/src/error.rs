//! One error type for the whole crate; every message is one line that names the file,
//! tensor or limit at fault, so the CLI can print it as is.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file is missing, unreadable or not what its name promises.
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
