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
//! hashes (most org series), it is *flat*: its days are written, no block
//! and no `u` record, and a window reads its days one by one. Its
//! dimension record (`i` key) says which: [`DIM_FLAT`] or [`DIM_ROLLED`]
//! (an empty value, written before flat series existed, is rolled). The
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
/// may have. A window over a flat series reads its days: for a month, at
/// most 30 small sled values and ~4k hashes merged.
pub const FLAT_MAX_HASHES: usize = 128;

/// Dimension record value of a flat series (days only, no rollup blocks).
pub const DIM_FLAT: &[u8] = &[0];
/// Dimension record value of a series with rollup blocks.
pub const DIM_ROLLED: &[u8] = &[1];

/// Whether a stored day sketch makes its series need rollup blocks.
pub(super) fn needs_rollups(day: &Sketch) -> bool {
    day.exact_len().is_none_or(|n| n > FLAT_MAX_HASHES)
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
        /// `write_day_chunks`).
        const CHUNK: usize = 128;
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
