//! The errors that stop `sketchd serve` at start, as sentences that name
//! the file, directory or address and say what to do.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::anyhow;

use sketchd::error::Error;

/// The I/O error inside `error`, if it has one.
fn io_kind(error: &Error) -> Option<ErrorKind> {
    match error {
        Error::Io { source, .. } => Some(source.kind()),
        Error::Storage(sled::Error::Io(io)) => Some(io.kind()),
        _ => None,
    }
}

/// Reading `--config PATH` failed.
pub fn config_file(path: &Path, error: Error) -> anyhow::Error {
    let path = path.display();
    match io_kind(&error) {
        Some(ErrorKind::NotFound) => anyhow!(
            "the configuration file {path} does not exist; pass --config with an existing TOML \
             file, or leave --config out for the defaults"
        ),
        Some(ErrorKind::PermissionDenied) => anyhow!(
            "the configuration file {path} is not readable by this user (permission denied)"
        ),
        _ => anyhow!(error),
    }
}

/// Opening the data directory `dir` failed.
pub fn data_dir(dir: &Path, error: Error) -> anyhow::Error {
    let shown = dir.display();
    if matches!(&error, Error::Storage(e) if e.to_string().contains("could not acquire lock")) {
        return anyhow!(
            "the data directory {shown} is in use by another sketchd (its database is locked); \
             stop that server, or pass another --data"
        );
    }
    match io_kind(&error) {
        Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => anyhow!(
            "the data directory {shown} is not writable by this user ({}); make it writable, \
             or pass another --data",
            io_text(&error)
        ),
        _ => anyhow!("cannot open the data directory {shown}: {error}"),
    }
}

/// The I/O error's own text, without the wrappers' prefixes.
fn io_text(error: &Error) -> String {
    match error {
        Error::Io { source, .. } => source.to_string(),
        Error::Storage(sled::Error::Io(io)) => io.to_string(),
        other => other.to_string(),
    }
}

/// Binding `--listen ADDR` failed.
pub fn listen(addr: SocketAddr, error: std::io::Error) -> anyhow::Error {
    match error.kind() {
        ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {addr}: another process listens there; stop it, or pass another \
             --listen"
        ),
        ErrorKind::AddrNotAvailable => anyhow!(
            "cannot listen on {addr}: no interface of this machine has that address; pass \
             --listen with one of its addresses (e.g. 127.0.0.1:50051)"
        ),
        _ => anyhow!("cannot listen on {addr}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_that_is_not_writable_is_named_once() {
        let dir = Path::new("/srv/sketchd");
        let denied = || std::io::Error::from(ErrorKind::PermissionDenied);
        for error in [
            Error::io(dir, denied()),
            Error::Storage(sled::Error::Io(denied())),
        ] {
            let text = crate::cli::output::message(&data_dir(dir, error));
            assert!(
                text.starts_with("the data directory /srv/sketchd is not writable"),
                "{text}"
            );
            assert_eq!(text.matches("ermission denied").count(), 1, "{text}");
            assert!(text.contains("pass another --data"), "{text}");
        }
    }

    #[test]
    fn a_missing_configuration_file_is_named_with_the_flag() {
        let path = Path::new("/etc/nope.toml");
        let error = Error::io(path, std::io::Error::from(ErrorKind::NotFound));
        let text = crate::cli::output::message(&config_file(path, error));
        assert_eq!(
            text,
            "the configuration file /etc/nope.toml does not exist; pass --config with an \
             existing TOML file, or leave --config out for the defaults"
        );
    }
}
