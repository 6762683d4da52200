//! The envelope version of the sketches a store holds, and the rewrite,
//! once, of a store written with an older one.
//!
//! [`keys::META_SKETCH_FORMAT`] records the envelope format version
//! ([`FORMAT_VERSION`]) every stored sketch value is written in. A store
//! with an older one (3: dense registers as zstd frames; 2: exact hashes
//! of 8 bytes as well) or without it (written before format 2: dense
//! registers packed, 12 KiB at precision 14) has
//! each sketch value and each day group re-encoded at open, in sled
//! batches; the record is written after the last one. Reads never depend
//! on it: every version is decoded, so a rewrite cut short by a crash
//! leaves a store that answers the same, and the next open finishes it (a
//! value already in the new format encodes to itself and is not written
//! again). Invariant: with the record present, every stored sketch value
//! and every day of a group is its sketch's canonical encoding in
//! [`FORMAT_VERSION`].

use super::groups::GroupEdit;
use super::keys;
use crate::error::{Error, Result};
use crate::sketch::{Sketch, FORMAT_VERSION};

/// Values re-encoded per sled batch.
const CHUNK: usize = 4_096;

/// What an upgrade did (it is logged).
#[derive(Default)]
struct FormatUpgrade {
    /// Sketch values read.
    sketches: u64,
    /// Day group values read.
    groups: u64,
    /// Of both, values rewritten.
    rewritten: u64,
    /// Bytes of the rewritten values before and after.
    bytes_before: u64,
    bytes_after: u64,
}

/// Brings every stored sketch value to [`FORMAT_VERSION`] unless
/// [`keys::META_SKETCH_FORMAT`] says it is there, and logs what it did.
pub(super) fn upgrade_sketch_format(db: &sled::Db, data: &sled::Tree) -> Result<()> {
    let current = [FORMAT_VERSION];
    match data.get(keys::META_SKETCH_FORMAT)? {
        Some(v) if v[..] == current => return Ok(()),
        Some(v) if v.len() == 1 && v[0] < FORMAT_VERSION => {}
        Some(v) => {
            return Err(Error::Incompatible(format!(
                "the data directory's sketches are in envelope format {:?}; this build writes \
                 format {FORMAT_VERSION} and reads formats up to it",
                &v[..]
            )))
        }
        None => {}
    }
    let started = std::time::Instant::now();
    let mut done = FormatUpgrade::default();
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    // Queues `new` for `key` unless it is `old` again.
    let mut put = |key: sled::IVec, old: &[u8], new: &[u8], done: &mut FormatUpgrade| {
        if new == old {
            return Ok::<_, Error>(());
        }
        done.rewritten += 1;
        done.bytes_before += old.len() as u64;
        done.bytes_after += new.len() as u64;
        batch.insert(key, new);
        pending += 1;
        if pending == CHUNK {
            data.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
        Ok(())
    };
    for item in data.scan_prefix([keys::KIND_SKETCH]) {
        let (key, old) = item?;
        done.sketches += 1;
        let sketch = Sketch::decode(&old).map_err(|e| {
            Error::Corrupt(format!(
                "sketch {:?} while upgrading its format: {e}",
                keys::SketchKey::decode(&key)
            ))
        })?;
        put(key, &old, &sketch.encode(), &mut done)?;
    }
    for item in data.scan_prefix([keys::KIND_DAY_GROUP]) {
        let (key, old) = item?;
        done.groups += 1;
        let group = GroupEdit::parse(&old).map_err(|e| {
            Error::Corrupt(format!(
                "day group {:?} while upgrading its format: {e}",
                keys::GroupKey::decode(&key)
            ))
        })?;
        // A group is never stored empty: it encodes to a value.
        if let Some(new) = group.encode() {
            put(key, &old, &new, &mut done)?;
        }
    }
    data.apply_batch(batch)?;
    data.insert(keys::META_SKETCH_FORMAT, &current[..])?;
    db.flush()?;
    if done.sketches + done.groups > 0 {
        tracing::info!(
            sketches = done.sketches,
            groups = done.groups,
            rewritten = done.rewritten,
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            seconds = started.elapsed().as_secs_f64(),
            "stored sketches rewritten in envelope format {FORMAT_VERSION}"
        );
    }
    Ok(())
}
