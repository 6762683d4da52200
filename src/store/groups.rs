//! Day groups: the day sketches of flat series, many to one sled value.
//!
//! Most series are flat (see `rollup`): their days are small exact sets,
//! ~250 bytes each, millions of them. Each under a key of its own, sled's
//! cost per key dominated checkpoints (each wrote ~85 k of them at scale
//! 1), disk and queries over every org. So the days of the flat series of
//! one (namespace, family, day) are kept in `2^GROUP_BITS` values keyed by
//! [`GroupKey`]: group [`day_group`]`(dim)` holds the days of its dims.
//!
//! A group value ([`GROUP_VERSION`] 2) is a version byte, the exact
//! header its exact days share ([`ExactHeader`]: hash id, seed
//! fingerprint, precision; 10 bytes), then, sorted by dim, entries of dim
//! (u64 BE) and either tag 0, a hash count (u16 LE) and the day's hashes
//! (increasing, as an exact envelope's payload holds them: 5 bytes each
//! under hash id 2, 8 under hash id 1): an exact sketch of that header; or
//! tag 1, a length (u32 LE) and a whole sketch envelope (any other day). A
//! CRC-32 (u32 LE) of everything before it ends the value. An exact day
//! costs 11 bytes besides its hashes where its envelope cost 36. Version 1
//! values (entries of dim, length and envelope, no header, no checksum)
//! are read as well and written as version 2 when next changed (the key
//! layout, 4, tells a build that reads version 1 only to refuse the
//! store). With no exact day, the header is ten zero bytes. One checksum
//! guards the whole value: a damaged value makes all its days unreadable
//! (reads and checkpoints touching it fail with an error naming it),
//! where a version 1 value lost only the damaged day. No group is ever
//! stored empty.
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

use std::borrow::Cow;
use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use super::keys::{self, GroupKey, SketchKey};
use super::series::Series;
use super::Store;
use crate::error::{Error, Result};
use crate::sketch::{join_exact, split_exact, ExactHeader, Sketch, SketchError, FORMAT_VERSION};

/// Version byte of the group values written: see the module doc.
pub(super) const GROUP_VERSION: u8 = 2;
/// Version byte of group values whose entries are whole envelopes.
const GROUP_VERSION_1: u8 = 1;

/// Entry tags of a version 2 value.
const TAG_EXACT: u8 = 0;
const TAG_ENVELOPE: u8 = 1;

/// A day as its group holds it.
#[derive(Clone, Copy)]
pub(super) enum Entry<'a> {
    /// A whole sketch envelope.
    Envelope(&'a [u8]),
    /// An exact sketch: the group's header and the day's hashes.
    Exact(ExactHeader, &'a [u8]),
}

impl<'a> Entry<'a> {
    /// Merges the day into `acc`.
    pub(super) fn merge_into(&self, acc: &mut Sketch) -> Result<(), SketchError> {
        match *self {
            Entry::Envelope(bytes) => acc.merge_encoded(bytes),
            Entry::Exact(header, hashes) => acc.merge_exact(header, hashes),
        }
    }

    /// Hashes of an exact day (0 for a whole envelope).
    pub(super) fn exact_len(&self) -> usize {
        match *self {
            Entry::Envelope(_) => 0,
            Entry::Exact(header, hashes) => header.hash_width().map_or(0, |w| hashes.len() / w),
        }
    }

    /// The day's sketch.
    pub(super) fn decode(&self) -> Result<Sketch, SketchError> {
        match *self {
            Entry::Envelope(bytes) => Sketch::decode(bytes),
            Entry::Exact(header, hashes) => Sketch::decode_exact(header, hashes),
        }
    }

    /// The day's sketch envelope.
    pub(super) fn envelope(&self) -> Result<Cow<'a, [u8]>> {
        match *self {
            Entry::Envelope(bytes) => Ok(Cow::Borrowed(bytes)),
            Entry::Exact(header, hashes) => join_exact(header, hashes)
                .map(Cow::Owned)
                .map_err(|e| Error::Corrupt(format!("day group entry: {e}"))),
        }
    }
}

/// The entries of a group value in dim order, checked as they are read:
/// a damaged value yields one error, then ends.
pub(super) fn entries(value: &[u8]) -> impl Iterator<Item = Result<(u64, Entry<'_>)>> + '_ {
    let mut parts = parse(value);
    let mut at = 0;
    std::iter::from_fn(move || {
        let (version, header, body) = match parts {
            Ok(parts) => parts,
            Err(_) => {
                let err = std::mem::replace(&mut parts, Ok((GROUP_VERSION, None, &[])));
                return err.err().map(Err);
            }
        };
        if at >= body.len() {
            return None;
        }
        match entry(version, header, body, at) {
            Some((dim, day, end)) => {
                at = end;
                Some(Ok((dim, day)))
            }
            None => {
                at = body.len();
                Some(Err(Error::Corrupt("day group value".into())))
            }
        }
    })
}

/// A value's version, exact header (version 2) and entries.
fn parse(value: &[u8]) -> Result<(u8, Option<ExactHeader>, &[u8])> {
    let bad = || Error::Corrupt("day group value".into());
    match value.first() {
        Some(&GROUP_VERSION_1) => Ok((GROUP_VERSION_1, None, &value[1..])),
        Some(&GROUP_VERSION) if value.len() >= 1 + ExactHeader::LEN + 4 => {
            let (body, crc) = value.split_at(value.len() - 4);
            if crc32fast::hash(body).to_le_bytes() != crc {
                return Err(Error::Corrupt("day group value: checksum".into()));
            }
            let header = ExactHeader::from_bytes(
                body[1..1 + ExactHeader::LEN].try_into().expect("10 bytes"),
            );
            Ok((GROUP_VERSION, Some(header), &body[1 + ExactHeader::LEN..]))
        }
        _ => Err(bad()),
    }
}

/// The entry at `at` of `body`: (dim, day, where the next one starts).
fn entry(
    version: u8,
    header: Option<ExactHeader>,
    body: &[u8],
    at: usize,
) -> Option<(u64, Entry<'_>, usize)> {
    let dim = u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?);
    let at = at + 8;
    let envelope = |at: usize| {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let bytes = body.get(at + 4..(at + 4).checked_add(len)?)?;
        Some((dim, Entry::Envelope(bytes), at + 4 + len))
    };
    if version == GROUP_VERSION_1 {
        return envelope(at);
    }
    match *body.get(at)? {
        TAG_EXACT => {
            let header = header?;
            let len = header.hash_width()?
                * usize::from(u16::from_le_bytes(
                    body.get(at + 1..at + 3)?.try_into().ok()?,
                ));
            let hashes = body.get(at + 3..at + 3 + len)?;
            Some((dim, Entry::Exact(header, hashes), at + 3 + len))
        }
        TAG_ENVELOPE => envelope(at + 1),
        _ => None,
    }
}

/// The day of `dim` in a group value, if there.
fn find(value: &[u8], dim: u64) -> Result<Option<Entry<'_>>> {
    for entry in entries(value) {
        let (d, day) = entry?;
        if d == dim {
            return Ok(Some(day));
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
    /// The days of a group value, each in the current envelope format (a
    /// day of an older one is decoded and encoded again; one that does not
    /// decode is kept as it is, for its readers to refuse).
    pub(super) fn parse(value: &[u8]) -> Result<GroupEdit> {
        let mut days = BTreeMap::new();
        for entry in entries(value) {
            let (dim, day) = entry?;
            let envelope = day.envelope()?;
            let envelope = match envelope.get(4) {
                Some(&FORMAT_VERSION) => envelope.into_owned(),
                _ => day.decode().map_or(envelope.into_owned(), |s| s.encode()),
            };
            days.insert(dim, envelope);
        }
        Ok(GroupEdit { days, dirty: false })
    }

    /// The group value, or `None` when it holds no day (the key goes).
    pub(super) fn encode(&self) -> Option<Vec<u8>> {
        if self.days.is_empty() {
            return None;
        }
        let split: Vec<Option<(ExactHeader, &[u8])>> = self
            .days
            .values()
            .map(|bytes| {
                split_exact(bytes).filter(|(header, hashes)| {
                    header
                        .hash_width()
                        .is_some_and(|width| hashes.len() / width <= usize::from(u16::MAX))
                })
            })
            .collect();
        // The header of the first exact day; days of another are kept whole.
        let header = split.iter().flatten().map(|&(h, _)| h).next();
        let mut value = Vec::with_capacity(
            1 + ExactHeader::LEN + self.days.values().map(|b| 13 + b.len()).sum::<usize>() + 4,
        );
        value.push(GROUP_VERSION);
        value.extend_from_slice(&header.map_or([0; ExactHeader::LEN], |h| h.to_bytes()));
        for ((dim, bytes), split) in self.days.iter().zip(split) {
            value.extend_from_slice(&dim.to_be_bytes());
            match split {
                Some((h, hashes)) if Some(h) == header => {
                    value.push(TAG_EXACT);
                    let width = h.hash_width().expect("checked above");
                    value.extend_from_slice(&((hashes.len() / width) as u16).to_le_bytes());
                    value.extend_from_slice(hashes);
                }
                _ => {
                    value.push(TAG_ENVELOPE);
                    value.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    value.extend_from_slice(bytes);
                }
            }
        }
        let crc = crc32fast::hash(&value);
        value.extend_from_slice(&crc.to_le_bytes());
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
        self.with_day_in_group(key, |day| Ok(sled::IVec::from(day.envelope()?.as_ref())))
    }

    /// `f` of the stored day of `key` in its group, if there.
    pub(super) fn with_day_in_group<R>(
        &self,
        key: &SketchKey,
        f: impl FnOnce(Entry<'_>) -> Result<R>,
    ) -> Result<Option<R>> {
        let Some(value) = self.data.get(GroupKey::of(key).encode())? else {
            return Ok(None);
        };
        find(&value, key.dim)?.map(f).transpose()
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
                    Some(gk) => entries(&value)
                        .map(|entry| {
                            let (dim, day) = entry?;
                            let key = SketchKey::day(gk.ns, gk.family, dim, gk.day);
                            Ok((key, sled::IVec::from(day.envelope()?.as_ref())))
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
            "the days of flat series moved into day groups (key layout 4)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{checkpoint, merge_all, reopen};
    use super::super::memtable::Memtable;
    use super::*;
    use crate::sketch::HashSeed;
    use crate::store::keys::{Family, KIND_DAY_GROUP, KIND_SKETCH};
    use crate::store::FLAT_MAX_HASHES;
    use crate::time::{Day, DayWindow};
    use rustc_hash::FxHashMap;
    use std::collections::BTreeSet;

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
        // Groups stored as version 1 (whole envelopes) read the same;
        // the checkpoints below write the groups they change as version 2.
        let mut batch = sled::Batch::default();
        for item in store.data.scan_prefix([KIND_DAY_GROUP]) {
            let (k, v) = item.unwrap();
            batch.insert(k, as_version_1(&v));
        }
        store.data.apply_batch(batch).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(group_versions(&store), BTreeSet::from([1]));
        assert_reads(&store, &truth);
        // A large day turns dim 5 rolled: that day stays in its group too
        // (a reader may still read the series as flat), like its others.
        let (dim, big_day) = (org(5), Day(FIRST + 4));
        let mem = memtable(&mut rng, 5_000, Some((5, big_day)));
        add(&mut truth, &mem);
        checkpoint(&store, &mem, 2);
        assert_eq!(group_versions(&store), BTreeSet::from([1, 2]));
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
                let (dim, stored) = entry.unwrap();
                let day = SketchKey::day(gk.ns, gk.family, dim, gk.day);
                batch.insert(&day.encode()[..], stored.envelope().unwrap().as_ref());
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

    /// The version bytes of the stored groups.
    fn group_versions(store: &Store) -> BTreeSet<u8> {
        store
            .data
            .scan_prefix([KIND_DAY_GROUP])
            .map(|item| item.unwrap().1[0])
            .collect()
    }

    /// A group value as version 1 wrote it: dim, length, envelope.
    fn as_version_1(value: &[u8]) -> Vec<u8> {
        let mut v1 = vec![1u8];
        for (dim, bytes) in days_of(value).unwrap() {
            v1.extend_from_slice(&dim.to_be_bytes());
            v1.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            v1.extend_from_slice(&bytes);
        }
        v1
    }

    /// What a group holds, each day as its envelope.
    fn days_of(value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
        entries(value)
            .map(|e| e.and_then(|(d, day)| Ok((d, day.envelope()?.into_owned()))))
            .collect()
    }

    #[test]
    fn a_group_value_round_trips_and_damage_is_refused() {
        use crate::sketch::HashSeed;
        let exact = |n: u64, seed: u64| {
            let mut s = Sketch::new(12, HashSeed::new(seed)).unwrap();
            for h in 0..n {
                s.insert_hash((h + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
            s.encode()
        };
        let mut edit = GroupEdit::default();
        assert_eq!(edit.encode(), None, "an empty group is not stored");
        // Exact days of one header (kept as hashes), one of another seed,
        // a dense one and bytes that are no envelope (kept whole).
        let days = [
            (7, exact(3, 1)),
            (3, exact(1, 1)),
            (5, exact(200, 1)),
            (9, exact(2, 2)),
            (11, exact(300, 1)),
            (u64::MAX, b"not a sketch".to_vec()),
        ];
        for (dim, bytes) in &days {
            edit.days.insert(*dim, bytes.clone());
        }
        let value = edit.encode().unwrap();
        assert_eq!(value[0], GROUP_VERSION);
        let mut want: Vec<(u64, Vec<u8>)> = days.to_vec();
        want.sort();
        assert_eq!(days_of(&value).unwrap(), want);
        let whole: usize = days.iter().map(|(_, b)| 12 + b.len()).sum();
        // Version byte, header and checksum; 25 bytes less for each exact
        // day, one more for each day kept whole.
        assert_eq!(value.len(), 1 + 10 + 4 + whole - 3 * 25 + 3);
        let kinds: Vec<bool> = entries(&value)
            .map(|e| matches!(e.unwrap().1, Entry::Exact(..)))
            .collect();
        // 11 has 300 hashes: over the exact limit of precision 12 it is
        // dense, kept whole like the other seed's day and the bytes.
        assert_eq!(kinds, [true, true, true, false, false, false]);
        assert!(matches!(find(&value, 7).unwrap(), Some(Entry::Exact(_, h)) if h.len() == 15));
        assert!(find(&value, 6).unwrap().is_none());
        // A parsed group encodes to the same value.
        assert_eq!(GroupEdit::parse(&value).unwrap().encode().unwrap(), value);

        // Every damage is refused: truncation, a flipped bit, a foreign
        // version, nothing.
        let mut flipped = value.clone();
        flipped[20] ^= 4;
        for bad in [
            &value[..value.len() - 1],
            &value[..5],
            &flipped[..],
            &[9u8, 0][..],
        ] {
            assert!(entries(bad).any(|e| e.is_err()), "{bad:?}");
        }
        assert!(entries(&[]).any(|e| e.is_err()));

        // A version 1 value (entries of dim, length and envelope) reads
        // as the same days, and is written as version 2.
        let v1 = as_version_1(&value);
        assert_eq!(v1[0], 1);
        assert_eq!(days_of(&v1).unwrap(), want);
        assert_eq!(GroupEdit::parse(&v1).unwrap().encode().unwrap(), value);
        assert!(entries(&v1[..v1.len() - 1]).any(|e| e.is_err()));
    }
}
