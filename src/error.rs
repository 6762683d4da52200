//! The errors of the library: the one error type, [`Error`], and the
//! plain error types of sketch bytes ([`SketchError`]) and attribution
//! tables ([`AttributionError`]) it wraps (`sketch` and `attribution`
//! re-export them).
//!
//! Domain code returns [`Error`]; the gRPC layer maps each variant to a
//! status code in one exhaustive match (`service::status`). Messages name the
//! field (and the row, for batch rows) that was wrong, so a collector can fix
//! its input from the message alone. A value of the caller's is quoted with
//! [`quoted`], cut to a short prefix: a message travels in a header, and a
//! 70 KB one would reach the client as "metadata size exceeds hard limit".

use std::fmt;
use std::path::PathBuf;

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
        "collector {} already sent sequence {sequence} with other rows; nothing of this batch \
         was applied: give every batch its own sequence (a retry must resend the same rows)",
        quoted(collector)
    )]
    SequenceReused { collector: String, sequence: u64 },

    #[error("namespace {} does not exist", quoted(.0))]
    NamespaceNotFound(String),

    /// A query's scope names an org, sector or country the namespace has
    /// never seen (its count would be a zero that looks real).
    #[error(
        "{field}: namespace {} has no observation of {kind} {}; check the spelling (GroupBy \
         by {kind} lists the ones it has)",
        quoted(namespace),
        quoted(value)
    )]
    UnknownInScope {
        field: String,
        kind: &'static str,
        value: String,
        namespace: String,
    },

    #[error(
        "namespace {} already exists with a different policy (a policy is fixed at creation: \
         `sketchd namespaces show NAME` shows it; delete the namespace first to create it anew)",
        quoted(.0)
    )]
    NamespaceExists(String),

    /// Namespaces must be created explicitly (config `auto_create_namespaces = false`).
    #[error(
        "namespace {} does not exist and the server does not create namespaces on first use",
        quoted(.0)
    )]
    NamespaceAutoCreateDisabled(String),

    /// Two sketches or namespaces that cannot be combined.
    #[error("incompatible: {0}")]
    Incompatible(String),

    /// The ingest queue is full; the collector should retry after a pause.
    #[error("overloaded: {0}")]
    Overloaded(String),

    /// The data directory's file system has too little free space for
    /// more batches; ingest resumes on its own once space is freed.
    #[error(
        "the data directory {} is full ({detail}); nothing of this batch was applied, and ingest \
         resumes on its own once space is freed: retry in a few seconds",
        .dir.display()
    )]
    DiskFull { dir: PathBuf, detail: String },

    /// A request this server cannot carry out in its present mode.
    #[error("{0}")]
    Refused(String),

    /// The server is shutting down or its log failed; retry elsewhere or later.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// A read made with [`crate::store::from_memory_only`] needed sled: the
    /// caller does it again where it may block. Never sent to a client.
    #[error("the answer needs a read from disk")]
    NotInMemory,

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
    Attribution(#[from] AttributionError),

    #[error("configuration: {0}")]
    Config(String),
}

/// Errors of sketch construction, merge and decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SketchError {
    #[error("sketch envelope is truncated")]
    Truncated,
    #[error("not a sketch envelope (bad magic bytes)")]
    BadMagic,
    #[error("unsupported sketch format version {0} (this build reads versions 1 to 3)")]
    UnsupportedVersion(u8),
    #[error(
        "unknown sketch hash id {0} for its format version (known: 1 = xxh3-64 in versions 1 \
         and 2, 2 = the top 40 bits of xxh3-64 in version 3)"
    )]
    UnknownHashId(u8),
    #[error("sketch precision {0} is outside 4..=18")]
    BadPrecision(u8),
    #[error(
        "unknown sketch payload layout {0} (known: 1 = exact, 2 = dense, 3 = dense compressed \
         from format version 2 on)"
    )]
    UnknownLayout(u8),
    #[error("compressed sketch registers do not decompress: {0}")]
    BadCompression(String),
    #[error("sketch payload length {actual} does not fit layout {layout} (expected {expected})")]
    LengthMismatch {
        layout: u8,
        expected: usize,
        actual: usize,
    },
    #[error("sketch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("sketch register {index} has value {value}, above the maximum for its precision")]
    BadRegister { index: usize, value: u8 },
    #[error("exact sketch hashes are not strictly increasing")]
    UnsortedExact,
    #[error("exact sketch holds more hashes than its precision allows")]
    TooManyExact,
    #[error("trailing bytes after the sketch envelope")]
    TrailingBytes,
    #[error("cannot merge sketches with different hash functions")]
    IncompatibleHash,
    #[error("cannot merge sketches built with different hash seeds")]
    IncompatibleSeed,
    #[error("cannot merge sketches with different precisions")]
    IncompatiblePrecision,
}

/// Why loading attribution tables failed. Every error names the file it
/// came from; [`AttributionError::Malformed`] also carries the 1-based line
/// where the offending CSV record starts and a human-readable reason.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The file could not be read (missing, unreadable, or a corrupt gzip stream).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record is malformed: bad address, `end < start`, address family mismatch, bad ASN,
    /// missing or extra column, bad country code, bad CIDR, bad header, duplicate org, ...
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: u64,
        /// What was wrong.
        reason: String,
    },
}

/// Longest prefix of a caller's value that a message quotes, in characters.
pub const QUOTE_MAX_CHARS: usize = 64;

/// `value` for a message: quoted and escaped like `{:?}`, cut after
/// [`QUOTE_MAX_CHARS`] characters (then `…` and its length in bytes follow).
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// See [`quoted`].
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let shown = format!("{:?}", &self.0[..cut]);
                write!(
                    f,
                    "{}…\" ({} bytes)",
                    &shown[..shown.len() - 1],
                    self.0.len()
                )
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_cut_to_a_prefix() {
        assert_eq!(quoted("DE").to_string(), "\"DE\"");
        assert_eq!(quoted("a\"b").to_string(), "\"a\\\"b\"");
        let long = "x".repeat(70_000);
        let shown = quoted(&long).to_string();
        assert_eq!(
            shown,
            format!("\"{}…\" (70000 bytes)", "x".repeat(QUOTE_MAX_CHARS))
        );
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        assert!(quoted(&wide).to_string().contains("(200 bytes)"));
        assert_eq!(quoted(&"y".repeat(QUOTE_MAX_CHARS)).to_string().len(), 66);
    }
}
