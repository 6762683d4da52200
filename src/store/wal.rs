//! The write-ahead log: numbered records in segment files.
//!
//! A record is `len u32 | crc32 u32 | lsn u64 | payload`, little-endian,
//! where the CRC covers the LSN and the payload. LSNs start at 1 and grow by
//! one per record. A segment file is named by the first LSN it may hold
//! (`wal-<20 digits>.log`); a new segment starts at each checkpoint, so that
//! whole segments can be deleted once sled holds everything in them.
//!
//! Invariant: a record is acknowledged only after [`Wal::sync`] returned, so
//! after a crash every acknowledged record is in the log. A crash can leave
//! a torn record only at the end of the newest segment; [`Wal::open`]
//! truncates it there. A bad record anywhere else is corruption and refuses
//! to start.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const HEADER: usize = 16;
/// The largest payload accepted when reading (guards against garbage lengths).
const MAX_RECORD: usize = 1 << 30;

pub struct Wal {
    dir: PathBuf,
    writer: BufWriter<File>,
    path: PathBuf,
    next_lsn: u64,
    /// Length of the current segment and next LSN after the last sync
    /// that returned, for [`Wal::rollback`].
    synced_len: u64,
    synced_next_lsn: u64,
    /// Segments before the current one, by first LSN.
    sealed: Vec<(u64, PathBuf)>,
}

/// A record read back at start.
pub struct WalRecord {
    pub lsn: u64,
    pub payload: Vec<u8>,
}

impl Wal {
    /// Opens the log in `dir`, returning every record with an LSN above
    /// `checkpoint_lsn`, and starts a fresh segment for new records.
    pub fn open(dir: &Path, checkpoint_lsn: u64) -> Result<(Wal, Vec<WalRecord>)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut next_lsn = checkpoint_lsn + 1;
        let count = segments.len();
        for (i, (_, path)) in segments.iter().enumerate() {
            let last = i + 1 == count;
            for record in read_segment(path, last)? {
                if record.lsn <= checkpoint_lsn {
                    continue;
                }
                if record.lsn != next_lsn {
                    return Err(Error::Corrupt(format!(
                        "{}: expected log record {next_lsn}, found {}",
                        path.display(),
                        record.lsn
                    )));
                }
                next_lsn += 1;
                records.push(record);
            }
        }
        let path = segment_path(dir, next_lsn);
        if segments.last().is_some_and(|(first, _)| *first == next_lsn) {
            // The newest segment holds no record yet: reuse it.
            segments.pop();
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        let synced_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Ok((
            Wal {
                dir: dir.to_owned(),
                writer: BufWriter::with_capacity(1 << 20, file),
                path,
                next_lsn,
                synced_len,
                synced_next_lsn: next_lsn,
                sealed: segments,
            },
            records,
        ))
    }

    /// Buffers one record; it is durable only after [`Wal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        let lsn = self.next_lsn;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&lsn.to_le_bytes());
        crc.update(payload);
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::LimitExceeded("log record larger than 4 GiB".into()))?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        header[8..].copy_from_slice(&lsn.to_le_bytes());
        self.writer
            .write_all(&header)
            .and_then(|()| self.writer.write_all(payload))
            .map_err(|e| Error::io(&self.path, e))?;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes the buffered records and waits until they are on disk.
    pub fn sync(&mut self) -> Result<()> {
        self.writer
            .flush()
            .and_then(|()| self.writer.get_ref().sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.synced_len = self
            .writer
            .get_ref()
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        self.synced_next_lsn = self.next_lsn;
        Ok(())
    }

    /// Forgets every record appended since the last [`Wal::sync`] that
    /// returned (after an append or a sync failed, e.g. on a full disk):
    /// drops them from the buffer, cuts the segment back to its synced
    /// length and reuses their LSNs, so the log holds no torn record
    /// before the next ones.
    pub fn rollback(&mut self) -> Result<()> {
        let file = self
            .writer
            .get_ref()
            .try_clone()
            .map_err(|e| Error::io(&self.path, e))?;
        file.set_len(self.synced_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        // The unwritten buffer is dropped with the old writer (a BufWriter
        // flushes on drop, so take it apart instead).
        let old = std::mem::replace(&mut self.writer, BufWriter::with_capacity(1 << 20, file));
        let (_file, _unwritten) = old.into_parts();
        self.next_lsn = self.synced_next_lsn;
        Ok(())
    }

    /// The LSN of the last record appended (0 if none ever was).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Seals the current segment and starts a new one. Returns the sealed
    /// segments, all of whose records have LSNs `<= self.last_lsn()`.
    pub fn rotate(&mut self) -> Result<Vec<PathBuf>> {
        self.sync()?;
        let path = segment_path(&self.dir, self.next_lsn);
        if path == self.path {
            // The current segment holds no record yet (e.g. the first
            // checkpoint after a start that replayed the log): it stays the
            // current one, and only the older ones are sealed. Sealing it
            // would delete the file new records are written to.
            return Ok(self.sealed.drain(..).map(|(_, p)| p).collect());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.path, path);
        self.writer = BufWriter::with_capacity(1 << 20, file);
        self.synced_len = 0;
        self.synced_next_lsn = self.next_lsn;
        self.sealed.push((0, old));
        Ok(self.sealed.drain(..).map(|(_, p)| p).collect())
    }
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("wal-{first_lsn:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(num) = name
            .strip_prefix("wal-")
            .and_then(|n| n.strip_suffix(".log"))
        {
            if let Ok(first) = num.parse::<u64>() {
                segments.push((first, path));
            }
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads every whole record of one segment. In the newest segment a torn
/// or corrupt tail is cut off; elsewhere it is an error.
fn read_segment(path: &Path, newest: bool) -> Result<Vec<WalRecord>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match parse_record(&bytes[at..]) {
            Some((record, used)) => {
                records.push(record);
                at += used;
            }
            None if newest => {
                tracing::warn!(
                    path = %path.display(),
                    offset = at,
                    dropped_bytes = bytes.len() - at,
                    "cutting a torn record off the end of the log"
                );
                file.set_len(at as u64).map_err(|e| Error::io(path, e))?;
                file.seek(SeekFrom::End(0))
                    .map_err(|e| Error::io(path, e))?;
                file.sync_all().map_err(|e| Error::io(path, e))?;
                break;
            }
            None => {
                return Err(Error::Corrupt(format!(
                    "{}: bad log record at offset {at}",
                    path.display()
                )))
            }
        }
    }
    Ok(records)
}

fn parse_record(bytes: &[u8]) -> Option<(WalRecord, usize)> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().ok()?) as usize;
    if len > MAX_RECORD || bytes.len() < HEADER + len {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..HEADER + len]);
    if hasher.finalize() != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some((
        WalRecord {
            lsn,
            payload: bytes[HEADER..HEADER + len].to_vec(),
        },
        HEADER + len,
    ))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(records: &[WalRecord]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.payload.clone()).collect()
    }

    #[test]
    fn rotating_a_segment_without_records_keeps_it_as_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"before").unwrap();
        wal.sync().unwrap();
        drop(wal);
        // A start that replays the log, then its first checkpoint, before
        // any new record.
        let (mut wal, records) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(records.len(), 1);
        let sealed = wal.rotate().unwrap();
        assert!(sealed.iter().all(|p| *p != wal.path), "{sealed:?}");
        for path in sealed {
            fs::remove_file(path).unwrap();
        }
        wal.append(b"after").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(payloads(&records), vec![b"after".to_vec()]);
    }

    #[test]
    fn a_rollback_forgets_unsynced_records_and_reuses_their_lsns() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"kept").unwrap();
        wal.sync().unwrap();
        wal.append(b"lost-1").unwrap();
        wal.append(b"lost-2").unwrap();
        // Part of it reached the file, as when a write meets a full disk.
        wal.writer.flush().unwrap();
        wal.append(b"lost-3").unwrap();
        wal.rollback().unwrap();
        assert_eq!(wal.append(b"next").unwrap(), 2);
        wal.sync().unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(payloads(&records), vec![b"kept".to_vec(), b"next".to_vec()]);
        assert_eq!(records[1].lsn, 2);
    }

    #[test]
    fn appends_and_replays_after_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records) = Wal::open(dir.path(), 0).unwrap();
        assert!(records.is_empty());
        assert_eq!(wal.append(b"one").unwrap(), 1);
        assert_eq!(wal.append(b"two").unwrap(), 2);
        wal.sync().unwrap();
        let sealed = wal.rotate().unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(wal.append(b"three").unwrap(), 3);
        wal.sync().unwrap();
        drop(wal);

        let (wal, records) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(
            payloads(&records),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(wal.last_lsn(), 3);
        drop(wal);
        let (_, records) = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(payloads(&records), vec![b"three".to_vec()]);
    }

    #[test]
    fn cuts_a_torn_tail_and_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"kept").unwrap();
        wal.append(b"torn record").unwrap();
        wal.sync().unwrap();
        let path = wal.path.clone();
        drop(wal);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let (mut wal, records) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(payloads(&records), vec![b"kept".to_vec()]);
        assert_eq!(wal.append(b"after").unwrap(), 2);
        wal.sync().unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(
            payloads(&records),
            vec![b"kept".to_vec(), b"after".to_vec()]
        );
    }

    #[test]
    fn corruption_in_a_sealed_segment_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(b"first").unwrap();
        let sealed = wal.rotate().unwrap();
        wal.append(b"second").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let mut bytes = fs::read(&sealed[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&sealed[0], bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), 0), Err(Error::Corrupt(_))));
    }
}
