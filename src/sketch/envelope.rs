//! The versioned byte envelope (format in the module documentation of
//! [`crate::sketch`]): canonical encoding, and decoding that validates every
//! byte (lengths, ranges, sortedness, checksum) before anything is built.
//! Dense registers are written Rice-coded (layout 4, `rice`) below half
//! load, else zstd-compressed (layout 3), either only when smaller than
//! packing them (layout 2); exact hashes in 5 bytes each (formats 3 and
//! 4). Envelopes of format versions 1 and 2 (hash id 1: exact hashes of 8
//! bytes) are read as sketches of hash id 2: their exact hashes keep their
//! top 40 bits, their registers stay as they are.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::dense::max_register;
use super::exact::ExactSet;
use super::rice;
use super::{
    exact_limit, Repr, Sketch, SketchError, HASH_BITS, HASH_ID_XXH3_40, HASH_ID_XXH3_64, HASH_MASK,
    MAX_PRECISION, MIN_PRECISION,
};

/// Envelope magic bytes.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"SKHL";
/// Envelope format version written by [`Sketch::encode`]: 4 adds
/// [`LAYOUT_DENSE_RICE`] to version 3. Versions 1 to 3 are read.
pub const FORMAT_VERSION: u8 = 4;
/// The format version that keeps 40 bits of each hash (hash id 2), exact
/// hashes in 5 bytes; still read.
pub const FORMAT_VERSION_3: u8 = 3;
/// The format version that added [`LAYOUT_DENSE_ZSTD`], still read.
pub const FORMAT_VERSION_2: u8 = 2;
/// The first format version, still read.
pub const FORMAT_VERSION_1: u8 = 1;
/// Layout id of an exact payload (sorted hashes).
pub const LAYOUT_EXACT: u8 = 1;
/// Layout id of a dense payload (packed 6-bit registers).
pub const LAYOUT_DENSE: u8 = 2;
/// Layout id of a dense payload compressed: a zstd frame of the `m`
/// one-byte registers (format version 2 on).
pub const LAYOUT_DENSE_ZSTD: u8 = 3;
/// Layout id of a dense payload as its non-zero registers, Rice-coded
/// (format version 4 on; see `rice`).
pub const LAYOUT_DENSE_RICE: u8 = 4;
/// zstd level of [`LAYOUT_DENSE_ZSTD`]: level 1 compresses registers to
/// within 1 % of level 3 at a fraction of the time (measured on the peers'
/// world: 3,498 against 3,472 bytes at precision 14).
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// One compression context per thread (a context is ~1 MiB to build).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Layout 2: registers packed 6 bits each, 4 registers per 3 bytes.
fn pack_registers(regs: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(regs.len() * 3 / 4);
    for r in regs.chunks_exact(4) {
        let v =
            u32::from(r[0]) | u32::from(r[1]) << 6 | u32::from(r[2]) << 12 | u32::from(r[3]) << 18;
        payload.extend_from_slice(&v.to_le_bytes()[..3]);
    }
    payload
}

/// The inverse of [`pack_registers`] (`payload` has the packed length).
fn unpack_registers(payload: &[u8], regs: &mut [u8]) {
    for (out, packed) in regs.chunks_exact_mut(4).zip(payload.chunks_exact(3)) {
        let v = u32::from(packed[0]) | u32::from(packed[1]) << 8 | u32::from(packed[2]) << 16;
        out[0] = (v & 0x3f) as u8;
        out[1] = ((v >> 6) & 0x3f) as u8;
        out[2] = ((v >> 12) & 0x3f) as u8;
        out[3] = ((v >> 18) & 0x3f) as u8;
    }
}

/// The registers as a zstd frame, or `None` when compression fails or
/// saves nothing over packing them into `packed_len` bytes.
fn compress_registers(regs: &[u8], packed_len: usize) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
        }
        let frame = slot.as_mut()?.compress(regs).ok()?;
        (frame.len() < packed_len).then_some(frame)
    })
}

/// Decompresses a [`LAYOUT_DENSE_ZSTD`] payload into `regs`, which it must
/// fill exactly.
fn decompress_registers(payload: &[u8], regs: &mut [u8]) -> Result<(), SketchError> {
    let bad = |why: String| SketchError::BadCompression(why);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| bad(e.to_string()))?);
        }
        let d = slot.as_mut().expect("just set");
        let n = d
            .decompress_to_buffer(payload, regs)
            .map_err(|e| bad(e.to_string()))?;
        if n != regs.len() {
            return Err(bad(format!("{n} registers, expected {}", regs.len())));
        }
        Ok(())
    })
}
/// Bytes before the payload.
pub const ENVELOPE_HEADER_LEN: usize = 20;
/// Bytes after the payload (the CRC-32).
pub const ENVELOPE_TRAILER_LEN: usize = 4;

/// Length in bytes of a dense payload at `precision`.
pub(super) const fn dense_payload_len(precision: u8) -> usize {
    ((1usize << precision) * 6).div_ceil(8)
}

impl Sketch {
    /// The canonical envelope: exact hashes sorted; dense registers
    /// Rice-coded below half load, else a zstd frame, either only when
    /// smaller than packed (zstd is not tried below half load, where the
    /// Rice code is the smaller in nearly every sketch and several times
    /// faster).
    pub fn encode(&self) -> Vec<u8> {
        match &self.repr {
            Repr::Dense(regs) => {
                let packed = dense_payload_len(self.precision);
                if let Some(coded) = rice::encode(regs, self.precision) {
                    return match coded.len() < packed {
                        true => self.envelope(LAYOUT_DENSE_RICE, &coded),
                        false => self.encode_packed(),
                    };
                }
                match compress_registers(regs, packed) {
                    Some(frame) => self.envelope(LAYOUT_DENSE_ZSTD, &frame),
                    None => self.encode_packed(),
                }
            }
            Repr::Exact(set) => {
                let mut hashes: Vec<u64> = set.iter().copied().collect();
                hashes.sort_unstable();
                let mut payload = Vec::with_capacity(hashes.len() * HASH_WIDTH);
                for h in hashes {
                    payload.extend_from_slice(&(h >> (64 - HASH_BITS)).to_le_bytes()[..HASH_WIDTH]);
                }
                self.envelope(LAYOUT_EXACT, &payload)
            }
        }
    }

    /// The envelope with dense registers packed 6 bits each (layout 2);
    /// an exact sketch encodes as [`Sketch::encode`].
    pub fn encode_packed(&self) -> Vec<u8> {
        let Repr::Dense(regs) = &self.repr else {
            return self.encode();
        };
        self.envelope(LAYOUT_DENSE, &pack_registers(regs))
    }

    /// Header, payload and checksum.
    fn envelope(&self, layout: u8, payload: &[u8]) -> Vec<u8> {
        let header = ExactHeader {
            hash_id: self.hash_id,
            seed_fingerprint: self.seed_fingerprint,
            precision: self.precision,
        };
        write_envelope(header, layout, payload)
    }

    /// Decodes and fully validates an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Sketch, SketchError> {
        Sketch::from_envelope(Envelope::parse(bytes)?)
    }

    /// Decodes an exact sketch given as its header and payload (see
    /// [`split_exact`]): the same as decoding [`join_exact`]`(header,
    /// payload)`, with the same checks, without building the envelope.
    pub fn decode_exact(header: ExactHeader, payload: &[u8]) -> Result<Sketch, SketchError> {
        Sketch::from_envelope(Envelope::exact(header, payload)?)
    }

    /// The sketch of a parsed envelope (dense registers are checked here).
    fn from_envelope(envelope: Envelope) -> Result<Sketch, SketchError> {
        let Envelope {
            seed_fingerprint,
            precision,
            layout,
            width,
            payload,
        } = envelope;
        let repr = if layout == LAYOUT_EXACT {
            let mut set =
                ExactSet::with_capacity_and_hasher(payload.len() / width, Default::default());
            set.extend(envelope.exact_hashes());
            Repr::Exact(set)
        } else {
            let max = max_register(precision);
            let mut regs = vec![0u8; 1usize << precision].into_boxed_slice();
            match layout {
                LAYOUT_DENSE_ZSTD => decompress_registers(payload, &mut regs)?,
                LAYOUT_DENSE_RICE => rice::decode(payload, &mut regs, max)?,
                _ => unpack_registers(payload, &mut regs),
            }
            // Branch-free scan first (vectorises), locate the culprit only
            // on failure.
            if regs.iter().fold(0u8, |acc, &r| acc.max(r)) > max {
                let index = regs.iter().position(|&r| r > max).unwrap_or(0);
                return Err(SketchError::BadRegister {
                    index,
                    value: regs[index],
                });
            }
            Repr::Dense(regs)
        };
        Ok(Sketch {
            precision,
            hash_id: HASH_ID_XXH3_40,
            seed_fingerprint,
            repr,
            cache: OnceLock::new(),
        })
    }

    /// Merges an encoded sketch into `self`: the same as merging
    /// [`Sketch::decode`]`(bytes)`, with the same validation, but an exact
    /// payload's hashes go straight into `self` without building a set
    /// first (a window over a flat series merges many small days). `self`
    /// is unchanged on error.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        self.merge_envelope(Envelope::parse(bytes)?)
    }

    /// Merges an exact sketch given as its header and payload (see
    /// [`split_exact`]): the same as merging [`join_exact`]`(header,
    /// payload)`, with the same checks; `self` is unchanged on error.
    pub fn merge_exact(&mut self, header: ExactHeader, payload: &[u8]) -> Result<(), SketchError> {
        self.merge_envelope(Envelope::exact(header, payload)?)
    }

    fn merge_envelope(&mut self, envelope: Envelope) -> Result<(), SketchError> {
        if envelope.layout != LAYOUT_EXACT {
            return self.merge(&Sketch::from_envelope(envelope)?);
        }
        self.check_header(
            HASH_ID_XXH3_40,
            envelope.seed_fingerprint,
            envelope.precision,
        )?;
        // Room for the incoming hashes up front: no rehash midway.
        self.reserve(envelope.payload.len() / envelope.width);
        for hash in envelope.exact_hashes() {
            self.insert_hash(hash);
        }
        Ok(())
    }
}

/// The fields of an envelope besides its layout and payload: what a value
/// holding many exact sketches of one namespace stores once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExactHeader {
    pub hash_id: u8,
    pub seed_fingerprint: u64,
    pub precision: u8,
}

impl ExactHeader {
    /// Bytes of [`ExactHeader::to_bytes`].
    pub const LEN: usize = 10;

    /// Hash id, seed fingerprint (little-endian) and precision.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = self.hash_id;
        out[1..9].copy_from_slice(&self.seed_fingerprint.to_le_bytes());
        out[9] = self.precision;
        out
    }

    /// Bytes a hash takes in an exact payload of this header: 5 for hash
    /// id 2 (its top 40 bits, little-endian), 8 for hash id 1 (the whole
    /// xxh3-64, little-endian); `None` for an unknown id.
    pub fn hash_width(&self) -> Option<usize> {
        match self.hash_id {
            HASH_ID_XXH3_40 => Some(HASH_WIDTH),
            HASH_ID_XXH3_64 => Some(8),
            _ => None,
        }
    }

    /// The inverse of [`ExactHeader::to_bytes`] (checked when used).
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> ExactHeader {
        ExactHeader {
            hash_id: bytes[0],
            seed_fingerprint: u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes")),
            precision: bytes[9],
        }
    }
}

/// An exact envelope of the current format version as its header and
/// payload (its hashes, [`ExactHeader::hash_width`] bytes each, increasing);
/// `None` for any other bytes. [`join_exact`] gives the same envelope back.
pub fn split_exact(bytes: &[u8]) -> Option<(ExactHeader, &[u8])> {
    let envelope = Envelope::parse(bytes).ok()?;
    (envelope.layout == LAYOUT_EXACT && bytes[4] == FORMAT_VERSION).then_some((
        ExactHeader {
            hash_id: HASH_ID_XXH3_40,
            seed_fingerprint: envelope.seed_fingerprint,
            precision: envelope.precision,
        },
        envelope.payload,
    ))
}

/// The envelope of an exact sketch given as its header and payload,
/// checked as decoding checks it (of format 2 for hash id 1's payloads).
pub fn join_exact(header: ExactHeader, payload: &[u8]) -> Result<Vec<u8>, SketchError> {
    Envelope::exact(header, payload)?;
    Ok(write_envelope(header, LAYOUT_EXACT, payload))
}

/// Bytes of each hash of an exact payload written by this build.
const HASH_WIDTH: usize = HASH_BITS as usize / 8;

/// The envelope bytes: header, payload, checksum; the current format, or 2
/// for hash id 1 (exact payloads of a group written before format 3).
fn write_envelope(header: ExactHeader, layout: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + payload.len() + ENVELOPE_TRAILER_LEN);
    out.extend_from_slice(&ENVELOPE_MAGIC);
    out.push(if header.hash_id == HASH_ID_XXH3_64 {
        FORMAT_VERSION_2
    } else {
        FORMAT_VERSION
    });
    out.push(header.hash_id);
    out.extend_from_slice(&header.seed_fingerprint.to_le_bytes());
    out.push(header.precision);
    out.push(layout);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// An exact payload's length: whole hashes of `width` bytes, at most the
/// exact limit.
fn check_exact_len(precision: u8, payload_len: usize, width: usize) -> Result<(), SketchError> {
    if !payload_len.is_multiple_of(width) {
        return Err(SketchError::LengthMismatch {
            layout: LAYOUT_EXACT,
            expected: payload_len / width * width,
            actual: payload_len,
        });
    }
    if payload_len > exact_limit(precision) * width {
        return Err(SketchError::TooManyExact);
    }
    Ok(())
}

/// A validated envelope: header fields and payload. An exact payload's
/// hashes are known to be strictly increasing; a dense payload has the
/// right length (its registers are checked when unpacked). It decodes to
/// a sketch of [`HASH_ID_XXH3_40`], whatever its hash id; `width` is the
/// bytes of each exact hash as stored.
#[derive(Clone, Copy)]
pub(super) struct Envelope<'a> {
    seed_fingerprint: u64,
    precision: u8,
    layout: u8,
    width: usize,
    payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// An exact envelope from its parts, checked as [`Envelope::parse`]
    /// checks one.
    fn exact(header: ExactHeader, payload: &'a [u8]) -> Result<Envelope<'a>, SketchError> {
        let ExactHeader {
            hash_id,
            seed_fingerprint,
            precision,
        } = header;
        let width = header
            .hash_width()
            .ok_or(SketchError::UnknownHashId(hash_id))?;
        if !(MIN_PRECISION..=MAX_PRECISION).contains(&precision) {
            return Err(SketchError::BadPrecision(precision));
        }
        check_exact_len(precision, payload.len(), width)?;
        let envelope = Envelope {
            seed_fingerprint,
            precision,
            layout: LAYOUT_EXACT,
            width,
            payload,
        };
        envelope.check_increasing()?;
        Ok(envelope)
    }

    fn check_increasing(&self) -> Result<(), SketchError> {
        let mut prev: Option<u64> = None;
        for h in self.stored_hashes() {
            if prev.is_some_and(|p| h <= p) {
                return Err(SketchError::UnsortedExact);
            }
            prev = Some(h);
        }
        Ok(())
    }

    /// The exact payload's values as stored (increasing).
    fn stored_hashes(&self) -> impl Iterator<Item = u64> + 'a {
        let wide = self.width == 8;
        self.payload.chunks_exact(self.width).map(move |c| {
            if wide {
                u64::from_le_bytes(c.try_into().expect("8 bytes"))
            } else {
                u64::from(u32::from_le_bytes(c[..4].try_into().expect("4 bytes")))
                    | u64::from(c[4]) << 32
            }
        })
    }

    /// The exact payload's element hashes: 40-bit values shifted into
    /// place, 64-bit ones (hash id 1) cut to [`HASH_MASK`] (two of them may
    /// then be equal).
    fn exact_hashes(&self) -> impl Iterator<Item = u64> + 'a {
        let shift = if self.width == 8 { 0 } else { 64 - HASH_BITS };
        self.stored_hashes().map(move |h| (h << shift) & HASH_MASK)
    }

    fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, SketchError> {
        if bytes.len() < ENVELOPE_HEADER_LEN + ENVELOPE_TRAILER_LEN {
            // A foreign short buffer is still better reported as bad magic.
            if bytes.len() >= 4 && bytes[..4] != ENVELOPE_MAGIC {
                return Err(SketchError::BadMagic);
            }
            return Err(SketchError::Truncated);
        }
        if bytes[..4] != ENVELOPE_MAGIC {
            return Err(SketchError::BadMagic);
        }
        let version = bytes[4];
        let (written_hash_id, width) = match version {
            FORMAT_VERSION | FORMAT_VERSION_3 => (HASH_ID_XXH3_40, HASH_WIDTH),
            FORMAT_VERSION_1 | FORMAT_VERSION_2 => (HASH_ID_XXH3_64, 8),
            _ => return Err(SketchError::UnsupportedVersion(version)),
        };
        let hash_id = bytes[5];
        if hash_id != written_hash_id {
            return Err(SketchError::UnknownHashId(hash_id));
        }
        let seed_fingerprint = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
        let precision = bytes[14];
        if !(MIN_PRECISION..=MAX_PRECISION).contains(&precision) {
            return Err(SketchError::BadPrecision(precision));
        }
        let layout = bytes[15];
        let known = match version {
            FORMAT_VERSION_1 => [LAYOUT_EXACT, LAYOUT_DENSE].contains(&layout),
            FORMAT_VERSION_2 | FORMAT_VERSION_3 => {
                [LAYOUT_EXACT, LAYOUT_DENSE, LAYOUT_DENSE_ZSTD].contains(&layout)
            }
            _ => [
                LAYOUT_EXACT,
                LAYOUT_DENSE,
                LAYOUT_DENSE_ZSTD,
                LAYOUT_DENSE_RICE,
            ]
            .contains(&layout),
        };
        if !known {
            return Err(SketchError::UnknownLayout(layout));
        }
        let payload_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as u64;
        let total = ENVELOPE_HEADER_LEN as u64 + payload_len + ENVELOPE_TRAILER_LEN as u64;
        if (bytes.len() as u64) < total {
            return Err(SketchError::Truncated);
        }
        if bytes.len() as u64 > total {
            return Err(SketchError::TrailingBytes);
        }
        let payload_len = payload_len as usize;
        match layout {
            LAYOUT_EXACT => check_exact_len(precision, payload_len, width)?,
            LAYOUT_DENSE_ZSTD | LAYOUT_DENSE_RICE => {
                // Smaller than packed, or it would have been written packed.
                let packed = dense_payload_len(precision);
                if payload_len >= packed {
                    return Err(SketchError::LengthMismatch {
                        layout,
                        expected: packed - 1,
                        actual: payload_len,
                    });
                }
            }
            _ => {
                let expected = dense_payload_len(precision);
                if payload_len != expected {
                    return Err(SketchError::LengthMismatch {
                        layout,
                        expected,
                        actual: payload_len,
                    });
                }
            }
        }
        let body_end = ENVELOPE_HEADER_LEN + payload_len;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..body_end]);
        if stored != computed {
            return Err(SketchError::Checksum { stored, computed });
        }
        let payload = &bytes[ENVELOPE_HEADER_LEN..body_end];
        let envelope = Envelope {
            seed_fingerprint,
            precision,
            layout,
            width,
            payload,
        };
        if layout == LAYOUT_EXACT {
            envelope.check_increasing()?;
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::testing::*;
    use crate::sketch::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// Writes the golden envelopes. Run once, by hand:
    /// `cargo test --lib write_golden_files -- --ignored`.
    #[test]
    #[ignore]
    fn write_golden_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::create_dir_all(&dir).unwrap();
        let e = golden_exact();
        let d = golden_dense();
        std::fs::write(dir.join("golden-sketch-exact.skd"), e.encode()).unwrap();
        std::fs::write(dir.join("golden-sketch-dense.skd"), d.encode()).unwrap();
        println!("exact estimate {:?}", e.estimate());
        println!("dense estimate {:?}", d.estimate());
    }

    // ---- hashing ---------------------------------------------------------

    #[test]
    fn round_trips() {
        let cases = [
            Sketch::new(14, HashSeed::new(5)).unwrap(),
            sketch_of(14, &random_hashes(1, 1)),
            sketch_of(14, &random_hashes(2, 1024)),
            sketch_of(14, &random_hashes(3, 1025)),
            sketch_of(14, &random_hashes(4, 100_000)),
            sketch_of(4, &random_hashes(5, 1)),
            sketch_of(4, &random_hashes(6, 50)),
            sketch_of(18, &random_hashes(7, 20_000)),
        ];
        for s in cases {
            let bytes = s.encode();
            let back = Sketch::decode(&bytes).unwrap();
            assert_eq!(back, s);
            assert_eq!(back.encode(), bytes);
            assert_eq!(back.estimate(), s.estimate());
            assert_eq!(back.is_exact(), s.is_exact());
            assert_eq!(back.seed_fingerprint(), s.seed_fingerprint());
            let packed = 24 + (1 << s.precision()) * 3 / 4;
            match s.exact_len() {
                Some(n) => assert_eq!(bytes.len(), 24 + n * 5),
                None if [LAYOUT_DENSE_ZSTD, LAYOUT_DENSE_RICE].contains(&bytes[15]) => {
                    assert!(bytes.len() < packed)
                }
                None => assert_eq!(bytes.len(), packed),
            }
            assert_eq!(&bytes[..6], b"SKHL\x04\x02");
            // The packed form reads back to the same sketch.
            let packed_bytes = s.encode_packed();
            assert_eq!(Sketch::decode(&packed_bytes).unwrap(), s);
            if s.exact_len().is_none() {
                assert_eq!(packed_bytes.len(), packed);
            }
        }
    }

    #[test]
    fn envelope_layout_is_as_documented() {
        // Exact: the top 40 bits of each hash, 5 bytes little-endian, in
        // increasing order (the low 24 bits are not kept).
        let s = sketch_of(14, &[3 << 24, 0xab << 56 | 0xff, 1 << 24 | 7]);
        let b = s.encode();
        assert_eq!(&b[..6], &[b'S', b'K', b'H', b'L', 4, 2]);
        assert_eq!(&b[6..14], &HashSeed::DEFAULT.fingerprint().to_le_bytes());
        assert_eq!(&b[14..20], &[14, 1, 15, 0, 0, 0]);
        assert_eq!(
            &b[20..35],
            &[1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0xab]
        );
        assert_eq!(&b[35..], &crc32fast::hash(&b[..35]).to_le_bytes());
        // Dense: registers 0..4 = 1, 2, 3, 51 pack into 24 bits LSB first.
        let mut d = sketch_of(14, &random_hashes(1, 2000));
        if let Repr::Dense(regs) = &mut d.repr {
            regs[..4].copy_from_slice(&[1, 2, 3, 51]);
        }
        let b = d.encode_packed();
        assert_eq!(b[15], LAYOUT_DENSE);
        let v = 1u32 | 2 << 6 | 3 << 12 | 51 << 18;
        assert_eq!(&b[20..23], &v.to_le_bytes()[..3]);
        // Below half load, Rice-coded: the count of non-zero registers,
        // the Rice parameter, the smallest register (1), the gap stream's
        // length, then the gap stream, whose first code is register 0's
        // gap (0: a one bit, then k zero bits), and the value stream,
        // whose first code is register 0's value (1 = base: a one bit).
        let c = d.encode();
        assert_eq!(c[15], LAYOUT_DENSE_RICE);
        let regs = d.dense_registers().unwrap();
        let nonzero = regs.iter().filter(|&&r| r != 0).count() as u32;
        assert_eq!(c[20..24], nonzero.to_le_bytes());
        let k = c[24];
        assert!(k <= 14);
        assert_eq!(c[25], 1, "base");
        let gap_bytes = u32::from_le_bytes(c[26..30].try_into().unwrap()) as usize;
        assert_eq!(c[30] & ((1 << (k + 1)) - 1), 1);
        assert_eq!(c[30 + gap_bytes] & 1, 1);
        let len = u32::from_le_bytes(c[16..20].try_into().unwrap()) as usize;
        assert_eq!(c.len(), 24 + len);
        assert!(len < 2_000, "{len} bytes for {nonzero} registers");
        assert_eq!(Sketch::decode(&c).unwrap(), d);
        // Above half load, a zstd frame of the one-byte registers.
        let z = sketch_of(14, &random_hashes(2, 100_000));
        let c = z.encode();
        assert_eq!(c[15], LAYOUT_DENSE_ZSTD);
        let len = u32::from_le_bytes(c[16..20].try_into().unwrap()) as usize;
        assert_eq!(c.len(), 24 + len);
        let regs = zstd::bulk::decompress(&c[20..20 + len], 1 << 14).unwrap();
        assert_eq!(&regs[..], z.dense_registers().unwrap());
    }

    #[test]
    fn golden_files_decode_to_the_recorded_estimates() {
        let exact_bytes: &[u8] = include_bytes!("../../tests/data/golden-sketch-exact.skd");
        let dense_bytes: &[u8] = include_bytes!("../../tests/data/golden-sketch-dense.skd");

        // The files are format 1 (hash id 1, exact hashes of 8 bytes):
        // this build reads them as the sketches of the same elements under
        // hash id 2, the exact hashes cut to 40 bits and the registers as
        // they were.
        assert_eq!(exact_bytes[4..6], [FORMAT_VERSION_1, HASH_ID_XXH3_64]);
        let exact = Sketch::decode(exact_bytes).unwrap();
        assert!(exact.is_exact());
        assert_eq!(exact.hash_id(), HASH_ID_XXH3_40);
        assert_eq!(exact.estimate(), Estimate::exact(100));
        assert_eq!(exact, golden_exact());
        let mut kept: Vec<u8> = Vec::new();
        for h in exact_bytes[20..20 + 800].chunks_exact(8) {
            let h = u64::from_le_bytes(h.try_into().unwrap());
            kept.extend_from_slice(&(h >> 24).to_le_bytes()[..5]);
        }
        assert_eq!(exact.encode()[20..20 + 500], kept[..]);

        let as_v4 = |bytes: &[u8]| {
            let mut v = bytes.to_vec();
            v[4..6].copy_from_slice(&[FORMAT_VERSION, HASH_ID_XXH3_40]);
            fix_crc(&mut v);
            v
        };
        let dense = Sketch::decode(dense_bytes).unwrap();
        assert!(!dense.is_exact());
        let e = dense.estimate();
        // Recorded when the file was written (50,000 distinct addresses).
        assert_eq!(e.value, 50253.2783778582);
        assert!(e.contains(50_000.0));
        assert_eq!(dense.encode_packed(), as_v4(dense_bytes));
        assert_eq!(golden_dense().encode_packed(), as_v4(dense_bytes));
        let compressed = Sketch::decode(&dense.encode()).unwrap();
        assert_eq!(compressed, dense);
        assert_eq!(compressed.estimate(), e);
    }

    // ---- corruption (in the spirit of Redis's HLL tests) ------------------------

    fn valid_envelopes() -> Vec<Vec<u8>> {
        vec![
            Sketch::new(14, HashSeed::DEFAULT).unwrap().encode(),
            sketch_of(14, &random_hashes(21, 5)).encode(),
            sketch_of(14, &random_hashes(22, 1024)).encode(),
            sketch_of(14, &random_hashes(23, 5000)).encode(),
            sketch_of(4, &random_hashes(24, 100)).encode(),
            sketch_of(10, &random_hashes(25, 10)).encode(),
        ]
    }

    #[test]
    fn appended_bytes_are_refused() {
        for b in valid_envelopes() {
            for extra in [&[0u8][..], &[1, 2, 3], &b[..]] {
                let mut v = b.clone();
                v.extend_from_slice(extra);
                assert_eq!(Sketch::decode(&v).unwrap_err(), SketchError::TrailingBytes);
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        for b in valid_envelopes() {
            for len in 0..b.len() {
                let err = Sketch::decode(&b[..len]).unwrap_err();
                assert_eq!(err, SketchError::Truncated, "len {len} of {}", b.len());
            }
        }
    }

    #[test]
    fn header_corruption_is_refused() {
        let b = sketch_of(14, &random_hashes(31, 2000)).encode_packed();
        let e = sketch_of(14, &random_hashes(32, 10)).encode();
        let edit = |bytes: &[u8], i: usize, v: u8, fix: bool| {
            let mut c = bytes.to_vec();
            c[i] = v;
            if fix {
                fix_crc(&mut c);
            }
            Sketch::decode(&c).unwrap_err()
        };
        for fix in [false, true] {
            assert_eq!(edit(&b, 0, b'X', fix), SketchError::BadMagic);
            assert_eq!(edit(&b, 3, b'P', fix), SketchError::BadMagic);
            assert_eq!(edit(&b, 4, 5, fix), SketchError::UnsupportedVersion(5));
            assert_eq!(edit(&b, 4, 0, fix), SketchError::UnsupportedVersion(0));
            assert_eq!(edit(&b, 5, 3, fix), SketchError::UnknownHashId(3));
            // Each format version has its one hash id.
            assert_eq!(edit(&b, 5, 1, fix), SketchError::UnknownHashId(1));
            assert_eq!(edit(&b, 4, 2, fix), SketchError::UnknownHashId(2));
            assert_eq!(edit(&b, 14, 19, fix), SketchError::BadPrecision(19));
            assert_eq!(edit(&b, 14, 3, fix), SketchError::BadPrecision(3));
            assert_eq!(edit(&b, 14, 255, fix), SketchError::BadPrecision(255));
            assert_eq!(edit(&b, 15, 5, fix), SketchError::UnknownLayout(5));
            // Formats before 4 have no Rice-coded layout.
            let mut v3 = b.clone();
            v3[4] = FORMAT_VERSION_3;
            assert_eq!(edit(&v3, 15, 4, fix), SketchError::UnknownLayout(4));
            assert_eq!(edit(&b, 15, 0, fix), SketchError::UnknownLayout(0));
            // Format 1 has no compressed layout.
            let mut v1 = b.clone();
            v1[4..6].copy_from_slice(&[FORMAT_VERSION_1, HASH_ID_XXH3_64]);
            assert_eq!(edit(&v1, 15, 3, fix), SketchError::UnknownLayout(3));
            // A packed payload is no shorter than packed: not a frame or
            // a Rice code.
            for layout in [LAYOUT_DENSE_ZSTD, LAYOUT_DENSE_RICE] {
                assert_eq!(
                    edit(&b, 15, layout, fix),
                    SketchError::LengthMismatch {
                        layout,
                        expected: 12287,
                        actual: 12288
                    }
                );
            }
            // A valid but different precision: the dense payload no longer fits.
            assert_eq!(
                edit(&b, 14, 13, fix),
                SketchError::LengthMismatch {
                    layout: 2,
                    expected: 6144,
                    actual: 12288
                }
            );
            // A dense payload read as exact is no whole number of hashes.
            assert_eq!(
                edit(&b, 15, LAYOUT_EXACT, fix),
                SketchError::LengthMismatch {
                    layout: LAYOUT_EXACT,
                    expected: 12285,
                    actual: 12288
                }
            );
        }
        // Exact payload read as dense: wrong length.
        assert_eq!(
            edit(&e, 15, LAYOUT_DENSE, true),
            SketchError::LengthMismatch {
                layout: 2,
                expected: 12288,
                actual: 50
            }
        );
        // A seed fingerprint edit is caught by the checksum only.
        assert!(matches!(
            edit(&b, 8, b[8] ^ 1, false),
            SketchError::Checksum { .. }
        ));
        // Payload length field that disagrees with the buffer.
        let mut c = e.clone();
        c[16] = 55;
        assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::Truncated);
        c[16] = 45;
        assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::TrailingBytes);
        let mut c = e.clone();
        c[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::Truncated);
        // An exact payload that is not a whole number of hashes.
        let mut c = e[..20 + 49].to_vec();
        c[16..20].copy_from_slice(&49u32.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        fix_crc(&mut c);
        assert_eq!(
            Sketch::decode(&c).unwrap_err(),
            SketchError::LengthMismatch {
                layout: 1,
                expected: 45,
                actual: 49
            }
        );
        // Foreign bytes.
        assert_eq!(Sketch::decode(b"").unwrap_err(), SketchError::Truncated);
        assert_eq!(Sketch::decode(b"SKH").unwrap_err(), SketchError::Truncated);
        assert_eq!(
            Sketch::decode(b"{\"json\": true}").unwrap_err(),
            SketchError::BadMagic
        );
        assert_eq!(
            Sketch::decode(&[0u8; 100]).unwrap_err(),
            SketchError::BadMagic
        );
    }

    #[test]
    fn register_above_the_maximum_is_refused() {
        for p in [4u8, 14, 18] {
            let s = sketch_of(p, &random_hashes(41, exact_limit(p) * 3));
            let max = max_register(p);
            for (index, value) in [(0usize, max + 1), (5, 63), ((1 << p) - 1, max + 1)] {
                // Compressed registers with the bad value are refused too
                // (where compressing saves anything: not at precision 4).
                let mut regs = s.dense_registers().unwrap().to_vec();
                regs[index] = value;
                let frame = zstd::bulk::compress(&regs, 1).unwrap();
                if frame.len() < dense_payload_len(p) {
                    let mut z = s.encode_packed()[..ENVELOPE_HEADER_LEN].to_vec();
                    z[15] = LAYOUT_DENSE_ZSTD;
                    z[16..20].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                    z.extend_from_slice(&frame);
                    z.extend_from_slice(&[0; 4]);
                    fix_crc(&mut z);
                    assert_eq!(
                        Sketch::decode(&z).unwrap_err(),
                        SketchError::BadRegister { index, value },
                        "p={p} compressed"
                    );
                }
                let mut b = s.encode_packed();
                // Rewrite register `index` inside its 3-byte group.
                let off = 20 + index / 4 * 3;
                let mut v =
                    u32::from(b[off]) | u32::from(b[off + 1]) << 8 | u32::from(b[off + 2]) << 16;
                let shift = 6 * (index % 4);
                v = (v & !(0x3f << shift)) | u32::from(value) << shift;
                b[off..off + 3].copy_from_slice(&v.to_le_bytes()[..3]);
                fix_crc(&mut b);
                assert_eq!(
                    Sketch::decode(&b).unwrap_err(),
                    SketchError::BadRegister { index, value },
                    "p={p}"
                );
                // Merging the bytes into a dense sketch refuses them too,
                // and changes nothing.
                let dense = sketch_of(p, &random_hashes(42, exact_limit(p) * 2));
                let mut into = dense.clone();
                assert_eq!(
                    into.merge_encoded(&b).unwrap_err(),
                    SketchError::BadRegister { index, value }
                );
                assert_eq!(into, dense);
                // Without fixing the checksum the checksum fires first.
                let mut unfixed = b.clone();
                let n = unfixed.len();
                unfixed[n - 1] ^= 0xff;
                assert!(matches!(
                    Sketch::decode(&unfixed).unwrap_err(),
                    SketchError::Checksum { .. }
                ));
            }
            // The maximum itself is legal.
            let mut b = s.encode_packed();
            b[20] = (b[20] & !0x3f) | max;
            fix_crc(&mut b);
            assert_eq!(
                Sketch::decode(&b).unwrap().dense_registers().unwrap()[0],
                max
            );
        }
    }

    #[test]
    fn malformed_exact_lists_are_refused() {
        let s = sketch_of(14, &random_hashes(51, 10));
        let b = s.encode();
        let hash_at = |b: &[u8], i: usize| b[20 + 5 * i..25 + 5 * i].to_vec();
        // Swap two hashes.
        let mut c = b.clone();
        let (h0, h1) = (hash_at(&b, 0), hash_at(&b, 1));
        c[20..25].copy_from_slice(&h1);
        c[25..30].copy_from_slice(&h0);
        fix_crc(&mut c);
        assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::UnsortedExact);
        // A duplicate.
        let mut c = b.clone();
        c[25..30].copy_from_slice(&h0);
        fix_crc(&mut c);
        assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::UnsortedExact);
        // One hash more than the limit (sorted, valid checksum), in 5 bytes
        // (format 3) and in 8 (format 2, hash id 1).
        let mut hashes = random_hashes(52, exact_limit(14) + 1);
        hashes.sort_unstable();
        let envelope = |hashes: &[u64], wide: bool| {
            let mut c = b[..20].to_vec();
            if wide {
                c[4..6].copy_from_slice(&[FORMAT_VERSION_2, HASH_ID_XXH3_64]);
            }
            let width = if wide { 8 } else { 5 };
            c[16..20].copy_from_slice(&((hashes.len() * width) as u32).to_le_bytes());
            for h in hashes {
                let stored = if wide { *h } else { h >> 24 };
                c.extend_from_slice(&stored.to_le_bytes()[..width]);
            }
            c.extend_from_slice(&[0; 4]);
            fix_crc(&mut c);
            c
        };
        for wide in [false, true] {
            let c = envelope(&hashes, wide);
            assert_eq!(Sketch::decode(&c).unwrap_err(), SketchError::TooManyExact);
            // Exactly the limit is fine.
            let c = envelope(&hashes[..hashes.len() - 1], wide);
            assert_eq!(Sketch::decode(&c).unwrap().exact_len(), Some(1024));
        }
        // Hashes of 8 bytes that share their top 40 bits are one hash.
        let c = envelope(&[5 << 24, 5 << 24 | 1, 5 << 24 | 2, 6 << 24], true);
        let s = Sketch::decode(&c).unwrap();
        assert_eq!(s.exact_len(), Some(2));
        assert_eq!(s, sketch_of(14, &[5 << 24, 6 << 24]));
        let mut merged = sketch_of(14, &[6 << 24]);
        merged.merge_encoded(&c).unwrap();
        assert_eq!(merged, s);
    }

    #[test]
    fn single_byte_mutations_are_always_refused() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let envelopes = valid_envelopes();
        for _ in 0..20_000 {
            let b = envelopes.choose(&mut rng).unwrap();
            let mut c = b.clone();
            let i = rng.gen_range(0..c.len());
            let x: u8 = rng.gen_range(1..=255);
            c[i] ^= x;
            // CRC-32 detects every error burst of up to 32 bits.
            assert!(Sketch::decode(&c).is_err(), "mutation at {i} accepted");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0xf022);
        let mut accepted = 0;
        for i in 0..20_000 {
            let len = rng.gen_range(0..200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if i % 2 == 0 && len >= 24 {
                // A plausible header with a consistent length and checksum so
                // that the payload checks are exercised too.
                let p = rng.gen_range(MIN_PRECISION..=6);
                let layout = rng.gen_range(1..=4u8);
                let plen = match layout {
                    LAYOUT_DENSE => dense_payload_len(p),
                    LAYOUT_DENSE_ZSTD | LAYOUT_DENSE_RICE => rng.gen_range(0..dense_payload_len(p)),
                    _ => rng.gen_range(0..=exact_limit(p) + 1),
                };
                let version = rng.gen_range(1..=4u8);
                let plen = match layout {
                    LAYOUT_EXACT if version >= FORMAT_VERSION_3 => 5 * plen,
                    LAYOUT_EXACT => 8 * plen,
                    _ => plen,
                };
                buf.resize(24 + plen, 0);
                for byte in &mut buf[20..20 + plen] {
                    *byte = rng.gen();
                }
                let hash_id = if version >= FORMAT_VERSION_3 { 2 } else { 1 };
                buf[..6].copy_from_slice(&[b'S', b'K', b'H', b'L', version, hash_id]);
                buf[14] = p;
                buf[15] = layout;
                buf[16..20].copy_from_slice(&(plen as u32).to_le_bytes());
                fix_crc(&mut buf);
            }
            if let Ok(s) = Sketch::decode(&buf) {
                accepted += 1;
                // Whatever decodes is fully usable, and encodes to a
                // canonical form of itself (a packed one the input, up to
                // its version and hash id; an exact one of format 3 or 4 up
                // to its version).
                let e = s.estimate();
                assert!(e.value.is_finite() && e.lower <= e.upper);
                assert_eq!(Sketch::decode(&s.encode()).unwrap(), s);
                let mut as_v4 = buf.clone();
                as_v4[4..6].copy_from_slice(&[FORMAT_VERSION, HASH_ID_XXH3_40]);
                fix_crc(&mut as_v4);
                if buf[15] == LAYOUT_DENSE {
                    assert_eq!(s.encode_packed(), as_v4);
                } else if s.is_exact() && buf[4] >= FORMAT_VERSION_3 {
                    assert_eq!(s.encode(), as_v4);
                }
            }
        }
        // Some of the crafted envelopes are valid (e.g. short sorted lists).
        assert!(accepted > 0);
    }

    // ---- merge -----------------------------------------------------------------

    /// Merging the encoded bytes is merging the decoded sketch: the same
    /// state for every pair of exact and dense sketches, the same errors,
    /// and no change on error.
    #[test]
    fn merge_encoded_equals_merge_of_the_decoded_sketch() {
        let sizes = [0, 1, 100, 1_000, 1_024, 5_000];
        for (i, &na) in sizes.iter().enumerate() {
            for (j, &nb) in sizes.iter().enumerate() {
                let a = sketch_of(14, &random_hashes(80 + i as u64, na));
                let b = sketch_of(14, &random_hashes(90 + j as u64, nb));
                let mut by_sketch = a.clone();
                by_sketch.merge(&b).unwrap();
                let mut by_bytes = a.clone();
                by_bytes.merge_encoded(&b.encode()).unwrap();
                assert_eq!(by_bytes.encode(), by_sketch.encode(), "{na} + {nb}");
                assert_eq!(by_bytes.estimate(), by_sketch.estimate());
            }
        }
        let base = sketch_of(14, &random_hashes(61, 10));
        let mut rng = StdRng::seed_from_u64(0x5eed_0e0c);
        let envelopes = valid_envelopes();
        for _ in 0..2_000 {
            let mut bad = envelopes.choose(&mut rng).unwrap().clone();
            let at = rng.gen_range(0..bad.len());
            bad[at] ^= rng.gen_range(1..=255u8);
            let mut s = base.clone();
            assert_eq!(
                s.merge_encoded(&bad).unwrap_err(),
                Sketch::decode(&bad).unwrap_err()
            );
            assert_eq!(s, base, "a refused merge leaves the sketch unchanged");
        }
        for other in [
            {
                let mut other_seed = Sketch::new(14, HashSeed::new(1)).unwrap();
                for h in random_hashes(62, 10) {
                    other_seed.insert_hash(h);
                }
                other_seed
            },
            sketch_of(12, &random_hashes(63, 10)),
            sketch_of(12, &random_hashes(64, 5_000)),
        ] {
            let mut s = base.clone();
            assert_eq!(
                s.merge_encoded(&other.encode()).unwrap_err(),
                s.clone().merge(&other).unwrap_err()
            );
            assert_eq!(s, base);
        }
    }

    /// An exact envelope split into header and payload joins back to the
    /// same bytes, and decoding or merging the parts is decoding or merging
    /// the envelope; parts
    /// that no envelope could hold are refused with decoding's errors.
    #[test]
    fn exact_envelopes_split_and_join_back() {
        for n in [0, 1, 2, 100, 1_024] {
            let s = sketch_of(14, &random_hashes(70 + n as u64, n));
            let bytes = s.encode();
            let (header, payload) = split_exact(&bytes).expect("exact");
            assert_eq!(header.precision, 14);
            assert_eq!(ExactHeader::from_bytes(&header.to_bytes()), header);
            assert_eq!(join_exact(header, payload).unwrap(), bytes);
            assert_eq!(Sketch::decode_exact(header, payload).unwrap(), s);
            let base = sketch_of(14, &random_hashes(9, 1_000));
            let mut by_parts = base.clone();
            by_parts.merge_exact(header, payload).unwrap();
            let mut by_bytes = base.clone();
            by_bytes.merge_encoded(&bytes).unwrap();
            assert_eq!(by_parts, by_bytes);
        }
        let dense = sketch_of(14, &random_hashes(71, 5_000));
        assert!(split_exact(&dense.encode()).is_none());
        assert!(split_exact(b"not an envelope").is_none());

        let s = sketch_of(10, &random_hashes(72, 20));
        let bytes = s.encode();
        let (header, payload) = split_exact(&bytes).unwrap();
        let mut swapped = payload.to_vec();
        swapped[..10].rotate_left(5);
        let short = &payload[..payload.len() - 3];
        let too_many: Vec<u8> = (1..=exact_limit(10) as u64 + 1)
            .flat_map(|h| h.to_le_bytes()[..5].to_vec())
            .collect();
        let other_hash = ExactHeader {
            hash_id: 9,
            ..header
        };
        let bad_precision = ExactHeader {
            precision: 40,
            ..header
        };
        for (header, payload) in [
            (header, &swapped[..]),
            (header, short),
            (header, &too_many[..]),
            (other_hash, payload),
            (bad_precision, payload),
        ] {
            let err = join_exact(header, payload).unwrap_err();
            let mut forged = bytes[..ENVELOPE_HEADER_LEN].to_vec();
            forged[5] = header.hash_id;
            forged[14] = header.precision;
            forged[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            forged.extend_from_slice(payload);
            let crc = crc32fast::hash(&forged);
            forged.extend_from_slice(&crc.to_le_bytes());
            assert_eq!(Sketch::decode(&forged).unwrap_err(), err);
            assert_eq!(Sketch::decode_exact(header, payload).unwrap_err(), err);
            let mut target = s.clone();
            assert_eq!(target.merge_exact(header, payload).unwrap_err(), err);
            assert_eq!(target, s, "a refused merge changes nothing");
        }

        // A group written before format 3 holds hashes of 8 bytes under
        // hash id 1: its parts join to a format 2 envelope, and read as
        // the sketch of their top 40 bits.
        let old = ExactHeader {
            hash_id: HASH_ID_XXH3_64,
            ..header
        };
        let full: Vec<u64> = (1..=20u64).map(|i| i << 40 | i).collect();
        let wide: Vec<u8> = full.iter().flat_map(|h| h.to_le_bytes()).collect();
        let joined = join_exact(old, &wide).unwrap();
        assert_eq!(joined[4..6], [FORMAT_VERSION_2, HASH_ID_XXH3_64]);
        assert!(split_exact(&joined).is_none(), "not the current format");
        let want = sketch_of(10, &full);
        assert_eq!(Sketch::decode(&joined).unwrap(), want);
        assert_eq!(Sketch::decode_exact(old, &wide).unwrap(), want);
        assert_eq!(want.encode()[4..6], [FORMAT_VERSION, HASH_ID_XXH3_40]);
    }
}
