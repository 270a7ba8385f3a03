//! Tools for real labelled data, before any training: read a file of SFT records or a table
//! (CSV, TSV, JSON) and say what is wrong with it ([`check`]), turn a table into SFT records
//! ([`import`]), and split records into training and evaluation sets without a text on both sides
//! ([`split`]).
//!
//! Everything here takes bytes, `&str` or a reader (no files), so it builds for wasm32 like the
//! rest of core; errors are one line, `source:line: what`. Files are read a record at a time
//! ([`Records`], and the import's tables), so a file of millions of records is never held whole.

pub mod check;
pub mod decode;
#[cfg(feature = "import")]
pub mod import;
pub mod output;
pub mod records;
pub mod sft_records;
pub mod span;
pub mod split;

pub use check::{check, CheckOptions, Finding, Kind, Report};
#[cfg(feature = "import")]
pub use import::{import, Format, Imported, Mapping};
pub use records::{read_raw_records, read_records, RawRecord, Records};
pub use split::{split, Split};
