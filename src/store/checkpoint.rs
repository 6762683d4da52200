//! Checkpoints: moving a frozen memtable into sled.
//!
//! A checkpoint runs in two parts. [`Store::write_checkpoint_merges`]
//! merges the day deltas into the stored days and marks the rollup blocks
//! above them stale (see `rollup`), in chunks, split by series over the
//! checkpoint threads, then merges presence days, names, table versions
//! and extents, in chunks too. Each of these is a union (or min and max),
//! so a crash after it replays the log into records that already hold
//! part of it, with the same result. [`Store::prepare_checkpoint`] then
//! builds, and [`Store::apply_checkpoint`] applies, the final
//! [`Checkpoint`] batch: counters (not idempotent), batch ids, what regions
//! sent, the change log and the log position.
//!
//! Invariant: a checkpoint writes the counter sums and the new log position
//! in one atomic sled batch, so after any crash sled holds exactly the
//! effects of the records up to its log position, and the log holds the
//! rest.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;

use rustc_hash::{FxHashMap, FxHashSet};

use super::groups::GroupEdit;
use super::index::DayBits;
use super::keys::{
    self, day_group, dim_key, extent_key, org_name_key, presence_key, GroupKey, NamespaceId,
    SketchKey, META_CHECKPOINT_LSN,
};
use super::memtable::Memtable;
use super::rollup::{needs_rollups, DIM_FLAT, DIM_ROLLED};
use super::series::{by_series, Series};
use super::{decode_extent, decode_u64, Store};
use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::time::Day;

/// Keys per sled batch of [`Store::write_merged_records`].
const RECORD_CHUNK: usize = 2_048;

/// The final, atomic part of a checkpoint: counters, batch ids, what
/// regions sent, the change log and the log position.
pub struct Checkpoint {
    batch: sled::Batch,
}

impl Store {
    /// Builds the sled batch that ends moving a frozen memtable into sled
    /// (after [`Store::write_checkpoint_merges`]), with the log position
    /// `lsn` it covers. Only checkpoints change the stored
    /// values it reads, and one runs at a time, so the batch stays valid
    /// until [`Store::apply_checkpoint`].
    pub fn prepare_checkpoint(&self, mem: &Memtable, lsn: u64) -> Result<Checkpoint> {
        let mut batch = sled::Batch::default();
        for (key, add) in &mem.counters {
            let k = key.encode();
            let stored = match self.data.get(k)? {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            batch.insert(&k[..], &(stored + add).to_le_bytes()[..]);
        }
        for (id, applied_at) in &mem.applied {
            batch.insert(id.key.encode(), id.value(*applied_at));
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
        if mem.log_position > 0 {
            batch.insert(
                keys::META_CLUSTER_POSITION,
                &mem.log_position.to_le_bytes()[..],
            );
        }
        Ok(Checkpoint { batch })
    }

    /// Merges a frozen memtable into sled wherever merging it again gives
    /// the same: its day deltas into the stored days, marking every rollup
    /// block above them stale in the same sled batch, then its presence
    /// days, names, table versions and extents, in chunks so that memory
    /// stays bounded. This runs before [`Store::prepare_checkpoint`]'s
    /// batch: if the process dies in between, the log replays into records
    /// that already hold part of it, with the same result. (Counters, which
    /// are not idempotent, go in the final batch.) The blocks are rebuilt
    /// later by [`Store::rebuild_rollups`].
    ///
    /// The day sketches are split over [`CHECKPOINT_THREADS`] threads by
    /// series (a series' days and stale record are only ever handled by one
    /// of them), so that the read-merge-write of day sketches uses the cores
    /// the commit thread leaves idle.
    pub fn write_checkpoint_merges(&self, mem: &Memtable) -> Result<()> {
        by_series(mem.sketches.keys(), |mut keys| {
            // Day by day and group by group, so that a chunk changes each
            // day group it touches once.
            keys.sort_unstable_by_key(|k| (k.ns, k.family, k.block.start, day_group(k.dim), k.dim));
            self.write_day_chunks(mem, &keys)
        })?;
        self.write_merged_records(mem)
    }

    /// [`Store::write_checkpoint_merges`]' day sketches for `keys` (whole
    /// day groups,
    /// sorted by day and group).
    fn write_day_chunks(&self, mem: &Memtable, keys: &[&SketchKey]) -> Result<()> {
        /// Day sketches merged per sled batch (a batch holds their encoded
        /// values, up to 12 KiB each, and sled's copies of the nodes it
        /// rewrites). Scale 1, with 256 rollup blocks a batch beside it
        /// (docs/performance-history.md, 2026-12-07): 512 took 72-73 CPU-s
        /// and left 1,408-1,414 MiB on disk, peak RSS 344-347 MiB; 256
        /// took 77-79 s, 1,460-1,536 MiB, 328-354 MiB; 1,024 took 70-72 s
        /// but peaked at 384-397 MiB; 64 left 1,727-1,778 MiB on disk.
        const CHUNK: usize = 512;
        let series_of = |key: &SketchKey| (key.ns, key.family, key.dim);
        for chunk in keys.chunks(CHUNK) {
            let mut batch = sled::Batch::default();
            // Which series are flat as the chunk starts (a new one is, until
            // a day says otherwise): their days are in day groups.
            let mut flat_before: FxHashMap<Series, bool> = FxHashMap::default();
            let mut new_series: FxHashSet<Series> = FxHashSet::default();
            {
                let dims = self.dims.read();
                let state = self.stale.read();
                for key in chunk {
                    let series = series_of(key);
                    flat_before.entry(series).or_insert_with(|| {
                        let new = !dims.contains(&series);
                        if new {
                            new_series.insert(series);
                        }
                        new || state.flat.contains(&series)
                    });
                }
            }
            // The merged days first: they decide which series need blocks.
            let mut groups: FxHashMap<GroupKey, GroupEdit> = FxHashMap::default();
            let mut big: FxHashSet<Series> = FxHashSet::default();
            let mut merged = Vec::with_capacity(chunk.len());
            for key in chunk {
                let delta = &mem.sketches[*key];
                let gk = GroupKey::of(key);
                // A flat series' day is in its group; a rolled one's under
                // its own key, or in its group if written while flat.
                let flat = flat_before[&series_of(key)];
                let keyed = if flat {
                    None
                } else {
                    self.data.get(key.encode())?
                };
                let decode = |bytes: &[u8]| {
                    Sketch::decode(bytes)
                        .map_err(|e| Error::Corrupt(format!("sketch {key:?}: {e}")))
                };
                let stored = match keyed {
                    Some(bytes) => Some(decode(&bytes)?),
                    // Groups are loaded for editing when they hold a day
                    // this chunk changes (a rolled series' day leaves it).
                    None if !flat && !groups.contains_key(&gk) => {
                        let found = self.day_in_group(key)?;
                        if found.is_some() {
                            groups.insert(gk, self.load_group(&gk)?);
                        }
                        found.map(|bytes| decode(&bytes)).transpose()?
                    }
                    None => {
                        let edit = match groups.entry(gk) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => e.insert(self.load_group(&gk)?),
                        };
                        edit.days.get(&key.dim).map(|b| decode(b)).transpose()?
                    }
                };
                let sketch = match stored {
                    Some(mut stored) => {
                        stored.merge(delta)?;
                        Cow::Owned(stored)
                    }
                    // A new day is the delta itself.
                    None => Cow::Borrowed(delta),
                };
                if needs_rollups(&sketch) {
                    big.insert(series_of(key));
                }
                merged.push((*key, sketch));
            }
            // New series (and their dimension records), and flat series
            // that turn rolled.
            let mut new_dims = Vec::new();
            let (mut new_flat, mut to_roll) = (FxHashSet::default(), Vec::new());
            {
                let state = self.stale.read();
                for &series in flat_before.keys() {
                    let (ns, family, dim) = series;
                    let record = if new_series.contains(&series) {
                        new_dims.push(series);
                        if big.contains(&series) {
                            DIM_ROLLED
                        } else {
                            new_flat.insert(series);
                            DIM_FLAT
                        }
                    } else if state.flat.contains(&series) && big.contains(&series) {
                        to_roll.push(series);
                        DIM_ROLLED
                    } else {
                        continue;
                    };
                    batch.insert(&dim_key(ns, family, dim)[..], record);
                }
            }
            // The days: a series flat as the chunk started keeps them in
            // its groups (readers may still read it as flat, so nothing of
            // it moves now), unless new and rolled at once; a rolled
            // series' day goes under its own key and leaves its group.
            for (key, sketch) in &merged {
                let series = series_of(key);
                let in_group = flat_before[&series]
                    && !(new_series.contains(&series) && big.contains(&series));
                let gk = GroupKey::of(key);
                if in_group {
                    // Loaded when its day was read; never written unloaded
                    // (that would drop the group's other days).
                    let edit = match groups.entry(gk) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(self.load_group(&gk)?),
                    };
                    edit.days.insert(key.dim, sketch.encode());
                    edit.dirty = true;
                } else {
                    if let Some(edit) = groups.get_mut(&gk) {
                        edit.dirty |= edit.days.remove(&key.dim).is_some();
                    }
                    batch.insert(&key.encode()[..], sketch.encode());
                }
            }
            for (gk, edit) in &groups {
                edit.write(gk, &mut batch);
            }
            drop(merged);
            // The days whose blocks go stale: those of rolled series in the
            // chunk, and every stored day of a series turning rolled.
            let mut marked: FxHashMap<Series, DayBits> = FxHashMap::default();
            let mut newly_stale = FxHashSet::default();
            {
                let state = self.stale.read();
                let mut mark = |series: Series, day: Day| {
                    let known = marked.get(&series).or_else(|| state.days.get(&series));
                    if known.is_some_and(|days| days.contains(day)) {
                        return;
                    }
                    marked
                        .entry(series)
                        .or_insert_with(|| state.days.get(&series).cloned().unwrap_or_default())
                        .insert(day);
                    state.blocks_above(series, day, &mut newly_stale);
                };
                for key in chunk {
                    let series = series_of(key);
                    let flat = new_flat.contains(&series)
                        || (state.flat.contains(&series) && !to_roll.contains(&series));
                    if !flat {
                        mark(series, key.block.start);
                    }
                }
                for &(ns, family, dim) in &to_roll {
                    // Its stored days lie within the namespace's stored
                    // extent, or within this memtable's: earlier chunks of
                    // this checkpoint may have written some (the chunk's
                    // own days were marked above). They are all in groups.
                    let (first, end) = match (self.extent(ns)?, mem.extents.get(&ns)) {
                        (Some((f, e)), Some(&(mf, me))) => (f.min(mf), e.max(me)),
                        (Some(stored), None) => stored,
                        (None, Some(&written)) => written,
                        (None, None) => continue,
                    };
                    for day in (first.0..end.0).map(Day) {
                        let key = SketchKey::day(ns, family, dim, day);
                        if self.with_day_in_group(&key, |_| Ok(()))?.is_some() {
                            mark((ns, family, dim), day);
                        }
                    }
                }
            }
            for (&(ns, family, dim), days) in &marked {
                batch.insert(&keys::stale_days_key(ns, family, dim)[..], days.encode());
            }
            // Readers must stop using these blocks (and reading a series
            // turning rolled as flat) before the days under them change in
            // sled.
            {
                let mut state = self.stale.write();
                state.blocks.extend(newly_stale);
                state.days.extend(marked);
                for series in &to_roll {
                    state.flat.remove(series);
                }
                state.flat.extend(new_flat);
            }
            self.data.apply_batch(batch)?;
            self.cache.invalidate(chunk.iter().copied());
            if !new_dims.is_empty() {
                self.dims.write().extend(new_dims);
            }
        }
        Ok(())
    }

    /// Writes the memtable's presence days, org names, table versions and
    /// extents, merged with what sled holds (union, or min and max), in
    /// sled batches of at most [`RECORD_CHUNK`] keys. Merging them again
    /// gives the same, so like the day sketches they go before the final
    /// batch: in one batch, the first checkpoint of a new store (~40 k new
    /// presence and name keys at scale 1) took RSS from 257 to 448 MiB
    /// while sled applied it (the node copies it keeps until the batch
    /// ends), the peak of the whole ingest.
    fn write_merged_records(&self, mem: &Memtable) -> Result<()> {
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for ((ns, oc), days) in &mem.presence {
            let k = presence_key(*ns, oc.org, oc.country);
            let mut bits = match self.data.get(k)? {
                Some(v) => {
                    DayBits::decode(&v).ok_or_else(|| Error::Corrupt("presence days".into()))?
                }
                None => DayBits::default(),
            };
            let before = bits.clone();
            bits.union(days);
            // Within a day most (org, country) pairs are seen again: their
            // stored days do not change, and a write would only cost sled.
            if bits != before {
                writes.push((k.to_vec(), bits.encode()));
            }
        }
        for (ns, version) in &mem.table_versions {
            writes.push((keys::tables_key(*ns, version), Vec::new()));
        }
        for ((ns, dim), name) in &mem.names {
            writes.push((org_name_key(*ns, *dim).to_vec(), name.as_bytes().to_vec()));
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
            writes.push((k.to_vec(), value.to_vec()));
        }
        // In key order, so that a batch fills few leaves.
        writes.sort_unstable();
        for chunk in writes.chunks(RECORD_CHUNK) {
            let mut batch = sled::Batch::default();
            for (k, v) in chunk {
                batch.insert(&k[..], &v[..]);
            }
            self.data.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Applies the final part of a checkpoint atomically. Does not flush.
    pub fn apply_checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        self.data.apply_batch(checkpoint.batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{checkpoint, reopen, rolled_memtable};
    use super::*;
    use crate::sketch::Sketch;

    /// Every day key of `mems`, with the union of their sketches.
    fn union_by_key(mems: &[&Memtable]) -> FxHashMap<SketchKey, Sketch> {
        let mut want: FxHashMap<SketchKey, Sketch> = FxHashMap::default();
        for mem in mems {
            for (key, sketch) in &mem.sketches {
                match want.get_mut(key) {
                    Some(u) => u.merge(sketch).unwrap(),
                    None => {
                        want.insert(*key, sketch.clone());
                    }
                }
            }
        }
        want
    }

    /// A crash after a checkpoint's merges and before its final batch: the
    /// log replays the same memtable into the next checkpoint, and every
    /// record (days, presence, names, table versions, extents, counters)
    /// ends as after one checkpoint. Presence and names cover more keys
    /// than one sled batch of merges holds.
    #[test]
    fn a_checkpoint_cut_after_its_merges_and_replayed_counts_once() {
        use crate::store::index::OrgCountry;
        use crate::store::keys::CounterKey;
        let mut rng = 0x0c4a_5e11u64;
        let mut mem = rolled_memtable(&mut rng, 300, 5_000);
        for org in 0..3 * RECORD_CHUNK as u64 {
            let day = Day(20_000 + (org % 5) as u32);
            let mut days = DayBits::default();
            days.insert(day);
            let oc = OrgCountry {
                org,
                country: *b"DE",
            };
            mem.presence.insert((1, oc), days);
            mem.names.insert((1, org), format!("AS{org}"));
        }
        mem.table_versions.insert((1, "t-1".into()));
        let day = Day(20_001);
        mem.counters.insert(
            CounterKey {
                ns: 1,
                dim: CounterKey::ALL,
                day,
            },
            7,
        );
        // Every record replication reads (days wherever kept: a series
        // that turns rolled within a checkpoint keeps the days earlier
        // chunks put in groups, where a replay finds it rolled from the
        // start), and the extent.
        let records = |dir: &std::path::Path| {
            let store = reopen(dir);
            let mut all: Vec<(Vec<u8>, sled::IVec)> =
                store.records(1).collect::<Result<_>>().unwrap();
            all.sort();
            let extent = store.extent(1).unwrap();
            (all, extent)
        };
        let once = tempfile::tempdir().unwrap();
        {
            let store = Store::open(once.path()).unwrap();
            checkpoint(&store, &mem, 1);
            store.flush().unwrap();
        }
        let cut = tempfile::tempdir().unwrap();
        {
            let store = Store::open(cut.path()).unwrap();
            store.write_checkpoint_merges(&mem).unwrap();
            store.flush().unwrap();
        }
        {
            let store = reopen(cut.path());
            checkpoint(&store, &mem, 1);
            store.flush().unwrap();
        }
        let ((a, a_extent), (b, b_extent)) = (records(once.path()), records(cut.path()));
        assert!(a.len() > 3 * RECORD_CHUNK, "{} records", a.len());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y);
        }
        assert_eq!(a_extent, b_extent);
        assert!(a_extent.is_some());
    }

    /// A checkpoint merges its deltas into the stored days, in the same
    /// process and after a restart, and writes a new day as is. (The window
    /// tests compare reads with the stored days, so they would not see a
    /// day overwritten by its delta.)
    #[test]
    fn checkpoints_merge_into_stored_days_before_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x0da7_5000u64;
        let mems: Vec<Memtable> = [20_000, 5_000, 5_000, 5_000]
            .iter()
            .map(|&rows| rolled_memtable(&mut rng, 300, rows))
            .collect();
        let check = |store: &Store, upto: usize| {
            let refs: Vec<&Memtable> = mems[..upto].iter().collect();
            for (key, want) in union_by_key(&refs) {
                let stored = store.block_sketch(&key).unwrap().expect("day stored");
                assert_eq!(stored.encode(), want.encode(), "{key:?}");
            }
        };
        {
            let store = Store::open(dir.path()).unwrap();
            checkpoint(&store, &mems[0], 1);
            checkpoint(&store, &mems[1], 2);
            check(&store, 2);
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        checkpoint(&store, &mems[2], 3);
        check(&store, 3);
        checkpoint(&store, &mems[3], 4);
        check(&store, 4);
    }
}
