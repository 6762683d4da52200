//! The memtable: what changed since the last checkpoint.
//!
//! It holds *delta* sketches (only what was inserted since the last
//! checkpoint, never read from sled), counter increments, new org names,
//! applied batch ids and day extents. Reads combine sled with the deltas;
//! this is exact because sketch union is idempotent, and counters are read
//! under the lock that the checkpoint takes to move deltas into sled.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use crate::sketch::Sketch;
use crate::store::index::{DayBits, Index, OrgCountry};
use crate::store::keys::{CounterKey, DedupeKey, NamespaceId, SketchKey};
use crate::time::Day;

#[derive(Default)]
pub struct Memtable {
    pub sketches: FxHashMap<SketchKey, Sketch>,
    pub counters: FxHashMap<CounterKey, u64>,
    /// (namespace, dim) -> name, for org and sector dims new since the checkpoint.
    pub names: HashMap<(NamespaceId, u64), String>,
    /// Table versions first used since the checkpoint.
    pub table_versions: std::collections::HashSet<(NamespaceId, String)>,
    /// Batches applied since the checkpoint, with the unix time they were applied.
    pub applied: Vec<(DedupeKey, i64)>,
    /// Per namespace: first day and end day (last + 1) with observations.
    pub extents: HashMap<NamespaceId, (Day, Day)>,
    /// Days on which each (org, country) was seen, since the checkpoint.
    pub presence: FxHashMap<(NamespaceId, OrgCountry), DayBits>,
    /// Rows applied since the checkpoint (for metrics and checkpoint pacing).
    pub rows: u64,
}

impl Memtable {
    pub fn is_empty(&self) -> bool {
        self.sketches.is_empty() && self.counters.is_empty() && self.applied.is_empty()
    }

    /// Widens the namespace's extent to include `[first, end)`.
    pub fn widen_extent(&mut self, ns: NamespaceId, first: Day, end: Day) {
        let e = self.extents.entry(ns).or_insert((first, end));
        e.0 = e.0.min(first);
        e.1 = e.1.max(end);
    }
}

/// The active memtable, the one being checkpointed, if any, and the full
/// in-memory index.
#[derive(Default)]
pub struct MemState {
    pub active: Memtable,
    pub frozen: Option<std::sync::Arc<Memtable>>,
    pub index: Index,
}

impl MemState {
    /// The memtables a read must combine with sled, newest first.
    pub fn tables(&self) -> impl Iterator<Item = &Memtable> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }
}
