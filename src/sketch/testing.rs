//! Helpers of the sketch tests: pseudo-random hash sets, golden sketches,
//! CRC fixing, and instances of the crate built by the crate itself.

use std::net::Ipv4Addr;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};

use super::exact::PassThroughBuildHasher;
use super::{hash_ipv4, HashSeed, Sketch, HASH_MASK};

pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` pseudo-random element hashes (the kept bits of splitmix64's
/// outputs, which never repeat: two of `n` kept ones are equal with
/// probability `n²/2^41`, e.g. 5e-7 for 1,024).
pub(super) fn random_hashes(seed: u64, n: usize) -> Vec<u64> {
    let mut s = seed;
    (0..n).map(|_| splitmix64(&mut s) & HASH_MASK).collect()
}

pub(super) fn sketch_of(p: u8, hashes: &[u64]) -> Sketch {
    let mut s = Sketch::new(p, HashSeed::DEFAULT).unwrap();
    for &h in hashes {
        s.insert_hash(h);
    }
    s
}

/// Recomputes the CRC of a (possibly edited) envelope.
pub(super) fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn golden_exact() -> Sketch {
    let mut s = Sketch::new(14, HashSeed::DEFAULT).unwrap();
    let base = u32::from(Ipv4Addr::new(192, 0, 2, 0));
    for i in 0..100 {
        s.insert_hash(hash_ipv4(HashSeed::DEFAULT, base + i));
    }
    s
}

pub(super) fn golden_dense() -> Sketch {
    let mut s = Sketch::new(14, HashSeed::DEFAULT).unwrap();
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    for i in 0..50_000 {
        s.insert_hash(hash_ipv4(HashSeed::DEFAULT, base + i));
    }
    s
}

/// A crate instance whose registers were produced by the crate itself:
/// enough distinct hashes to leave the sparse mode, then more inserted in
/// dense mode.
pub(super) fn crate_dense(p: u8, hashes: &[u64]) -> HyperLogLogPlus<u64, PassThroughBuildHasher> {
    let mut hll: HyperLogLogPlus<u64, PassThroughBuildHasher> =
        HyperLogLogPlus::new(p, PassThroughBuildHasher).unwrap();
    for h in hashes {
        hll.insert(h);
    }
    hll
}

/// Is the crate in dense mode? (The `registers` option tag sits right
/// after the empty tmpset/sparse fields in the bincode bytes.)
pub(super) fn crate_is_dense(bytes: &[u8]) -> bool {
    bytes[1 + 24 + 8 + 8 + 4 + 8] == 1
}
