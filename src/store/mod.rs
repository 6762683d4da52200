//! Persistence: sled trees, the write-ahead log and checkpoints.
//!
//! Layout under the data directory: `sled/` (the embedded database) and
//! `wal/` (log segments). The sled tree `data` holds sketches, counters, org
//! names, applied batch ids, extents and the checkpointed log position, all
//! keyed as in [`keys`]; the tree `namespaces` holds the namespace catalog.
//!
//! Invariant: a checkpoint writes the merged sketches, the counter sums and
//! the new log position in one atomic sled batch, so after any crash sled
//! holds exactly the effects of the records up to its log position, and the
//! log holds the rest.
//!
//! sled calls block: callers run them off the async runtime.

pub mod keys;
pub mod memtable;
pub mod wal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::time::{Day, DayWindow};

use keys::{
    extent_key, org_name_key, CounterKey, DedupeKey, Family, NamespaceId, SketchKey, KIND_DEDUPE,
    KIND_EXTENT, META_CHECKPOINT_LSN,
};
use memtable::Memtable;

/// The sled database of one server.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data: sled::Tree,
    namespaces: sled::Tree,
    dir: PathBuf,
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(256 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        let data = db.open_tree("data")?;
        let namespaces = db.open_tree("namespaces")?;
        Ok(Store {
            db,
            data,
            namespaces,
            dir: dir.to_owned(),
        })
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// Every catalog record, as stored.
    pub fn namespace_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.namespaces
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let name = String::from_utf8(k.to_vec())
                    .map_err(|_| Error::Corrupt("namespace name is not UTF-8".into()))?;
                Ok((name, v.to_vec()))
            })
            .collect()
    }

    /// Stores a catalog record durably.
    pub fn put_namespace_record(&self, name: &str, record: &[u8]) -> Result<()> {
        self.namespaces.insert(name.as_bytes(), record)?;
        self.namespaces.flush()?;
        Ok(())
    }

    /// The last log position included in sled.
    pub fn checkpoint_lsn(&self) -> Result<u64> {
        Ok(match self.data.get(META_CHECKPOINT_LSN)? {
            Some(v) => u64::from_le_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("checkpoint position".into()))?,
            ),
            None => 0,
        })
    }

    /// Every batch id ever applied (for idempotence across restarts).
    pub fn applied_batches(&self) -> Result<Vec<DedupeKey>> {
        self.data
            .scan_prefix([KIND_DEDUPE])
            .map(|item| {
                let (k, _) = item?;
                DedupeKey::decode(&k).ok_or_else(|| Error::Corrupt("batch id key".into()))
            })
            .collect()
    }

    /// First and end day with observations, per namespace.
    pub fn extents(&self) -> Result<HashMap<NamespaceId, (Day, Day)>> {
        let mut out = HashMap::new();
        for item in self.data.scan_prefix([KIND_EXTENT]) {
            let (k, v) = item?;
            let (ns, extent) = decode_extent(&k, &v)?;
            out.insert(ns, extent);
        }
        Ok(out)
    }

    /// First and end day with observations of one namespace.
    pub fn extent(&self, ns: NamespaceId) -> Result<Option<(Day, Day)>> {
        let k = extent_key(ns);
        match self.data.get(k)? {
            Some(v) => Ok(Some(decode_extent(&k, &v)?.1)),
            None => Ok(None),
        }
    }

    /// The stored sketches of one series within a window, by day.
    pub fn sketches(
        &self,
        ns: NamespaceId,
        family: Family,
        dim: u64,
        window: DayWindow,
    ) -> Result<Vec<(Day, Sketch)>> {
        let start = SketchKey {
            ns,
            family,
            dim,
            day: window.from,
        };
        let end = SketchKey {
            day: window.to,
            ..start
        };
        self.data
            .range(start.encode()..end.encode())
            .map(|item| {
                let (k, v) = item?;
                let key =
                    SketchKey::decode(&k).ok_or_else(|| Error::Corrupt("sketch key".into()))?;
                let sketch = Sketch::decode(&v)
                    .map_err(|e| Error::Corrupt(format!("sketch {key:?}: {e}")))?;
                Ok((key.day, sketch))
            })
            .collect()
    }

    /// The sum of stored observation counters of one series within a window.
    pub fn counter_sum(&self, ns: NamespaceId, dim: u64, window: DayWindow) -> Result<u64> {
        let start = CounterKey {
            ns,
            dim,
            day: window.from,
        };
        let end = CounterKey {
            day: window.to,
            ..start
        };
        let mut sum = 0u64;
        for item in self.data.range(start.encode()..end.encode()) {
            let (_, v) = item?;
            sum += decode_u64(&v)?;
        }
        Ok(sum)
    }

    /// The org id stored for an org dimension.
    pub fn org_name(&self, ns: NamespaceId, dim: u64) -> Result<Option<String>> {
        Ok(self
            .data
            .get(org_name_key(ns, dim))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Builds the sled batch that moves a frozen memtable into sled, with
    /// the log position `lsn` it covers. Only checkpoints change the stored
    /// values it reads, and one runs at a time, so the batch stays valid
    /// until [`Store::apply_checkpoint`].
    pub fn prepare_checkpoint(&self, mem: &Memtable, lsn: u64) -> Result<sled::Batch> {
        let mut batch = sled::Batch::default();
        for (key, delta) in &mem.sketches {
            let k = key.encode();
            let merged = match self.data.get(k)? {
                Some(stored) => {
                    let mut sketch = Sketch::decode(&stored)
                        .map_err(|e| Error::Corrupt(format!("sketch {key:?}: {e}")))?;
                    sketch.merge(delta)?;
                    sketch.encode()
                }
                None => delta.encode(),
            };
            batch.insert(&k[..], merged);
        }
        for (key, add) in &mem.counters {
            let k = key.encode();
            let stored = match self.data.get(k)? {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            batch.insert(&k[..], &(stored + add).to_le_bytes()[..]);
        }
        for ((ns, dim), name) in &mem.org_names {
            batch.insert(&org_name_key(*ns, *dim)[..], name.as_bytes());
        }
        for (id, applied_at) in &mem.applied {
            batch.insert(id.encode(), &applied_at.to_le_bytes()[..]);
        }
        for (ns, (first, end)) in &mem.extents {
            let k = extent_key(*ns);
            let (mut f, mut e) = (*first, *end);
            if let Some(v) = self.data.get(k)? {
                let (_, (sf, se)) = decode_extent(&k, &v)?;
                f = f.min(sf);
                e = e.max(se);
            }
            let mut value = [0u8; 8];
            value[..4].copy_from_slice(&f.0.to_le_bytes());
            value[4..].copy_from_slice(&e.0.to_le_bytes());
            batch.insert(&k[..], &value[..]);
        }
        batch.insert(META_CHECKPOINT_LSN, &lsn.to_le_bytes()[..]);
        Ok(batch)
    }

    /// Applies a checkpoint batch atomically. Does not flush.
    pub fn apply_checkpoint(&self, batch: sled::Batch) -> Result<()> {
        self.data.apply_batch(batch)?;
        Ok(())
    }

    /// Waits until everything written is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

fn decode_u64(v: &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(
        v.try_into()
            .map_err(|_| Error::Corrupt("counter value".into()))?,
    ))
}

fn decode_extent(k: &[u8], v: &[u8]) -> Result<(NamespaceId, (Day, Day))> {
    if k.len() != 5 || v.len() != 8 {
        return Err(Error::Corrupt("extent record".into()));
    }
    let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
    let first = u32::from_le_bytes(v[..4].try_into().unwrap_or_default());
    let end = u32::from_le_bytes(v[4..].try_into().unwrap_or_default());
    Ok((ns, (Day(first), Day(end))))
}
