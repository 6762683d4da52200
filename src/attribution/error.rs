//! The error type of attribution loading.
//!
//! Every error names the file it came from; [`AttributionError::Malformed`] also carries the
//! 1-based line where the offending CSV record starts and a human-readable reason.

use std::path::PathBuf;

/// Why loading attribution tables failed.
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
