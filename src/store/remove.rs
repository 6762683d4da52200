//! Removing records from sled: a deleted namespace's, and the days a
//! namespace's retention no longer keeps.
//!
//! Every record of a namespace lies under a key `kind | ns u32 | ...`
//! (see [`keys`]), so deleting a namespace is one prefix scan per kind.
//! The catalog writes its tombstone first (see `catalog`), so a crash part
//! way leaves records of an id no name maps to; the engine removes them
//! again at the next start.
//!
//! Removing the days before a cut-off deletes the day sketches (keyed and
//! in day groups) and every rollup block wholly before it (sketch keys are day-major: one range per
//! family and level), marks the day before the cut-off stale in each
//! series that has a block straddling it (the next rollup pass rebuilds
//! those blocks from what is left, see the module doc of `store`), drops
//! the counters of those days, clears their bits from org presence and
//! moves the extent's first day. Each step is idempotent, so a crash part
//! way is finished by the next pass.
//!
//! Both run on the checkpoint thread's slot, never beside a checkpoint or
//! a rollup pass.

use rustc_hash::{FxHashMap, FxHashSet};

use super::index::DayBits;
use super::keys::{self, CounterKey, Family, NamespaceId, SketchKey};
use super::{Series, Store, ROLLUP_LEVELS};
use crate::error::{Error, Result};
use crate::time::{Block, Day};

/// The kinds of `data` keys that start with a namespace id.
const PER_NAMESPACE: &[u8] = &[
    keys::KIND_SKETCH,
    keys::KIND_DAY_GROUP,
    keys::KIND_COUNTER,
    keys::KIND_ORG_NAME,
    keys::KIND_DEDUPE,
    keys::KIND_EXTENT,
    keys::KIND_DIM,
    keys::KIND_PRESENCE,
    keys::KIND_TABLES,
    keys::KIND_CHANGE,
    keys::KIND_ORIGIN,
    keys::KIND_STALE_ROLLUP,
];

/// Keys deleted per sled batch.
const CHUNK: usize = 16 * 1024;

impl Store {
    /// Deletes every record of namespace `ns` (sketches, counters, names,
    /// batch ids, presence, replication state) and forgets its series.
    /// Returns the number of records deleted. Does not flush.
    pub fn remove_namespace_records(&self, ns: NamespaceId) -> Result<u64> {
        let mut removed = 0u64;
        for &kind in PER_NAMESPACE {
            let mut prefix = vec![kind];
            prefix.extend_from_slice(&ns.to_be_bytes());
            let end = after_prefix(&prefix);
            removed += self.remove_range(prefix..end)?;
        }
        let gone = |s: &Series| s.0 == ns;
        self.dims.write().retain(|s| !gone(s));
        let mut stale = self.stale.write();
        stale.days.retain(|s, _| !gone(s));
        stale.blocks.retain(|k| k.ns != ns);
        stale.flat.retain(|s| !gone(s));
        Ok(removed)
    }

    /// Removes every record of namespace `ns` about a day before `cutoff`
    /// (see the module doc). Returns the number of records deleted or
    /// rewritten. Does not flush.
    pub fn remove_days_before(&self, ns: NamespaceId, cutoff: Day) -> Result<u64> {
        if cutoff.0 == 0 {
            return Ok(0);
        }
        let last_removed = Day(cutoff.0 - 1);
        let mut touched = 0u64;
        // Series with a block holding both removed and kept days: mark the
        // last removed day stale first, so that readers stop using those
        // blocks before the days under them go.
        let mut straddling: FxHashSet<Series> = FxHashSet::default();
        for family in (1..=9).filter_map(Family::from_u8) {
            for &level in &ROLLUP_LEVELS[1..] {
                let block = Block::containing(last_removed, level);
                if block.start.0 + block.days() <= cutoff.0 {
                    continue;
                }
                let prefix = sketch_prefix(ns, family, level, Some(block.start));
                for item in self.data.scan_prefix(prefix) {
                    let (k, _) = item?;
                    let key =
                        SketchKey::decode(&k).ok_or_else(|| Error::Corrupt("sketch key".into()))?;
                    straddling.insert((ns, family, key.dim));
                }
            }
        }
        if !straddling.is_empty() {
            let mut marked: FxHashMap<Series, DayBits> = FxHashMap::default();
            let mut blocks = FxHashSet::default();
            {
                let state = self.stale.read();
                for &series in &straddling {
                    let mut days = state.days.get(&series).cloned().unwrap_or_default();
                    days.insert(last_removed);
                    state.blocks_above(series, last_removed, &mut blocks);
                    marked.insert(series, days);
                }
            }
            let mut batch = sled::Batch::default();
            for (&(ns, family, dim), days) in &marked {
                batch.insert(&keys::stale_days_key(ns, family, dim)[..], days.encode());
            }
            {
                let mut state = self.stale.write();
                state.blocks.extend(blocks);
                state.days.extend(marked);
            }
            self.data.apply_batch(batch)?;
        }
        // Day sketches and blocks wholly before the cut-off.
        for family in (1..=9).filter_map(Family::from_u8) {
            for &level in ROLLUP_LEVELS {
                let span = 1u32 << level;
                if cutoff.0 < span {
                    continue;
                }
                // Blocks starting at or before cutoff - span end by the cut-off.
                let end = Day(cutoff.0 - span + 1);
                let from = sketch_prefix(ns, family, level, None);
                let to = sketch_prefix(ns, family, level, Some(end));
                touched += self.remove_range(from..to)?;
            }
        }
        // Day groups before the cut-off (keys are day-major per family).
        for family in (1..=9).filter_map(Family::from_u8) {
            let from = keys::GroupKey::family_prefix(ns, family).to_vec();
            let to = keys::GroupKey::day_prefix(ns, family, cutoff).to_vec();
            touched += self.remove_range(from..to)?;
        }
        // Counters: per dimension, the days before the cut-off.
        let mut prefix = vec![keys::KIND_COUNTER];
        prefix.extend_from_slice(&ns.to_be_bytes());
        let mut batch = sled::Batch::default();
        for item in self.data.scan_prefix(&prefix) {
            let (k, _) = item?;
            if k.len() != CounterKey::LEN {
                return Err(Error::Corrupt("counter key".into()));
            }
            let day = u32::from_be_bytes(k[13..17].try_into().unwrap_or_default());
            if day < cutoff.0 {
                batch.remove(k);
                touched += 1;
            }
        }
        self.data.apply_batch(batch)?;
        // Org presence: the removed days' bits.
        let mut prefix = vec![keys::KIND_PRESENCE];
        prefix.extend_from_slice(&ns.to_be_bytes());
        let mut batch = sled::Batch::default();
        for item in self.data.scan_prefix(&prefix) {
            let (k, v) = item?;
            let mut days =
                DayBits::decode(&v).ok_or_else(|| Error::Corrupt("presence days".into()))?;
            if days.iter().next().is_some_and(|first| first < cutoff) {
                days.clear_before(cutoff);
                if days.is_empty() {
                    batch.remove(k);
                } else {
                    batch.insert(k, days.encode());
                }
                touched += 1;
            }
        }
        self.data.apply_batch(batch)?;
        // The extent.
        if let Some((first, end)) = self.extent(ns)? {
            let key = keys::extent_key(ns);
            if end <= cutoff {
                self.data.remove(key)?;
            } else if first < cutoff {
                let mut value = cutoff.0.to_le_bytes().to_vec();
                value.extend_from_slice(&end.0.to_le_bytes());
                self.data.insert(key, value)?;
            }
        }
        Ok(touched)
    }

    /// Deletes every key in `range`, [`CHUNK`] per sled batch (each batch
    /// scans the range again: the keys deleted before are gone), and drops
    /// the cached sketches among them. Returns how many.
    fn remove_range(&self, range: std::ops::Range<Vec<u8>>) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut sketches = Vec::new();
            let mut n = 0u64;
            for item in self.data.range(range.clone()).take(CHUNK) {
                let (k, v) = item?;
                sketches.extend(SketchKey::decode(&k));
                // The days of a group may be cached under their day keys.
                if let Some(gk) = keys::GroupKey::decode(&k) {
                    for entry in super::groups::entries(&v) {
                        let (dim, _) = entry?;
                        sketches.push(SketchKey::day(gk.ns, gk.family, dim, gk.day));
                    }
                }
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                return Ok(total);
            }
            self.data.apply_batch(batch)?;
            self.cache.invalidate(&sketches);
            total += n;
        }
    }

    /// Namespace ids that hold records in sled, for finding the leftovers
    /// of a deletion cut short.
    pub fn namespace_ids_with_records(&self) -> Result<FxHashSet<NamespaceId>> {
        let mut ids = FxHashSet::default();
        for &kind in PER_NAMESPACE {
            let mut from = vec![kind];
            loop {
                let Some(item) = self.data.range(from.clone()..vec![kind + 1]).next() else {
                    break;
                };
                let (k, _) = item?;
                let Some(id) = k.get(1..5) else { break };
                let id = u32::from_be_bytes(id.try_into().unwrap_or_default());
                ids.insert(id);
                match id.checked_add(1) {
                    Some(next) => {
                        from = vec![kind];
                        from.extend_from_slice(&next.to_be_bytes());
                    }
                    None => break,
                }
            }
        }
        Ok(ids)
    }
}

/// The first key after every key that starts with `prefix`: its last byte
/// below 0xff incremented, the 0xff bytes after it dropped (a kind byte is
/// never 0xff, so there is one).
fn after_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            break;
        }
    }
    end
}

/// The sketch keys of one (namespace, family, level), from `start` on
/// when given.
fn sketch_prefix(ns: NamespaceId, family: Family, level: u8, start: Option<Day>) -> Vec<u8> {
    let mut key = vec![keys::KIND_SKETCH];
    key.extend_from_slice(&ns.to_be_bytes());
    key.push(family as u8);
    key.push(level);
    if let Some(day) = start {
        key.extend_from_slice(&day.0.to_be_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::{HashSeed, Sketch};
    use crate::store::keys::{Family, SketchKey};
    use crate::store::memtable::Memtable;
    use crate::time::Day;

    fn put(mem: &mut Memtable, ns: NamespaceId, dim: u64, day: u32) {
        let mut s = Sketch::new(12, HashSeed::DEFAULT).unwrap();
        s.insert_hash((u64::from(day) * 7919 + dim).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        mem.sketches
            .insert(SketchKey::day(ns, Family::IpsOrg, dim, Day(day)), s);
        mem.widen_extent(ns, Day(day), Day(day + 1));
    }

    #[test]
    fn removes_one_namespace_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut mem = Memtable::default();
        for day in 0..40 {
            put(&mut mem, 1, 5, 20_000 + day);
            put(&mut mem, 2, 5, 20_000 + day);
        }
        store.write_checkpoint_merges(&mem).unwrap();
        let cp = store.prepare_checkpoint(&mem, 1).unwrap();
        store.apply_checkpoint(cp).unwrap();
        assert_eq!(
            store.namespace_ids_with_records().unwrap(),
            [1, 2].into_iter().collect()
        );
        let removed = store.remove_namespace_records(1).unwrap();
        assert!(removed >= 40, "removed {removed}");
        assert_eq!(
            store.namespace_ids_with_records().unwrap(),
            [2].into_iter().collect()
        );
        assert!(store.extent(1).unwrap().is_none());
        assert!(store.extent(2).unwrap().is_some());
    }
}
