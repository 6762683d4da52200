//! What replication reads and writes in sled: a namespace's replicable
//! records (day sketches, counters, presence, names, table versions; never
//! rollup blocks, which each server derives), the change log of records
//! changed since the upstream acknowledged them (`r` keys), the revision
//! it acknowledged last, and what this server holds from each region
//! (origin records).
//!
//! Invariant: an acknowledged change-log entry is removed only if it
//! still holds the revision that was pushed, so a record a later
//! checkpoint changed again is pushed again.

use super::keys::{self, NamespaceId, SketchKey, KIND_ORG_NAME, KIND_PRESENCE};
use super::memtable::OriginRecord;
use super::{decode_u64, Store};
use crate::error::{Error, Result};

impl Store {
    /// The value of a namespace-free record key (see `replication`), if stored.
    pub fn record_value(&self, ns: NamespaceId, record: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = keys::key_of_record(ns, record);
        let value = match SketchKey::decode(&key) {
            // A day may be in its day group (see `groups`).
            Some(day) if day.block.level == 0 => self.day_bytes(&day)?,
            _ => self.data.get(key)?,
        };
        Ok(value.map(|v| v.to_vec()))
    }

    /// Every replicable record of one namespace: day sketches (those in
    /// day groups first), counters, presence, names and table versions,
    /// as (record key, value).
    pub fn records(
        &self,
        ns: NamespaceId,
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec)>> + '_ {
        let grouped = self.grouped_days(ns).map(|day| {
            let (key, value) = day?;
            Ok((keys::record_of(&key.encode()), value))
        });
        let keyed = [
            keys::KIND_SKETCH,
            keys::KIND_COUNTER,
            KIND_PRESENCE,
            KIND_ORG_NAME,
            keys::KIND_TABLES,
        ]
        .into_iter()
        .flat_map(move |kind| {
            let mut prefix = vec![kind];
            prefix.extend_from_slice(&ns.to_be_bytes());
            self.data.scan_prefix(prefix)
        })
        .filter_map(|item| match item {
            // Rollup blocks are derived: only days are replicated.
            Ok((k, _)) if SketchKey::encoded_level(&k).is_some_and(|level| level > 0) => None,
            Ok((k, v)) => Some(Ok((keys::record_of(&k), v))),
            Err(e) => Some(Err(e.into())),
        });
        grouped.chain(keyed)
    }

    /// The change log: (namespace, record key, revision) of every record
    /// changed since the upstream last acknowledged it.
    pub fn changes(&self) -> impl Iterator<Item = Result<(NamespaceId, Vec<u8>, u64)>> + '_ {
        self.data.scan_prefix([keys::KIND_CHANGE]).map(|item| {
            let (k, v) = item?;
            if k.len() < 7 {
                return Err(Error::Corrupt("change-log key".into()));
            }
            let ns = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
            Ok((ns, k[5..].to_vec(), decode_u64(&v)?))
        })
    }

    /// Number of change-log entries.
    pub fn pending_changes(&self) -> usize {
        self.data.scan_prefix([keys::KIND_CHANGE]).count()
    }

    /// Marks records as changed at `revision`, so the next push sends them.
    pub fn mark_changed(&self, ns: NamespaceId, records: &[Vec<u8>], revision: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(keys::change_key(ns, record), &revision.to_le_bytes()[..]);
        }
        self.data.apply_batch(batch)?;
        Ok(())
    }

    /// Removes change-log entries the upstream acknowledged, unless a
    /// later checkpoint changed the record again, and records the
    /// acknowledged revision.
    pub fn clear_changes(
        &self,
        pushed: &[(NamespaceId, Vec<u8>, u64)],
        acked: u64,
        at: i64,
    ) -> Result<()> {
        for (ns, record, revision) in pushed {
            let key = keys::change_key(*ns, record);
            // Fails harmlessly when the entry now holds a newer revision.
            let _ = self.data.compare_and_swap(
                key,
                Some(&revision.to_le_bytes()[..]),
                None::<&[u8]>,
            )?;
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&acked.to_le_bytes());
        value[8..].copy_from_slice(&at.to_le_bytes());
        self.data.insert(keys::META_UPSTREAM_ACKED, &value[..])?;
        self.db.flush()?;
        Ok(())
    }

    /// The revision the upstream acknowledged last, and when.
    pub fn upstream_acked(&self) -> Result<(u64, i64)> {
        Ok(match self.data.get(keys::META_UPSTREAM_ACKED)? {
            Some(v) if v.len() == 16 => (
                decode_u64(&v[..8])?,
                i64::from_le_bytes(v[8..].try_into().unwrap_or_default()),
            ),
            _ => (0, 0),
        })
    }

    /// What this server holds of one record from one region.
    pub fn origin_record(
        &self,
        ns: NamespaceId,
        region: &str,
        record: &[u8],
    ) -> Result<Option<OriginRecord>> {
        let mut k = keys::origin_prefix(ns, region);
        k.extend_from_slice(record);
        match self.data.get(k)? {
            Some(v) => Ok(Some(
                OriginRecord::decode(&v).ok_or_else(|| Error::Corrupt("origin record".into()))?,
            )),
            None => Ok(None),
        }
    }

    /// Every record held from one region: (record key, what is held).
    pub fn origin_records(
        &self,
        ns: NamespaceId,
        region: &str,
    ) -> impl Iterator<Item = Result<(Vec<u8>, OriginRecord)>> + '_ {
        let prefix = keys::origin_prefix(ns, region);
        let skip = prefix.len();
        self.data.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let origin =
                OriginRecord::decode(&v).ok_or_else(|| Error::Corrupt("origin record".into()))?;
            Ok((k[skip..].to_vec(), origin))
        })
    }
}
