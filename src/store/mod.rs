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

pub mod cache;
pub mod index;
pub mod keys;
pub mod memtable;
pub mod wal;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::time::{Block, Day, DayWindow};

use cache::SketchCache;
use index::{DayBits, Index, OrgCountry};
use keys::{
    dim_key, extent_key, org_name_key, presence_key, CounterKey, DedupeKey, Family, NamespaceId,
    SketchKey, KIND_DEDUPE, KIND_DIM, KIND_ORG_NAME, KIND_PRESENCE, META_CHECKPOINT_LSN,
};
use memtable::{Memtable, OriginRecord, RegionMark};

/// Rollup depth: sled keeps each series per day and per aligned block of
/// 2, 4, ..., 2^MAX_LEVEL days, so a window of n days reads about
/// 2·log2(n) sketches.
pub const MAX_LEVEL: u8 = 9;

/// Default bound of the decoded-sketch cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Default size of sled's page cache.
pub const DEFAULT_SLED_CACHE_BYTES: usize = 96 * 1024 * 1024;

/// The sled database of one server.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data: sled::Tree,
    namespaces: sled::Tree,
    dir: PathBuf,
    /// Decoded rollup sketches recently read.
    cache: Arc<SketchCache>,
    /// Whether checkpoints record what changed for an upstream (`r` keys).
    changelog: Arc<AtomicBool>,
}

/// The final, atomic part of a checkpoint: counters, presence, names,
/// batch ids, extents and the log position.
pub struct Checkpoint {
    batch: sled::Batch,
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES, DEFAULT_SLED_CACHE_BYTES)
    }

    /// Opens the store with a cache of decoded sketches of at most
    /// `cache_bytes` (0: no cache) and sled's page cache of `sled_cache_bytes`.
    pub fn open_with_cache(
        dir: &Path,
        cache_bytes: usize,
        sled_cache_bytes: usize,
    ) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(sled_cache_bytes as u64)
            .flush_every_ms(None)
            .open()?;
        let data = db.open_tree("data")?;
        let namespaces = db.open_tree("namespaces")?;
        Ok(Store {
            db,
            data,
            namespaces,
            dir: dir.to_owned(),
            cache: Arc::new(SketchCache::new(cache_bytes)),
            changelog: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Makes checkpoints record every changed day record for replication.
    pub fn enable_changelog(&self) {
        self.changelog.store(true, Ordering::SeqCst);
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

    /// Loads the full in-memory index (org names, dimensions, presence).
    pub fn load_index(&self) -> Result<Index> {
        let corrupt = |what: &str| Error::Corrupt(format!("index record: {what}"));
        let mut index = Index::default();
        for item in self.data.scan_prefix([KIND_ORG_NAME]) {
            let (k, v) = item?;
            if k.len() != 13 {
                return Err(corrupt("org name key"));
            }
            let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
            let dim = u64::from_be_bytes(k[5..13].try_into().unwrap_or_default());
            let name = String::from_utf8(v.to_vec()).map_err(|_| corrupt("org name"))?;
            index.names.insert((ns, dim), name);
        }
        for item in self.data.scan_prefix([keys::KIND_TABLES]) {
            let (k, _) = item?;
            if k.len() < 5 {
                return Err(corrupt("tables key"));
            }
            let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
            let version =
                String::from_utf8(k[5..].to_vec()).map_err(|_| corrupt("tables version"))?;
            index.table_versions.entry(ns).or_default().insert(version);
        }
        for item in self.data.scan_prefix([KIND_DIM]) {
            let (k, _) = item?;
            let mut as_sketch = [0u8; SketchKey::LEN];
            if k.len() != 14 {
                return Err(corrupt("dimension key"));
            }
            as_sketch[..14].copy_from_slice(&k);
            as_sketch[0] = keys::KIND_SKETCH;
            let key = SketchKey::decode(&as_sketch).ok_or_else(|| corrupt("dimension key"))?;
            index
                .dims
                .entry((key.ns, key.family))
                .or_default()
                .insert(key.dim);
        }
        for item in self.data.scan_prefix([KIND_PRESENCE]) {
            let (k, v) = item?;
            if k.len() != 15 {
                return Err(corrupt("presence key"));
            }
            let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
            let org = u64::from_be_bytes(k[5..13].try_into().unwrap_or_default());
            let country = [k[13], k[14]];
            let bits = DayBits::decode(&v).ok_or_else(|| corrupt("presence days"))?;
            index
                .presence
                .entry(ns)
                .or_default()
                .insert(OrgCountry { org, country }, bits);
        }
        for item in self.data.scan_prefix([keys::KIND_REGION]) {
            let (k, v) = item?;
            let region = String::from_utf8(k[1..].to_vec()).map_err(|_| corrupt("region name"))?;
            let mark = RegionMark::decode(&v).ok_or_else(|| corrupt("region mark"))?;
            index.regions.insert(region, mark);
        }
        Ok(index)
    }

    /// First and end day with observations of one namespace.
    pub fn extent(&self, ns: NamespaceId) -> Result<Option<(Day, Day)>> {
        let k = extent_key(ns);
        match self.data.get(k)? {
            Some(v) => Ok(Some(decode_extent(&k, &v)?.1)),
            None => Ok(None),
        }
    }

    /// The stored sketch of one series over one block, if any.
    pub fn block_sketch(&self, key: &SketchKey) -> Result<Option<Arc<Sketch>>> {
        let (cached, generation) = self.cache.get(key);
        if cached.is_some() {
            return Ok(cached);
        }
        match self.data.get(key.encode())? {
            Some(bytes) => {
                let sketch = Arc::new(
                    Sketch::decode(&bytes)
                        .map_err(|e| Error::Corrupt(format!("sketch {key:?}: {e}")))?,
                );
                self.cache.insert(*key, sketch.clone(), generation);
                Ok(Some(sketch))
            }
            None => Ok(None),
        }
    }

    /// Entries and approximate bytes of the decoded-sketch cache.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// Merges into `acc` the stored sketches of one series over `window`,
    /// reading the fewest rollup blocks that tile it.
    pub fn merge_window(
        &self,
        acc: &mut Sketch,
        ns: NamespaceId,
        family: Family,
        dim: u64,
        window: DayWindow,
    ) -> Result<()> {
        for block in window.dyadic_cover(MAX_LEVEL) {
            let key = SketchKey {
                ns,
                family,
                dim,
                block,
            };
            if let Some(stored) = self.block_sketch(&key)? {
                acc.merge(&stored)?;
            }
        }
        Ok(())
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

    /// Builds the sled batch that moves a frozen memtable into sled, with
    /// the log position `lsn` it covers. Only checkpoints change the stored
    /// values it reads, and one runs at a time, so the batch stays valid
    /// until [`Store::apply_checkpoint`].
    pub fn prepare_checkpoint(&self, mem: &Memtable, lsn: u64) -> Result<Checkpoint> {
        let mut batch = sled::Batch::default();
        for ((ns, oc), days) in &mem.presence {
            let k = presence_key(*ns, oc.org, oc.country);
            let mut bits = match self.data.get(k)? {
                Some(v) => {
                    DayBits::decode(&v).ok_or_else(|| Error::Corrupt("presence days".into()))?
                }
                None => DayBits::default(),
            };
            bits.union(days);
            batch.insert(&k[..], bits.encode());
        }
        for (key, add) in &mem.counters {
            let k = key.encode();
            let stored = match self.data.get(k)? {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            batch.insert(&k[..], &(stored + add).to_le_bytes()[..]);
        }
        for (ns, version) in &mem.table_versions {
            batch.insert(keys::tables_key(*ns, version), &[][..]);
        }
        for ((ns, dim), name) in &mem.names {
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
        for ((ns, region, record), origin) in &mem.origins {
            let mut k = keys::origin_prefix(*ns, region);
            k.extend_from_slice(record);
            batch.insert(k, &origin.encode()[..]);
        }
        for (region, mark) in &mem.regions {
            batch.insert(keys::region_key(region), &mark.encode()[..]);
        }
        if self.changelog.load(Ordering::SeqCst) {
            let rev = lsn.to_le_bytes();
            let mut note = |ns: NamespaceId, key: &[u8]| {
                batch.insert(keys::change_key(ns, &keys::record_of(key)), &rev[..]);
            };
            for key in mem.sketches.keys() {
                note(key.ns, &key.encode());
            }
            for key in mem.counters.keys() {
                note(key.ns, &key.encode());
            }
            for (ns, oc) in mem.presence.keys() {
                note(*ns, &presence_key(*ns, oc.org, oc.country));
            }
            for (ns, dim) in mem.names.keys() {
                note(*ns, &org_name_key(*ns, *dim));
            }
            for (ns, version) in &mem.table_versions {
                note(*ns, &keys::tables_key(*ns, version));
            }
        }
        batch.insert(META_CHECKPOINT_LSN, &lsn.to_le_bytes()[..]);
        Ok(Checkpoint { batch })
    }

    /// Merges a frozen memtable's day deltas into the stored days and every
    /// rollup block above them, in chunks of whole series so that memory
    /// stays bounded. This runs before [`Store::prepare_checkpoint`]'s
    /// batch: union is idempotent, so if the process dies in between, the
    /// log replays into sketches that already hold part of it, with the same
    /// result. (Counters, which are not idempotent, go in the final batch.)
    pub fn write_checkpoint_sketches(&self, mem: &Memtable) -> Result<()> {
        /// Day sketches merged per sled batch, at least (whole series).
        const CHUNK: usize = 4_096;
        let mut keys: Vec<&SketchKey> = mem.sketches.keys().collect();
        keys.sort_unstable();
        let same_series =
            |a: &SketchKey, b: &SketchKey| (a.ns, a.family, a.dim) == (b.ns, b.family, b.dim);
        let mut start = 0;
        while start < keys.len() {
            let mut end = (start + CHUNK).min(keys.len());
            while end < keys.len() && same_series(keys[end - 1], keys[end]) {
                end += 1;
            }
            // Several days of a series share blocks: merge in memory first.
            let mut merged: HashMap<SketchKey, Sketch> = HashMap::new();
            let mut batch = sled::Batch::default();
            for key in &keys[start..end] {
                let delta = &mem.sketches[*key];
                for level in 0..=MAX_LEVEL {
                    let block_key = SketchKey {
                        block: Block::containing(key.block.start, level),
                        ..**key
                    };
                    match merged.entry(block_key) {
                        Entry::Occupied(mut e) => e.get_mut().merge(delta)?,
                        Entry::Vacant(e) => {
                            let sketch = match self.block_sketch(&block_key)? {
                                Some(stored) => {
                                    let mut stored = Sketch::clone(&stored);
                                    stored.merge(delta)?;
                                    stored
                                }
                                None => delta.clone(),
                            };
                            e.insert(sketch);
                        }
                    }
                }
                batch.insert(&dim_key(key.ns, key.family, key.dim)[..], &[][..]);
            }
            for (key, sketch) in &merged {
                batch.insert(&key.encode()[..], sketch.encode());
            }
            self.data.apply_batch(batch)?;
            self.cache.invalidate(merged.keys());
            start = end;
        }
        Ok(())
    }

    /// Applies the final part of a checkpoint atomically. Does not flush.
    pub fn apply_checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        self.data.apply_batch(checkpoint.batch)?;
        Ok(())
    }

    /// The value of a namespace-free record key (see `replication`), if stored.
    pub fn record_value(&self, ns: NamespaceId, record: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .data
            .get(keys::key_of_record(ns, record))?
            .map(|v| v.to_vec()))
    }

    /// Every replicable record of one namespace: day sketches, counters,
    /// presence, names and table versions, as (record key, value).
    pub fn records(
        &self,
        ns: NamespaceId,
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec)>> + '_ {
        [
            keys::KIND_SKETCH,
            keys::KIND_COUNTER,
            KIND_PRESENCE,
            KIND_ORG_NAME,
            keys::KIND_TABLES,
        ]
        .into_iter()
        .flat_map(move |kind| {
            let mut prefix = vec![kind];
            prefix.extend_from_slice(&ns.to_be_bytes());
            self.data.scan_prefix(prefix)
        })
        .filter_map(|item| match item {
            // Rollup blocks are derived: only days are replicated.
            Ok((k, _)) if k[0] == keys::KIND_SKETCH && k.get(14) != Some(&0) => None,
            Ok((k, v)) => Some(Ok((keys::record_of(&k), v))),
            Err(e) => Some(Err(e.into())),
        })
    }

    /// The change log: (namespace, record key, revision) of every record
    /// changed since the upstream last acknowledged it.
    pub fn changes(&self) -> impl Iterator<Item = Result<(NamespaceId, Vec<u8>, u64)>> + '_ {
        self.data.scan_prefix([keys::KIND_CHANGE]).map(|item| {
            let (k, v) = item?;
            if k.len() < 7 {
                return Err(Error::Corrupt("change-log key".into()));
            }
            let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
            Ok((ns, k[5..].to_vec(), decode_u64(&v)?))
        })
    }

    /// Number of change-log entries.
    pub fn pending_changes(&self) -> usize {
        self.data.scan_prefix([keys::KIND_CHANGE]).count()
    }

    /// Marks records as changed at `revision`, so the next push sends them.
    pub fn mark_changed(&self, ns: NamespaceId, records: &[Vec<u8>], revision: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(keys::change_key(ns, record), &revision.to_le_bytes()[..]);
        }
        self.data.apply_batch(batch)?;
        Ok(())
    }

    /// Removes change-log entries the upstream acknowledged, unless a
    /// later checkpoint changed the record again, and records the
    /// acknowledged revision.
    pub fn clear_changes(
        &self,
        pushed: &[(NamespaceId, Vec<u8>, u64)],
        acked: u64,
        at: i64,
    ) -> Result<()> {
        for (ns, record, revision) in pushed {
            let key = keys::change_key(*ns, record);
            // Fails harmlessly when the entry now holds a newer revision.
            let _ = self.data.compare_and_swap(
                key,
                Some(&revision.to_le_bytes()[..]),
                None::<&[u8]>,
            )?;
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&acked.to_le_bytes());
        value[8..].copy_from_slice(&at.to_le_bytes());
        self.data.insert(keys::META_UPSTREAM_ACKED, &value[..])?;
        self.db.flush()?;
        Ok(())
    }

    /// The revision the upstream acknowledged last, and when.
    pub fn upstream_acked(&self) -> Result<(u64, i64)> {
        Ok(match self.data.get(keys::META_UPSTREAM_ACKED)? {
            Some(v) if v.len() == 16 => (
                decode_u64(&v[..8])?,
                i64::from_le_bytes(v[8..].try_into().unwrap_or_default()),
            ),
            _ => (0, 0),
        })
    }

    /// What this server holds of one record from one region.
    pub fn origin_record(
        &self,
        ns: NamespaceId,
        region: &str,
        record: &[u8],
    ) -> Result<Option<OriginRecord>> {
        let mut k = keys::origin_prefix(ns, region);
        k.extend_from_slice(record);
        match self.data.get(k)? {
            Some(v) => Ok(Some(
                OriginRecord::decode(&v).ok_or_else(|| Error::Corrupt("origin record".into()))?,
            )),
            None => Ok(None),
        }
    }

    /// Every record held from one region: (record key, what is held).
    pub fn origin_records(
        &self,
        ns: NamespaceId,
        region: &str,
    ) -> impl Iterator<Item = Result<(Vec<u8>, OriginRecord)>> + '_ {
        let prefix = keys::origin_prefix(ns, region);
        let skip = prefix.len();
        self.data.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let origin =
                OriginRecord::decode(&v).ok_or_else(|| Error::Corrupt("origin record".into()))?;
            Ok((k[skip..].to_vec(), origin))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::HashSeed;

    /// A memtable with random deltas on random days of a few series.
    fn random_memtable(rng: &mut u64, days: u32, rows: usize) -> Memtable {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut mem = Memtable::default();
        for _ in 0..rows {
            let day = Day(20_000 + (next() % u64::from(days)) as u32);
            let dim = next() % 3;
            let key = SketchKey::day(1, Family::IpsCountry, dim, day);
            let hash = next() % 50_000;
            mem.sketches
                .entry(key)
                .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap())
                .insert_hash(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        mem
    }

    #[test]
    fn rollups_give_byte_identical_unions_including_late_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rng = 0x1234_5678u64;
        // Three checkpoints; the later ones bring late data for early days.
        for (lsn, rows) in [(1, 40_000), (2, 10_000), (3, 5_000)] {
            let mem = random_memtable(&mut rng, 700, rows);
            store.write_checkpoint_sketches(&mem).unwrap();
            store
                .apply_checkpoint(store.prepare_checkpoint(&mem, lsn).unwrap())
                .unwrap();
        }
        assert_eq!(store.checkpoint_lsn().unwrap(), 3);
        for i in 0..300u32 {
            let from = 19_990 + (i * 7919) % 720;
            let len = (i * 104_729) % 400;
            let window = DayWindow::new(Day(from), Day(from + len)).unwrap();
            for dim in 0..3 {
                let mut rolled = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                store
                    .merge_window(&mut rolled, 1, Family::IpsCountry, dim, window)
                    .unwrap();
                let mut by_day = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                for day in window.days() {
                    if let Some(s) = store
                        .block_sketch(&SketchKey::day(1, Family::IpsCountry, dim, day))
                        .unwrap()
                    {
                        by_day.merge(&s).unwrap();
                    }
                }
                assert_eq!(rolled.encode(), by_day.encode(), "{window:?} dim {dim}");
            }
        }
    }
}
