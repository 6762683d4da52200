//! The log payload of a [`PreparedBatch`].
//!
//! Little-endian, version byte first:
//! `3 | ns u32 | collector (u16 len, bytes) | sequence u64 | digest u64 |
//!  n4 u32, n4 x u32 | n6 u32, n6 x 16 bytes | rows x day u32 |
//!  orgs u32, orgs x (id, sectors u16, sectors x label) | rows x org u32 |
//!  rows x country 2 bytes | attributed u64 | unattributed u64 | tables version`,
//! strings as (u16 len, bytes). Version 1 records (written before the
//! digest of the rows was kept) have no digest and still decode. Version 2
//! is taken: the log's merge records (`replication::LOG_VERSION`).
//! Decoding checks every length and reference, so a damaged record is an
//! error, never a panic or a wrong count.

use super::PreparedBatch;
use crate::error::{Error, Result};

const VERSION: u8 = 3;
/// Records without the digest.
const VERSION_NO_DIGEST: u8 = 1;

pub fn encode(batch: &PreparedBatch) -> Vec<u8> {
    let rows = batch.rows();
    let mut out = Vec::with_capacity(64 + rows * 14 + batch.ipv6.len() * 12);
    // A batch decoded from a version 1 record is written as one again.
    out.push(match batch.digest {
        Some(_) => VERSION,
        None => VERSION_NO_DIGEST,
    });
    out.extend_from_slice(&batch.ns.to_le_bytes());
    put_str(&mut out, &batch.collector);
    out.extend_from_slice(&batch.sequence.to_le_bytes());
    if let Some(digest) = batch.digest {
        out.extend_from_slice(&digest.to_le_bytes());
    }
    out.extend_from_slice(&(batch.ipv4.len() as u32).to_le_bytes());
    for ip in &batch.ipv4 {
        out.extend_from_slice(&ip.to_le_bytes());
    }
    out.extend_from_slice(&(batch.ipv6.len() as u32).to_le_bytes());
    for ip in &batch.ipv6 {
        out.extend_from_slice(ip);
    }
    for day in &batch.days {
        out.extend_from_slice(&day.to_le_bytes());
    }
    out.extend_from_slice(&(batch.orgs.len() as u32).to_le_bytes());
    for (org, sectors) in batch.orgs.iter().zip(&batch.org_sectors) {
        put_str(&mut out, org);
        out.extend_from_slice(&(sectors.len() as u16).to_le_bytes());
        for sector in sectors {
            put_str(&mut out, sector);
        }
    }
    for org in &batch.org_of_row {
        out.extend_from_slice(&org.to_le_bytes());
    }
    for country in &batch.country_of_row {
        out.extend_from_slice(country);
    }
    out.extend_from_slice(&batch.attributed.to_le_bytes());
    out.extend_from_slice(&batch.unattributed.to_le_bytes());
    put_str(&mut out, &batch.tables_version);
    out
}

pub fn decode(bytes: &[u8]) -> Result<PreparedBatch> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION && version != VERSION_NO_DIGEST {
        return Err(corrupt(format!("unknown batch record version {version}")));
    }
    let ns = r.u32()?;
    let collector = r.string()?;
    let sequence = r.u64()?;
    let digest = match version {
        VERSION => Some(r.u64()?),
        _ => None,
    };
    let n4 = r.u32()? as usize;
    let ipv4 = (0..n4).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let n6 = r.u32()? as usize;
    let ipv6 = (0..n6)
        .map(|_| r.array::<16>())
        .collect::<Result<Vec<_>>>()?;
    let rows = n4 + n6;
    let days = (0..rows).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let n_orgs = r.u32()? as usize;
    let mut orgs = Vec::with_capacity(n_orgs.min(1 << 16));
    let mut org_sectors = Vec::with_capacity(n_orgs.min(1 << 16));
    for _ in 0..n_orgs {
        orgs.push(r.string()?);
        let n = u16::from_le_bytes(r.array()?) as usize;
        org_sectors.push((0..n).map(|_| r.string()).collect::<Result<Vec<_>>>()?);
    }
    let org_of_row = (0..rows).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    if org_of_row.iter().any(|&o| o as usize >= n_orgs) {
        return Err(corrupt("org reference out of range".into()));
    }
    let country_of_row = (0..rows)
        .map(|_| r.array::<2>())
        .collect::<Result<Vec<_>>>()?;
    let attributed = r.u64()?;
    let unattributed = r.u64()?;
    let tables_version = r.string()?;
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes".into()));
    }
    Ok(PreparedBatch {
        ns,
        collector,
        sequence,
        digest,
        ipv4,
        ipv6,
        days,
        orgs,
        org_sectors,
        org_of_row,
        country_of_row,
        attributed,
        unattributed,
        tables_version,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Collector and org ids are validated to far below 64 KiB.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(format!("batch record: {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("truncated".into()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| corrupt("string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PreparedBatch {
        PreparedBatch {
            ns: 3,
            collector: "c-1".into(),
            sequence: 42,
            digest: Some(0x0123_4567_89ab_cdef),
            ipv4: vec![0x0101_0101, 0x0808_0808],
            ipv6: vec![[0x20; 16]],
            days: vec![20_000, 20_001, 20_002],
            orgs: vec!["unattributed".into(), "AS15169".into()],
            org_sectors: vec![vec![], vec!["cloud".into(), "search".into()]],
            org_of_row: vec![1, 0, 1],
            country_of_row: vec![*b"US", *b"ZZ", *b"DE"],
            attributed: 1,
            unattributed: 1,
            tables_version: "t-0123".into(),
        }
    }

    #[test]
    fn round_trips() {
        let b = sample();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn records_without_a_digest_still_decode() {
        let b = sample();
        let mut old = encode(&b);
        assert_eq!(old[0], VERSION);
        // The version 1 layout: no digest after the sequence.
        old[0] = VERSION_NO_DIGEST;
        let at = 1 + 4 + 2 + "c-1".len() + 8;
        old.drain(at..at + 8);
        let decoded = decode(&old).unwrap();
        let without = PreparedBatch { digest: None, ..b };
        assert_eq!(decoded, without);
        assert_eq!(encode(&without), old);
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn org_reference_out_of_range_is_an_error() {
        let mut b = sample();
        b.org_of_row[0] = 2;
        assert!(decode(&encode(&b)).is_err());
    }
}
