//! Layout 4 of a dense payload: the non-zero registers as Rice-coded gaps
//! and unary values. Below half load most registers of a sketch are zero
//! and a non-zero one holds a rank near the smallest, so this comes within
//! ~5 % of the registers' order-0 entropy where a zstd frame takes ~50 %
//! more.
//!
//! Payload (integers little-endian, bits LSB-first within each byte):
//!
//! | size | field |
//! |---|---|
//! | 4 | `c`: number of non-zero registers, `1..=m` |
//! | 1 | `k`: Rice parameter of the gaps, at most `p` |
//! | 1 | `base`: the smallest non-zero register, `1..=64 - p + 1` |
//! | 4 | `g`: bytes of the gap stream |
//! | g | gap stream: per non-zero register in index order, its gap (zero registers since the previous one) as `gap >> k` zero bits, a one bit and the `k` low bits of `gap`; zero bits pad the last byte |
//! | rest | value stream: per non-zero register in index order, `value - base` zero bits and a one bit; zero bits pad the last byte |
//!
//! Both directions work a 64-bit word at a time: the encoder finds the
//! non-zero registers eight at a time and writes a word per code; the
//! decoder reads a code from one word, and with `k = 0` (heavily loaded
//! sketches), where every code is a unary run, finds the codes a one bit
//! at a time. Gaps and values are two streams so that decoding follows two
//! independent chains of positions, which the processor overlaps.

use super::SketchError;

/// Bytes before the gap stream.
const HEADER_LEN: usize = 10;
/// Bits a word read at any bit position is sure to hold.
const WORD_BITS: u32 = 57;

fn bad(why: &str) -> SketchError {
    SketchError::BadCompression(format!("rice-coded registers: {why}"))
}

/// Bits appended LSB-first, a word at a time, into bytes with a word of
/// room past the end.
struct BitWriter {
    out: Vec<u8>,
    /// Bytes complete in `out`.
    at: usize,
    acc: u64,
    bits: u32,
}

impl BitWriter {
    fn new(out: Vec<u8>, bits: usize) -> BitWriter {
        let at = out.len();
        let mut out = out;
        out.resize(at + bits.div_ceil(8) + 8, 0);
        BitWriter {
            out,
            at,
            acc: 0,
            bits: 0,
        }
    }

    /// Appends the `n` (at most [`WORD_BITS`]) low bits of `v`.
    #[inline(always)]
    fn put(&mut self, v: u64, n: u32) {
        self.acc |= v << self.bits;
        self.bits += n;
        let word: &mut [u8; 8] = (&mut self.out[self.at..self.at + 8])
            .try_into()
            .expect("a word of room");
        *word = self.acc.to_le_bytes();
        let whole = self.bits / 8;
        self.at += whole as usize;
        // `whole` may be 8: shift in two steps.
        self.acc = self.acc >> (whole * 4) >> (whole * 4);
        self.bits -= whole * 8;
    }

    /// Appends `n` zero bits.
    fn zeros(&mut self, mut n: usize) {
        while n > 0 {
            let step = n.min(WORD_BITS as usize) as u32;
            self.put(0, step);
            n -= step as usize;
        }
    }

    /// The bytes, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        let len = self.at + usize::from(self.bits > 0);
        self.out.truncate(len);
        self.out
    }
}

/// The high bit of each non-zero byte of `w`.
#[inline(always)]
fn nonzero_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    (((w & LOW7) + LOW7) | w) & HIGH
}

/// The registers in layout 4, or `None` when more than half of them are
/// non-zero (a zstd frame is as small there) or none is. There are `2^p`
/// of them, `p >= 4`: a whole number of 8-byte words.
pub(super) fn encode(regs: &[u8], precision: u8) -> Option<Vec<u8>> {
    debug_assert!(regs.len().is_multiple_of(8));
    // Counted in byte lanes (vectorises), 255 registers at a time.
    let count = regs
        .chunks(255)
        .map(|c| usize::from(c.iter().map(|&r| u8::from(r != 0)).sum::<u8>()))
        .sum::<usize>();
    if count == 0 || count * 2 > regs.len() {
        return None;
    }
    let mut gaps = vec![0u32; count];
    let mut values = vec![0u8; count];
    let mut found = 0;
    let mut next = 0usize;
    let mut base = u8::MAX;
    for (c, word) in regs.chunks_exact(8).enumerate() {
        let mut mask = nonzero_bytes(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        while mask != 0 {
            let index = c * 8 + (mask.trailing_zeros() / 8) as usize;
            gaps[found] = (index - next) as u32;
            values[found] = regs[index];
            base = base.min(regs[index]);
            found += 1;
            next = index + 1;
            mask &= mask - 1;
        }
    }
    // The parameter with the fewest gap bits, searched next to the log of
    // the mean gap (the bits are convex in the parameter).
    let mean = (next - count) / count;
    let guess = mean.max(1).ilog2();
    let gap_bits = |k: u32| -> usize {
        gaps.iter().map(|&g| (g >> k) as usize).sum::<usize>() + count * (k as usize + 1)
    };
    let (bits, k) = (guess.saturating_sub(1)..=(guess + 1).min(u32::from(precision)))
        .map(|k| (gap_bits(k), k))
        .min()?;
    let mut out = Vec::with_capacity(HEADER_LEN + 2 * count + 16);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.push(k as u8);
    out.push(base);
    out.extend_from_slice(&(bits.div_ceil(8) as u32).to_le_bytes());
    let mut stream = BitWriter::new(out, bits);
    let low = (1u32 << k) - 1;
    for &g in &gaps {
        let q = (g >> k) as usize;
        if q + k as usize >= WORD_BITS as usize {
            stream.zeros(q);
            stream.put(u64::from(1 | (g & low) << 1), k + 1);
        } else {
            stream.put(u64::from(1 | (g & low) << 1) << q, q as u32 + k + 1);
        }
    }
    let out = stream.finish();
    debug_assert_eq!(out.len(), HEADER_LEN + bits.div_ceil(8));
    let value_bits = values
        .iter()
        .map(|&v| usize::from(v - base) + 1)
        .sum::<usize>();
    let mut stream = BitWriter::new(out, value_bits);
    for v in values.into_iter().map(|v| v - base) {
        // A value is below 64, a run of zeros at most 60 long.
        match u32::from(v) < WORD_BITS {
            true => stream.put(1 << v, u32::from(v) + 1),
            false => {
                stream.zeros(usize::from(v));
                stream.put(1, 1);
            }
        }
    }
    Some(stream.finish())
}

/// A bit stream read at any position: its bytes and a zero word after
/// them.
struct BitReader {
    bytes: Vec<u8>,
    /// Bits of the stream.
    total: usize,
}

impl BitReader {
    fn new(stream: &[u8]) -> BitReader {
        let mut bytes = Vec::with_capacity(stream.len() + 8);
        bytes.extend_from_slice(stream);
        bytes.extend_from_slice(&[0; 8]);
        BitReader {
            bytes,
            total: stream.len() * 8,
        }
    }

    /// The bits from `at` on: at least [`WORD_BITS`] of them, zero past
    /// the stream's end.
    #[inline(always)]
    fn word(&self, at: usize) -> u64 {
        let byte = at / 8;
        u64::from_le_bytes(self.bytes[byte..byte + 8].try_into().expect("8 bytes")) >> (at % 8)
    }

    /// A run of zero bits from `at` up to a one bit, at most `limit` long.
    fn unary(&self, at: usize, limit: usize) -> Result<usize, SketchError> {
        let mut from = at;
        while from < self.total {
            let w = self.word(from);
            if w != 0 {
                let run = from + w.trailing_zeros() as usize - at;
                return match run <= limit {
                    true => Ok(run),
                    false => Err(bad("run too long")),
                };
            }
            from += WORD_BITS as usize;
        }
        Err(bad("truncated bits"))
    }

    /// Only the zero bits padding the last byte follow `at`.
    fn finish(&self, at: usize) -> Result<(), SketchError> {
        match at <= self.total && self.total - at < 8 && self.word(at) == 0 {
            true => Ok(()),
            false => Err(bad("bits left over or truncated")),
        }
    }
}

/// Decodes a layout 4 payload into `regs` (all zero on entry), checking
/// every field: counts, indices and values in range, no bits or bytes
/// left over.
pub(super) fn decode(payload: &[u8], regs: &mut [u8], max: u8) -> Result<(), SketchError> {
    let header = payload
        .get(..HEADER_LEN)
        .ok_or_else(|| bad("truncated header"))?;
    let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let (k, base) = (u32::from(header[4]), header[5]);
    let gap_bytes = u32::from_le_bytes(header[6..10].try_into().expect("4 bytes")) as usize;
    let m = regs.len();
    if count == 0 || count > m {
        return Err(bad("register count out of range"));
    }
    if k > m.trailing_zeros() {
        return Err(bad("Rice parameter out of range"));
    }
    if base == 0 || base > max {
        return Err(bad("base out of range"));
    }
    if gap_bytes > payload.len() - HEADER_LEN {
        return Err(bad("gap stream longer than the payload"));
    }
    let (gap_stream, value_stream) = payload[HEADER_LEN..].split_at(gap_bytes);
    let value_limit = usize::from(max - base);
    if k == 0 {
        // Every code is a unary run: the indices from the gaps, then the
        // values, a one bit at a time.
        let mut indices: Vec<u32> = Vec::with_capacity(count);
        let mut next = 0usize;
        unary_runs(gap_stream, count, m, |gap| {
            let index = next + gap;
            if index >= m {
                return Err(bad("register index out of range"));
            }
            indices.push(index as u32);
            next = index + 1;
            Ok(())
        })?;
        let mut indices = indices.into_iter();
        return unary_runs(value_stream, count, value_limit, |v| {
            let index = indices.next().expect("one index a value") as usize;
            regs[index] = base + v as u8;
            Ok(())
        });
    }
    // A gap and a value a register: two independent chains of positions,
    // which the processor overlaps.
    let (mut gaps, mut values) = (Cursor::new(gap_stream), Cursor::new(value_stream));
    let mut next = 0usize;
    for _ in 0..count {
        let index = next + gaps.code(k, m)?;
        let v = values.code(0, value_limit)?;
        if index >= m {
            return Err(bad("register index out of range"));
        }
        regs[index] = base + v as u8;
        next = index + 1;
    }
    gaps.finish()?;
    values.finish()
}

/// Calls `each` with the length of each of the `count` runs of zero bits
/// (each at most `limit`) that a one bit ends in `stream`, and checks that
/// only zero bits padding the last byte follow the last one. Works a word
/// at a time, a one bit at a time.
fn unary_runs(
    stream: &[u8],
    count: usize,
    limit: usize,
    mut each: impl FnMut(usize) -> Result<(), SketchError>,
) -> Result<(), SketchError> {
    let mut seen = 0usize;
    // The bit after the last one bit.
    let mut after = 0usize;
    for (i, chunk) in stream.chunks(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let mut w = u64::from_le_bytes(bytes);
        while w != 0 {
            let at = i * 64 + w.trailing_zeros() as usize;
            if at - after > limit {
                return Err(bad("run too long"));
            }
            each(at - after)?;
            after = at + 1;
            seen += 1;
            w &= w - 1;
            if seen == count {
                return match w == 0 && stream.len() == after.div_ceil(8) {
                    true => Ok(()),
                    false => Err(bad("bits left over")),
                };
            }
        }
    }
    Err(bad("truncated bits"))
}

/// Reads codes from a bit stream: a code is taken from a word read at its
/// position, a word serving the codes that fit in it.
struct Cursor {
    stream: BitReader,
    /// Position of the next code.
    at: usize,
    /// The bits from `at` on, and how many of them are known.
    word: u64,
    bits: u32,
}

impl Cursor {
    fn new(stream: &[u8]) -> Cursor {
        Cursor {
            stream: BitReader::new(stream),
            at: 0,
            word: 0,
            bits: 0,
        }
    }

    /// The next code with Rice parameter `k` (0: unary), at most `limit`.
    #[inline(always)]
    fn code(&mut self, k: u32, limit: usize) -> Result<usize, SketchError> {
        let mut q = self.word.trailing_zeros();
        if q + 1 + k > self.bits {
            if self.at > self.stream.total {
                return Err(bad("truncated bits"));
            }
            (self.word, self.bits) = (self.stream.word(self.at), WORD_BITS);
            q = self.word.trailing_zeros();
        }
        let low = (1u64 << k) - 1;
        let code = if q + 1 + k <= self.bits {
            let code = (q as usize) << k | ((self.word >> (q + 1)) & low) as usize;
            self.word >>= q + 1 + k;
            self.bits -= q + 1 + k;
            self.at += (q + 1 + k) as usize;
            code
        } else {
            // A run longer than a word (refused when too long before it is
            // shifted).
            let q = self.stream.unary(self.at, limit >> k)?;
            self.at += q + 1;
            let code = q << k | (self.stream.word(self.at) & low) as usize;
            self.at += k as usize;
            (self.word, self.bits) = (0, 0);
            code
        };
        match code <= limit {
            true => Ok(code),
            false => Err(bad("code out of range")),
        }
    }

    /// Only the zero bits padding the last byte are left.
    fn finish(&self) -> Result<(), SketchError> {
        self.stream.finish(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::dense::{index_rank, max_register};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Registers of `n` random hashes at precision `p`.
    fn registers(p: u8, n: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut regs = vec![0u8; 1 << p];
        for _ in 0..n {
            let (i, r) = index_rank(rng.gen(), p);
            regs[i] = regs[i].max(r);
        }
        regs
    }

    fn round_trip(regs: &[u8], p: u8) -> Vec<u8> {
        let payload = encode(regs, p).expect("below half load");
        let mut back = vec![0u8; regs.len()];
        decode(&payload, &mut back, max_register(p)).unwrap();
        assert_eq!(back, regs, "p={p}");
        payload
    }

    /// The payload's length with the best parameter, found by trying
    /// every one.
    fn best_len(regs: &[u8], p: u8) -> usize {
        let set: Vec<(usize, u8)> = (0..regs.len())
            .filter(|&i| regs[i] != 0)
            .map(|i| (i, regs[i]))
            .collect();
        let base = set.iter().map(|e| e.1).min().unwrap();
        let gap_bits = (0..=p as usize)
            .map(|k| {
                let mut next = 0;
                let mut bits = 0;
                for &(i, _) in &set {
                    bits += ((i - next) >> k) + 1 + k;
                    next = i + 1;
                }
                bits
            })
            .min()
            .unwrap();
        let value_bits: usize = set.iter().map(|&(_, v)| usize::from(v - base) + 1).sum();
        HEADER_LEN + gap_bits.div_ceil(8) + value_bits.div_ceil(8)
    }

    #[test]
    fn registers_round_trip_below_half_load_with_the_best_parameter() {
        for (p, n) in [
            (4u8, 3usize),
            (10, 100),
            (14, 30),
            (14, 1_100),
            (14, 5_000),
            (18, 40_000),
        ] {
            let regs = registers(p, n, u64::from(p) * 7 + n as u64);
            let payload = round_trip(&regs, p);
            assert_eq!(payload.len(), best_len(&regs, p), "p={p} n={n}");
        }
        // Extreme values and gaps: the first and last registers, the
        // maximum rank, a gap run longer than a word (k = 6, q = 252), a
        // value run longer than a word (60 at p = 4).
        let mut regs = vec![0u8; 1 << 14];
        regs[0] = 1;
        regs[(1 << 14) - 1] = max_register(14);
        round_trip(&regs, 14);
        let mut regs = vec![0u8; 1 << 14];
        regs[9_000] = max_register(14);
        regs[9_001] = 2;
        round_trip(&regs, 14);
        let mut regs = vec![0u8; 1 << 14];
        regs[..200].fill(1);
        regs[(1 << 14) - 1] = 1;
        let payload = round_trip(&regs, 14);
        assert_eq!(payload[4], 6, "k");
        assert_eq!(payload.len(), best_len(&regs, 14));
        let mut regs = vec![0u8; 16];
        regs[0] = 1;
        regs[1] = max_register(4);
        round_trip(&regs, 4);
        // Above half load, and with nothing set, there is no payload.
        assert!(encode(&registers(10, 5_000, 1), 10).is_none());
        assert!(encode(&[0u8; 16], 4).is_none());
    }

    #[test]
    fn damaged_payloads_are_refused() {
        let p = 12;
        let regs = registers(p, 600, 3);
        let payload = encode(&regs, p).unwrap();
        let max = max_register(p);
        let refused = |bytes: &[u8]| {
            let mut out = vec![0u8; 1 << p];
            decode(bytes, &mut out, max).is_err()
        };
        for len in 0..payload.len() {
            assert!(refused(&payload[..len]), "cut to {len}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(refused(&longer));
        for (at, value) in [(0, 0u8), (3, 1), (4, 13), (5, 0), (5, max + 1)] {
            let mut c = payload.clone();
            c[at] = value;
            assert!(refused(&c), "byte {at} = {value}");
        }
        // Damaged gap stream lengths and flipped bits never panic.
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..5_000 {
            let mut c = payload.clone();
            match rng.gen_bool(0.2) {
                true => {
                    c[6..10].copy_from_slice(&rng.gen_range(0..payload.len() as u32).to_le_bytes())
                }
                false => {
                    for _ in 0..rng.gen_range(1..4) {
                        let bit = rng.gen_range(HEADER_LEN * 8..c.len() * 8);
                        c[bit / 8] ^= 1 << (bit % 8);
                    }
                }
            }
            let mut out = vec![0u8; 1 << p];
            let _ = decode(&c, &mut out, max);
        }
        // Random bytes never panic.
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= HEADER_LEN && rng.gen_bool(0.9) {
                bytes[..4].copy_from_slice(&rng.gen_range(1u32..40).to_le_bytes());
                bytes[4] = rng.gen_range(0..7);
                bytes[5] = rng.gen_range(1..=max_register(6));
                let gap_bytes = rng.gen_range(0..=len - HEADER_LEN) as u32;
                bytes[6..10].copy_from_slice(&gap_bytes.to_le_bytes());
            }
            let mut out = vec![0u8; 1 << 6];
            let _ = decode(&bytes, &mut out, max_register(6));
        }
    }
}
