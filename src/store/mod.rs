//! Persistence: sled trees, the write-ahead log and checkpoints.
//!
//! Layout under the data directory: `sled/` (the embedded database) and
//! `wal/` (log segments). The sled tree `data` holds sketches, counters, org
//! names, applied batch ids, extents and the checkpointed log position, all
//! keyed as in [`keys`]; the tree `namespaces` holds the namespace catalog
//! and the ids of deleted namespaces (never reused).
//!
//! This file holds [`Store`]: opening a data directory, the catalog
//! records, and the reads (index, windows, counters).
//! Its parts, each with its invariants:
//!
//! - `checkpoint`: moving a frozen memtable into sled; the counters, the
//!   rest of the final batch and the log position go in one atomic sled
//!   batch, so after any crash sled holds exactly the records up to its
//!   log position and the log the rest;
//! - `rollup`: the stored levels ([`ROLLUP_LEVELS`]), stale blocks and
//!   their rebuild, flat series; a block above no stale day equals the
//!   union of its days, and readers never use a stale block;
//! - `replicated`: what replication reads and writes here: records by
//!   namespace, the change log, the upstream's acknowledgement, origin
//!   records;
//! - `groups`: the days of flat series, many to a sled value (day
//!   groups); a day is stored in one place only;
//! - `format`: the envelope format of stored sketches, and the rewrite,
//!   once, of a store written in an older one;
//! - `series`: checkpoint work split by series over
//!   [`CHECKPOINT_THREADS`], a series handled by one thread only.
//!
//! sled calls block: callers run them off the async runtime.

pub mod cache;
mod checkpoint;
#[cfg(test)]
mod fixtures;
mod format;
mod groups;
pub mod index;
pub mod keys;
pub mod memtable;
pub mod remove;
mod replicated;
mod rollup;
mod series;
pub mod snapshot;
pub mod space;
pub mod wal;

pub use cache::{from_memory_only, memory_only};
pub use checkpoint::Checkpoint;
pub use rollup::{
    lower_rollup_level, DIM_FLAT, DIM_ROLLED, FLAT_MAX_HASHES, MAX_LEVEL, ROLLUP_LEVELS,
};
pub use series::CHECKPOINT_THREADS;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashSet;

use crate::error::{Error, Result};
use crate::sketch::{Sketch, SketchError};
use crate::time::{Day, DayWindow};

use cache::SketchCache;
use index::{DayBits, Index, OrgCountry};
use keys::{
    extent_key, BatchId, CounterKey, Family, NamespaceId, SketchKey, KIND_DEDUPE, KIND_DIM,
    KIND_ORG_NAME, KIND_PRESENCE, META_CHECKPOINT_LSN,
};
use memtable::RegionMark;
use rollup::{adopt_rollup_levels, StaleRollups};
use series::Series;

/// Fewest flat series for which [`Store::merge_windows`] scans whole days
/// rather than reading each series' days.
const SCAN_MIN_SERIES: usize = 64;

/// Most series for which [`Store::merge_windows`] keeps the blocks it
/// reads in the cache.
const CACHE_MAX_SERIES: usize = 1024;

/// Flat series [`Store::merge_windows`] reads together (whole day groups):
/// their accumulators are all that is held at once.
const SCAN_RUN_SERIES: usize = 1024;

/// Rolled series [`Store::merge_windows`] reads together: the blocks it
/// scans for them (a few a series, up to ~8 KB each) are held at once.
const ROLLED_RUN_SERIES: usize = 256;

/// The error of merging a stored sketch: a sketch of another hash, seed or
/// precision is the caller's mismatch, anything else a corrupt record.
fn stored_sketch_error(key: &SketchKey, e: SketchError) -> Error {
    match e {
        SketchError::IncompatibleHash
        | SketchError::IncompatibleSeed
        | SketchError::IncompatiblePrecision => Error::Sketch(e),
        e => Error::Corrupt(format!("sketch {key:?}: {e}")),
    }
}

// The cache size defaults live with the configuration they are defaults of.
pub use crate::config::{DEFAULT_CACHE_BYTES, DEFAULT_SLED_CACHE_BYTES};

/// First byte of the `namespaces` tree's keys that record a deleted
/// namespace: `0x00 | id u32`, value its last name. Names never start
/// with it (see `catalog::validate_name`).
const DELETED_PREFIX: u8 = 0;

fn tombstone_key(id: NamespaceId) -> [u8; 5] {
    let mut key = [DELETED_PREFIX; 5];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

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
    /// What sled's `u` records say is stale (and possibly what a running
    /// checkpoint is adding). Only the checkpoint thread changes it; readers
    /// hold the lock only to plan which blocks to read.
    stale: Arc<RwLock<StaleRollups>>,
    /// Every series with a dimension record (`i` key) in sled, so that a
    /// checkpoint writes one only for a new series (they are never deleted).
    dims: Arc<RwLock<FxHashSet<Series>>>,
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
        // sled releases the file lock of a database closed moments ago
        // from its background threads (a snapshot restored into `dir` just
        // before, say): a lock held by this process a moment ago is waited
        // for; one held by another server still fails, after that wait.
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(dir.join("sled"))
                .cache_capacity(sled_cache_bytes as u64)
                .flush_every_ms(None)
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < std::time::Duration::from_secs(3) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let data = db.open_tree("data")?;
        let namespaces = db.open_tree("namespaces")?;
        let ungrouped = check_key_layout(&data)?;
        format::upgrade_sketch_format(&db, &data)?;
        let (mut dims, mut flat) = (FxHashSet::default(), FxHashSet::default());
        for item in data.scan_prefix([KIND_DIM]) {
            let (k, v) = item?;
            let corrupt = || Error::Corrupt("dimension record".into());
            let series = keys::decode_dim_key(&k).ok_or_else(corrupt)?;
            match &v[..] {
                DIM_FLAT => {
                    flat.insert(series);
                }
                [] | DIM_ROLLED => {}
                _ => return Err(corrupt()),
            }
            dims.insert(series);
        }
        if ungrouped {
            groups::group_flat_days(&db, &data, &flat)?;
        }
        adopt_rollup_levels(&db, &data, &flat)?;
        let stale = StaleRollups::load(&data, flat)?;
        Ok(Store {
            db,
            data,
            namespaces,
            dir: dir.to_owned(),
            cache: Arc::new(SketchCache::new(cache_bytes)),
            changelog: Arc::new(AtomicBool::new(false)),
            stale: Arc::new(RwLock::new(stale)),
            dims: Arc::new(RwLock::new(dims)),
        })
    }

    /// Makes checkpoints record every changed day record for replication.
    pub fn enable_changelog(&self) {
        self.changelog.store(true, Ordering::SeqCst);
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// Every catalog record, as stored.
    pub fn namespace_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.namespaces
            .range(..[DELETED_PREFIX].as_slice())
            .chain(self.namespaces.range([DELETED_PREFIX + 1].as_slice()..))
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

    /// Removes the catalog record of `name` and records that id `id` was
    /// deleted, atomically and durably (ids are never reused).
    pub fn put_namespace_tombstone(&self, name: &str, id: NamespaceId) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.remove(name.as_bytes());
        batch.insert(&tombstone_key(id)[..], name.as_bytes());
        self.namespaces.apply_batch(batch)?;
        self.namespaces.flush()?;
        Ok(())
    }

    /// The ids of deleted namespaces.
    pub fn deleted_namespace_ids(&self) -> Result<Vec<NamespaceId>> {
        self.namespaces
            .scan_prefix([DELETED_PREFIX])
            .map(|item| {
                let (k, _) = item?;
                k.get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| Error::Corrupt("deleted namespace record".into()))
            })
            .collect()
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

    /// On a cluster node: the last position of the cluster's log included
    /// in sled (0: none).
    pub fn cluster_position(&self) -> Result<u64> {
        Ok(match self.data.get(keys::META_CLUSTER_POSITION)? {
            Some(v) => decode_u64(&v)?,
            None => 0,
        })
    }

    /// Every batch id ever applied, with the digest of its rows (for
    /// idempotence across restarts).
    pub fn applied_batches(&self) -> Result<Vec<BatchId>> {
        self.data
            .scan_prefix([KIND_DEDUPE])
            .map(|item| {
                let (k, v) = item?;
                BatchId::decode(&k, &v).ok_or_else(|| Error::Corrupt("batch id record".into()))
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
        for &(ns, family, dim) in self.dims.read().iter() {
            index.dims.entry((ns, family)).or_default().insert(dim);
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
                .insert_days(OrgCountry { org, country }, &bits);
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
        self.read_block(key, true)
    }

    /// [`Store::block_sketch`] for the rollup pass: what it reads is only
    /// an input to a block, so it is not put in the cache (where it would
    /// push out what queries read, and hold memory while ingest needs it).
    /// A day is looked for under its own key first: the pass builds blocks
    /// of rolled series only, whose days are there but for those written
    /// while the series was flat, and it never runs beside a checkpoint,
    /// the only writer that moves a day from its group to its key (so the
    /// order [`Store::day_bytes`] keeps for concurrent readers is not
    /// needed).
    fn block_sketch_uncached(&self, key: &SketchKey) -> Result<Option<Arc<Sketch>>> {
        self.cached(key, false, || {
            let stored = match self.data.get(key.encode())? {
                None if key.block.level == 0 => self.day_in_group(key)?,
                stored => stored,
            };
            decode_stored(key, stored)
        })
    }

    fn read_block(&self, key: &SketchKey, keep: bool) -> Result<Option<Arc<Sketch>>> {
        self.cached(key, keep, || {
            let stored = if key.block.level == 0 {
                self.day_bytes(key)?
            } else {
                self.data.get(key.encode())?
            };
            decode_stored(key, stored)
        })
    }

    /// The sketch of `key` from the cache, else from `load` (then kept in
    /// the cache when `keep`, unless a checkpoint ran meanwhile).
    fn cached(
        &self,
        key: &SketchKey,
        keep: bool,
        load: impl FnOnce() -> Result<Option<Sketch>>,
    ) -> Result<Option<Arc<Sketch>>> {
        let (cached, generation) = self.cache.get(key);
        if cached.is_some() {
            return Ok(cached);
        }
        cache::may_read_sled()?;
        let Some(sketch) = load()? else {
            return Ok(None);
        };
        let sketch = Arc::new(sketch);
        if keep {
            self.cache.insert(*key, sketch.clone(), generation);
        }
        Ok(Some(sketch))
    }

    /// Entries and approximate bytes of the decoded-sketch cache.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// Merges into `acc` the stored sketches of one series over `window`
    /// (clipped by the caller to the namespace's days with data): for a
    /// flat series its days in the window, else the
    /// fewest up-to-date rollup blocks that tile it, a stale block replaced
    /// by its children, down to days if need be.
    pub fn merge_window(
        &self,
        acc: &mut Sketch,
        ns: NamespaceId,
        family: Family,
        dim: u64,
        window: DayWindow,
    ) -> Result<()> {
        let Some(blocks) = self.window_blocks(ns, family, dim, window) else {
            // A flat series' day is in its day group (see `groups`): one
            // point read a day, kept in the cache, a day without data as
            // an empty sketch (a checkpoint that writes the day drops it).
            // Callers clip the window to the days with data (`query`
            // does, once per query rather than once per series).
            for day in window.days() {
                let key = SketchKey::day(ns, family, dim, day);
                let stored = self.cached(&key, true, || {
                    let stored = self.with_day_in_group(&key, |stored| {
                        stored.decode().map_err(|e| stored_sketch_error(&key, e))
                    })?;
                    Ok(Some(stored.unwrap_or_else(|| acc.empty_like())))
                })?;
                if let Some(stored) = stored {
                    acc.merge(&stored)?;
                }
            }
            return Ok(());
        };
        self.merge_blocks(acc, blocks, true)
    }

    /// Merges the stored sketches of `blocks` into `acc`: from the cache
    /// when there, and kept in it when `keep`.
    fn merge_blocks(&self, acc: &mut Sketch, blocks: Vec<SketchKey>, keep: bool) -> Result<()> {
        for key in blocks {
            if let Some(stored) = self.read_block(&key, keep)? {
                acc.merge(&stored)?;
            }
        }
        Ok(())
    }

    /// [`Store::merge_window`] for many series of one family at once:
    /// `accs[i]` takes series `dims[i]`, and `done(i, &mut accs[i])` is
    /// called once it holds all of it (the caller may take the sketch's
    /// answer and free it: a query over every org then never holds every
    /// org's registers at once). Rolled series read their blocks as there;
    /// the days of flat series are read with one range scan per day over
    /// the day groups of `dims` (see `groups`) instead of one point read
    /// per series and day, so a query over every org reads each stored
    /// group once; a run of groups at a time, so that only that run's
    /// accumulators are held.
    pub fn merge_windows(
        &self,
        accs: &mut [Sketch],
        ns: NamespaceId,
        family: Family,
        dims: &[u64],
        window: DayWindow,
        done: &mut dyn FnMut(usize, &mut Sketch),
    ) -> Result<()> {
        assert_eq!(accs.len(), dims.len(), "one accumulator per series");
        // The blocks read are cached for a few series (every country), not
        // for many (every org: they would push out what the other queries
        // read, and the churn costs memory for nothing).
        let keep = dims.len() <= CACHE_MAX_SERIES;
        // Flat series as (day group, dim, index); rolled ones as (dim,
        // index, blocks).
        let mut flat: Vec<(u16, u64, usize)> = Vec::new();
        let mut rolled = Vec::new();
        for (i, &dim) in dims.iter().enumerate() {
            match self.window_blocks(ns, family, dim, window) {
                Some(blocks) => rolled.push((dim, i, blocks)),
                None => flat.push((keys::day_group(dim), dim, i)),
            }
        }
        if keep || rolled.len() < SCAN_MIN_SERIES {
            for (_, i, blocks) in rolled {
                self.merge_blocks(&mut accs[i], blocks, keep)?;
                done(i, &mut accs[i]);
            }
        } else {
            self.merge_rolled_scanned(accs, ns, family, rolled, done)?;
        }
        if flat.len() < SCAN_MIN_SERIES {
            for &(_, dim, i) in &flat {
                self.merge_window(&mut accs[i], ns, family, dim, window)?;
                done(i, &mut accs[i]);
            }
            return Ok(());
        }
        // A run of whole groups at a time: its series are complete (and
        // freed by `done`) before the next run's are read, so a query over
        // every org holds a few hundred accumulators, not all of them.
        flat.sort_unstable();
        let mut at = 0;
        while at < flat.len() {
            let mut end = (at + SCAN_RUN_SERIES).min(flat.len());
            while end < flat.len() && flat[end].0 == flat[end - 1].0 {
                end += 1;
            }
            let run = &flat[at..end];
            // The run's group values over the window, read first; then
            // each series' days merged at once, into a set sized for them
            // (one accumulator in the CPU's caches at a time, no rehash).
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let mut values = Vec::new();
            for day in window.days() {
                let group = |group| {
                    keys::GroupKey {
                        ns,
                        family,
                        day,
                        group,
                    }
                    .encode()
                };
                for item in self.data.range(group(first)..=group(last)) {
                    values.push((day, item?.1));
                }
            }
            let index: rustc_hash::FxHashMap<u64, usize> = run
                .iter()
                .enumerate()
                .map(|(at, &(_, dim, _))| (dim, at))
                .collect();
            let mut days: Vec<Vec<(Day, groups::Entry<'_>)>> = vec![Vec::new(); run.len()];
            for (day, value) in &values {
                for entry in groups::entries(value) {
                    let (dim, stored) = entry?;
                    if let Some(&at) = index.get(&dim) {
                        days[at].push((*day, stored));
                    }
                }
            }
            for (&(_, dim, i), days) in run.iter().zip(&days) {
                let acc = &mut accs[i];
                acc.reserve(days.iter().map(|(_, stored)| stored.exact_len()).sum());
                for (day, stored) in days {
                    stored.merge_into(acc).map_err(|e| {
                        stored_sketch_error(&SketchKey::day(ns, family, dim, *day), e)
                    })?;
                }
                done(i, acc);
            }
            at = end;
        }
        Ok(())
    }

    /// [`Store::merge_windows`] for many rolled series: `rolled` holds
    /// (dim, index, the blocks to read). Series go a run of dims at a
    /// time; the blocks of one (level, first day) the run needs, when
    /// many, are read with one range scan over the run's dims (keys are
    /// (level, day, dim)-major, see `keys`) instead of a point read each.
    /// Days (stale blocks read through) are point reads: they may be in
    /// day groups.
    fn merge_rolled_scanned(
        &self,
        accs: &mut [Sketch],
        ns: NamespaceId,
        family: Family,
        mut rolled: Vec<(u64, usize, Vec<SketchKey>)>,
        done: &mut dyn FnMut(usize, &mut Sketch),
    ) -> Result<()> {
        rolled.sort_unstable_by_key(|&(dim, i, _)| (dim, i));
        for run in rolled.chunks(ROLLED_RUN_SERIES) {
            let (lo, hi) = (run[0].0, run[run.len() - 1].0);
            // Blocks by (level, first day), as (dim, position in the run).
            let mut wanted: rustc_hash::FxHashMap<(u8, Day), Vec<(u64, usize)>> =
                Default::default();
            // Per position in the run: blocks read one by one, and the
            // stored blocks the scans found.
            let mut one_by_one: Vec<Vec<SketchKey>> = vec![Vec::new(); run.len()];
            let mut scanned: Vec<Vec<(SketchKey, sled::IVec)>> = vec![Vec::new(); run.len()];
            for (at, (dim, _, blocks)) in run.iter().enumerate() {
                for key in blocks {
                    if key.block.level == 0 {
                        one_by_one[at].push(*key);
                    } else {
                        wanted
                            .entry((key.block.level, key.block.start))
                            .or_default()
                            .push((*dim, at));
                    }
                }
            }
            for ((level, start), want) in wanted {
                let key = |dim| SketchKey {
                    ns,
                    family,
                    dim,
                    block: crate::time::Block { level, start },
                };
                if want.len() < SCAN_MIN_SERIES {
                    for (dim, at) in want {
                        one_by_one[at].push(key(dim));
                    }
                    continue;
                }
                let at: rustc_hash::FxHashMap<u64, usize> = want.into_iter().collect();
                for item in self.data.range(key(lo).encode()..=key(hi).encode()) {
                    let (k, bytes) = item?;
                    let stored =
                        SketchKey::decode(&k).ok_or_else(|| Error::Corrupt("sketch key".into()))?;
                    if let Some(&at) = at.get(&stored.dim) {
                        scanned[at].push((stored, bytes));
                    }
                }
            }
            // Each series at once (its accumulator stays in the CPU's
            // caches), largest blocks first: mostly dense, they turn the
            // accumulator dense before the smaller exact blocks go in.
            for (((_, i, _), mut blocks), keys) in run.iter().zip(scanned).zip(one_by_one) {
                let acc = &mut accs[*i];
                blocks.sort_unstable_by_key(|(key, _)| std::cmp::Reverse(key.block.level));
                for (stored, bytes) in blocks {
                    acc.merge_encoded(&bytes)
                        .map_err(|e| stored_sketch_error(&stored, e))?;
                }
                for key in keys {
                    if let Some(stored) = self.read_block(&key, false)? {
                        acc.merge(&stored)?;
                    }
                }
                done(*i, acc);
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

/// Refuses a store whose sketch keys have another layout than
/// [`keys::KEY_LAYOUT`], [`keys::KEY_LAYOUT_GROUPS_V1`] (recorded as
/// the current one: its groups are read as they are) or
/// [`keys::KEY_LAYOUT_UNGROUPED`], and records the layout in a new store.
/// Returns whether the store's flat days are still to be moved into day
/// groups (layout 2; see `groups`).
fn check_key_layout(data: &sled::Tree) -> Result<bool> {
    match data.get(keys::META_KEY_LAYOUT)? {
        Some(v) if &v[..] == keys::KEY_LAYOUT => Ok(false),
        Some(v) if &v[..] == keys::KEY_LAYOUT_GROUPS_V1 => {
            // Durable now, whether or not anything else is written.
            data.insert(keys::META_KEY_LAYOUT, keys::KEY_LAYOUT)?;
            data.flush()?;
            Ok(false)
        }
        Some(v) if &v[..] == keys::KEY_LAYOUT_UNGROUPED => Ok(true),
        Some(v) => Err(Error::Incompatible(format!(
            "the data directory's sketch keys have layout {:?}; this build reads layouts {:?}, \
             {:?} and {:?}",
            &v[..],
            keys::KEY_LAYOUT_UNGROUPED,
            keys::KEY_LAYOUT_GROUPS_V1,
            keys::KEY_LAYOUT
        ))),
        None if data.scan_prefix([keys::KIND_SKETCH]).next().is_some() => {
            Err(Error::Incompatible(format!(
                "the data directory was written by an earlier sketchd, with series-major sketch \
                 keys (layout [1]); this build reads layout {:?} (day-major): ingest into a new \
                 data directory",
                keys::KEY_LAYOUT
            )))
        }
        None => {
            data.insert(keys::META_KEY_LAYOUT, keys::KEY_LAYOUT)?;
            Ok(false)
        }
    }
}

fn decode_u64(v: &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(
        v.try_into()
            .map_err(|_| Error::Corrupt("counter value".into()))?,
    ))
}

/// The sketch of `key` from its stored bytes, if any.
fn decode_stored(key: &SketchKey, stored: Option<sled::IVec>) -> Result<Option<Sketch>> {
    stored
        .map(|bytes| {
            Sketch::decode(&bytes).map_err(|e| Error::Corrupt(format!("sketch {key:?}: {e}")))
        })
        .transpose()
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
    use fixtures::{reopen, try_reopen};

    /// A flat series' window is read from sled once, then from the cache
    /// (its days without data too), and a checkpoint that writes any of
    /// its days, one without data before among them, is seen at once. A
    /// read from memory only is refused until every day is cached.
    #[test]
    fn a_flat_series_window_comes_from_the_cache_and_sees_new_days() {
        use crate::sketch::HashSeed;
        use crate::store::memtable::Memtable;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (dim, first) = (7u64, 20_000u32);
        let window = DayWindow::new(Day(first), Day(first + 6)).unwrap();
        let mut truth = Sketch::new(12, HashSeed::DEFAULT).unwrap();
        let write = |truth: &mut Sketch, days: &[u32], salt: u64, lsn: u64| {
            let mut mem = Memtable::default();
            for &day in days {
                let key = SketchKey::day(1, Family::IpsOrg, dim, Day(day));
                let sketch = mem
                    .sketches
                    .entry(key)
                    .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap());
                for h in 0..3u64 {
                    let hash =
                        (salt * 100 + u64::from(day) * 10 + h).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    sketch.insert_hash(hash);
                    truth.insert_hash(hash);
                }
                mem.widen_extent(1, Day(day), Day(day + 1));
            }
            fixtures::checkpoint(&store, &mem, lsn);
        };
        write(&mut truth, &[first, first + 2], 1, 1);
        let read = |store: &Store| {
            let mut acc = Sketch::new(12, HashSeed::DEFAULT).unwrap();
            store
                .merge_window(&mut acc, 1, Family::IpsOrg, dim, window)
                .unwrap();
            acc
        };
        // From memory only: refused while a day would come from sled.
        let cached_only = |store: &Store| {
            let mut acc = Sketch::new(12, HashSeed::DEFAULT).unwrap();
            from_memory_only(|| store.merge_window(&mut acc, 1, Family::IpsOrg, dim, window))
                .map(|()| acc)
        };
        assert!(store.stale.read().flat.contains(&(1, Family::IpsOrg, dim)));
        assert_eq!(store.cache_usage().0, 0);
        assert!(matches!(cached_only(&store), Err(Error::NotInMemory)));
        assert!(!memory_only(), "the flag is this call's only");
        assert_eq!(store.cache_usage().0, 0);
        assert_eq!(read(&store), truth);
        // Every day of the window is cached, the four without data too.
        assert_eq!(store.cache_usage().0, 6);
        assert_eq!(read(&store), truth);
        assert_eq!(cached_only(&store).unwrap(), truth);
        assert_eq!(store.cache_usage().0, 6);
        // New hashes in a day that had some and in one that had none.
        write(&mut truth, &[first, first + 1], 2, 2);
        assert_eq!(store.cache_usage().0, 4, "the written days left the cache");
        assert!(matches!(cached_only(&store), Err(Error::NotInMemory)));
        assert_eq!(read(&store), truth);
        assert_eq!(cached_only(&store).unwrap(), truth);
        assert_eq!(read(&store).estimate().value, 12.0);
    }

    /// Over more series than the cache keeps blocks for, `merge_windows`
    /// reads rolled series' blocks by range scans and flat series' days by
    /// runs of day groups: every series equals what `merge_window` reads
    /// for it alone, with blocks built, and with some of them stale.
    #[test]
    fn merge_windows_over_many_series_equals_one_series_at_a_time() {
        use crate::sketch::HashSeed;
        use crate::store::memtable::Memtable;
        use crate::time::DayWindow;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let dims: Vec<u64> = (0..1_500u64)
            .map(|d| d.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
            .collect();
        let mut rng = 0x5ca7_7e12u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut memtable = |rows: usize| {
            let mut mem = Memtable::default();
            for r in 0..rows {
                let n = next();
                // One series in five is large: rolled.
                let dim = dims[(n % dims.len() as u64) as usize];
                let day = Day(20_000 + (next() % 40) as u32);
                let hashes = if n % 5 == 0 { 150 } else { 1 };
                let sketch = mem
                    .sketches
                    .entry(SketchKey::day(1, Family::IpsOrg, dim, day))
                    .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap());
                for h in 0..hashes {
                    sketch.insert_hash((r as u64 * 64 + h).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
                mem.widen_extent(1, day, Day(day.0 + 1));
            }
            mem
        };
        let check = |store: &Store| {
            for (from, to) in [(20_000, 20_040), (20_003, 20_033), (20_017, 20_019)] {
                let window = DayWindow::new(Day(from), Day(to)).unwrap();
                fixtures::merge_all(store, Family::IpsOrg, &dims, window, &mut |i, acc| {
                    let mut alone = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                    store
                        .merge_window(&mut alone, 1, Family::IpsOrg, dims[i], window)
                        .unwrap();
                    assert_eq!(acc.encode(), alone.encode(), "series {i} {window:?}");
                });
            }
        };
        fixtures::checkpoint(&store, &memtable(60_000), 1);
        store.rebuild_rollups().unwrap();
        let rolled = dims
            .iter()
            .filter(|&&d| !store.stale.read().flat.contains(&(1, Family::IpsOrg, d)))
            .count();
        assert!(rolled >= 200, "{rolled} rolled series");
        check(&store);
        // Late data: some blocks stale, read through to their days.
        fixtures::checkpoint(&store, &memtable(3_000), 2);
        assert!(store.stale_rollups() > 0);
        check(&store);
    }

    #[test]
    fn stores_with_another_sketch_key_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = |store: &Store| store.data.get(keys::META_KEY_LAYOUT).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(layout(&store).as_deref(), Some(keys::KEY_LAYOUT));
            // What an earlier build left: sketch keys and no layout record.
            store.data.remove(keys::META_KEY_LAYOUT).unwrap();
            let key = SketchKey::day(1, Family::IpsGlobal, 0, Day(20_000));
            store.data.insert(key.encode(), &b"s"[..]).unwrap();
            store.flush().unwrap();
        }
        let err = try_reopen(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("series-major"), "{err}");
        // A layout this build does not know.
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            let data = db.open_tree("data").unwrap();
            // The refused open changed nothing: no layout record was added.
            assert_eq!(data.get(keys::META_KEY_LAYOUT).unwrap(), None);
            assert_eq!(data.scan_prefix([keys::KIND_SKETCH]).count(), 1);
            data.insert(keys::META_KEY_LAYOUT, &[9u8][..]).unwrap();
            db.flush().unwrap();
        }
        let err = try_reopen(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("layout [9]"), "{err}");
        // A store of layout 3 (day groups of version 1 only) is recorded
        // as the current layout, so that a build that reads version 1
        // groups only refuses it from then on.
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .data
                .insert(keys::META_KEY_LAYOUT, keys::KEY_LAYOUT_GROUPS_V1)
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(layout(&store).as_deref(), Some(keys::KEY_LAYOUT));
        drop(store);
        // An empty store from before the record is adopted.
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.data.remove(keys::META_KEY_LAYOUT).unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(layout(&store).as_deref(), Some(keys::KEY_LAYOUT));
    }
}
