//! The parameters a sketch is built with, as plain data below `config`:
//! the range and default of the precision, and the element hash's seed
//! ([`HashSeed`]: its derivation from a deployment secret and its
//! fingerprint). `config` validates namespace policies and seeds with
//! them; `sketch` re-exports them and hashes elements with the seed.

use std::fmt;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Default precision: 16384 registers, 0.81 % standard error, 16 KiB dense.
pub const DEFAULT_PRECISION: u8 = 14;
/// Smallest supported precision.
pub const MIN_PRECISION: u8 = 4;
/// Largest supported precision.
pub const MAX_PRECISION: u8 = 18;

const SEED_SECRET_TAG: &[u8] = b"sketchd/hash-seed-from-secret/v1\0";
const SEED_FINGERPRINT_TAG: &[u8] = b"sketchd/hash-seed-fingerprint/v1\0";
const SEED_FINGERPRINT_MIX: u64 = 0x5ee5_f1a9_e2b7_c3d1;

/// The seed of the element hash. It is part of the sketch format: sketches
/// merge only if built with the same seed (compared via
/// [`fingerprint`](HashSeed::fingerprint)).
///
/// `Debug` prints the fingerprint, never the seed, so a secret seed cannot
/// leak into logs.
/// The default is [`HashSeed::DEFAULT`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HashSeed(pub(crate) u64);

impl HashSeed {
    /// Seed 0: for public data and tests.
    pub const DEFAULT: HashSeed = HashSeed(0);

    /// A seed from a raw value.
    pub const fn new(seed: u64) -> HashSeed {
        HashSeed(seed)
    }

    /// Derives a seed from a deployment secret: xxh3-64 of a domain tag
    /// followed by the secret bytes.
    pub fn from_secret(secret: &[u8]) -> HashSeed {
        let mut buf = Vec::with_capacity(SEED_SECRET_TAG.len() + secret.len());
        buf.extend_from_slice(SEED_SECRET_TAG);
        buf.extend_from_slice(secret);
        HashSeed(xxh3_64(&buf))
    }

    /// A fingerprint of the seed that is stored in envelopes and compared on
    /// merge. It is xxh3-64 over a distinct domain tag followed by the seed,
    /// with a seed-derived hash seed, so it is not the seed and not a plain
    /// function of it that would also be an element hash. (xxh3 is not a
    /// cryptographic hash: treat the fingerprint as "hard to invert", not as
    /// a proof of secrecy.)
    pub fn fingerprint(&self) -> u64 {
        let mut buf = [0u8; SEED_FINGERPRINT_TAG.len() + 8];
        buf[..SEED_FINGERPRINT_TAG.len()].copy_from_slice(SEED_FINGERPRINT_TAG);
        buf[SEED_FINGERPRINT_TAG.len()..].copy_from_slice(&self.0.to_le_bytes());
        xxh3_64_with_seed(&buf, self.0 ^ SEED_FINGERPRINT_MIX)
    }
}

impl fmt::Debug for HashSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashSeed(fingerprint={:#018x})", self.fingerprint())
    }
}
