//! Removing a deleted namespace's records from sled.
//!
//! Every record of a namespace lies under a key `kind | ns u32 | ...`
//! (see [`keys`]), so deleting a namespace is one prefix scan per kind.
//! The catalog writes its tombstone first (see `catalog`), so a crash part
//! way leaves records of an id no name maps to; [`Store::open`]'s caller
//! removes them again at the next start. Runs on the checkpoint thread's
//! slot, never beside a checkpoint or a rollup pass.

use rustc_hash::FxHashSet;

use super::keys::{self, NamespaceId};
use super::{Series, Store};
use crate::error::Result;

/// The kinds of `data` keys that start with a namespace id.
const PER_NAMESPACE: &[u8] = &[
    keys::KIND_SKETCH,
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
            loop {
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for item in self.data.scan_prefix(&prefix).take(CHUNK) {
                    let (k, _) = item?;
                    batch.remove(k);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                self.data.apply_batch(batch)?;
                removed += n as u64;
            }
        }
        let gone = |s: &Series| s.0 == ns;
        self.dims.write().retain(|s| !gone(s));
        let mut stale = self.stale.write();
        stale.days.retain(|s, _| !gone(s));
        stale.blocks.retain(|k| k.ns != ns);
        stale.flat.retain(|s| !gone(s));
        Ok(removed)
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
        store.write_checkpoint_sketches(&mem).unwrap();
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
