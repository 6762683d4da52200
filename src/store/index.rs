//! Small, exact, in-memory indexes kept beside the sketches.
//!
//! - `names`: org, sector and country/sector dimension -> name, for group rows;
//! - `table_versions`: the attribution table versions each namespace's
//!   batches were attributed with;
//! - `dims`: which dimensions a family has (countries, orgs), for group-by;
//! - `presence`: per (org, country) the set of days it was seen, exact.
//!   Org presence is tiny (an org is seen on a few hundred days at most),
//!   so organisation retention is answered exactly from it.
//!
//! The [`Index`] is the full state: loaded from sled at start, updated when
//! a batch is applied. Memtables carry the new entries since the last
//! checkpoint, which writes them to sled (presence bits are OR-ed, the
//! rest is insert-only), so the index survives restarts.

use std::collections::{HashMap, HashSet};

use crate::store::keys::{Family, NamespaceId};
use crate::time::{Day, DayWindow};

/// A set of days as a bitmap from a 64-aligned base day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayBits {
    base: u32,
    words: Vec<u64>,
}

impl DayBits {
    pub fn insert(&mut self, day: Day) {
        let word_base = day.0 & !63;
        if self.words.is_empty() {
            self.base = word_base;
        } else if word_base < self.base {
            let shift = ((self.base - word_base) / 64) as usize;
            self.words.splice(0..0, std::iter::repeat_n(0, shift));
            self.base = word_base;
        }
        let word = ((day.0 - self.base) / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (day.0 % 64);
    }

    pub fn union(&mut self, other: &DayBits) {
        for day in other.iter() {
            self.insert(day);
        }
    }

    pub fn contains(&self, day: Day) -> bool {
        if day.0 < self.base {
            return false;
        }
        let word = ((day.0 - self.base) / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << (day.0 % 64)) != 0)
    }

    /// Whether any day of `window` is in the set: word masks, not days.
    pub fn any_in(&self, window: DayWindow) -> bool {
        let end = self.base as u64 + 64 * self.words.len() as u64;
        let from = u64::from(window.from.0).max(u64::from(self.base));
        let to = u64::from(window.to.0).min(end);
        if from >= to {
            return false;
        }
        let (first, last) = (
            ((from - u64::from(self.base)) / 64) as usize,
            ((to - 1 - u64::from(self.base)) / 64) as usize,
        );
        (first..=last).any(|i| {
            let word_start = u64::from(self.base) + 64 * i as u64;
            let lo = from.max(word_start) - word_start;
            let hi = to.min(word_start + 64) - word_start;
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.words[i] & mask != 0
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Day> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| Day(self.base + (i as u32) * 64 + b))
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.words.len());
        out.extend_from_slice(&self.base.to_le_bytes());
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<DayBits> {
        if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
            return None;
        }
        let base = u32::from_le_bytes(bytes[..4].try_into().ok()?);
        if base % 64 != 0 {
            return None;
        }
        let words = bytes[4..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some(DayBits { base, words })
    }
}

/// Where an org was seen: its dimension and the row's country.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgCountry {
    pub org: u64,
    pub country: [u8; 2],
}

/// The full index of every namespace.
#[derive(Default)]
pub struct Index {
    pub names: HashMap<(NamespaceId, u64), String>,
    pub table_versions: HashMap<NamespaceId, std::collections::BTreeSet<String>>,
    pub dims: HashMap<(NamespaceId, Family), HashSet<u64>>,
    pub presence: HashMap<NamespaceId, HashMap<OrgCountry, DayBits>>,
    /// Regions merged into this server (replication provenance).
    pub regions: std::collections::BTreeMap<String, crate::store::memtable::RegionMark>,
}

impl Index {
    pub fn name(&self, ns: NamespaceId, dim: u64) -> Option<&str> {
        self.names.get(&(ns, dim)).map(String::as_str)
    }

    pub fn dims(&self, ns: NamespaceId, family: Family) -> impl Iterator<Item = u64> + '_ {
        self.dims.get(&(ns, family)).into_iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_bits_insert_in_any_order() {
        let mut bits = DayBits::default();
        let days = [20_100, 19_900, 20_500, 19_900, 20_163, 20_164];
        for d in days {
            bits.insert(Day(d));
        }
        let got: Vec<u32> = bits.iter().map(|d| d.0).collect();
        assert_eq!(got, vec![19_900, 20_100, 20_163, 20_164, 20_500]);
        assert!(bits.contains(Day(20_163)) && !bits.contains(Day(20_162)));
        assert!(bits.any_in(DayWindow::new(Day(20_101), Day(20_164)).unwrap()));
        assert!(!bits.any_in(DayWindow::new(Day(20_101), Day(20_163)).unwrap()));
        assert_eq!(DayBits::decode(&bits.encode()), Some(bits.clone()));
        let mut other = DayBits::default();
        other.insert(Day(5));
        other.union(&bits);
        assert_eq!(other.iter().count(), 6);
        assert_eq!(DayBits::decode(&[1, 0, 0, 0]), None);
        // The word masks agree with a day-by-day scan on every window.
        for from in 19_850..20_560 {
            for len in [0, 1, 2, 37, 63, 64, 65, 200, 700] {
                let w = DayWindow {
                    from: Day(from),
                    to: Day(from + len),
                };
                let naive = bits.iter().any(|d| w.contains(d));
                assert_eq!(bits.any_in(w), naive, "{w:?}");
            }
        }
        assert!(!DayBits::default().any_in(DayWindow {
            from: Day(0),
            to: Day(u32::MAX)
        }));
    }
}
