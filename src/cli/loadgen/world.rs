//! The peers' world file (`PEEROBS1`) and its encoding into columnar
//! `IngestRequest`s: positioned reads of 14-byte records (the file is never
//! loaded whole), per-batch dictionaries of orgs and countries.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustc_hash::FxHashMap;

use sketchd::pb;

pub(super) const MAGIC: &[u8; 8] = b"PEEROBS1";
pub(super) const HEADER_LEN: u64 = 32;
pub(super) const RECORD_LEN: usize = 14;

/// An open world file; records are read with positioned reads.
pub(super) struct World {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) records: u64,
    pub(super) t0: u32,
    pub(super) days: u32,
}

impl World {
    pub(super) fn open(path: &Path) -> anyhow::Result<World> {
        let name = path.display();
        let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .with_context(|| format!("{name}: shorter than the 32-byte header"))?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4"));
        if &header[..8] != MAGIC || u32_at(8) != 1 || u32_at(12) as usize != RECORD_LEN {
            bail!("{name}: not a PEEROBS1 version 1 file with 14-byte records");
        }
        let records = u64::from_le_bytes(header[16..24].try_into().expect("8"));
        let len = file.metadata()?.len();
        if len < HEADER_LEN + records * RECORD_LEN as u64 {
            bail!("{name}: header promises {records} records but the file has {len} bytes");
        }
        Ok(World {
            path: path.to_owned(),
            file,
            records,
            t0: u32_at(24),
            days: u32_at(28),
        })
    }

    /// Reads records `[first, first + rows)` into `buf`.
    pub(super) fn read(&self, first: u64, rows: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.resize(rows * RECORD_LEN, 0);
        self.file
            .read_exact_at(buf, HEADER_LEN + first * RECORD_LEN as u64)
    }
}

/// Per-batch dictionary codes (1-based) of small integer keys. Dense slots
/// stamped with a batch generation make the reset between batches O(1).
#[derive(Default)]
pub(super) struct Codes {
    pub(super) slots: Vec<(u32, u32)>,
    pub(super) spill: FxHashMap<u32, u32>,
    pub(super) generation: u32,
    pub(super) next: u32,
}

impl Codes {
    /// Keys below this use the dense slots (org ids are 1..n_orgs).
    pub(super) const DENSE: u32 = 1 << 22;

    pub(super) fn reset(&mut self) {
        self.generation += 1;
        self.next = 0;
        self.spill.clear();
    }

    /// The key's code and whether it is new in this batch.
    #[inline]
    pub(super) fn code(&mut self, key: u32) -> (u32, bool) {
        if key < Self::DENSE {
            let k = key as usize;
            if k >= self.slots.len() {
                self.slots.resize(k + 1, (0, 0));
            }
            let slot = &mut self.slots[k];
            if slot.0 == self.generation {
                return (slot.1, false);
            }
            self.next += 1;
            *slot = (self.generation, self.next);
            (self.next, true)
        } else {
            let next = self.next + 1;
            let code = *self.spill.entry(key).or_insert(next);
            let new = code == next;
            if new {
                self.next = next;
            }
            (code, new)
        }
    }
}

/// Turns chunks of records into columnar requests.
#[derive(Default)]
pub(super) struct Encoder {
    pub(super) raw: Vec<u8>,
    pub(super) orgs: Codes,
    pub(super) countries: Codes,
}

impl Encoder {
    pub(super) fn encode(
        &mut self,
        world: &World,
        first: u64,
        rows: usize,
        namespace: &str,
        collector: &str,
        sequence: u64,
    ) -> anyhow::Result<pb::IngestRequest> {
        world
            .read(first, rows, &mut self.raw)
            .with_context(|| format!("{}: reading record {first}", world.path.display()))?;
        self.orgs.reset();
        self.countries.reset();
        let mut req = pb::IngestRequest {
            namespace: namespace.to_owned(),
            collector_id: collector.to_owned(),
            sequence,
            ipv4: Vec::with_capacity(rows),
            ipv6: Vec::new(),
            unix_seconds: Vec::with_capacity(rows),
            org_dict: Vec::new(),
            org_index: Vec::with_capacity(rows),
            country_dict: Vec::new(),
            country_index: Vec::with_capacity(rows),
        };
        for rec in self.raw.chunks_exact(RECORD_LEN) {
            let word = |at: usize| u32::from_le_bytes(rec[at..at + 4].try_into().expect("4"));
            req.unix_seconds.push(i64::from(word(0)));
            // Host-order integer: 1.2.3.4 = 0x01020304, as the proto wants.
            req.ipv4.push(word(4));
            let org = word(8);
            req.org_index.push(if org == 0 {
                0
            } else {
                let (code, new) = self.orgs.code(org);
                if new {
                    req.org_dict.push(org.to_string());
                }
                code
            });
            let (code, new) = self
                .countries
                .code(u32::from(u16::from_le_bytes([rec[12], rec[13]])));
            if new {
                req.country_dict
                    .push(String::from_utf8_lossy(&rec[12..14]).into_owned());
            }
            req.country_index.push(code);
        }
        if req.org_dict.is_empty() {
            req.org_index.clear();
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reset_per_batch() {
        let mut c = Codes::default();
        c.reset();
        assert_eq!(c.code(7), (1, true));
        assert_eq!(c.code(3), (2, true));
        assert_eq!(c.code(7), (1, false));
        assert_eq!(c.code(u32::MAX), (3, true));
        assert_eq!(c.code(u32::MAX), (3, false));
        c.reset();
        assert_eq!(c.code(3), (1, true));
        assert_eq!(c.code(u32::MAX), (2, true));
    }

    #[test]
    fn world_chunks_encode_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obs.bin");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        for v in [1u32, 14] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&1_711_929_600u32.to_le_bytes());
        bytes.extend_from_slice(&244u32.to_le_bytes());
        for (ts, ip, org, cc) in [
            (1_711_929_600u32, 0x0102_0304u32, 12u32, b"DE"),
            (1_711_929_601, 0x0506_0708, 7, b"US"),
            (1_711_929_602, 0x0102_0304, 12, b"DE"),
        ] {
            bytes.extend_from_slice(&ts.to_le_bytes());
            bytes.extend_from_slice(&ip.to_le_bytes());
            bytes.extend_from_slice(&org.to_le_bytes());
            bytes.extend_from_slice(cc);
        }
        std::fs::write(&path, bytes).unwrap();
        let world = World::open(&path).unwrap();
        assert_eq!((world.records, world.days), (3, 244));
        let req = Encoder::default()
            .encode(&world, 1, 2, "ns", "c", 9)
            .unwrap();
        assert_eq!(req.ipv4, vec![0x0506_0708, 0x0102_0304]);
        assert_eq!(req.unix_seconds, vec![1_711_929_601, 1_711_929_602]);
        assert_eq!(req.org_dict, vec!["7".to_owned(), "12".to_owned()]);
        assert_eq!(req.org_index, vec![1, 2]);
        assert_eq!(req.country_dict, vec!["US".to_owned(), "DE".to_owned()]);
        assert_eq!(req.country_index, vec![1, 2]);
        assert_eq!(req.sequence, 9);
    }
}
