//! The one error type of the library.
//!
//! Domain code returns [`Error`]; the gRPC layer maps each variant to a
//! status code in one exhaustive match (`service::status`). Messages name the
//! field (and the row, for batch rows) that was wrong, so a collector can fix
//! its input from the message alone.

use std::path::PathBuf;

use crate::sketch::SketchError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// One row of a batch is malformed; nothing of the batch was applied.
    #[error("row {row}: invalid {field}: {reason}")]
    InvalidRow {
        row: usize,
        field: &'static str,
        reason: String,
    },

    /// A batch or request exceeds a configured limit.
    #[error("{0}")]
    LimitExceeded(String),

    /// A batch id (namespace, collector, sequence) came again with other
    /// rows; nothing of the batch was applied.
    #[error(
        "collector {collector:?} already sent sequence {sequence} with other rows; nothing of \
         this batch was applied: give every batch its own sequence (a retry must resend the \
         same rows)"
    )]
    SequenceReused { collector: String, sequence: u64 },

    #[error("namespace {0:?} does not exist")]
    NamespaceNotFound(String),

    #[error("namespace {0:?} already exists with a different policy")]
    NamespaceExists(String),

    /// Namespaces must be created explicitly (config `auto_create_namespaces = false`).
    #[error(
        "namespace {0:?} does not exist and the server does not create namespaces on first use"
    )]
    NamespaceAutoCreateDisabled(String),

    /// Two sketches or namespaces that cannot be combined.
    #[error("incompatible: {0}")]
    Incompatible(String),

    /// The ingest queue is full; the collector should retry after a pause.
    #[error("overloaded: {0}")]
    Overloaded(String),

    /// The server is shutting down or its log failed; retry elsewhere or later.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// Stored bytes failed validation.
    #[error("corrupt data: {0}")]
    Corrupt(String),

    #[error("sketch: {0}")]
    Sketch(#[from] SketchError),

    #[error("storage: {0}")]
    Storage(#[from] sled::Error),

    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("attribution tables: {0}")]
    Attribution(#[from] crate::attribution::AttributionError),

    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn row(row: usize, field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidRow {
            row,
            field,
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
