//! The batch ids applied so far, and what each batch carried.
//!
//! A batch is applied once per (namespace, collector, sequence)
//! ([`DedupeKey`]). With each id the server keeps a digest of the rows the
//! batch carried ([`rows_digest`]: xxh3 over its columns as the collector
//! sent them, before attribution, so a table reload between a send and its
//! retry changes nothing). A repeat of an id is then either the same batch
//! again (a retry: acknowledged as a duplicate, not applied again) or a
//! different batch that reuses the id, which is refused with
//! [`Error::SequenceReused`] instead of being dropped. Ids stored before
//! digests were kept have none; a repeat of one is taken for a duplicate,
//! as it was then.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3;

use super::ObservationBatch;
use crate::error::{Error, Result};
use crate::store::keys::{BatchId, DedupeKey};

/// The digest of a batch's rows: xxh3 over every column, each
/// length-prefixed. Namespace, collector and sequence are not in it.
pub fn rows_digest(batch: &ObservationBatch) -> u64 {
    let mut h = Xxh3::new();
    h.update(b"sketchd rows v1");
    column(&mut h, &batch.ipv4, u32::to_le_bytes);
    column(&mut h, &batch.ipv6, |b| [b]);
    column(&mut h, &batch.unix_seconds, i64::to_le_bytes);
    for (dict, index) in [
        (&batch.org_dict, &batch.org_index),
        (&batch.country_dict, &batch.country_index),
    ] {
        h.update(&(dict.len() as u64).to_le_bytes());
        for entry in dict {
            column(&mut h, entry.as_bytes(), |b| [b]);
        }
        column(&mut h, index, u32::to_le_bytes);
    }
    h.digest()
}

/// Hashes the length of `items` in bytes, then their bytes, through a
/// stack buffer (no copy of the column).
fn column<T: Copy, const N: usize>(h: &mut Xxh3, items: &[T], bytes: fn(T) -> [u8; N]) {
    h.update(&((items.len() * N) as u64).to_le_bytes());
    let mut buf = [0u8; 4096];
    for chunk in items.chunks(buf.len() / N) {
        for (i, &item) in chunk.iter().enumerate() {
            buf[i * N..(i + 1) * N].copy_from_slice(&bytes(item));
        }
        h.update(&buf[..chunk.len() * N]);
    }
}

/// Every batch id applied, with its digest.
#[derive(Debug, Default)]
pub struct AppliedBatches {
    ids: HashMap<DedupeKey, Option<u64>>,
}

impl AppliedBatches {
    /// Whether `id` was applied before: `Ok(false)` if not, `Ok(true)` if
    /// with the same rows (or rows of unknown digest), and
    /// [`Error::SequenceReused`] if with other rows.
    pub fn contains(&self, id: &BatchId) -> Result<bool> {
        match self.ids.get(&id.key) {
            None => Ok(false),
            Some(Some(stored)) if id.digest.is_some_and(|d| d != *stored) => {
                Err(Error::SequenceReused {
                    collector: id.key.collector.clone(),
                    sequence: id.key.sequence,
                })
            }
            Some(_) => Ok(true),
        }
    }

    /// Records `id` as applied (keeping a digest already known).
    pub fn insert(&mut self, id: BatchId) {
        let digest = self.ids.entry(id.key).or_insert(id.digest);
        if digest.is_none() {
            *digest = id.digest;
        }
    }

    /// Forgets `id` (its batch was logged but the log write was rolled
    /// back).
    pub fn remove(&mut self, id: &BatchId) {
        self.ids.remove(&id.key);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl FromIterator<BatchId> for AppliedBatches {
    fn from_iter<I: IntoIterator<Item = BatchId>>(ids: I) -> Self {
        let mut applied = AppliedBatches::default();
        for id in ids {
            applied.insert(id);
        }
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sequence: u64, digest: Option<u64>) -> BatchId {
        BatchId {
            key: DedupeKey {
                ns: 1,
                collector: "c".into(),
                sequence,
            },
            digest,
        }
    }

    #[test]
    fn a_reused_id_with_other_rows_is_refused_and_a_repeat_is_a_duplicate() {
        let mut applied: AppliedBatches = [id(1, Some(10)), id(2, None)].into_iter().collect();
        assert!(!applied.contains(&id(3, Some(10))).unwrap());
        assert!(applied.contains(&id(1, Some(10))).unwrap());
        assert!(matches!(
            applied.contains(&id(1, Some(11))),
            Err(Error::SequenceReused { sequence: 1, .. })
        ));
        // Records without a digest (older servers) accept any repeat ...
        assert!(applied.contains(&id(2, Some(99))).unwrap());
        // ... until a digest is known.
        applied.insert(id(2, Some(20)));
        assert!(applied.contains(&id(2, Some(99))).is_err());
        assert_eq!(applied.len(), 2);
    }

    #[test]
    fn the_digest_covers_every_column_and_not_the_id() {
        let base = ObservationBatch {
            namespace: "ns".into(),
            collector: "c".into(),
            sequence: 1,
            ipv4: vec![1, 2],
            ipv6: vec![0; 16],
            unix_seconds: vec![5, 6, 7],
            org_dict: vec!["AS1".into()],
            org_index: vec![1, 0, 1],
            country_dict: vec!["DE".into()],
            country_index: vec![1, 1, 0],
        };
        let digest = rows_digest(&base);
        let renamed = ObservationBatch {
            namespace: "other".into(),
            collector: "d".into(),
            sequence: 9,
            ..base.clone()
        };
        assert_eq!(rows_digest(&renamed), digest);
        let changes: [fn(&mut ObservationBatch); 7] = [
            |b| b.ipv4[1] = 3,
            |b| b.ipv6[15] = 1,
            |b| b.unix_seconds[2] = 8,
            |b| b.org_dict[0] = "AS2".into(),
            |b| b.org_index[1] = 1,
            |b| b.country_dict[0] = "FR".into(),
            |b| b.country_index[2] = 1,
        ];
        for change in changes {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(rows_digest(&other), digest, "{other:?}");
        }
    }
}
