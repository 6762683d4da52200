//! Rollups: the levels stored of each series, stale blocks and their
//! rebuild, and flat series.
//!
//! Rollups are coalesced: a checkpoint writes day sketches only, and in the
//! same sled batch, per series, the set of days changed since the series'
//! rollup blocks were built (`u` records); every block above such a day is
//! stale. Only the levels of [`ROLLUP_LEVELS`] are stored (days and blocks
//! of 4, 16, 64, 256 days). [`Store::rebuild_rollups`] rebuilds stale
//! blocks bottom-up (each the union of the four blocks of the stored level
//! below) and deletes the series' record in the same batch. Invariant: a
//! block above no stale day equals the union of its days in sled. Readers
//! never use a stale block: [`Store::merge_window`] reads its children
//! instead (down to days), using an in-memory copy of the stale days and
//! blocks ([`StaleRollups`]) that grows before the records are written and
//! shrinks only after the rebuilt blocks are written. The level set is
//! recorded in sled; a store written with another set has its blocks
//! dropped and all its days marked stale at open
//! ([`adopt_rollup_levels`]), so answers stay exact while they are rebuilt.
//!
//! A series has rollup blocks only once it needs them: while every day
//! sketch it has stored is an exact set of at most [`FLAT_MAX_HASHES`]
//! hashes (most org series), it is *flat*: its days are written (in day
//! groups, see `groups`), no block and no `u` record, and a window reads
//! its days one by one. Its dimension record (`i` key) says which:
//! [`DIM_FLAT`] or [`DIM_ROLLED`] (an empty value, written before flat
//! series existed, is rolled). The
//! checkpoint that stores a larger day turns the series rolled: in one
//! sled batch it marks every stored day of the series stale and rewrites
//! the record, so the next rollup pass builds its blocks; readers switch
//! from reading days to stale-aware blocks, which read the same days
//! until the blocks are built.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::index::DayBits;
use super::keys::{self, Family, NamespaceId, SketchKey};
use super::series::{by_series, Series};
use super::Store;
use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::time::{Block, Day, DayWindow};

/// The levels sled keeps of each series: days (level 0) and aligned blocks
/// of 4, 16, 64 and 256 days; a block is the union of the four blocks of
/// the level below. A window reads at most 3 blocks of each lower level on
/// either side plus one per 256 days ([`DayWindow::cover`]); a series holds
/// about one block per three days. Strictly increasing, starting at 0.
/// Changing it is an on-disk format change that [`Store::open`] handles by
/// rebuilding every block (see [`keys::META_ROLLUP_LEVELS`]).
pub const ROLLUP_LEVELS: &[u8] = &[0, 2, 4, 6, 8];

/// The largest stored level.
pub const MAX_LEVEL: u8 = ROLLUP_LEVELS[ROLLUP_LEVELS.len() - 1];

const _: () = {
    assert!(ROLLUP_LEVELS[0] == 0, "level 0 (days) must be stored");
    let mut i = 1;
    while i < ROLLUP_LEVELS.len() {
        assert!(
            ROLLUP_LEVELS[i - 1] < ROLLUP_LEVELS[i],
            "levels must increase"
        );
        i += 1;
    }
    assert!(MAX_LEVEL < 32, "blocks must fit in u32 days");
};

/// The stored level below `level`, or `None` for days and for levels that
/// are not stored.
pub fn lower_rollup_level(level: u8) -> Option<u8> {
    let at = ROLLUP_LEVELS.iter().position(|&l| l == level)?;
    at.checked_sub(1).map(|below| ROLLUP_LEVELS[below])
}

/// The largest exact day sketch a flat series (one without rollup blocks)
/// may have: at the default precision (14) every exact day, so a series
/// is rolled once it has a dense day. A window over a flat series reads
/// its days: for a month, its entries in at most 30 day groups.
pub const FLAT_MAX_HASHES: usize = 1024;

/// Dimension record value of a flat series (days only, no rollup blocks).
pub const DIM_FLAT: &[u8] = &[0];
/// Dimension record value of a series with rollup blocks.
pub const DIM_ROLLED: &[u8] = &[1];

/// Whether a stored day sketch makes its series need rollup blocks.
pub(super) fn needs_rollups(day: &Sketch) -> bool {
    day.exact_len().is_none_or(|n| n > FLAT_MAX_HASHES)
}

impl SketchKey {
    /// The blocks a stored rollup block is the union of: those of the next
    /// lower stored level (see [`ROLLUP_LEVELS`]) that tile it, in
    /// order. A day (or a block of a level that is not stored) has none.
    pub fn children(&self) -> impl Iterator<Item = SketchKey> + '_ {
        let lower = lower_rollup_level(self.block.level);
        lower
            .into_iter()
            .flat_map(move |level| self.block.parts(level))
            .map(move |block| SketchKey { block, ..*self })
    }
}

/// Rollup blocks that are out of date, as the days below them that changed,
/// and the series that have no blocks at all.
#[derive(Default)]
pub(super) struct StaleRollups {
    /// Per series, the days changed since its blocks were built.
    pub(super) days: FxHashMap<Series, DayBits>,
    /// Every stored block of level >= 1 above those days.
    pub(super) blocks: FxHashSet<SketchKey>,
    /// Flat series: stored as days only (never in `days`).
    pub(super) flat: FxHashSet<Series>,
}

impl StaleRollups {
    /// Adds the blocks above `day` of `series`; returns the new ones to
    /// `fresh` unless already known.
    pub(super) fn blocks_above(&self, series: Series, day: Day, fresh: &mut FxHashSet<SketchKey>) {
        let (ns, family, dim) = series;
        for &level in &ROLLUP_LEVELS[1..] {
            let key = SketchKey {
                ns,
                family,
                dim,
                block: Block::containing(day, level),
            };
            if !self.blocks.contains(&key) {
                fresh.insert(key);
            }
        }
    }

    /// The stale set sled records (`u` records), with `flat` the flat
    /// series (from their dimension records).
    pub(super) fn load(data: &sled::Tree, flat: FxHashSet<Series>) -> Result<StaleRollups> {
        let mut stale = StaleRollups {
            flat,
            ..StaleRollups::default()
        };
        for item in data.scan_prefix([keys::KIND_STALE_ROLLUP]) {
            let (k, v) = item?;
            let corrupt = || Error::Corrupt("stale rollup days".into());
            let series = keys::decode_stale_days_key(&k).ok_or_else(corrupt)?;
            let days = DayBits::decode(&v).ok_or_else(corrupt)?;
            let mut blocks = FxHashSet::default();
            for day in days.iter() {
                stale.blocks_above(series, day, &mut blocks);
            }
            stale.blocks.extend(blocks);
            stale.days.insert(series, days);
        }
        Ok(stale)
    }
}

impl Store {
    /// The blocks [`Store::merge_window`] reads: the window's cover by
    /// stored levels with every stale block replaced by its children (the
    /// blocks of the level below), recursively; `None` for a flat series.
    pub(super) fn window_blocks(
        &self,
        ns: NamespaceId,
        family: Family,
        dim: u64,
        window: DayWindow,
    ) -> Option<Vec<SketchKey>> {
        let state = self.stale.read();
        if state.flat.contains(&(ns, family, dim)) {
            return None;
        }
        let cover = window
            .cover(ROLLUP_LEVELS)
            .into_iter()
            .map(|block| SketchKey {
                ns,
                family,
                dim,
                block,
            });
        let stale = &state.blocks;
        if stale.is_empty() {
            return Some(cover.collect());
        }
        let mut planned = Vec::new();
        let mut todo: Vec<SketchKey> = cover.rev().collect();
        while let Some(key) = todo.pop() {
            if key.block.level > 0 && stale.contains(&key) {
                let first = todo.len();
                todo.extend(key.children());
                // Popped in order: the first child next.
                todo[first..].reverse();
            } else {
                planned.push(key);
            }
        }
        Some(planned)
    }

    /// Number of rollup blocks waiting for [`Store::rebuild_rollups`].
    pub fn stale_rollups(&self) -> usize {
        self.stale.read().blocks.len()
    }

    /// Rebuilds every stale rollup block, bottom-up (a block is the union of
    /// its children, rebuilt first when stale themselves), writing the
    /// blocks of whole series with the deletion of their stale days in one
    /// sled batch. Returns the number of blocks rebuilt. Runs on the
    /// checkpoint thread, never beside a checkpoint. Does not flush.
    pub fn rebuild_rollups(&self) -> Result<usize> {
        let todo: Vec<SketchKey> = self.stale.read().blocks.iter().copied().collect();
        let total = todo.len();
        by_series(todo, |part| self.rebuild_part(part))?;
        Ok(total)
    }

    /// [`Store::rebuild_rollups`] for the stale blocks of some whole series.
    fn rebuild_part(&self, todo: Vec<SketchKey>) -> Result<()> {
        /// Blocks rebuilt per sled batch, at least (whole series). The batch
        /// and the blocks built hold up to ~28 KiB per block (see
        /// `write_day_chunks`, measured with it).
        const CHUNK: usize = 256;
        // `todo` is sorted: series by series, and within a series by level
        // (`Block` orders by level first), so children come before parents.
        let same_series =
            |a: &SketchKey, b: &SketchKey| (a.ns, a.family, a.dim) == (b.ns, b.family, b.dim);
        let mut start = 0;
        while start < todo.len() {
            let mut end = (start + CHUNK).min(todo.len());
            while end < todo.len() && same_series(&todo[end - 1], &todo[end]) {
                end += 1;
            }
            let chunk = &todo[start..end];
            // What this chunk rebuilt (`None`: no day below holds data).
            let mut built: HashMap<SketchKey, Option<Sketch>> = HashMap::new();
            let mut batch = sled::Batch::default();
            for key in chunk {
                let mut union: Option<Sketch> = None;
                for child in key.children() {
                    // A block has one parent: what was built for it is
                    // taken, not copied.
                    let sketch = match built.remove(&child) {
                        Some(Some(sketch)) => sketch,
                        Some(None) => continue,
                        None => match self.block_sketch_uncached(&child)? {
                            Some(stored) => Arc::unwrap_or_clone(stored),
                            None => continue,
                        },
                    };
                    match &mut union {
                        Some(u) => u.merge(&sketch)?,
                        None => union = Some(sketch),
                    }
                }
                match &union {
                    Some(sketch) => batch.insert(&key.encode()[..], sketch.encode()),
                    None => batch.remove(&key.encode()[..]),
                }
                built.insert(*key, union);
            }
            let series: FxHashSet<Series> = chunk.iter().map(|k| (k.ns, k.family, k.dim)).collect();
            for &(ns, family, dim) in &series {
                batch.remove(&keys::stale_days_key(ns, family, dim)[..]);
            }
            self.data.apply_batch(batch)?;
            self.cache.invalidate(chunk);
            let mut stale = self.stale.write();
            for key in chunk {
                stale.blocks.remove(key);
            }
            for one in &series {
                stale.days.remove(one);
            }
            start = end;
        }
        Ok(())
    }
}

/// Makes the stored rollup blocks those of [`ROLLUP_LEVELS`] when sled
/// records another level set, or none while holding sketches (data written
/// before the set was recorded had levels 1 to 9): deletes every block of
/// level >= 1 and marks every day of every series stale, so queries read
/// days until the next rollup pass rebuilds the blocks; then records the
/// set. Stale-day records go first, deletions next and the set last, so a
/// crash part way leaves the set unrecorded and the next open starts over.
pub(super) fn adopt_rollup_levels(
    db: &sled::Db,
    data: &sled::Tree,
    flat: &FxHashSet<Series>,
) -> Result<()> {
    /// Keys written or deleted per sled batch.
    const CHUNK: usize = 8_192;
    if data.get(keys::META_ROLLUP_LEVELS)?.as_deref() == Some(ROLLUP_LEVELS) {
        return Ok(());
    }
    let corrupt = |what: &str| Error::Corrupt(format!("rollup upgrade: {what}"));
    let mut days: FxHashMap<Series, DayBits> = FxHashMap::default();
    let mut blocks: Vec<sled::IVec> = Vec::new();
    for item in data.scan_prefix([keys::KIND_SKETCH]) {
        let (k, _) = item?;
        let key = SketchKey::decode(&k).ok_or_else(|| corrupt("sketch key"))?;
        if key.block.level == 0 {
            if flat.contains(&(key.ns, key.family, key.dim)) {
                continue;
            }
            days.entry((key.ns, key.family, key.dim))
                .or_default()
                .insert(key.block.start);
        } else {
            blocks.push(k);
        }
    }
    // Days of rolled series written while they were flat (see `groups`).
    for item in data.scan_prefix([keys::KIND_DAY_GROUP]) {
        let (k, value) = item?;
        let group = keys::GroupKey::decode(&k).ok_or_else(|| corrupt("day group key"))?;
        for entry in super::groups::entries(&value) {
            let (dim, _) = entry?;
            let series = (group.ns, group.family, dim);
            if !flat.contains(&series) {
                days.entry(series).or_default().insert(group.day);
            }
        }
    }
    let series: Vec<(Series, DayBits)> = days.into_iter().collect();
    for chunk in series.chunks(CHUNK) {
        let mut batch = sled::Batch::default();
        for ((ns, family, dim), days) in chunk {
            let k = keys::stale_days_key(*ns, *family, *dim);
            let mut stale = match data.get(k)? {
                Some(v) => DayBits::decode(&v).ok_or_else(|| corrupt("stale days"))?,
                None => DayBits::default(),
            };
            stale.union(days);
            batch.insert(&k[..], stale.encode());
        }
        data.apply_batch(batch)?;
    }
    for chunk in blocks.chunks(CHUNK) {
        let mut batch = sled::Batch::default();
        for k in chunk {
            batch.remove(k);
        }
        data.apply_batch(batch)?;
    }
    data.insert(keys::META_ROLLUP_LEVELS, ROLLUP_LEVELS)?;
    db.flush()?;
    if !series.is_empty() || !blocks.is_empty() {
        tracing::info!(
            blocks_deleted = blocks.len(),
            series = series.len(),
            levels = ?ROLLUP_LEVELS,
            "rollup levels changed: blocks will be rebuilt from the days"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{
        add_big_day, checkpoint, random_memtable, reopen, rolled_memtable,
    };
    use super::*;
    use crate::sketch::HashSeed;
    use crate::store::keys::dim_key;
    use crate::store::memtable::Memtable;

    #[test]
    fn children_are_the_blocks_of_the_stored_level_below() {
        let a = SketchKey::day(
            7,
            Family::IpsCountry,
            keys::country_dim(*b"DE"),
            Day(20_000),
        );
        let block = SketchKey {
            block: Block::containing(Day(20_001), 3),
            ..a
        };
        // Blocks of stored levels are the union of the four blocks of the
        // level below; other levels have no children.
        assert_eq!(block.children().count(), 0);
        let block = SketchKey {
            block: Block::containing(Day(20_001), 4),
            ..a
        };
        let parts: Vec<(u8, Day)> = block
            .children()
            .map(|k| (k.block.level, k.block.start))
            .collect();
        assert_eq!(
            parts,
            [
                (2, Day(20_000)),
                (2, Day(20_004)),
                (2, Day(20_008)),
                (2, Day(20_012))
            ]
        );
        assert!(block.children().all(|k| (k.ns, k.dim) == (a.ns, a.dim)));
        assert_eq!(a.children().count(), 0);
    }

    /// The dimension record of series `dim`.
    fn dim_record(store: &Store, dim: u64) -> Vec<u8> {
        let k = dim_key(1, Family::IpsCountry, dim);
        store
            .data
            .get(k)
            .unwrap()
            .expect("dimension record")
            .to_vec()
    }

    /// Stored rollup blocks of series `dim`.
    fn blocks_of(store: &Store, dim: u64) -> usize {
        store
            .data
            .scan_prefix([keys::KIND_SKETCH])
            .map(|item| SketchKey::decode(&item.unwrap().0).unwrap())
            .filter(|key| key.ns == 1 && key.family == Family::IpsCountry && key.dim == dim)
            .filter(|key| key.block.level > 0)
            .count()
    }

    #[test]
    fn flat_series_have_no_blocks_until_a_day_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x0f1a_7000u64;
        {
            let store = Store::open(dir.path()).unwrap();
            // ~20 hashes a day: every series is flat.
            checkpoint(&store, &random_memtable(&mut rng, 700, 40_000), 1);
            assert_eq!(store.stale_rollups(), 0);
            assert_eq!(store.rebuild_rollups().unwrap(), 0);
            assert!(stored_levels(&store).is_empty(), "a flat series got blocks");
            assert_eq!(
                store.data.scan_prefix([keys::KIND_STALE_ROLLUP]).count(),
                0,
                "a flat series got a stale record"
            );
            for dim in 0..3 {
                assert_eq!(dim_record(&store, dim), DIM_FLAT);
            }
            assert_windows_equal_unions_of_days(&store);
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_windows_equal_unions_of_days(&store);
        // Late data, small for dims 0 and 2, a large day for dim 1: only
        // dim 1 turns rolled, with every stored day stale.
        let mut mem = random_memtable(&mut rng, 700, 5_000);
        add_big_day(&mut mem, &[1], Day(20_350));
        checkpoint(&store, &mem, 2);
        let dim1_blocks = dim1_blocks();
        assert_eq!(store.stale_rollups(), dim1_blocks);
        assert_eq!(
            (dim_record(&store, 0), dim_record(&store, 1)),
            (DIM_FLAT.to_vec(), DIM_ROLLED.to_vec())
        );
        assert_windows_equal_unions_of_days(&store);
        store.flush().unwrap();
        drop(store);
        // The turn is durable: after a restart the blocks are still stale
        // and read through, then rebuilt for dim 1 only.
        let store = reopen(dir.path());
        assert_eq!(store.stale_rollups(), dim1_blocks);
        assert_windows_equal_unions_of_days(&store);
        assert_eq!(store.rebuild_rollups().unwrap(), dim1_blocks);
        assert_eq!((blocks_of(&store, 0), blocks_of(&store, 2)), (0, 0));
        assert_eq!(blocks_of(&store, 1), dim1_blocks);
        assert_blocks_of_dim_equal_unions_of_days(&store, 1);
        assert_windows_equal_unions_of_days(&store);
        // A new rolled day of dim 1 makes its blocks stale as before.
        let mut mem = random_memtable(&mut rng, 700, 1_000);
        add_big_day(&mut mem, &[1], Day(20_351));
        checkpoint(&store, &mem, 3);
        assert!(store.stale_rollups() > 0);
        assert_windows_equal_unions_of_days(&store);
        store.rebuild_rollups().unwrap();
        assert_eq!((blocks_of(&store, 0), blocks_of(&store, 2)), (0, 0));
        assert_windows_equal_unions_of_days(&store);
    }

    #[test]
    fn a_series_stays_flat_while_its_days_are_exact_sets_of_at_most_the_limit() {
        // At the servers' precision (14: exact sets of up to 1,024 hashes)
        // a series stays flat while its days are exact, however large; the
        // first dense day turns it rolled.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut mem = Memtable::default();
        let day = Day(20_000);
        for (dim, hashes) in [(0u64, FLAT_MAX_HASHES), (1, FLAT_MAX_HASHES + 1)] {
            let sketch = mem
                .sketches
                .entry(SketchKey::day(1, Family::IpsCountry, dim, day))
                .or_insert_with(|| Sketch::new(14, HashSeed::DEFAULT).unwrap());
            for h in 0..hashes as u64 {
                sketch.insert_hash((7_000 + h).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
        }
        mem.widen_extent(1, day, Day(day.0 + 1));
        checkpoint(&store, &mem, 1);
        store.rebuild_rollups().unwrap();
        assert_eq!(
            (dim_record(&store, 0), dim_record(&store, 1)),
            (DIM_FLAT.to_vec(), DIM_ROLLED.to_vec())
        );
        assert_eq!((blocks_of(&store, 0), blocks_of(&store, 1) > 0), (0, true));
        let stored = |dim| {
            let key = SketchKey::day(1, Family::IpsCountry, dim, day);
            store.block_sketch(&key).unwrap().expect("day stored")
        };
        assert_eq!(stored(0).exact_len(), Some(FLAT_MAX_HASHES));
        assert_eq!(stored(1).exact_len(), None);
    }

    #[test]
    fn a_series_turning_rolled_marks_every_stored_day_stale_with_or_without_a_restart() {
        // In one checkpoint: a series' 700 days span several sled batches
        // of `write_day_chunks`, flat in the first ones; the large day in
        // a later one turns it rolled, and the days the earlier batches
        // wrote must go stale too.
        {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = 0x7011_ed01u64;
            let store = Store::open(dir.path()).unwrap();
            let mut mem = random_memtable(&mut rng, 700, 40_000);
            add_big_day(&mut mem, &[1], Day(20_650));
            checkpoint(&store, &mem, 1);
            assert_dim1_turned_rolled(&store, "one checkpoint");
        }
        for restart in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = 0x7011_ed00u64;
            let mut store = Store::open(dir.path()).unwrap();
            // ~20 hashes a day: every series is flat.
            checkpoint(&store, &random_memtable(&mut rng, 700, 40_000), 1);
            if restart {
                store.flush().unwrap();
                drop(store);
                store = reopen(dir.path());
            }
            // Only a large day of dim 1: every stored day of dim 1 must
            // go stale, in the same process and after a restart.
            let mut mem = Memtable::default();
            add_big_day(&mut mem, &[1], Day(20_350));
            checkpoint(&store, &mem, 2);
            assert_dim1_turned_rolled(&store, &format!("restart: {restart}"));
        }
    }

    /// The blocks of the stored levels above the days of series 1.
    fn dim1_blocks() -> usize {
        blocks_over_the_days(&ROLLUP_LEVELS[1..])
            .iter()
            .filter(|(key, _)| key.dim == 1)
            .count()
    }

    /// Series 1 has just turned rolled: every block above its days is
    /// stale, windows read through them exactly, and the pass rebuilds
    /// them all.
    fn assert_dim1_turned_rolled(store: &Store, case: &str) {
        assert_eq!(store.stale_rollups(), dim1_blocks(), "{case}");
        assert_windows_equal_unions_of_days(store);
        assert_eq!(store.rebuild_rollups().unwrap(), dim1_blocks(), "{case}");
        assert_blocks_of_dim_equal_unions_of_days(store, 1);
        assert_windows_equal_unions_of_days(store);
    }

    /// Every stored block of series `dim` equals the union of its days.
    fn assert_blocks_of_dim_equal_unions_of_days(store: &Store, dim: u64) {
        for (key, window) in blocks_over_the_days(&ROLLUP_LEVELS[1..]) {
            if key.dim == dim {
                let stored = store.block_sketch(&key).unwrap().expect("block stored");
                let by_day = union_of_days(store, dim, window);
                assert_eq!(stored.encode(), by_day.encode(), "{key:?}");
            }
        }
    }

    /// The union of the stored day sketches of one series over `window`.
    fn union_of_days(store: &Store, dim: u64, window: DayWindow) -> Sketch {
        let mut by_day = Sketch::new(12, HashSeed::DEFAULT).unwrap();
        for day in window.days() {
            if let Some(s) = store
                .block_sketch(&SketchKey::day(1, Family::IpsCountry, dim, day))
                .unwrap()
            {
                by_day.merge(&s).unwrap();
            }
        }
        by_day
    }

    /// Random windows read through the rollups equal the union of their days.
    fn assert_windows_equal_unions_of_days(store: &Store) {
        for i in 0..300u32 {
            let from = 19_990 + (i * 7919) % 720;
            let len = (i * 104_729) % 400;
            let window = DayWindow::new(Day(from), Day(from + len)).unwrap();
            for dim in 0..3 {
                let mut rolled = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                store
                    .merge_window(&mut rolled, 1, Family::IpsCountry, dim, window)
                    .unwrap();
                let by_day = union_of_days(store, dim, window);
                assert_eq!(rolled.encode(), by_day.encode(), "{window:?} dim {dim}");
            }
        }
    }

    #[test]
    fn rollups_give_byte_identical_unions_including_late_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rng = 0x1234_5678u64;
        // Three checkpoints; the later ones bring late data for early days.
        for (lsn, rows) in [(1, 40_000), (2, 10_000), (3, 5_000)] {
            let mem = rolled_memtable(&mut rng, 700, rows);
            checkpoint(&store, &mem, lsn);
            assert!(store.rebuild_rollups().unwrap() > 0);
        }
        assert_eq!(store.checkpoint_lsn().unwrap(), 3);
        assert_eq!(store.stale_rollups(), 0);
        assert_windows_equal_unions_of_days(&store);
    }

    #[test]
    fn stale_rollups_are_read_through_until_rebuilt_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x9abc_def0u64;
        let stale = {
            let store = Store::open(dir.path()).unwrap();
            checkpoint(&store, &rolled_memtable(&mut rng, 700, 40_000), 1);
            store.rebuild_rollups().unwrap();
            // Fill the cache with the blocks about to go stale.
            assert_windows_equal_unions_of_days(&store);
            // Late data for every day, between a checkpoint and the pass.
            checkpoint(&store, &rolled_memtable(&mut rng, 700, 10_000), 2);
            let stale = store.stale_rollups();
            assert!(stale > 0);
            assert_windows_equal_unions_of_days(&store);
            store.flush().unwrap();
            stale
        };
        // The markers are durable: a restart (or crash) still skips them.
        let store = reopen(dir.path());
        assert_eq!(store.stale_rollups(), stale);
        assert_windows_equal_unions_of_days(&store);
        assert_eq!(store.rebuild_rollups().unwrap(), stale);
        assert_eq!(store.stale_rollups(), 0);
        assert_eq!(
            store.data.scan_prefix([keys::KIND_STALE_ROLLUP]).count(),
            0,
            "markers left in sled"
        );
        assert_blocks_equal_unions_of_days(&store);
        assert_windows_equal_unions_of_days(&store);
    }

    /// Every block of `levels` over the days of [`random_memtable`] (in the
    /// three series), with the window it covers.
    fn blocks_over_the_days(levels: &[u8]) -> Vec<(SketchKey, DayWindow)> {
        let mut out = Vec::new();
        for &level in levels {
            let mut block = Block::containing(Day(20_000), level);
            while block.start.0 < 20_700 {
                let window =
                    DayWindow::new(block.start, Day(block.start.0 + block.days())).unwrap();
                for dim in 0..3 {
                    let key = SketchKey {
                        ns: 1,
                        family: Family::IpsCountry,
                        dim,
                        block,
                    };
                    out.push((key, window));
                }
                block.start = Day(block.start.0 + block.days());
            }
        }
        out
    }

    /// Every block of the stored levels is stored and equals the union of
    /// its days, byte for byte.
    fn assert_blocks_equal_unions_of_days(store: &Store) {
        for (key, window) in blocks_over_the_days(&ROLLUP_LEVELS[1..]) {
            let stored = store.block_sketch(&key).unwrap().expect("block stored");
            let by_day = union_of_days(store, key.dim, window);
            assert_eq!(stored.encode(), by_day.encode(), "{key:?}");
        }
    }

    /// Levels of the rollup blocks in sled (level 0 excluded), with counts.
    fn stored_levels(store: &Store) -> std::collections::BTreeMap<u8, usize> {
        let mut levels = std::collections::BTreeMap::new();
        for item in store.data.scan_prefix([keys::KIND_SKETCH]) {
            let key = SketchKey::decode(&item.unwrap().0).unwrap();
            if key.block.level > 0 {
                *levels.entry(key.block.level).or_default() += 1;
            }
        }
        levels
    }

    /// Replaces the rollup blocks in sled by those of `levels`, each the
    /// union of its days, as code with that level set would have left them,
    /// and records `recorded` as the level set (`None`: no record, as
    /// before the set was recorded).
    fn lay_out_rollups(store: &Store, levels: &[u8], recorded: Option<&[u8]>) {
        let mut batch = sled::Batch::default();
        for item in store.data.scan_prefix([keys::KIND_SKETCH]) {
            let (k, _) = item.unwrap();
            if SketchKey::decode(&k).unwrap().block.level > 0 {
                batch.remove(k);
            }
        }
        for (key, window) in blocks_over_the_days(levels) {
            let by_day = union_of_days(store, key.dim, window);
            batch.insert(&key.encode()[..], by_day.encode());
        }
        match recorded {
            Some(set) => batch.insert(keys::META_ROLLUP_LEVELS, set),
            None => batch.remove(keys::META_ROLLUP_LEVELS),
        }
        store.data.apply_batch(batch).unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn blocks_of_another_level_set_are_dropped_at_open_and_rebuilt() {
        let old_layouts: [(&[u8], Option<&[u8]>); 2] = [
            // What the code before sparse levels wrote: levels 1 to 9, no record.
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9], None),
            // A recorded set without the levels stored now.
            (&[3, 5, 8], Some(&[0, 3, 5, 8])),
        ];
        for (levels, recorded) in old_layouts {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = 0x5eed_1e7e_u64;
            {
                // No decoded-sketch cache: blocks are rewritten behind it.
                let store = Store::open_with_cache(dir.path(), 0, 1 << 20).unwrap();
                assert_eq!(
                    store.data.get(keys::META_ROLLUP_LEVELS).unwrap().as_deref(),
                    Some(ROLLUP_LEVELS),
                    "a new store records its level set"
                );
                checkpoint(&store, &rolled_memtable(&mut rng, 700, 40_000), 1);
                store.rebuild_rollups().unwrap();
                lay_out_rollups(&store, levels, recorded);
                assert_eq!(
                    stored_levels(&store).keys().copied().collect::<Vec<_>>(),
                    levels
                );
                if recorded.is_some() {
                    // Without the upgrade, a cover would read blocks of the
                    // new levels that this layout never stored.
                    let block = Block::containing(Day(20_100), MAX_LEVEL - 2);
                    let window =
                        DayWindow::new(block.start, Day(block.start.0 + block.days())).unwrap();
                    let mut rolled = Sketch::new(12, HashSeed::DEFAULT).unwrap();
                    store
                        .merge_window(&mut rolled, 1, Family::IpsCountry, 0, window)
                        .unwrap();
                    assert_ne!(rolled.encode(), union_of_days(&store, 0, window).encode());
                }
                // Late data, stale in the old layout too.
                checkpoint(&store, &rolled_memtable(&mut rng, 700, 2_000), 2);
                store.flush().unwrap();
            }
            let store = reopen(dir.path());
            assert!(stored_levels(&store).is_empty(), "{levels:?} left blocks");
            assert_eq!(
                store.data.get(keys::META_ROLLUP_LEVELS).unwrap().as_deref(),
                Some(ROLLUP_LEVELS)
            );
            // Every block of every series with data is stale until rebuilt.
            let every_block = blocks_over_the_days(&ROLLUP_LEVELS[1..]).len();
            assert_eq!(store.stale_rollups(), every_block, "{levels:?}");
            assert_windows_equal_unions_of_days(&store);
            assert_eq!(store.rebuild_rollups().unwrap(), every_block);
            assert_blocks_equal_unions_of_days(&store);
            assert_eq!(
                stored_levels(&store).keys().copied().collect::<Vec<_>>(),
                &ROLLUP_LEVELS[1..]
            );
            assert_windows_equal_unions_of_days(&store);
            drop(store);
            // Opened again with the same set, nothing is dropped or stale.
            let store = reopen(dir.path());
            assert_eq!(store.stale_rollups(), 0);
            assert_blocks_equal_unions_of_days(&store);
            assert_windows_equal_unions_of_days(&store);
        }
    }
}
