//! A bounded cache of decoded sketches (rollup blocks, and the days of
//! flat series, a day without data as an empty sketch), so repeated
//! queries skip sled and envelope decoding.
//!
//! Invariant: the cache never holds a value older than sled's. A checkpoint
//! bumps the generation and drops the keys it wrote after applying its
//! batch; a reader inserts what it read only if the generation is still the
//! one it saw before reading sled. So a value read before a checkpoint can
//! never be inserted after that checkpoint dropped the key.
//!
//! [`from_memory_only`] runs a read that must not touch sled: a sketch
//! missing from the cache fails it with [`Error::NotInMemory`] instead of
//! being read, so a one-key query can be answered on the async worker
//! when its sketches are cached, and elsewhere when not.

use std::cell::Cell;
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::store::keys::SketchKey;

thread_local! {
    static MEMORY_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `read` on this thread with sketch reads from the cache only: one
/// that would read sled fails with [`Error::NotInMemory`] (as do the
/// callers' locks that a writer holds, see [`memory_only`]).
pub fn from_memory_only<T>(read: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MEMORY_ONLY.with(|m| m.set(self.0));
        }
    }
    let _reset = Reset(MEMORY_ONLY.with(|m| m.replace(true)));
    read()
}

/// Whether this thread reads from memory only (see [`from_memory_only`]).
pub fn memory_only() -> bool {
    MEMORY_ONLY.with(Cell::get)
}

/// `Err(NotInMemory)` when reading from memory only: for a read about to
/// go to sled.
pub(super) fn may_read_sled() -> Result<()> {
    if memory_only() {
        return Err(Error::NotInMemory);
    }
    Ok(())
}

pub struct SketchCache {
    inner: Mutex<Inner>,
    limit_bytes: usize,
}

struct Inner {
    generation: u64,
    map: FxHashMap<SketchKey, Arc<Sketch>>,
    bytes: usize,
}

/// Approximate bytes an entry costs.
fn cost(sketch: &Sketch) -> usize {
    sketch.heap_bytes() + std::mem::size_of::<Sketch>() + 64
}

impl SketchCache {
    pub fn new(limit_bytes: usize) -> SketchCache {
        SketchCache {
            inner: Mutex::new(Inner {
                generation: 0,
                map: FxHashMap::default(),
                bytes: 0,
            }),
            limit_bytes,
        }
    }

    /// The cached sketch and the current generation.
    pub fn get(&self, key: &SketchKey) -> (Option<Arc<Sketch>>, u64) {
        let inner = self.inner.lock();
        (inner.map.get(key).cloned(), inner.generation)
    }

    /// Caches `sketch` read from sled at `generation`, unless a checkpoint
    /// ran since.
    pub fn insert(&self, key: SketchKey, sketch: Arc<Sketch>, generation: u64) {
        if self.limit_bytes == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        let added = cost(&sketch);
        if inner.bytes + added > self.limit_bytes {
            // Drop about half: cheap, and good enough for a cache whose
            // misses cost one sled read each.
            let target = self.limit_bytes / 2;
            let mut bytes = inner.bytes;
            inner.map.retain(|_, s| {
                if bytes > target {
                    bytes -= cost(s);
                    false
                } else {
                    true
                }
            });
            inner.bytes = bytes;
        }
        if let Some(old) = inner.map.insert(key, sketch) {
            inner.bytes -= cost(&old);
        }
        inner.bytes += added;
    }

    /// Called after a checkpoint wrote `keys` to sled.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a SketchKey>) {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        for key in keys {
            if let Some(old) = inner.map.remove(key) {
                inner.bytes -= cost(&old);
            }
        }
    }

    /// Entries and approximate bytes held.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::HashSeed;
    use crate::store::keys::Family;
    use crate::time::Day;

    fn key(day: u32) -> SketchKey {
        SketchKey::day(1, Family::IpsGlobal, 0, Day(day))
    }

    fn sketch(n: u64) -> Arc<Sketch> {
        let mut s = Sketch::new(12, HashSeed::DEFAULT).unwrap();
        for i in 0..n {
            s.insert_hash(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        Arc::new(s)
    }

    #[test]
    fn a_read_from_before_a_checkpoint_is_not_cached_after_it() {
        let cache = SketchCache::new(1 << 20);
        let (none, generation) = cache.get(&key(1));
        assert!(none.is_none());
        // A checkpoint writes day 1 while the reader holds an old value.
        cache.invalidate([&key(1)]);
        cache.insert(key(1), sketch(3), generation);
        assert!(cache.get(&key(1)).0.is_none(), "stale value cached");
        let (_, now) = cache.get(&key(1));
        cache.insert(key(1), sketch(3), now);
        assert!(cache.get(&key(1)).0.is_some());
    }

    #[test]
    fn stays_within_its_limit() {
        let cache = SketchCache::new(200_000);
        for day in 0..100 {
            let (_, generation) = cache.get(&key(day));
            cache.insert(key(day), sketch(2_000), generation);
        }
        let (entries, bytes) = cache.usage();
        assert!(bytes <= 200_000, "{bytes}");
        assert!(entries > 0 && entries < 100);
    }
}
