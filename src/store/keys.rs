//! Key encoding for the sled `data` tree.
//!
//! Every key starts with a one-byte kind, then the namespace id, so one tree
//! holds everything a checkpoint writes and one `apply_batch` commits it
//! atomically. Integers are big-endian so that byte order is numeric order.
//! Sketch keys are day-major: the sketches of one (namespace, family, level,
//! day) for every dimension are one contiguous range, so a checkpoint, whose
//! days are the latest, writes into the few sled leaves of those days
//! instead of into the last leaf of every series (sled keeps at most 16
//! items per leaf and rewrites whole leaves: with series-major keys every
//! checkpoint read back, from disk, a leaf per series it touched).
//!
//! | kind | layout | value |
//! |---|---|---|
//! | `s` | ns u32, family u8, level u8, first day u32, dim u64 | sketch envelope of a dyadic block of `2^level` days (levels of `store::ROLLUP_LEVELS`); days of flat series are in day groups instead |
//! | `f` | ns u32, family u8, day u32, group u16 | the day sketches of the flat series whose dims fall in the group ([`day_group`]; value: `store::groups`) |
//! | `c` | ns u32, dim u64 (country, 0 = all), day u32 | observations, u64 LE |
//! | `o` | ns u32, dim u64 | name of an org, sector or `CC/sector` dimension (UTF-8) |
//! | `v` | ns u32, version | empty: batches were attributed with these tables |
//! | `d` | ns u32, collector len u16, collector, sequence u64 | unix seconds applied (i64 LE), digest of the rows (u64 LE; absent in records written before digests) |
//! | `e` | ns u32 | first day u32, end day u32 (LE) |
//! | `i` | ns u32, family u8, dim u64 | empty: the family has this dimension |
//! | `p` | ns u32, org dim u64, country 2 bytes | days seen (`index::DayBits`) |
//! | `m` | name | metadata (e.g. the checkpointed WAL position) |
//! | `r` | ns u32, record key (see `replication`) | revision (u64 LE) of the last change not yet pushed upstream |
//! | `x` | ns u32, region len u8, region, record key | from that region: xxh3 of the record (u64 LE) [, counter value u64 LE] |
//! | `g` | region | last merged revision u64, unix time i64, records merged u64 (LE) |
//! | `u` | ns u32, family u8, dim u64 | days (`index::DayBits`) changed since the rollup blocks above them were built |

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::time::{Block, Day};

/// Small integer naming a namespace inside keys.
pub type NamespaceId = u32;

pub const KIND_SKETCH: u8 = b's';
pub const KIND_DAY_GROUP: u8 = b'f';
pub const KIND_COUNTER: u8 = b'c';
pub const KIND_ORG_NAME: u8 = b'o';
pub const KIND_DEDUPE: u8 = b'd';
pub const KIND_EXTENT: u8 = b'e';
pub const KIND_META: u8 = b'm';
pub const KIND_DIM: u8 = b'i';
pub const KIND_PRESENCE: u8 = b'p';
pub const KIND_TABLES: u8 = b'v';
pub const KIND_CHANGE: u8 = b'r';
pub const KIND_ORIGIN: u8 = b'x';
pub const KIND_REGION: u8 = b'g';
pub const KIND_STALE_ROLLUP: u8 = b'u';

/// The metadata key holding the last WAL position included in sled.
pub const META_CHECKPOINT_LSN: &[u8] = b"mcheckpoint_lsn";

/// The metadata key holding, on a cluster node, the last position of the
/// cluster's log included in sled (u64 LE).
pub const META_CLUSTER_POSITION: &[u8] = b"mcluster_position";

/// The metadata key holding the revision the upstream acknowledged last
/// (u64 LE) and when (i64 LE).
pub const META_UPSTREAM_ACKED: &[u8] = b"mupstream_acked";

/// The metadata key holding the rollup levels the stored blocks were built
/// with (one byte per level, as `store::ROLLUP_LEVELS`).
pub const META_ROLLUP_LEVELS: &[u8] = b"mrollup_levels";

/// The metadata key holding the layout of sketch keys the store was written
/// with ([`KEY_LAYOUT`]).
pub const META_KEY_LAYOUT: &[u8] = b"mkey_layout";

/// The metadata key holding the envelope format version of every stored
/// sketch value (one byte; see `store::format`).
pub const META_SKETCH_FORMAT: &[u8] = b"msketch_format";

/// The sketch key layout this build writes and reads: 4, day-major, the
/// days of flat series in day groups (`f` keys) of group version 2 or 1.
/// Layout 3 (groups of version 1 only) is taken as it is and recorded as
/// 4 at open, so that a build that cannot read version 2 refuses the
/// store; layout 2 (every day under its own `s` key) is upgraded at open
/// (`store::groups`); layout 1 (in stores without [`META_KEY_LAYOUT`])
/// was series-major.
pub const KEY_LAYOUT: &[u8] = &[4];

/// The layout of stores whose day groups are all of version 1.
pub const KEY_LAYOUT_GROUPS_V1: &[u8] = &[3];

/// The layout upgraded at open to [`KEY_LAYOUT`].
pub const KEY_LAYOUT_UNGROUPED: &[u8] = &[2];

/// Bits of a day group number: the flat series of one (namespace, family,
/// day) are spread over `2^GROUP_BITS` sled values. At scale 1 a group
/// value holds ~10 org days, ~1.3 KB on average.
pub const GROUP_BITS: u32 = 10;

/// Seed of the dimension hashes (org and sector ids to key dimensions).
/// Part of the on-disk format: never change it.
const DIM_SEED: u64 = 0x736b_6574_6368_6431;

/// What a sketch counts and within what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Family {
    /// Distinct IPs of all rows (dim 0).
    IpsGlobal = 1,
    /// Distinct IPs per country (dim = country).
    IpsCountry = 2,
    /// Distinct IPs per org (dim = org).
    IpsOrg = 3,
    /// Distinct orgs of all rows (dim 0).
    OrgsGlobal = 4,
    /// Distinct orgs per country of the rows (dim = country).
    OrgsCountry = 5,
    /// Distinct IPs per sector of the org (dim = sector).
    IpsSector = 6,
    /// Distinct orgs per sector (dim = sector).
    OrgsSector = 7,
    /// Distinct IPs per (country, sector) (dim = country and sector).
    IpsCountrySector = 8,
    /// Distinct orgs per (country, sector).
    OrgsCountrySector = 9,
}

impl Family {
    pub fn from_u8(value: u8) -> Option<Family> {
        Some(match value {
            1 => Family::IpsGlobal,
            2 => Family::IpsCountry,
            3 => Family::IpsOrg,
            4 => Family::OrgsGlobal,
            5 => Family::OrgsCountry,
            6 => Family::IpsSector,
            7 => Family::OrgsSector,
            8 => Family::IpsCountrySector,
            9 => Family::OrgsCountrySector,
            _ => return None,
        })
    }
}

/// A country code as a dimension: the two ASCII letters, big-endian.
pub fn country_dim(code: [u8; 2]) -> u64 {
    u64::from(u16::from_be_bytes(code))
}

/// The country code back from its dimension.
pub fn dim_country(dim: u64) -> Option<[u8; 2]> {
    let code = u16::try_from(dim).ok()?.to_be_bytes();
    code.iter().all(u8::is_ascii_uppercase).then_some(code)
}

/// An org id as a dimension (a stable 64-bit hash; names are kept under `o`).
pub fn org_dim(org: &str) -> u64 {
    dim_hash(&[b"org\0", org.as_bytes()])
}

/// A sector label as a dimension.
pub fn sector_dim(sector: &str) -> u64 {
    dim_hash(&[b"sector\0", sector.as_bytes()])
}

/// A (country, sector) pair as a dimension; its name is `CC/sector`.
pub fn country_sector_dim(country: [u8; 2], sector: &str) -> u64 {
    dim_hash(&[b"csector\0", &country, sector.as_bytes()])
}

/// The dimension hash of the concatenated `parts`: built on the stack when
/// short (ingest derives one per row), so no allocation.
fn dim_hash(parts: &[&[u8]]) -> u64 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 128];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    xxh3_64_with_seed(buf, DIM_SEED)
}

/// The key of a sketch of one series over one dyadic block of days (level
/// 0: one day). Memtables hold level 0 only; rollup passes after
/// checkpoints maintain the higher levels of [`super::ROLLUP_LEVELS`] in
/// sled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SketchKey {
    pub ns: NamespaceId,
    pub family: Family,
    pub dim: u64,
    pub block: Block,
}

impl SketchKey {
    pub const LEN: usize = 19;

    /// The key of one day's sketch.
    pub fn day(ns: NamespaceId, family: Family, dim: u64, day: Day) -> SketchKey {
        SketchKey {
            ns,
            family,
            dim,
            block: Block {
                level: 0,
                start: day,
            },
        }
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut key = [0u8; Self::LEN];
        key[0] = KIND_SKETCH;
        key[1..5].copy_from_slice(&self.ns.to_be_bytes());
        key[5] = self.family as u8;
        key[6] = self.block.level;
        key[7..11].copy_from_slice(&self.block.start.0.to_be_bytes());
        key[11..].copy_from_slice(&self.dim.to_be_bytes());
        key
    }

    pub fn decode(bytes: &[u8]) -> Option<SketchKey> {
        if bytes.len() != Self::LEN || bytes[0] != KIND_SKETCH {
            return None;
        }
        Some(SketchKey {
            ns: u32::from_be_bytes(bytes[1..5].try_into().ok()?),
            family: Family::from_u8(bytes[5])?,
            dim: u64::from_be_bytes(bytes[11..19].try_into().ok()?),
            block: Block {
                level: bytes[6],
                start: Day(u32::from_be_bytes(bytes[7..11].try_into().ok()?)),
            },
        })
    }

    /// The level byte of an encoded sketch key.
    pub fn encoded_level(bytes: &[u8]) -> Option<u8> {
        (bytes.len() == Self::LEN && bytes[0] == KIND_SKETCH).then(|| bytes[6])
    }
}

/// The day group of a dimension (see [`GroupKey`]): the high bits of a
/// multiplicative mix, so that small dims (countries) spread too. Part of
/// the on-disk format: never change it.
pub fn day_group(dim: u64) -> u16 {
    (dim.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - GROUP_BITS)) as u16
}

/// The key of one day group: the day sketches of the flat series of one
/// (namespace, family, day) whose dims have [`day_group`] `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub ns: NamespaceId,
    pub family: Family,
    pub day: Day,
    pub group: u16,
}

impl GroupKey {
    pub const LEN: usize = 12;

    /// The group holding the day of `key` (a day key) when its series is flat.
    pub fn of(key: &SketchKey) -> GroupKey {
        GroupKey {
            ns: key.ns,
            family: key.family,
            day: key.block.start,
            group: day_group(key.dim),
        }
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut key = [0u8; Self::LEN];
        key[..10].copy_from_slice(&Self::day_prefix(self.ns, self.family, self.day));
        key[10..].copy_from_slice(&self.group.to_be_bytes());
        key
    }

    pub fn decode(bytes: &[u8]) -> Option<GroupKey> {
        if bytes.len() != Self::LEN || bytes[0] != KIND_DAY_GROUP {
            return None;
        }
        Some(GroupKey {
            ns: u32::from_be_bytes(bytes[1..5].try_into().ok()?),
            family: Family::from_u8(bytes[5])?,
            day: Day(u32::from_be_bytes(bytes[6..10].try_into().ok()?)),
            group: u16::from_be_bytes(bytes[10..12].try_into().ok()?),
        })
    }

    /// The prefix of every group of one (namespace, family, day).
    pub fn day_prefix(ns: NamespaceId, family: Family, day: Day) -> [u8; 10] {
        let mut key = [0u8; 10];
        key[..6].copy_from_slice(&Self::family_prefix(ns, family));
        key[6..].copy_from_slice(&day.0.to_be_bytes());
        key
    }

    /// The prefix of every group of one (namespace, family).
    pub fn family_prefix(ns: NamespaceId, family: Family) -> [u8; 6] {
        let mut key = [0u8; 6];
        key[0] = KIND_DAY_GROUP;
        key[1..5].copy_from_slice(&ns.to_be_bytes());
        key[5] = family as u8;
        key
    }
}

/// The key of `kind` that names one series: kind, ns u32, family u8, dim u64.
fn series_key(kind: u8, ns: NamespaceId, family: Family, dim: u64) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[0] = kind;
    key[1..5].copy_from_slice(&ns.to_be_bytes());
    key[5] = family as u8;
    key[6..14].copy_from_slice(&dim.to_be_bytes());
    key
}

/// The key of one day's exact observation counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub ns: NamespaceId,
    /// Country dimension, or [`CounterKey::ALL`] for every row.
    pub dim: u64,
    pub day: Day,
}

impl CounterKey {
    pub const ALL: u64 = 0;
    pub const LEN: usize = 17;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut key = [0u8; Self::LEN];
        key[..13].copy_from_slice(&Self::series_prefix(self.ns, self.dim));
        key[13..].copy_from_slice(&self.day.0.to_be_bytes());
        key
    }

    pub fn series_prefix(ns: NamespaceId, dim: u64) -> [u8; 13] {
        let mut key = [0u8; 13];
        key[0] = KIND_COUNTER;
        key[1..5].copy_from_slice(&ns.to_be_bytes());
        key[5..13].copy_from_slice(&dim.to_be_bytes());
        key
    }
}

/// Identifies a batch for idempotence: (namespace, collector, sequence).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub ns: NamespaceId,
    pub collector: String,
    pub sequence: u64,
}

impl DedupeKey {
    pub fn encode(&self) -> Vec<u8> {
        let collector = self.collector.as_bytes();
        let mut key = Vec::with_capacity(15 + collector.len());
        key.push(KIND_DEDUPE);
        key.extend_from_slice(&self.ns.to_be_bytes());
        key.extend_from_slice(&(collector.len() as u16).to_be_bytes());
        key.extend_from_slice(collector);
        key.extend_from_slice(&self.sequence.to_be_bytes());
        key
    }

    pub fn decode(bytes: &[u8]) -> Option<DedupeKey> {
        if bytes.len() < 15 || bytes[0] != KIND_DEDUPE {
            return None;
        }
        let ns = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
        let len = usize::from(u16::from_be_bytes(bytes[5..7].try_into().ok()?));
        if bytes.len() != 15 + len {
            return None;
        }
        let collector = std::str::from_utf8(&bytes[7..7 + len]).ok()?.to_owned();
        let sequence = u64::from_be_bytes(bytes[7 + len..].try_into().ok()?);
        Some(DedupeKey {
            ns,
            collector,
            sequence,
        })
    }
}

/// A batch's id and the digest of the rows it carried (see
/// `ingest::dedupe`); `None` for batches applied before digests were kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchId {
    pub key: DedupeKey,
    pub digest: Option<u64>,
}

impl BatchId {
    /// The value of its record: the unix time it was applied (i64 LE),
    /// then the digest (u64 LE) when known.
    pub fn value(&self, applied_at: i64) -> Vec<u8> {
        let mut value = applied_at.to_le_bytes().to_vec();
        if let Some(digest) = self.digest {
            value.extend_from_slice(&digest.to_le_bytes());
        }
        value
    }

    /// From a record's key and value (8 bytes: no digest, 16: a digest).
    pub fn decode(key: &[u8], value: &[u8]) -> Option<BatchId> {
        let digest = match value.len() {
            8 => None,
            16 => Some(u64::from_le_bytes(value[8..].try_into().ok()?)),
            _ => return None,
        };
        Some(BatchId {
            key: DedupeKey::decode(key)?,
            digest,
        })
    }
}

pub fn org_name_key(ns: NamespaceId, dim: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = KIND_ORG_NAME;
    key[1..5].copy_from_slice(&ns.to_be_bytes());
    key[5..].copy_from_slice(&dim.to_be_bytes());
    key
}

/// The key of a series' stale days (see `store::Store::rebuild_rollups`).
pub fn stale_days_key(ns: NamespaceId, family: Family, dim: u64) -> [u8; 14] {
    series_key(KIND_STALE_ROLLUP, ns, family, dim)
}

/// The series a stale-days key names.
pub fn decode_stale_days_key(bytes: &[u8]) -> Option<(NamespaceId, Family, u64)> {
    decode_series_key(KIND_STALE_ROLLUP, bytes)
}

/// The series a dimension key ([`dim_key`]) names.
pub fn decode_dim_key(bytes: &[u8]) -> Option<(NamespaceId, Family, u64)> {
    decode_series_key(KIND_DIM, bytes)
}

/// The series of a 14-byte key of `kind` (see [`series_key`]).
fn decode_series_key(kind: u8, bytes: &[u8]) -> Option<(NamespaceId, Family, u64)> {
    if bytes.len() != 14 || bytes[0] != kind {
        return None;
    }
    Some((
        u32::from_be_bytes(bytes[1..5].try_into().ok()?),
        Family::from_u8(bytes[5])?,
        u64::from_be_bytes(bytes[6..14].try_into().ok()?),
    ))
}

pub fn dim_key(ns: NamespaceId, family: Family, dim: u64) -> [u8; 14] {
    series_key(KIND_DIM, ns, family, dim)
}

pub fn presence_key(ns: NamespaceId, org: u64, country: [u8; 2]) -> [u8; 15] {
    let mut key = [0u8; 15];
    key[0] = KIND_PRESENCE;
    key[1..5].copy_from_slice(&ns.to_be_bytes());
    key[5..13].copy_from_slice(&org.to_be_bytes());
    key[13..].copy_from_slice(&country);
    key
}

pub fn tables_key(ns: NamespaceId, version: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + version.len());
    key.push(KIND_TABLES);
    key.extend_from_slice(&ns.to_be_bytes());
    key.extend_from_slice(version.as_bytes());
    key
}

/// A stored key without its namespace: the kind byte, then the key fields
/// after the namespace id. Replication names records this way, because
/// namespace ids are local to a server.
pub fn record_of(key: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(key.len().saturating_sub(4));
    record.push(key[0]);
    record.extend_from_slice(&key[5..]);
    record
}

/// The stored key of a namespace-free record key.
pub fn key_of_record(ns: NamespaceId, record: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(record.len() + 4);
    key.push(record[0]);
    key.extend_from_slice(&ns.to_be_bytes());
    key.extend_from_slice(&record[1..]);
    key
}

/// The change-log key of a record.
pub fn change_key(ns: NamespaceId, record: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(record.len() + 5);
    key.push(KIND_CHANGE);
    key.extend_from_slice(&ns.to_be_bytes());
    key.extend_from_slice(record);
    key
}

/// The prefix of the records one namespace holds from one region.
pub fn origin_prefix(ns: NamespaceId, region: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(6 + region.len());
    key.push(KIND_ORIGIN);
    key.extend_from_slice(&ns.to_be_bytes());
    key.push(region.len() as u8);
    key.extend_from_slice(region.as_bytes());
    key
}

pub fn region_key(region: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + region.len());
    key.push(KIND_REGION);
    key.extend_from_slice(region.as_bytes());
    key
}

pub fn extent_key(ns: NamespaceId) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = KIND_EXTENT;
    key[1..].copy_from_slice(&ns.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_keys_round_trip_and_sort_by_day() {
        let a = SketchKey::day(7, Family::IpsCountry, country_dim(*b"DE"), Day(20_000));
        assert_eq!(SketchKey::decode(&a.encode()), Some(a));
        let b = SketchKey::day(7, Family::IpsCountry, a.dim, Day(20_001));
        let block = SketchKey {
            block: Block::containing(Day(20_001), 3),
            ..a
        };
        assert_eq!(SketchKey::decode(&block.encode()), Some(block));
        assert!(a.encode() < b.encode());
        // Day-major: a day of every dimension sorts before the next day.
        let other = SketchKey::day(7, Family::IpsCountry, country_dim(*b"US"), Day(20_000));
        assert!(a.encode() < other.encode() && other.encode() < b.encode());
        assert_eq!(SketchKey::encoded_level(&block.encode()), Some(3));
        assert_eq!(SketchKey::encoded_level(&a.encode()), Some(0));
        let stale = stale_days_key(7, Family::IpsCountry, a.dim);
        assert_eq!(
            decode_stale_days_key(&stale),
            Some((7, Family::IpsCountry, a.dim))
        );
        assert_eq!(
            decode_stale_days_key(&dim_key(7, Family::IpsCountry, a.dim)),
            None
        );
    }

    #[test]
    fn country_dims() {
        assert_eq!(dim_country(country_dim(*b"US")), Some(*b"US"));
        assert_eq!(dim_country(0), None);
    }

    #[test]
    fn org_dims_are_stable() {
        // Part of the on-disk format: a change here orphans stored sketches.
        assert_eq!(org_dim("AS15169"), org_dim("AS15169"));
        assert_ne!(org_dim("AS15169"), org_dim("AS15170"));
        // Each dimension is the seeded xxh3 of its prefix and text, short
        // (hashed from the stack) or long.
        let concat = |parts: &[&[u8]]| xxh3_64_with_seed(&parts.concat(), DIM_SEED);
        for text in ["AS15169", "government", &"x".repeat(300)] {
            assert_eq!(org_dim(text), concat(&[b"org\0", text.as_bytes()]));
            assert_eq!(sector_dim(text), concat(&[b"sector\0", text.as_bytes()]));
            assert_eq!(
                country_sector_dim(*b"DE", text),
                concat(&[b"csector\0", b"DE", text.as_bytes()])
            );
        }
    }

    #[test]
    fn dedupe_keys_round_trip() {
        let k = DedupeKey {
            ns: 3,
            collector: "eu-west/7".into(),
            sequence: u64::MAX - 1,
        };
        assert_eq!(DedupeKey::decode(&k.encode()), Some(k.clone()));
        assert_eq!(DedupeKey::decode(b"d\0\0"), None);
        for digest in [None, Some(0xfeed)] {
            let id = BatchId {
                key: k.clone(),
                digest,
            };
            assert_eq!(BatchId::decode(&k.encode(), &id.value(17)), Some(id));
        }
        assert_eq!(BatchId::decode(&k.encode(), &[0; 9]), None);
    }
}
