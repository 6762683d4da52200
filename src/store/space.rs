//! Free space of the data directory's file system.
//!
//! sled stops for good after a failed write (every later call returns the
//! same error until the database is opened again), so the server must not
//! let a checkpoint meet a full disk. Ingest is refused instead, while the
//! free space is below a floor: the configured reserve plus room for
//! checkpointing what the memtables hold. Checkpoints go on (they delete
//! log segments), queries go on, and ingest resumes by itself once the
//! space is back. A write that fails anyway on the log is rolled back (see
//! `wal`) and refused the same way.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// How much free space sled needs per byte of memtable sketches to
/// checkpoint them (values, sled's log headers, pages rewritten whole).
const CHECKPOINT_FACTOR: u64 = 2;

/// The free-space floor of one data directory.
#[derive(Clone, Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    min_free: u64,
}

impl DiskSpace {
    pub fn new(dir: &Path, min_free: u64) -> DiskSpace {
        DiskSpace {
            dir: dir.to_owned(),
            min_free,
        }
    }

    /// Why `incoming` bytes for the log must be refused, if the free space
    /// would fall below the reserve plus room to checkpoint
    /// `memtable_bytes`. A file system that cannot be asked is not refused.
    pub fn shortfall(&self, incoming: u64, memtable_bytes: u64) -> Option<String> {
        let free = free_bytes(&self.dir).ok()?;
        let needed = self
            .min_free
            .saturating_add(incoming)
            .saturating_add(memtable_bytes.saturating_mul(CHECKPOINT_FACTOR));
        (free < needed).then(|| {
            format!(
                "{} free; the server keeps {} free (min_free_disk_bytes) plus {} to checkpoint \
                 what it holds in memory",
                mib(free),
                mib(self.min_free),
                mib(needed - self.min_free - incoming)
            )
        })
    }

    /// The error that refuses a batch for want of space, and why.
    pub fn full(&self, detail: &str) -> Error {
        Error::DiskFull {
            dir: self.dir.clone(),
            detail: detail.to_owned(),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes an unprivileged process may still write on the file system
/// holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Ok(free)
}

/// Whether an I/O error means the file system (or a quota) is full.
/// (`ENOSPC` and `EDQUOT` are these kinds.)
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether an error of this crate means a full file system.
pub fn error_is_full(e: &Error) -> bool {
    match e {
        Error::DiskFull { .. } => true,
        Error::Io { source, .. } => is_full(source),
        Error::Storage(sled::Error::Io(source)) => is_full(source),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_refuses_and_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(DiskSpace::new(dir.path(), 0).shortfall(0, 0), None);
        let space = DiskSpace::new(dir.path(), free.saturating_add(1 << 30));
        let err = space.full(&space.shortfall(0, 0).unwrap());
        let text = err.to_string();
        assert!(text.contains("is full"), "{text}");
        assert!(text.contains("min_free_disk_bytes"), "{text}");
        assert!(error_is_full(&err));
    }
}
