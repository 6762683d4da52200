//! Fixtures of the store's unit tests: memtables of random deltas, a
//! checkpoint in one call, and reopening a store whose sled lock is
//! still being released.

use std::path::Path;

use super::keys::{Family, SketchKey};
use super::memtable::Memtable;
use super::{Store, FLAT_MAX_HASHES};
use crate::error::Result;
use crate::sketch::{HashSeed, Sketch};
use crate::time::{Day, DayWindow};

/// A memtable with random deltas on random days of a few series.
pub(super) fn random_memtable(rng: &mut u64, days: u32, rows: usize) -> Memtable {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut mem = Memtable::default();
    for _ in 0..rows {
        let day = Day(20_000 + (next() % u64::from(days)) as u32);
        let dim = next() % 3;
        let key = SketchKey::day(1, Family::IpsCountry, dim, day);
        let hash = next() % 50_000;
        mem.sketches
            .entry(key)
            .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap())
            .insert_hash(hash.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // As ingest does: the extent covers every day with a sketch.
        mem.widen_extent(1, day, Day(day.0 + 1));
    }
    mem
}

/// A [`random_memtable`] in which every series has a day too large for
/// a flat series, so that all three have rollup blocks.
pub(super) fn rolled_memtable(rng: &mut u64, days: u32, rows: usize) -> Memtable {
    let mut mem = random_memtable(rng, days, rows);
    add_big_day(&mut mem, &[0, 1, 2], Day(20_000 + days / 2));
    mem
}

/// Puts more than [`FLAT_MAX_HASHES`] hashes into `day` of each series
/// of `dims`.
pub(super) fn add_big_day(mem: &mut Memtable, dims: &[u64], day: Day) {
    for &dim in dims {
        let sketch = mem
            .sketches
            .entry(SketchKey::day(1, Family::IpsCountry, dim, day))
            .or_insert_with(|| Sketch::new(12, HashSeed::DEFAULT).unwrap());
        for h in 0..=FLAT_MAX_HASHES as u64 {
            sketch.insert_hash((50_000 + h).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        mem.widen_extent(1, day, Day(day.0 + 1));
    }
}

/// Reads every series of `dims` (namespace 1, precision 12) over `window`
/// with [`Store::merge_windows`], hands each to `check` as it completes,
/// and asserts that every series completed.
pub(super) fn merge_all(
    store: &Store,
    family: Family,
    dims: &[u64],
    window: DayWindow,
    check: &mut dyn FnMut(usize, &Sketch),
) {
    let mut accs: Vec<Sketch> = dims
        .iter()
        .map(|_| Sketch::new(12, HashSeed::DEFAULT).unwrap())
        .collect();
    let mut completed = 0;
    store
        .merge_windows(&mut accs, 1, family, dims, window, &mut |i, acc| {
            check(i, acc);
            completed += 1;
        })
        .unwrap();
    assert_eq!(completed, dims.len(), "every series completes once");
}

pub(super) fn checkpoint(store: &Store, mem: &Memtable, lsn: u64) {
    store.write_checkpoint_merges(mem).unwrap();
    store
        .apply_checkpoint(store.prepare_checkpoint(mem, lsn).unwrap())
        .unwrap();
}

/// Opens the store under `dir` again. sled releases the file lock of a
/// database dropped moments ago from its background threads, so a lock
/// error is retried for a few seconds (as `tests/common` does).
pub(super) fn reopen(dir: &Path) -> Store {
    try_reopen(dir).unwrap()
}

/// Opens the store once the previous handle's lock is gone.
pub(super) fn try_reopen(dir: &Path) -> Result<Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
