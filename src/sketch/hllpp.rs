//! The HLL++ estimate of dense registers, computed as `hyperloglogplus`
//! 0.4.1's `count()` computes it, to the bit, without building the crate's
//! value: linear counting below its threshold, else the raw estimate
//! `alpha m² / Σ 2^-r`, less the bias the HLL++ tables give
//! ([`super::hllpp_tables`]) when it is at most `5 m`.
//!
//! The crate adds the terms `2^-r` one register at a time. Every partial
//! sum is a multiple of `2^-max` below `2^(p+1)`, so while `p + 1 + max`
//! bits fit in a double's 53 every addition is exact and the sum is the
//! same in any order: here it is taken from a histogram of the registers,
//! exactly, in integers. A register of a 40-bit hash is at most `41 - p`,
//! or `65 - p` where the hash's bits past its index are all zero (the
//! crate's sentinel bit; a chance of `2^(p-40)` a hash): then the sum
//! might round, [`count_above_linear`] says `None`, and the crate's own
//! `count()` answers.

use super::hllpp_tables::{BIASES, RAW_ESTIMATES};

/// The crate's lowest precision: its tables start there.
const FIRST_PRECISION: u8 = 4;

/// How many registers hold each value, and the highest value held.
pub(super) struct Histogram {
    counts: [u32; 256],
    max: u8,
}

impl Histogram {
    /// One pass over `regs`, four counters per value so that neighbouring
    /// registers of one value do not wait on each other.
    pub(super) fn of(regs: &[u8]) -> Histogram {
        let mut lanes = [[0u32; 256]; 4];
        let mut chunks = regs.chunks_exact(4);
        for c in &mut chunks {
            lanes[0][usize::from(c[0])] += 1;
            lanes[1][usize::from(c[1])] += 1;
            lanes[2][usize::from(c[2])] += 1;
            lanes[3][usize::from(c[3])] += 1;
        }
        for &r in chunks.remainder() {
            lanes[0][usize::from(r)] += 1;
        }
        let mut counts = [0u32; 256];
        for (v, count) in counts.iter_mut().enumerate() {
            *count = lanes[0][v] + lanes[1][v] + lanes[2][v] + lanes[3][v];
        }
        let max = counts.iter().rposition(|&c| c > 0).unwrap_or(0) as u8;
        Histogram { counts, max }
    }
}

/// Registers at zero: sixteen byte counters at a time, emptied before they
/// can wrap (a plain filter-count widens every byte to 64 bits).
pub(super) fn zeros(regs: &[u8]) -> usize {
    let mut total = 0;
    for block in regs.chunks(255 * 16) {
        let mut lanes = [0u8; 16];
        let mut chunks = block.chunks_exact(16);
        for c in &mut chunks {
            for (lane, &r) in lanes.iter_mut().zip(c) {
                *lane += u8::from(r == 0);
            }
        }
        total += lanes.iter().map(|&n| usize::from(n)).sum::<usize>();
        total += chunks.remainder().iter().filter(|&&r| r == 0).count();
    }
    total
}

/// The crate's `count()` of the `2^precision` registers with histogram
/// `hist`, past linear counting (the caller has checked its threshold);
/// `None` if the crate's sum of `2^-r` would round (see the module docs).
pub(super) fn count_above_linear(precision: u8, hist: &Histogram) -> Option<f64> {
    let m = 1usize << precision;
    if u32::from(precision) + 1 + u32::from(hist.max) > f64::MANTISSA_DIGITS {
        return None;
    }
    // Σ count_r · 2^(64 - r): exact, and below 2^(64 + p + 1).
    let scaled: u128 = hist.counts[..=usize::from(hist.max)]
        .iter()
        .enumerate()
        .map(|(r, &c)| u128::from(c) << (64 - r))
        .sum();
    // At most 53 significant bits (checked above): both steps are exact.
    let sum = scaled as f64 / 18_446_744_073_709_551_616.0;
    let mut raw = alpha(m) * (m * m) as f64 / sum;
    if raw <= 5.0 * m as f64 {
        raw -= bias(precision, raw);
    }
    Some(raw)
}

/// The crate's `alpha` for `m` registers.
fn alpha(m: usize) -> f64 {
    match m {
        16 => 0.673,
        32 => 0.697,
        64 => 0.709,
        _ => 0.7213 / (1.0 + 1.079 / m as f64),
    }
}

/// The crate's `estimate_bias`: the bias at `raw`, linear between the
/// table's neighbouring raw estimates, the end values outside them.
fn bias(precision: u8, raw: f64) -> f64 {
    let at = usize::from(precision - FIRST_PRECISION);
    let (estimates, biases) = (RAW_ESTIMATES[at], BIASES[at]);
    if raw <= estimates[0] {
        return biases[0];
    } else if estimates[estimates.len() - 1] <= raw {
        return biases[biases.len() - 1];
    }
    let idx = match estimates.binary_search_by(|e| e.partial_cmp(&raw).expect("no NaN")) {
        Ok(i) | Err(i) => i,
    };
    let prv = idx - 1;
    let ratio = (raw - estimates[prv]) / (estimates[idx] - estimates[prv]);
    biases[prv] + ratio * (biases[idx] - biases[prv])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One bias per raw estimate at every precision. (The raw estimates
    /// are not all ascending, at p = 5; the search is the crate's, so the
    /// answers are too.)
    #[test]
    fn the_tables_cover_every_precision_pairwise() {
        for p in super::super::MIN_PRECISION..=super::super::MAX_PRECISION {
            let at = usize::from(p - FIRST_PRECISION);
            assert!(RAW_ESTIMATES[at].len() >= 2, "p={p}");
            assert_eq!(RAW_ESTIMATES[at].len(), BIASES[at].len(), "p={p}");
        }
    }

    #[test]
    fn the_histogram_counts_every_register() {
        let regs: Vec<u8> = (0..1027u32).map(|i| (i * 7 % 23) as u8).collect();
        let h = Histogram::of(&regs);
        for v in 0..=255u8 {
            let n = regs.iter().filter(|&&r| r == v).count() as u32;
            assert_eq!(h.counts[usize::from(v)], n, "value {v}");
        }
        assert_eq!(h.max, 22);
        for len in [0, 15, 16, 17, 4080, 4081, 9000] {
            let regs: Vec<u8> = (0..len)
                .map(|i: u32| u8::from(i.is_multiple_of(3)))
                .collect();
            let want = regs.iter().filter(|&&r| r == 0).count();
            assert_eq!(zeros(&regs), want, "len {len}");
        }
        assert_eq!(zeros(&[0; 9000]), 9000);
        assert_eq!(Histogram::of(&[]).max, 0);
    }

    #[test]
    fn a_sum_that_would_round_is_not_answered() {
        let mut regs = vec![1u8; 1 << 14];
        regs[0] = 39; // 14 + 1 + 39 = 54 bits
        assert_eq!(count_above_linear(14, &Histogram::of(&regs)), None);
        regs[0] = 38;
        assert!(count_above_linear(14, &Histogram::of(&regs)).is_some());
    }
}
