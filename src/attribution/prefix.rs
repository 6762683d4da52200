//! Longest-prefix-match building blocks, generic over the address width.
//!
//! This file owns three things:
//!
//! * [`Addr`]: the address trait, implemented for `u32` (IPv4) and `u128` (IPv6) only.
//! * [`PrefixTableBuilder`] / [`PrefixTable`]: collect CIDR prefixes (or inclusive ranges, which
//!   are split into CIDR blocks with `ipnet`) carrying a `u32` value, and compile them into a
//!   flat interval map in which the longest prefix has already been resolved.
//! * [`IntervalMap`]: the query structure. A sorted array of interval start addresses, a parallel
//!   array of values, and a first-level index over 2^`index_bits` buckets that narrows a query to
//!   a short slice, which is then binary-searched with `partition_point`.
//!
//! Invariants of a built [`IntervalMap`]:
//! * `starts[0] == A::ZERO`, `starts` is strictly increasing, `starts.len() == vals.len() >= 1`;
//!   interval `i` covers `starts[i] ..= starts[i + 1] - 1` (the last one runs to `A::MAX`), so
//!   every address maps to exactly one value (a "no value" is an explicit value).
//! * Neighbouring intervals never carry equal values (runs are merged at build time).
//! * `index[k]` is the interval containing the first address of bucket `k` (`index[0] == 0`), and
//!   `index[buckets] == len - 1`; so an address in bucket `k` lies in an interval with an index in
//!   `index[k] ..= index[k + 1]`.
//!
//! Resolution rule of [`PrefixTableBuilder::build`]: the longest prefix containing an address
//! wins. Two entries with the *same* prefix (same network and length) resolve to the one inserted
//! LAST (for file loaders: the row that appears later in the file); the earlier one is counted in
//! [`PrefixTable::shadowed`].

use std::fmt::Debug;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u128 {}
}

/// An IP address as an unsigned integer: `u32` for IPv4, `u128` for IPv6.
pub trait Addr: Copy + Ord + Eq + Hash + Debug + Send + Sync + 'static + sealed::Sealed {
    /// Address width in bits (32 or 128).
    const BITS: u32;
    /// The all-zero address.
    const ZERO: Self;
    /// The all-ones address.
    const MAX: Self;
    /// "IPv4" or "IPv6", for messages.
    const FAMILY: &'static str;

    /// Widen to `u128` (for build-time arithmetic).
    fn to_u128(self) -> u128;
    /// Narrow from `u128`, keeping the low bits.
    fn from_u128(v: u128) -> Self;
    /// Parse a textual address of this family. A valid address of the other family is reported
    /// as a family mismatch.
    fn parse_addr(s: &str) -> Result<Self, String>;
    /// Split the inclusive range `start..=end` into the minimal list of CIDR blocks, in order.
    fn for_each_cidr(start: Self, end: Self, f: impl FnMut(Self, u8));
    /// Render as text.
    fn display(self) -> String;
    /// `(self - base) >> shift`, saturating at 0 below `base` and at `u64::MAX` above.
    fn bucket(self, base: Self, shift: u32) -> u64;
}

/// Mask with the low `BITS - len` bits set (the host part of a `/len` prefix).
fn host_mask_u128(bits: u32, len: u8) -> u128 {
    let host = bits - u32::from(len);
    if host == 0 {
        0
    } else if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

impl Addr for u32 {
    const BITS: u32 = 32;
    const ZERO: Self = 0;
    const MAX: Self = u32::MAX;
    const FAMILY: &'static str = "IPv4";

    #[inline]
    fn to_u128(self) -> u128 {
        u128::from(self)
    }
    #[inline]
    fn from_u128(v: u128) -> Self {
        v as u32
    }
    fn parse_addr(s: &str) -> Result<Self, String> {
        match s.parse::<Ipv4Addr>() {
            Ok(a) => Ok(u32::from(a)),
            Err(_) if s.parse::<Ipv6Addr>().is_ok() => Err(format!(
                "address family mismatch: expected an IPv4 address, found IPv6 address {s:?}"
            )),
            Err(_) => Err(format!("bad IPv4 address {s:?}")),
        }
    }
    fn for_each_cidr(start: Self, end: Self, mut f: impl FnMut(Self, u8)) {
        for net in Ipv4Subnets::new(Ipv4Addr::from(start), Ipv4Addr::from(end), 0) {
            f(u32::from(net.network()), net.prefix_len());
        }
    }
    fn display(self) -> String {
        Ipv4Addr::from(self).to_string()
    }
    #[inline(always)]
    fn bucket(self, base: Self, shift: u32) -> u64 {
        u64::from(self.saturating_sub(base)) >> shift
    }
}

impl Addr for u128 {
    const BITS: u32 = 128;
    const ZERO: Self = 0;
    const MAX: Self = u128::MAX;
    const FAMILY: &'static str = "IPv6";

    #[inline]
    fn to_u128(self) -> u128 {
        self
    }
    #[inline]
    fn from_u128(v: u128) -> Self {
        v
    }
    fn parse_addr(s: &str) -> Result<Self, String> {
        match s.parse::<Ipv6Addr>() {
            Ok(a) => Ok(u128::from(a)),
            Err(_) if s.parse::<Ipv4Addr>().is_ok() => Err(format!(
                "address family mismatch: expected an IPv6 address, found IPv4 address {s:?}"
            )),
            Err(_) => Err(format!("bad IPv6 address {s:?}")),
        }
    }
    fn for_each_cidr(start: Self, end: Self, mut f: impl FnMut(Self, u8)) {
        for net in Ipv6Subnets::new(Ipv6Addr::from(start), Ipv6Addr::from(end), 0) {
            f(u128::from(net.network()), net.prefix_len());
        }
    }
    fn display(self) -> String {
        Ipv6Addr::from(self).to_string()
    }
    #[inline(always)]
    fn bucket(self, base: Self, shift: u32) -> u64 {
        let d = self.saturating_sub(base).checked_shr(shift).unwrap_or(0);
        u64::try_from(d).unwrap_or(u64::MAX)
    }
}

/// Split an [`IpNet`] into `(network, prefix_len)` for the matching family; `None` if the family
/// differs from `A`.
pub fn net_as<A: Addr>(net: &IpNet) -> Option<(A, u8)> {
    match (net, A::BITS) {
        (IpNet::V4(n), 32) => Some((
            A::from_u128(u128::from(u32::from(n.network()))),
            n.prefix_len(),
        )),
        (IpNet::V6(n), 128) => Some((A::from_u128(u128::from(n.network())), n.prefix_len())),
        _ => None,
    }
}

/// The "no value" marker inside [`PrefixTable`]'s interval map.
pub const NO_VALUE: u32 = u32::MAX;

/// Default number of first-level index bits (2^16 buckets, 256 KiB of index).
pub const DEFAULT_INDEX_BITS: u32 = 16;

/// Collects prefixes with `u32` values; [`build`](Self::build) resolves them into a
/// [`PrefixTable`]. Entries are numbered in insertion order; see the module docs for the rule.
#[derive(Debug, Clone)]
pub struct PrefixTableBuilder<A: Addr> {
    entries: Vec<Entry<A>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry<A> {
    start: A,
    len: u8,
    seq: u32,
    value: u32,
}

impl<A: Addr> Default for PrefixTableBuilder<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Addr> PrefixTableBuilder<A> {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Add the prefix `prefix/len` with `value`. Host bits of `prefix` are cleared.
    ///
    /// # Panics
    /// If `len > A::BITS`, if `value == NO_VALUE` (`u32::MAX`), or past 2^32 - 1 entries.
    pub fn insert(&mut self, prefix: A, len: u8, value: u32) {
        assert!(
            u32::from(len) <= A::BITS,
            "prefix length {len} > {}",
            A::BITS
        );
        assert_ne!(
            value, NO_VALUE,
            "u32::MAX is reserved as the no-value marker"
        );
        let seq = u32::try_from(self.entries.len()).expect("too many prefixes");
        let start = A::from_u128(prefix.to_u128() & !host_mask_u128(A::BITS, len));
        self.entries.push(Entry {
            start,
            len,
            seq,
            value,
        });
    }

    /// Add the inclusive range `start..=end`, split into CIDR blocks; returns how many blocks.
    /// A range with `end < start` adds nothing and returns 0 (loaders reject it earlier).
    pub fn insert_range(&mut self, start: A, end: A, value: u32) -> usize {
        if end < start {
            return 0;
        }
        let mut n = 0;
        A::for_each_cidr(start, end, |p, len| {
            self.insert(p, len, value);
            n += 1;
        });
        n
    }

    /// Number of prefixes inserted so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resolve longest-prefix match into a flat interval map with the default index size.
    pub fn build(self) -> PrefixTable<A> {
        self.build_with_index_bits(DEFAULT_INDEX_BITS)
    }

    /// As [`build`](Self::build) with a chosen first-level index size (0..=24 bits).
    pub fn build_with_index_bits(mut self, index_bits: u32) -> PrefixTable<A> {
        let prefixes = self.entries.len();
        // Parents (shorter) before children at the same start; equal prefixes in insertion order.
        self.entries
            .sort_unstable_by_key(|e| (e.start, e.len, e.seq));
        // Equal prefixes: the last inserted wins.
        let before = self.entries.len();
        self.entries.dedup_by(|later, earlier| {
            if later.start == earlier.start && later.len == earlier.len {
                *earlier = *later;
                true
            } else {
                false
            }
        });
        let shadowed = before - self.entries.len();

        // Sweep: CIDR blocks are laminar (nested or disjoint), so a stack of open blocks gives
        // the innermost (longest) one at every point.
        let mut runs: Vec<(A, u32)> = Vec::with_capacity(self.entries.len() + 2);
        let push = |runs: &mut Vec<(A, u32)>, pos: u128, value: u32| {
            let pos = A::from_u128(pos);
            match runs.last_mut() {
                Some(last) if last.0 == pos => last.1 = value,
                _ => runs.push((pos, value)),
            }
        };
        runs.push((A::ZERO, NO_VALUE));
        let mut stack: Vec<(u128, u32)> = Vec::with_capacity(A::BITS as usize + 1);
        for e in &self.entries {
            let s = e.start.to_u128();
            while let Some(&(end, _)) = stack.last() {
                if end >= s {
                    break;
                }
                stack.pop();
                let resume = stack.last().map_or(NO_VALUE, |t| t.1);
                push(&mut runs, end + 1, resume);
            }
            push(&mut runs, s, e.value);
            stack.push((s | host_mask_u128(A::BITS, e.len), e.value));
        }
        while let Some((end, _)) = stack.pop() {
            if end == A::MAX.to_u128() {
                break; // everything below ends at MAX too
            }
            let resume = stack.last().map_or(NO_VALUE, |t| t.1);
            push(&mut runs, end + 1, resume);
        }
        self.entries = Vec::new();
        PrefixTable {
            map: IntervalMap::from_runs(runs, index_bits),
            prefixes,
            shadowed,
        }
    }
}

/// A compiled longest-prefix-match table with `u32` values. Immutable.
#[derive(Debug, Clone)]
pub struct PrefixTable<A: Addr> {
    map: IntervalMap<A, u32>,
    prefixes: usize,
    shadowed: usize,
}

impl<A: Addr> Default for PrefixTable<A> {
    fn default() -> Self {
        PrefixTableBuilder::new().build_with_index_bits(0)
    }
}

impl<A: Addr> PrefixTable<A> {
    /// The value of the longest prefix containing `ip`, if any.
    #[inline]
    pub fn lookup(&self, ip: A) -> Option<u32> {
        let v = self.map.get(ip);
        (v != NO_VALUE).then_some(v)
    }

    /// Prefixes inserted (before removing shadowed duplicates).
    pub fn prefixes(&self) -> usize {
        self.prefixes
    }

    /// Prefixes that were dropped because a later entry had the same network and length.
    pub fn shadowed(&self) -> usize {
        self.shadowed
    }

    /// The resolved intervals (value [`NO_VALUE`] where no prefix matches).
    pub fn intervals(&self) -> &IntervalMap<A, u32> {
        &self.map
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.map.heap_bytes()
    }
}

/// A total map from addresses to values, stored as sorted non-overlapping intervals with a
/// first-level bucket index. See the module docs for the invariants.
#[derive(Debug, Clone)]
pub struct IntervalMap<A, V> {
    starts: Vec<A>,
    vals: Vec<V>,
    index: Vec<u32>,
    base: A,
    shift: u32,
    last_bucket: u64,
}

impl<A: Addr, V: Copy + Eq> IntervalMap<A, V> {
    /// Every address maps to `v`.
    pub fn constant(v: V) -> Self {
        Self::from_runs([(A::ZERO, v)], 0)
    }

    /// Build from `(start, value)` runs. The first start must be `A::ZERO` and starts must be
    /// non-decreasing; of runs with equal starts the last is kept, and neighbouring runs with
    /// equal values are merged. `index_bits` (0..=24) sizes the first-level index.
    ///
    /// # Panics
    /// If the runs are empty, do not start at zero, are not sorted, or `index_bits > 24`.
    pub fn from_runs(runs: impl IntoIterator<Item = (A, V)>, index_bits: u32) -> Self {
        assert!(index_bits <= 24, "index_bits must be <= 24");
        let runs = runs.into_iter();
        let mut starts: Vec<A> = Vec::with_capacity(runs.size_hint().0);
        let mut vals: Vec<V> = Vec::with_capacity(runs.size_hint().0);
        for (s, v) in runs {
            if let Some(&last) = starts.last() {
                assert!(s >= last, "runs not sorted: {s:?} after {last:?}");
                if s == last {
                    vals.pop();
                    starts.pop();
                }
            } else {
                assert!(s == A::ZERO, "runs must start at address zero");
            }
            if vals.last() == Some(&v) {
                continue;
            }
            starts.push(s);
            vals.push(v);
        }
        assert!(!starts.is_empty(), "no runs");
        starts.shrink_to_fit();
        vals.shrink_to_fit();
        let mut m = IntervalMap {
            starts,
            vals,
            index: Vec::new(),
            base: A::ZERO,
            shift: 0,
            last_bucket: 0,
        };
        m.build_index(index_bits);
        m
    }

    /// Choose `base`/`shift` so the buckets span the occupied part of the address space (the
    /// common leading bits of the second and last start), then fill the index.
    fn build_index(&mut self, index_bits: u32) {
        let n = self.starts.len();
        let (base, span_bits) = if n >= 2 {
            let lo = self.starts[1].to_u128();
            let hi = self.starts[n - 1].to_u128();
            let common = ((lo ^ hi) << (128 - A::BITS)).leading_zeros().min(A::BITS);
            let keep = if common == 0 {
                0
            } else {
                !host_mask_u128(A::BITS, common as u8) & host_mask_u128(A::BITS, 0)
            };
            (lo & keep, A::BITS - common)
        } else {
            (0, A::BITS)
        };
        let shift = span_bits.saturating_sub(index_bits);
        let buckets: u64 = 1 << span_bits.min(index_bits);
        self.base = A::from_u128(base);
        self.shift = shift;
        self.last_bucket = buckets - 1;
        let mut index = Vec::with_capacity(buckets as usize + 1);
        index.push(0u32);
        let mut i = 0usize;
        for k in 1..buckets {
            let first = base + (u128::from(k) << shift);
            while i + 1 < n && self.starts[i + 1].to_u128() <= first {
                i += 1;
            }
            index.push(i as u32);
        }
        index.push((n - 1) as u32);
        self.index = index;
    }

    /// The value at `ip` (hot path).
    #[inline(always)]
    pub fn get(&self, ip: A) -> V {
        self.vals[self.position(ip)]
    }

    /// Index of the interval containing `ip`.
    #[inline(always)]
    pub fn position(&self, ip: A) -> usize {
        let k = ip.bucket(self.base, self.shift).min(self.last_bucket) as usize;
        let lo = self.index[k] as usize;
        let hi = self.index[k + 1] as usize;
        // Invariant: starts[lo] <= ip, and the answer is in lo..=hi, so the partition point
        // within the slice is >= 1.
        lo + self.starts[lo..=hi].partition_point(|&s| s <= ip) - 1
    }

    /// The value at `ip` by a plain binary search over all starts (no index). For comparison
    /// and testing.
    pub fn get_unindexed(&self, ip: A) -> V {
        let p = self.starts.partition_point(|&s| s <= ip);
        self.vals[p - 1]
    }

    /// The first-level index layout: `(base, shift, buckets)`; bucket `k` starts at address
    /// `base + (k << shift)`, addresses below `base` fall in bucket 0 and above the last bucket in
    /// the last one.
    pub fn index_layout(&self) -> (A, u32, u64) {
        (self.base, self.shift, self.last_bucket + 1)
    }

    /// Number of intervals.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Always false (a map has at least one interval); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Interval start addresses (sorted, first is zero).
    pub fn starts(&self) -> &[A] {
        &self.starts
    }

    /// Interval values, parallel to [`starts`](Self::starts).
    pub fn values(&self) -> &[V] {
        &self.vals
    }

    /// `(first, last, value)` for every interval, in address order.
    pub fn runs(&self) -> impl Iterator<Item = (A, A, V)> + '_ {
        (0..self.starts.len()).map(move |i| {
            let end = match self.starts.get(i + 1) {
                Some(next) => A::from_u128(next.to_u128() - 1),
                None => A::MAX,
            };
            (self.starts[i], end, self.vals[i])
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<A>()
            + self.vals.capacity() * std::mem::size_of::<V>()
            + self.index.capacity() * std::mem::size_of::<u32>()
    }
}

/// Overlay several `u32`-valued maps: the result maps each address to `f(&[m0(ip), m1(ip), ..])`.
/// Runs in time linear in the total number of intervals.
pub fn combine<A: Addr, V: Copy + Eq>(
    maps: &[&IntervalMap<A, u32>],
    index_bits: u32,
    mut f: impl FnMut(&[u32]) -> V,
) -> IntervalMap<A, V> {
    let mut cursor = vec![0usize; maps.len()];
    let mut current: Vec<u32> = maps.iter().map(|m| m.vals[0]).collect();
    let mut runs: Vec<(A, V)> = Vec::with_capacity(maps.iter().map(|m| m.len()).sum());
    runs.push((A::ZERO, f(&current)));
    loop {
        // Next boundary: the smallest next start over all maps.
        let next = maps
            .iter()
            .zip(&cursor)
            .filter_map(|(m, &c)| m.starts.get(c + 1).copied())
            .min();
        let Some(pos) = next else { break };
        for (j, m) in maps.iter().enumerate() {
            if m.starts.get(cursor[j] + 1) == Some(&pos) {
                cursor[j] += 1;
                current[j] = m.vals[cursor[j]];
            }
        }
        runs.push((pos, f(&current)));
    }
    IntervalMap::from_runs(runs, index_bits)
}
