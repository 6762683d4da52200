//! Day groups: the day sketches of flat series, many to one sled value.
//!
//! Most series are flat (see `rollup`): their days are small exact sets,
//! ~250 bytes each, millions of them. Each under a key of its own, sled's
//! cost per key dominated checkpoints (each wrote ~85 k of them at scale
//! 1), disk and queries over every org. So the days of the flat series of
//! one (namespace, family, day) are kept in `2^GROUP_BITS` values keyed by
//! [`GroupKey`]: group [`day_group`]`(dim)` holds the days of its dims.
//!
//! A group value is a version byte ([`GROUP_VERSION`]) and then, sorted
//! by dim, entries of dim (u64 BE), length (u32 LE) and the day's sketch
//! envelope. No group is ever stored empty.
//!
//! Invariants: a day of a series is stored in at most one place, its `s`
//! day key or its group; a rolled series may still have days in groups,
//! written while it was flat, and a checkpoint that writes such a day
//! moves it to its `s` key in one sled batch. Readers of a day of a rolled
//! series look in its group first and at its `s` key next, so a move
//! between the two reads is never missed. A flat series' days are only in
//! groups.
//!
//! Stores of key layout 2 (every day under an `s` key) have the days of
//! their flat series moved into groups once at open
//! ([`group_flat_days`]), a day at a time.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use super::keys::{self, GroupKey, SketchKey};
use super::series::Series;
use super::Store;
use crate::error::{Error, Result};

/// Version byte of a group value.
pub(super) const GROUP_VERSION: u8 = 1;

/// The entries of a group value in dim order, checked as they are read.
pub(super) fn entries(value: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8])>> + '_ {
    spans(value).map(|span| span.map(|(dim, at, len)| (dim, &value[at..at + len])))
}

/// [`entries`] as (dim, offset, length) of each day in `value`.
fn spans(value: &[u8]) -> impl Iterator<Item = Result<(u64, usize, usize)>> + '_ {
    let mut at = 1;
    let mut failed = value.first() != Some(&GROUP_VERSION);
    std::iter::from_fn(move || {
        if !failed && at >= value.len() {
            return None;
        }
        let span = (|| {
            if failed {
                return None;
            }
            let head = value.get(at..at + 12)?;
            let dim = u64::from_be_bytes(head[..8].try_into().ok()?);
            let len = u32::from_le_bytes(head[8..].try_into().ok()?) as usize;
            value.get(at + 12..at + 12 + len)?;
            Some((dim, at + 12, len))
        })();
        match span {
            Some((dim, start, len)) => {
                at = start + len;
                Some(Ok((dim, start, len)))
            }
            None => {
                // One error, then the end.
                (failed, at) = (false, value.len());
                Some(Err(Error::Corrupt("day group value".into())))
            }
        }
    })
}

/// Where the day of `dim` lies in a group value: (offset, length).
fn find(value: &[u8], dim: u64) -> Result<Option<(usize, usize)>> {
    for span in spans(value) {
        let (d, at, len) = span?;
        if d == dim {
            return Ok(Some((at, len)));
        }
        if d > dim {
            break;
        }
    }
    Ok(None)
}

/// A group value being changed: its days by dim.
#[derive(Default)]
pub(super) struct GroupEdit {
    pub(super) days: BTreeMap<u64, Vec<u8>>,
    pub(super) dirty: bool,
}

impl GroupEdit {
    fn parse(value: &[u8]) -> Result<GroupEdit> {
        let mut days = BTreeMap::new();
        for entry in entries(value) {
            let (dim, bytes) = entry?;
            days.insert(dim, bytes.to_vec());
        }
        Ok(GroupEdit { days, dirty: false })
    }

    /// The group value, or `None` when it holds no day (the key goes).
    pub(super) fn encode(&self) -> Option<Vec<u8>> {
        if self.days.is_empty() {
            return None;
        }
        let len = 1 + self.days.values().map(|b| 12 + b.len()).sum::<usize>();
        let mut value = Vec::with_capacity(len);
        value.push(GROUP_VERSION);
        for (dim, bytes) in &self.days {
            value.extend_from_slice(&dim.to_be_bytes());
            value.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            value.extend_from_slice(bytes);
        }
        Some(value)
    }

    /// Puts the changed group into `batch`.
    pub(super) fn write(&self, key: &GroupKey, batch: &mut sled::Batch) {
        if !self.dirty {
            return;
        }
        match self.encode() {
            Some(value) => batch.insert(&key.encode()[..], value),
            None => batch.remove(&key.encode()[..]),
        }
    }
}

impl Store {
    /// The stored day of `key` (a day key) in its group, if there.
    pub(super) fn day_in_group(&self, key: &SketchKey) -> Result<Option<sled::IVec>> {
        let Some(value) = self.data.get(GroupKey::of(key).encode())? else {
            return Ok(None);
        };
        Ok(find(&value, key.dim)?.map(|(at, len)| value.subslice(at, len)))
    }

    /// The stored bytes of a day: in its group first, then under its `s`
    /// key (see the module doc for why in that order).
    pub(super) fn day_bytes(&self, key: &SketchKey) -> Result<Option<sled::IVec>> {
        match self.day_in_group(key)? {
            Some(bytes) => Ok(Some(bytes)),
            None => Ok(self.data.get(key.encode())?),
        }
    }

    /// A group as stored, ready to change.
    pub(super) fn load_group(&self, key: &GroupKey) -> Result<GroupEdit> {
        match self.data.get(key.encode())? {
            Some(value) => GroupEdit::parse(&value),
            None => Ok(GroupEdit::default()),
        }
    }

    /// Every day held in the groups of one namespace, as (day key,
    /// sketch bytes).
    pub(super) fn grouped_days(
        &self,
        ns: keys::NamespaceId,
    ) -> impl Iterator<Item = Result<(SketchKey, sled::IVec)>> + '_ {
        let mut prefix = vec![keys::KIND_DAY_GROUP];
        prefix.extend_from_slice(&ns.to_be_bytes());
        self.data.scan_prefix(prefix).flat_map(|item| {
            let days: Vec<Result<(SketchKey, sled::IVec)>> = match item {
                Err(e) => vec![Err(e.into())],
                Ok((k, value)) => match GroupKey::decode(&k) {
                    None => vec![Err(Error::Corrupt("day group key".into()))],
                    Some(gk) => spans(&value)
                        .map(|span| {
                            let (dim, at, len) = span?;
                            let key = SketchKey::day(gk.ns, gk.family, dim, gk.day);
                            Ok((key, value.subslice(at, len)))
                        })
                        .collect(),
                },
            };
            days
        })
    }
}

/// Moves the days of the flat series of a store of key layout 2 from their
/// `s` keys into day groups, one (namespace, family, day) per sled batch
/// (a group merges with what a run cut short already moved), then records
/// [`keys::KEY_LAYOUT`].
pub(super) fn group_flat_days(
    db: &sled::Db,
    data: &sled::Tree,
    flat: &FxHashSet<Series>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut moved = 0u64;
    let mut day: Option<(keys::NamespaceId, keys::Family, crate::time::Day)> = None;
    let mut groups: BTreeMap<GroupKey, GroupEdit> = BTreeMap::new();
    let mut batch = sled::Batch::default();
    let flush = |groups: &mut BTreeMap<GroupKey, GroupEdit>, batch: &mut sled::Batch| {
        for (gk, edit) in std::mem::take(groups) {
            let mut stored = match data.get(gk.encode())? {
                Some(value) => GroupEdit::parse(&value)?,
                None => GroupEdit::default(),
            };
            stored.days.extend(edit.days);
            stored.dirty = true;
            stored.write(&gk, batch);
        }
        data.apply_batch(std::mem::take(batch))?;
        Ok::<(), Error>(())
    };
    for item in data.scan_prefix([keys::KIND_SKETCH]) {
        let (k, v) = item?;
        let key = SketchKey::decode(&k).ok_or_else(|| Error::Corrupt("sketch key".into()))?;
        if key.block.level != 0 || !flat.contains(&(key.ns, key.family, key.dim)) {
            continue;
        }
        let this = (key.ns, key.family, key.block.start);
        if day != Some(this) {
            flush(&mut groups, &mut batch)?;
            day = Some(this);
        }
        groups
            .entry(GroupKey::of(&key))
            .or_default()
            .days
            .insert(key.dim, v.to_vec());
        batch.remove(k);
        moved += 1;
    }
    flush(&mut groups, &mut batch)?;
    data.insert(keys::META_KEY_LAYOUT, keys::KEY_LAYOUT)?;
    db.flush()?;
    if moved > 0 {
        tracing::info!(
            days = moved,
            seconds = started.elapsed().as_secs_f64(),
            "the days of flat series moved into day groups (key layout 3)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{checkpoint, merge_all, reopen};
    use super::super::memtable::Memtable;
    use super::*;
    use crate::sketch::{HashSeed, Sketch};
    use crate::store::keys::{Family, KIND_DAY_GROUP, KIND_SKETCH};
    use crate::store::FLAT_MAX_HASHES;
    use crate::time::{Day, DayWindow};
    use rustc_hash::FxHashMap;

    const DIMS: u64 = 5_000;
    const FIRST: u32 = 20_000;
    const DAYS: u32 = 6;

    fn org(dim: u64) -> u64 {
        dim.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1
    }

    /// A memtable of small org days (a few hashes each) over every dim,
    /// and `big` hashes on `day` of `dim` when given.
    fn memtable(rng: &mut u64, rows: usize, big: Option<(u64, Day)>) -> Memtable {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut mem = Memtable::default();
        let put = |mem: &mut Memtable, dim: u64, day: Day, hash: u64| {
            mem.sketches
                .entry(SketchKey::day(1, Family::IpsOrg, org(dim), day))
                .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap())
                .insert_hash(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            mem.widen_extent(1, day, Day(day.0 + 1));
        };
        for _ in 0..rows {
            let (dim, day) = (
                next() % DIMS,
                Day(FIRST + (next() % u64::from(DAYS)) as u32),
            );
            put(&mut mem, dim, day, next() % 1_000_000);
        }
        if let Some((dim, day)) = big {
            for h in 0..=FLAT_MAX_HASHES as u64 * 2 {
                put(&mut mem, dim, day, 5_000_000 + h);
            }
        }
        mem
    }

    /// What every day holds: the union of the memtables checkpointed.
    fn add(truth: &mut FxHashMap<SketchKey, Sketch>, mem: &Memtable) {
        for (key, sketch) in &mem.sketches {
            match truth.get_mut(key) {
                Some(t) => t.merge(sketch).unwrap(),
                None => {
                    truth.insert(*key, sketch.clone());
                }
            }
        }
    }

    /// Every day and window reads what was checkpointed, one series at a
    /// time and all at once, replication sees every day once, and no day
    /// is both in a group and under its own key.
    fn assert_reads(store: &Store, truth: &FxHashMap<SketchKey, Sketch>) {
        for (key, want) in truth {
            let got = store.block_sketch(key).unwrap().expect("day stored");
            assert_eq!(got.encode(), want.encode(), "{key:?}");
        }
        let dims: Vec<u64> = (0..DIMS).map(org).collect();
        for (from, to) in [(FIRST, FIRST + DAYS), (FIRST + 2, FIRST + 4)] {
            let window = DayWindow::new(Day(from), Day(to)).unwrap();
            let want = |dim: u64| {
                let mut w = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                for day in window.days() {
                    if let Some(s) = truth.get(&SketchKey::day(1, Family::IpsOrg, dim, day)) {
                        w.merge(s).unwrap();
                    }
                }
                w
            };
            merge_all(store, Family::IpsOrg, &dims, window, &mut |i, acc| {
                assert_eq!(acc.encode(), want(dims[i]).encode(), "dim {i}");
            });
            for &dim in dims.iter().step_by(37) {
                let mut one = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                store
                    .merge_window(&mut one, 1, Family::IpsOrg, dim, window)
                    .unwrap();
                assert_eq!(one.encode(), want(dim).encode(), "dim {dim}");
            }
        }
        let mut seen = FxHashMap::default();
        for record in store.records(1) {
            let (record, value) = record.unwrap();
            if record[0] == KIND_SKETCH {
                assert!(
                    seen.insert(record, value).is_none(),
                    "a day replicated twice"
                );
            }
        }
        assert_eq!(seen.len(), truth.len());
        for (key, want) in truth {
            let record = keys::record_of(&key.encode());
            assert_eq!(seen[&record][..], want.encode()[..]);
            assert_eq!(
                store.record_value(1, &record).unwrap().unwrap(),
                want.encode()
            );
            let keyed = store.data.contains_key(key.encode()).unwrap();
            let grouped = store.day_in_group(key).unwrap().is_some();
            assert!(
                keyed != grouped,
                "{key:?}: keyed {keyed}, grouped {grouped}"
            );
        }
    }

    fn keyed_days(store: &Store) -> usize {
        store
            .data
            .scan_prefix([KIND_SKETCH])
            .filter(|item| {
                SketchKey::decode(&item.as_ref().unwrap().0)
                    .unwrap()
                    .block
                    .level
                    == 0
            })
            .count()
    }

    #[test]
    fn flat_days_live_in_groups_and_leave_them_once_rolled_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x6a0c_0001u64;
        let mut truth = FxHashMap::default();
        let store = Store::open(dir.path()).unwrap();
        let mem = memtable(&mut rng, 60_000, None);
        add(&mut truth, &mem);
        checkpoint(&store, &mem, 1);
        // Every series is flat: no day under its own key, far fewer groups
        // than days.
        let groups = store.data.scan_prefix([KIND_DAY_GROUP]).count();
        assert_eq!(keyed_days(&store), 0);
        assert!(
            groups * 3 < truth.len(),
            "{groups} groups for {} days",
            truth.len()
        );
        assert_reads(&store, &truth);
        // A large day turns dim 5 rolled: that day stays in its group too
        // (a reader may still read the series as flat), like its others.
        let (dim, big_day) = (org(5), Day(FIRST + 4));
        let mem = memtable(&mut rng, 5_000, Some((5, big_day)));
        add(&mut truth, &mem);
        checkpoint(&store, &mem, 2);
        assert_eq!(keyed_days(&store), 0);
        assert!(!store.stale.read().flat.contains(&(1, Family::IpsOrg, dim)));
        assert_reads(&store, &truth);
        store.rebuild_rollups().unwrap();
        assert_reads(&store, &truth);
        // A day of it written again moves to its own key.
        let mut mem = Memtable::default();
        let key = SketchKey::day(1, Family::IpsOrg, dim, big_day);
        let mut late = Sketch::new(12, HashSeed::DEFAULT).unwrap();
        late.insert_hash(0x1234_5678_9abc_def1);
        mem.sketches.insert(key, late);
        mem.widen_extent(1, big_day, Day(big_day.0 + 1));
        add(&mut truth, &mem);
        checkpoint(&store, &mem, 3);
        assert_eq!(keyed_days(&store), 1);
        assert!(store.day_in_group(&key).unwrap().is_none());
        assert_reads(&store, &truth);
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_reads(&store, &truth);

        // A store of key layout 2 (every day under its own key) has its
        // flat series' days moved into groups at open, the rolled one's
        // left under their keys.
        let mut batch = sled::Batch::default();
        for item in store.data.scan_prefix([KIND_DAY_GROUP]) {
            let (k, v) = item.unwrap();
            let gk = GroupKey::decode(&k).unwrap();
            for entry in entries(&v) {
                let (dim, bytes) = entry.unwrap();
                let day = SketchKey::day(gk.ns, gk.family, dim, gk.day);
                batch.insert(&day.encode()[..], bytes);
            }
            batch.remove(k);
        }
        batch.insert(keys::META_KEY_LAYOUT, keys::KEY_LAYOUT_UNGROUPED);
        store.data.apply_batch(batch).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.data.get(keys::META_KEY_LAYOUT).unwrap().as_deref(),
            Some(keys::KEY_LAYOUT)
        );
        let rolled_days = truth.keys().filter(|k| k.dim == dim).count();
        assert_eq!(keyed_days(&store), rolled_days);
        assert_reads(&store, &truth);
    }

    #[test]
    fn a_group_value_round_trips_and_damage_is_refused() {
        let mut edit = GroupEdit::default();
        assert_eq!(edit.encode(), None, "an empty group is not stored");
        edit.days.insert(7, b"seven".to_vec());
        edit.days.insert(3, b"three!".to_vec());
        edit.days.insert(u64::MAX, Vec::new());
        let value = edit.encode().unwrap();
        let back: Vec<(u64, Vec<u8>)> = entries(&value)
            .map(|e| e.map(|(d, b)| (d, b.to_vec())))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            back,
            vec![
                (3, b"three!".to_vec()),
                (7, b"seven".to_vec()),
                (u64::MAX, Vec::new())
            ]
        );
        assert_eq!(find(&value, 7).unwrap().map(|(_, len)| len), Some(5));
        assert_eq!(find(&value, 5).unwrap(), None);
        for bad in [&value[..value.len() - 1], &value[..5], &[9u8, 0][..]] {
            assert!(entries(bad).any(|e| e.is_err()), "{bad:?}");
        }
        assert!(entries(&[]).any(|e| e.is_err()));
    }
}
