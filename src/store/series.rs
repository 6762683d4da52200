//! Series, and checkpoint work split by series.
//!
//! A series is one (namespace, family, dimension): its day sketches, its
//! rollup blocks, its dimension record (`i` key) and its stale-day record
//! (`u` key). The checkpoint's day writes and the rollup pass run on
//! [`CHECKPOINT_THREADS`] scoped threads. Invariant: a series belongs to
//! exactly one of them ([`by_series`]), and so do all the series of one
//! day group (see `groups`), so a series' records, a group's values and
//! their entries in the in-memory stale set are never written by two
//! threads at once.

use super::keys::{day_group, Family, NamespaceId, SketchKey};
use crate::error::{Error, Result};

/// Threads that write a checkpoint's day sketches and rebuild rollups.
pub const CHECKPOINT_THREADS: usize = 2;

/// One series: (namespace, family, dimension).
pub(super) type Series = (NamespaceId, Family, u64);

/// Which of the [`CHECKPOINT_THREADS`] handles a series: decided by its
/// day group, so that one thread handles every series of a group.
fn series_part(&(ns, family, dim): &Series) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    (ns, family, day_group(dim)).hash(&mut h);
    // The high bits of a multiplicative mix: Fx's low bits are weak.
    ((h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % CHECKPOINT_THREADS as u64) as usize
}

/// Splits `keys` by series over [`CHECKPOINT_THREADS`] scoped threads and
/// runs `work` on each part, sorted (so a series' keys are contiguous and in
/// level order). A series belongs to one thread only, so its records and
/// its entries in the stale set are never written by two at once.
pub(super) fn by_series<K>(
    keys: impl IntoIterator<Item = K>,
    work: impl Fn(Vec<K>) -> Result<()> + Sync,
) -> Result<()>
where
    K: std::borrow::Borrow<SketchKey> + Ord + Send,
{
    let mut parts: Vec<Vec<K>> = (0..CHECKPOINT_THREADS).map(|_| Vec::new()).collect();
    for key in keys {
        let k = key.borrow();
        parts[series_part(&(k.ns, k.family, k.dim))].push(key);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .into_iter()
            .map(|mut part| {
                scope.spawn(move || {
                    part.sort_unstable();
                    work(part)
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| Error::Unavailable("a checkpoint worker panicked".into()))?
        })
    })
}
