//! Replication's records: what a regional server pushes to an upstream,
//! and how the upstream checks and merges them.
//!
//! This module holds the records' plain parts (validation, the merge log
//! payload, the idempotent merge into the memtable, digests), below
//! `ingest` and `engine`, whose commit thread and cluster reader apply
//! merges. The regional pusher, which takes an `Engine`, is
//! [`crate::push`], above the engine.
//!
//! Everything a server stores per day forms a join-semilattice, so merging
//! is commutative, associative and idempotent:
//!
//! - day sketches merge by register max (exact sets by union);
//! - org presence (days seen per org and country) merges by set union;
//! - org and sector names and table versions are insert-only;
//! - exact observation counters are *not* idempotent under addition, so the
//!   upstream keeps, per origin region and counter, the absolute value it
//!   last merged, and adds to its own counter only the increase. A counter
//!   pushed twice, late, or again after a crash adds nothing.
//!
//! Only day records travel; rollup blocks are derived by the upstream's own
//! checkpoints, exactly as for ingested rows. So the upstream's sketches are
//! byte-identical to those of one server that ingested every region's rows.
//!
//! **Records.** A record is named by its stored key without the namespace
//! id (which is local to a server): the kind byte, then the key fields (see
//! `store::keys`). Values are the stored bytes: sketch envelope, counter
//! (u64 LE), presence day bitmap, name, or empty (table version).
//!
//! **Regional side** ([`crate::push`]): with a changelog enabled, every
//! checkpoint notes the records it changed under `r` keys with its revision
//! (the log position it covers). A push reads the current value of every
//! noted record and streams them in chunks; once the upstream acknowledged
//! the last chunk, the notes are removed unless a later checkpoint renewed
//! them. A push lost to a crash on either side is simply sent again.
//!
//! **Upstream side**: a chunk is validated whole (nothing is applied if any
//! record is bad), logged in the write-ahead log as a merge record, synced,
//! then folded into the memtable like an ingested batch ([`apply_merge`]);
//! the checkpoint persists it with the per-region record hashes (`x` keys)
//! and the region's provenance (`g` keys) in the same atomic batch.
//!
//! **Anti-entropy**: records are spread over buckets by a hash of their key;
//! both sides compute, per bucket, the wrapping sum of xxh3(key ‖ value) —
//! the region over what it stores, the upstream over the hashes it recorded
//! for that region. Records of differing buckets are noted as changed and
//! pushed again. This repairs anything a lost push or an upstream restored
//! from an older backup missed.

use std::collections::hash_map::Entry;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::catalog::Namespace;
use crate::error::{Error, Result};
use crate::sketch::Sketch;
use crate::store::index::{DayBits, OrgCountry};
use crate::store::keys::{self, CounterKey, NamespaceId, SketchKey};
use crate::store::memtable::{MemState, OriginRecord};
use crate::store::Store;
use crate::time::Day;

/// Log payload version of a merge record (ingested batches use 1).
pub const LOG_VERSION: u8 = 2;

pub use crate::names::{validate_region, MAX_REGION_LEN};

/// One chunk of records from a region, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeBatch {
    pub ns: NamespaceId,
    pub region: String,
    pub revision: u64,
    pub merged_at: i64,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Checks one record against the namespace it is merged into. Errors
/// name `records[i]`.
pub fn validate_record(ns: &Namespace, i: usize, key: &[u8], value: &[u8]) -> Result<()> {
    let bad = |part: &str, why: String| Error::invalid(format!("records[{i}].{part}"), why);
    let Some(&kind) = key.first() else {
        return Err(bad("key", "empty".into()));
    };
    match kind {
        keys::KIND_SKETCH => {
            let full = keys::key_of_record(ns.id, key);
            let parsed = SketchKey::decode(&full)
                .ok_or_else(|| bad("key", "not a sketch key (family, dim, level, day)".into()))?;
            if parsed.block.level != 0 {
                return Err(bad(
                    "key",
                    "only day sketches (level 0) are replicated".into(),
                ));
            }
            let sketch = Sketch::decode(value).map_err(|e| bad("value", e.to_string()))?;
            if sketch.precision() != ns.policy.precision {
                return Err(bad(
                    "value",
                    format!(
                        "sketch precision {} but namespace {:?} has {}",
                        sketch.precision(),
                        ns.name,
                        ns.policy.precision
                    ),
                ));
            }
            if sketch.seed_fingerprint() != ns.seed.fingerprint() {
                return Err(bad(
                    "value",
                    format!(
                        "sketch hashed with seed fingerprint {:016x} but namespace {:?} uses {:016x}",
                        sketch.seed_fingerprint(),
                        ns.name,
                        ns.seed.fingerprint()
                    ),
                ));
            }
        }
        keys::KIND_COUNTER => {
            if key.len() != CounterKey::LEN - 4 {
                return Err(bad("key", "not a counter key (dim, day)".into()));
            }
            if value.len() != 8 {
                return Err(bad("value", "a counter is 8 bytes".into()));
            }
        }
        keys::KIND_PRESENCE => {
            if key.len() != 11 {
                return Err(bad("key", "not a presence key (org, country)".into()));
            }
            if DayBits::decode(value).is_none() {
                return Err(bad("value", "not a day bitmap".into()));
            }
        }
        keys::KIND_ORG_NAME => {
            if key.len() != 9 {
                return Err(bad("key", "not a name key (dim)".into()));
            }
            if std::str::from_utf8(value).is_err() || value.len() > 4096 {
                return Err(bad("value", "a name is UTF-8, at most 4096 bytes".into()));
            }
        }
        keys::KIND_TABLES => {
            if key.len() < 2 || key.len() > 256 || std::str::from_utf8(&key[1..]).is_err() {
                return Err(bad("key", "not a table version".into()));
            }
            if !value.is_empty() {
                return Err(bad("value", "a table version record is empty".into()));
            }
        }
        other => {
            return Err(bad(
                "key",
                format!("unknown record kind {:?}", char::from(other)),
            ))
        }
    }
    Ok(())
}

/// The hash anti-entropy compares: xxh3-64 of key ‖ value.
pub fn record_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(key);
    h.update(value);
    h.digest()
}

/// The bucket of a record key among `buckets` (a power of two).
pub fn bucket_of(key: &[u8], buckets: u32) -> usize {
    let bits = buckets.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (xxh3_64(key) >> (64 - bits)) as usize
}

/// Per-bucket digests of (record key, record hash) pairs.
pub fn digests(records: impl Iterator<Item = (Vec<u8>, u64)>, buckets: u32) -> Vec<u64> {
    let mut out = vec![0u64; buckets as usize];
    for (key, hash) in records {
        let b = bucket_of(&key, buckets);
        out[b] = out[b].wrapping_add(hash);
    }
    out
}

/// Folds a validated merge into the active memtable and the index.
/// Counters add only their increase over what was held from the region;
/// `store` answers for records the memtables do not hold.
pub fn apply_merge(
    state: &mut MemState,
    store: &Store,
    ns: &Namespace,
    m: &MergeBatch,
) -> Result<()> {
    let MemState {
        active: mem,
        frozen,
        index,
    } = state;
    for (key, value) in &m.records {
        let hash = record_hash(key, value);
        let full = keys::key_of_record(ns.id, key);
        let origin_key = (ns.id, m.region.clone(), key.clone());
        let mut origin = OriginRecord { hash, counter: 0 };
        match key[0] {
            keys::KIND_SKETCH => {
                let sk = SketchKey::decode(&full).ok_or_else(|| corrupt("sketch key"))?;
                let incoming = Sketch::decode(value)?;
                // Hashes merged into an org sketch were not inserted into
                // its rows' other series: ingest must pass every later row
                // of it on (see `Memtable::org_sources`).
                mem.org_sources.remove(&sk);
                let (before, after) = match mem.sketches.entry(sk) {
                    Entry::Occupied(mut e) => {
                        let before = e.get().heap_bytes();
                        e.get_mut().merge(&incoming)?;
                        (before, e.get().heap_bytes())
                    }
                    Entry::Vacant(e) => {
                        index
                            .dims
                            .entry((ns.id, sk.family))
                            .or_default()
                            .insert(sk.dim);
                        (0, e.insert(incoming).heap_bytes())
                    }
                };
                mem.sketch_bytes = (mem.sketch_bytes + after).saturating_sub(before);
                let day = sk.block.start;
                mem.widen_extent(ns.id, day, Day(day.0 + 1));
            }
            keys::KIND_COUNTER => {
                let value =
                    u64::from_le_bytes(value[..8].try_into().map_err(|_| corrupt("counter"))?);
                let held = match mem.origins.get(&origin_key) {
                    Some(o) => Some(*o),
                    None => match frozen.as_ref().and_then(|f| f.origins.get(&origin_key)) {
                        Some(o) => Some(*o),
                        None => store.origin_record(ns.id, &m.region, key)?,
                    },
                };
                let held_value = held.map_or(0, |o| o.counter);
                if value <= held_value {
                    // Not newer than what we hold: nothing to add.
                    continue;
                }
                let dim =
                    u64::from_be_bytes(full[5..13].try_into().map_err(|_| corrupt("counter"))?);
                let day = Day(u32::from_be_bytes(
                    full[13..17].try_into().map_err(|_| corrupt("counter"))?,
                ));
                *mem.counters
                    .entry(CounterKey {
                        ns: ns.id,
                        dim,
                        day,
                    })
                    .or_insert(0) += value - held_value;
                origin.counter = value;
            }
            keys::KIND_PRESENCE => {
                let bits = DayBits::decode(value).ok_or_else(|| corrupt("presence"))?;
                let oc = OrgCountry {
                    org: u64::from_be_bytes(
                        full[5..13].try_into().map_err(|_| corrupt("presence"))?,
                    ),
                    country: [full[13], full[14]],
                };
                index
                    .presence
                    .entry(ns.id)
                    .or_default()
                    .insert_days(oc, &bits);
                mem.presence.entry((ns.id, oc)).or_default().union(&bits);
            }
            keys::KIND_ORG_NAME => {
                let dim = u64::from_be_bytes(full[5..13].try_into().map_err(|_| corrupt("name"))?);
                let name = String::from_utf8(value.clone()).map_err(|_| corrupt("name"))?;
                if let Entry::Vacant(e) = index.names.entry((ns.id, dim)) {
                    e.insert(name.clone());
                    mem.names.insert((ns.id, dim), name);
                }
            }
            keys::KIND_TABLES => {
                let version =
                    String::from_utf8(key[1..].to_vec()).map_err(|_| corrupt("version"))?;
                if index
                    .table_versions
                    .entry(ns.id)
                    .or_default()
                    .insert(version.clone())
                {
                    mem.table_versions.insert((ns.id, version));
                }
            }
            _ => return Err(corrupt("record kind")),
        }
        mem.origins.insert(origin_key, origin);
    }
    let mark = index.regions.entry(m.region.clone()).or_default();
    mark.revision = mark.revision.max(m.revision);
    mark.merged_at = m.merged_at;
    mark.records += m.records.len() as u64;
    mem.regions.insert(m.region.clone(), *mark);
    Ok(())
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("merge record: {what}"))
}

/// The log payload of a merge:
/// `2 | ns u32 | region (u8 len, bytes) | revision u64 | merged_at i64 |
///  n u32 | n x (key u16 len, key, value u32 len, value)`, little-endian.
pub fn encode(m: &MergeBatch) -> Vec<u8> {
    let size: usize = m.records.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(32 + m.region.len() + size);
    out.push(LOG_VERSION);
    out.extend_from_slice(&m.ns.to_le_bytes());
    out.push(m.region.len() as u8);
    out.extend_from_slice(m.region.as_bytes());
    out.extend_from_slice(&m.revision.to_le_bytes());
    out.extend_from_slice(&m.merged_at.to_le_bytes());
    out.extend_from_slice(&(m.records.len() as u32).to_le_bytes());
    for (k, v) in &m.records {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes a merge log payload; a damaged payload is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<MergeBatch> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(1)?[0] != LOG_VERSION {
        return Err(corrupt("version"));
    }
    let ns = u32::from_le_bytes(r.array()?);
    let len = usize::from(r.take(1)?[0]);
    let region = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| corrupt("region"))?;
    let revision = u64::from_le_bytes(r.array()?);
    let merged_at = i64::from_le_bytes(r.array()?);
    let n = u32::from_le_bytes(r.array()?) as usize;
    let mut records = Vec::with_capacity(n.min(bytes.len() / 6));
    for _ in 0..n {
        let klen = usize::from(u16::from_le_bytes(r.array()?));
        let key = r.take(klen)?.to_vec();
        let vlen = u32::from_le_bytes(r.array()?) as usize;
        let value = r.take(vlen)?.to_vec();
        if key.is_empty() {
            return Err(corrupt("empty key"));
        }
        records.push((key, value));
    }
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(MergeBatch {
        ns,
        region,
        revision,
        merged_at,
        records,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Family;

    fn sketch_record(family: Family, dim: u64, day: Day) -> Vec<u8> {
        keys::record_of(&SketchKey::day(0, family, dim, day).encode())
    }

    #[test]
    fn log_payload_round_trips_and_never_panics_when_cut() {
        let m = MergeBatch {
            ns: 3,
            region: "eu-west".into(),
            revision: 42,
            merged_at: 1_795_737_600,
            records: vec![
                (
                    sketch_record(Family::IpsGlobal, 0, Day(20_000)),
                    vec![1, 2, 3],
                ),
                (vec![keys::KIND_TABLES, b'v', b'1'], vec![]),
            ],
        };
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn digests_are_order_independent_and_see_one_change() {
        let records: Vec<(Vec<u8>, u64)> = (0..1000u32)
            .map(|i| (i.to_be_bytes().to_vec(), u64::from(i) * 7919))
            .collect();
        let a = digests(records.iter().cloned(), 64);
        let b = digests(records.iter().rev().cloned(), 64);
        assert_eq!(a, b);
        let mut changed = records.clone();
        changed[500].1 += 1;
        let c = digests(changed.into_iter(), 64);
        let differing: Vec<usize> = (0..64).filter(|&i| a[i] != c[i]).collect();
        assert_eq!(differing, vec![bucket_of(&500u32.to_be_bytes(), 64)]);
    }

    #[test]
    fn region_names_are_checked() {
        assert!(validate_region("region", "eu-west.1").is_ok());
        assert!(validate_region("region", "").is_err());
        assert!(validate_region("region", "a b").is_err());
        assert!(validate_region("region", &"x".repeat(65)).is_err());
    }
}
