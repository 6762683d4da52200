//! Dense registers: the update rule of `hyperloglogplus` 0.4.1 (index from
//! the top `p` bits, rank from the rest), the register ceiling, and the
//! byte-wise max that merges two register arrays.

/// Largest legal register value at `precision`: `64 - p + 1`.
pub(super) const fn max_register(precision: u8) -> u8 {
    64 - precision + 1
}

/// Register index and rank of `hash` in dense mode: exactly the update rule
/// of `hyperloglogplus` 0.4.1.
#[inline(always)]
pub(super) fn index_rank(hash: u64, precision: u8) -> (usize, u8) {
    let index = (hash >> (64 - precision)) as usize;
    let w = (hash << precision) | (1u64 << (precision - 1));
    (index, (1 + w.leading_zeros()) as u8)
}

/// `dst[i] = max(dst[i], src[i])`; returns whether anything changed.
/// Written as a plain zip so it auto-vectorises.
#[inline]
pub(super) fn max_into(dst: &mut [u8], src: &[u8]) -> bool {
    let mut changed = 0u8;
    for (d, &s) in dst.iter_mut().zip(src) {
        changed |= u8::from(s > *d);
        *d = (*d).max(s);
    }
    changed != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::estimate::crate_hll_bytes;
    use crate::sketch::testing::*;
    use crate::sketch::*;
    use hyperloglogplus::HyperLogLog;

    #[test]
    fn dense_rank_boundaries() {
        for p in [MIN_PRECISION, 14, MAX_PRECISION] {
            let mut s = sketch_of(p, &random_hashes(9, exact_limit(p) + 1));
            // Hash 0: index 0 and the largest legal rank 64 - p + 1.
            s.insert_hash(0);
            assert_eq!(s.dense_registers().unwrap()[0], max_register(p));
            // All ones: last register, rank 1.
            let (i, r) = index_rank(u64::MAX, p);
            assert_eq!((i, r), ((1 << p) - 1, 1));
            let back = Sketch::decode(&s.encode()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn dense_insert_matches_the_crates_dense_insert() {
        let p = 14;
        // Force the crate into dense mode, then insert in dense mode on both
        // sides, including extreme hashes.
        let warm = random_hashes(11, 20_000);
        let mut extra = random_hashes(12, 50_000);
        extra.extend([
            0,
            1,
            u64::MAX,
            1 << 63,
            (1 << 50) - 1,
            0x0003_0000_0000_0000,
        ]);
        let mut hll = crate_dense(p, &warm);
        assert!(crate_is_dense(&bincode::serialize(&hll).unwrap()));
        let mut ours = sketch_of(p, &warm);
        for h in &extra {
            hll.insert(h);
            ours.insert_hash(*h);
        }
        let regs = ours.dense_registers().unwrap();
        let zeros = regs.iter().filter(|&&r| r == 0).count();
        assert_eq!(
            crate_hll_bytes(p, regs, zeros),
            bincode::serialize(&hll).unwrap()
        );
        assert_eq!(
            ours.estimate().value,
            crate::sketch::estimate::elements_of_hashes(hll.count())
        );
    }

    // ---- envelope ----------------------------------------------------------------
}
