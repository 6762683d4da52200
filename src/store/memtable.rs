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
use crate::store::keys::{BatchId, CounterKey, NamespaceId, SketchKey};
use crate::time::Day;

/// Kept in the [`Index`] (which holds every region's mark); memtables
/// carry the marks new since the checkpoint.
pub use crate::store::index::RegionMark;

#[derive(Default)]
pub struct Memtable {
    pub sketches: FxHashMap<SketchKey, Sketch>,
    pub counters: FxHashMap<CounterKey, u64>,
    /// (namespace, dim) -> name, for org and sector dims new since the checkpoint.
    pub names: HashMap<(NamespaceId, u64), String>,
    /// Table versions first used since the checkpoint.
    pub table_versions: std::collections::HashSet<(NamespaceId, String)>,
    /// Batches applied since the checkpoint, with the unix time they were applied.
    pub applied: Vec<(BatchId, i64)>,
    /// Per namespace: first day and end day (last + 1) with observations.
    pub extents: HashMap<NamespaceId, (Day, Day)>,
    /// Days on which each (org, country) was seen, since the checkpoint.
    pub presence: FxHashMap<(NamespaceId, OrgCountry), DayBits>,
    /// Rows applied since the checkpoint (for metrics and checkpoint pacing).
    pub rows: u64,
    /// Approximate heap bytes of `sketches` (checkpoint pacing, the memory
    /// budget).
    pub sketch_bytes: usize,
    /// What each org day sketch ([`crate::store::keys::Family::IpsOrg`]) of
    /// `sketches` was built from: the [`row_source`] of every row inserted
    /// into it since it was created in this memtable, or
    /// [`MIXED_SOURCES`] once rows of two sources (another country, other
    /// sector labels) or a merge from a region went in. While it names
    /// one source, every hash that changed the org sketch was also inserted
    /// into the sketches of that source's other series (global, country,
    /// sectors), so a hash that leaves the org sketch unchanged would leave
    /// them unchanged too, and ingest skips it there. A sketch with no
    /// entry is treated as mixed.
    pub org_sources: FxHashMap<SketchKey, u64>,
    /// Records merged from regions since the checkpoint: (namespace,
    /// region, record key) -> what the upstream now holds from it.
    pub origins: FxHashMap<(NamespaceId, String, Vec<u8>), OriginRecord>,
    /// Regions merged since the checkpoint, with their new totals.
    pub regions: HashMap<String, RegionMark>,
    /// On a cluster node: the last position of the cluster's log applied
    /// into this memtable (0: none).
    pub log_position: u64,
}

/// What a server holds of one record from one region: the hash of the
/// record as last merged and, for exact counters, the absolute value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginRecord {
    pub hash: u64,
    pub counter: u64,
}

impl OriginRecord {
    pub fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.hash.to_le_bytes());
        v[8..].copy_from_slice(&self.counter.to_le_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<OriginRecord> {
        if bytes.len() != 16 {
            return None;
        }
        Some(OriginRecord {
            hash: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            counter: u64::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// The `org_sources` value of an org sketch that took rows of more than one
/// source, or merged records.
pub const MIXED_SOURCES: u64 = 0;

/// The source of a row in an org sketch: its country and the org's sector
/// dimensions, which decide the row's other series. Never [`MIXED_SOURCES`].
pub fn row_source(country: [u8; 2], sector_dims: impl Iterator<Item = u64>) -> u64 {
    let mut h = u64::from(u16::from_be_bytes(country)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for dim in sector_dims {
        h = (h.rotate_left(23) ^ dim).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h | 1
}

impl Memtable {
    pub fn is_empty(&self) -> bool {
        self.sketches.is_empty()
            && self.counters.is_empty()
            && self.applied.is_empty()
            && self.presence.is_empty()
            && self.names.is_empty()
            && self.origins.is_empty()
            && self.regions.is_empty()
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
