//! The exact state's set: element hashes in a `HashSet` whose hasher passes
//! the (already uniform) hash through, so a repeated insert costs a few
//! nanoseconds. The same builder is the crate's `BuildHasher` when its
//! estimator is handed dense registers.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// A hasher whose output is the last `u64` written: for keys that already
/// are uniformly distributed 64-bit hashes.
#[derive(Clone, Copy, Default, Debug)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
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
        self.0 = n;
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

pub(super) type ExactSet = HashSet<u64, BuildHasherDefault<PassThroughHasher>>;
