//! The exact state's set: element hashes in a `HashSet` whose hasher only
//! folds the (already uniform) hash, so a repeated insert costs a few
//! nanoseconds; and the pass-through builder that is the crate's
//! `BuildHasher` when its estimator is handed dense registers.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// A hasher whose output is the last `u64` written: for keys that already
/// are uniformly distributed hashes. With `FOLD`, the top half of the key
/// is folded into its bottom one: element hashes keep their top 40 bits
/// (`HASH_MASK`) and a table takes its bucket from the low bits (its tag
/// from the top 7, which stay as they are).
#[derive(Clone, Copy, Default, Debug)]
pub struct PassThroughHasher<const FOLD: bool = false>(u64);

impl<const FOLD: bool> Hasher for PassThroughHasher<FOLD> {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = if FOLD { n ^ (n >> 32) } else { n };
    }
}

/// `BuildHasher` of [`PassThroughHasher`]; serde-serializable (zero bytes)
/// so it can be the builder of `hyperloglogplus::HyperLogLogPlus`.
#[derive(Clone, Copy, Default, Debug, Serialize, Deserialize)]
pub struct PassThroughBuildHasher;

impl BuildHasher for PassThroughBuildHasher {
    type Hasher = PassThroughHasher;
    #[inline]
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

pub(super) type ExactSet = HashSet<u64, BuildHasherDefault<PassThroughHasher<true>>>;
