//! Snapshots: a store's every record in one file, and a data directory
//! made from one.
//!
//! A snapshot is taken right after a checkpoint, while no checkpoint or
//! rollup pass writes sled (the commit thread sees to that; see
//! `ingest::commit`), so it holds exactly the state at the checkpoint's log
//! position (and, on a cluster node, cluster log position), which it
//! carries in its records like the store itself. It is the one mechanism
//! behind `sketchd backup` and a cluster node's catch-up.
//!
//! Format: `SKSNAP01`, then per record `1 | tree (u16 len, bytes) | key
//! (u32 len, bytes) | value (u32 len, bytes)`, then `0 | records u64 |
//! crc32 u32` of everything before the checksum. [`restore`] checks the
//! checksum and the count before the directory appears under its name.

use std::io::{Read, Write};
use std::path::Path;

use super::keys::{META_CHECKPOINT_LSN, META_CLUSTER_POSITION};
use super::Store;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SKSNAP01";
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub records: u64,
    pub bytes: u64,
    /// The write-ahead log position the state includes.
    pub checkpoint_lsn: u64,
    /// On a cluster node: the cluster log position the state includes.
    pub cluster_position: u64,
}

/// A writer that counts and checksums what goes through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Summing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

impl Store {
    /// Writes every record of every tree to `out`. The caller makes sure
    /// nothing writes sled meanwhile (see the module doc).
    pub fn export_snapshot(&self, out: impl Write) -> Result<SnapshotSummary> {
        let io = |e| Error::io("snapshot", e);
        let mut w = Summing {
            inner: std::io::BufWriter::with_capacity(1 << 20, out),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        w.put(MAGIC).map_err(io)?;
        let mut summary = SnapshotSummary::default();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for item in tree.iter() {
                let (k, v) = item?;
                if &name[..] == b"data" {
                    if &k[..] == META_CHECKPOINT_LSN {
                        summary.checkpoint_lsn = super::decode_u64(&v)?;
                    } else if &k[..] == META_CLUSTER_POSITION {
                        summary.cluster_position = super::decode_u64(&v)?;
                    }
                }
                w.put(&[TAG_RECORD]).map_err(io)?;
                w.put(&(name.len() as u16).to_le_bytes()).map_err(io)?;
                w.put(&name).map_err(io)?;
                w.put(&(k.len() as u32).to_le_bytes()).map_err(io)?;
                w.put(&k).map_err(io)?;
                w.put(&(v.len() as u32).to_le_bytes()).map_err(io)?;
                w.put(&v).map_err(io)?;
                summary.records += 1;
            }
        }
        w.put(&[TAG_END]).map_err(io)?;
        w.put(&summary.records.to_le_bytes()).map_err(io)?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        w.inner.flush().map_err(io)?;
        summary.bytes = w.bytes + 4;
        Ok(summary)
    }
}

/// Makes the data directory `dir` (which must not exist, or be empty) from
/// the snapshot read from `input`. The state appears under `dir` only once
/// the whole snapshot was read and checked.
pub fn restore(input: impl Read, dir: &Path) -> Result<SnapshotSummary> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::Config(format!(
            "{} is not empty: restore into a new directory",
            dir.display()
        )));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile_dir(parent, dir)?;
    let result = restore_into(input, &staging);
    match result {
        Ok(summary) => {
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
            }
            std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn tempfile_dir(parent: &Path, dir: &Path) -> Result<std::path::PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    Ok(staging)
}

fn restore_into(input: impl Read, dir: &Path) -> Result<SnapshotSummary> {
    let corrupt = |what: &str| Error::Corrupt(format!("snapshot: {what}"));
    let mut r = std::io::BufReader::with_capacity(1 << 20, input);
    let mut crc = crc32fast::Hasher::new();
    let mut read = |n: usize, crc: &mut crc32fast::Hasher| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf)
            .map_err(|_| corrupt("cut short (the file is incomplete)"))?;
        crc.update(&buf);
        Ok(buf)
    };
    if read(8, &mut crc)? != MAGIC {
        return Err(corrupt("not a sketchd snapshot (bad magic)"));
    }
    let db = sled::Config::new().path(dir.join("sled")).open()?;
    let mut summary = SnapshotSummary::default();
    let mut batches: std::collections::BTreeMap<Vec<u8>, sled::Batch> = Default::default();
    let mut pending = 0usize;
    loop {
        let tag = read(1, &mut crc)?[0];
        if tag == TAG_END {
            break;
        }
        if tag != TAG_RECORD {
            return Err(corrupt("bad record tag"));
        }
        let n = u16::from_le_bytes(read(2, &mut crc)?.try_into().expect("2 bytes")) as usize;
        let tree = read(n, &mut crc)?;
        let n = u32::from_le_bytes(read(4, &mut crc)?.try_into().expect("4 bytes")) as usize;
        let key = read(n, &mut crc)?;
        let n = u32::from_le_bytes(read(4, &mut crc)?.try_into().expect("4 bytes")) as usize;
        let value = read(n, &mut crc)?;
        if tree == b"data" {
            if key == META_CHECKPOINT_LSN {
                summary.checkpoint_lsn = super::decode_u64(&value)?;
            } else if key == META_CLUSTER_POSITION {
                summary.cluster_position = super::decode_u64(&value)?;
            }
        }
        summary.bytes += (key.len() + value.len()) as u64;
        batches.entry(tree).or_default().insert(key, value);
        summary.records += 1;
        pending += 1;
        if pending >= 4096 {
            flush_batches(&db, &mut batches)?;
            pending = 0;
        }
    }
    flush_batches(&db, &mut batches)?;
    let count = u64::from_le_bytes(read(8, &mut crc)?.try_into().expect("8 bytes"));
    let expected = crc.finalize();
    let mut stored = [0u8; 4];
    r.read_exact(&mut stored)
        .map_err(|_| corrupt("cut short (no checksum)"))?;
    if u32::from_le_bytes(stored) != expected {
        return Err(corrupt("checksum mismatch (the file is damaged)"));
    }
    if count != summary.records {
        return Err(corrupt("record count mismatch"));
    }
    db.flush()?;
    drop(db);
    std::fs::create_dir_all(dir.join("wal")).map_err(|e| Error::io(dir, e))?;
    Ok(summary)
}

fn flush_batches(
    db: &sled::Db,
    batches: &mut std::collections::BTreeMap<Vec<u8>, sled::Batch>,
) -> Result<()> {
    for (tree, batch) in std::mem::take(batches) {
        db.open_tree(&tree)?.apply_batch(batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_snapshot_holds_every_record_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("src")).unwrap();
        store.put_namespace_record("ips", b"{}").unwrap();
        store
            .data
            .insert(META_CHECKPOINT_LSN, &7u64.to_le_bytes()[..])
            .unwrap();
        store
            .data
            .insert(META_CLUSTER_POSITION, &42u64.to_le_bytes()[..])
            .unwrap();
        for i in 0u32..10_000 {
            store
                .data
                .insert(format!("zkey{i}"), &i.to_le_bytes()[..])
                .unwrap();
        }
        let mut bytes = Vec::new();
        let summary = store.export_snapshot(&mut bytes).unwrap();
        assert_eq!(summary.checkpoint_lsn, 7);
        assert_eq!(summary.cluster_position, 42);
        assert_eq!(summary.bytes, bytes.len() as u64);

        let out = dir.path().join("restored");
        let restored = restore(&bytes[..], &out).unwrap();
        assert_eq!(restored.records, summary.records);
        assert_eq!(restored.cluster_position, 42);
        let copy = Store::open(&out).unwrap();
        assert_eq!(copy.checkpoint_lsn().unwrap(), 7);
        assert_eq!(copy.cluster_position().unwrap(), 42);
        assert_eq!(
            copy.namespace_records().unwrap(),
            store.namespace_records().unwrap()
        );
        let all = |s: &Store| -> Vec<_> { s.data.iter().map(|i| i.unwrap()).collect() };
        assert_eq!(all(&copy), all(&store));

        // A damaged byte or a cut file leaves no directory behind.
        for damaged in [
            {
                let mut b = bytes.clone();
                let mid = b.len() / 2;
                b[mid] ^= 1;
                b
            },
            bytes[..bytes.len() - 3].to_vec(),
        ] {
            let out = dir.path().join("damaged");
            assert!(restore(&damaged[..], &out).is_err());
            assert!(!out.exists());
        }
        // A directory that holds something is never overwritten.
        assert!(restore(&bytes[..], &dir.path().join("src")).is_err());
    }
}
