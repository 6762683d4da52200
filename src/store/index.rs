//! Small, exact, in-memory indexes kept beside the sketches.
//!
//! - `names`: org, sector and country/sector dimension -> name, for group rows;
//! - `table_versions`: the attribution table versions each namespace's
//!   batches were attributed with;
//! - `dims`: which dimensions a family has (countries, orgs), for group-by;
//! - `presence`: per namespace an [`OrgPresence`]: for each country, the
//!   days each org was seen there, and their union over countries (the days
//!   each org was seen anywhere), each an [`OrgDays`] table of day bitmaps
//!   sharing one span. Exact and small (a few words per (org, country)), so
//!   organisation retention, and org counts globally and per country, are
//!   answered exactly from it; a country's orgs are read without touching
//!   other countries'. Invariants: every (org, country, day) inserted is in
//!   that country's table and in the union; only counted orgs (never
//!   `unattributed`) are inserted, exactly as into the org sketch families;
//! - `regions`: the [`RegionMark`] of each region merged into this server
//!   (replication provenance). Defined here, not in `memtable` (which
//!   re-exports it), so that `memtable` imports `index` and not the reverse.
//!
//! The [`Index`] is the full state: loaded from sled at start, updated when
//! a batch is applied. Memtables carry the new entries since the last
//! checkpoint, which writes them to sled (presence bits are OR-ed, the
//! rest is insert-only), so the index survives restarts. Sled keeps
//! presence per (org, country) (`DayBits`); the per-country tables and the
//! union are built from those records at start.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};

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

    /// Removes every day before `cutoff`.
    pub fn clear_before(&mut self, cutoff: Day) {
        for (i, w) in self.words.iter_mut().enumerate() {
            let start = self.base + 64 * i as u32;
            if start + 64 <= cutoff.0 {
                *w = 0;
            } else if start < cutoff.0 {
                *w &= !0u64 << (cutoff.0 - start);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
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
        WordMask::new(self.base, self.words.len(), window).is_some_and(|m| m.hits(&self.words))
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

/// The words of a bitmap that a window touches, with the masks of its
/// first and last word (the words between are wholly inside). Built once
/// per window and bitmap layout; rows of the same layout share it.
#[derive(Clone, Debug)]
struct WordMask {
    first: usize,
    first_mask: u64,
    /// Words strictly between the first and the last (empty if they are
    /// the same or adjacent).
    middle: std::ops::Range<usize>,
    last: usize,
    /// 0 when the window lies in one word (`first_mask` then has both ends).
    last_mask: u64,
}

impl WordMask {
    /// The mask of `window` over `words` words from the 64-aligned `base`;
    /// `None` when they do not meet.
    fn new(base: u32, words: usize, window: DayWindow) -> Option<WordMask> {
        let base = u64::from(base);
        let from = u64::from(window.from.0).max(base);
        let to = u64::from(window.to.0).min(base + 64 * words as u64);
        if from >= to {
            return None;
        }
        let (from, last_day) = (from - base, to - 1 - base);
        let (first, last) = ((from / 64) as usize, (last_day / 64) as usize);
        let first_mask = u64::MAX << (from % 64);
        let last_mask = u64::MAX >> (63 - last_day % 64);
        Some(if first == last {
            WordMask {
                first,
                first_mask: first_mask & last_mask,
                middle: 0..0,
                last,
                last_mask: 0,
            }
        } else {
            WordMask {
                first,
                first_mask,
                middle: first + 1..last,
                last,
                last_mask,
            }
        })
    }

    /// Whether `row` (laid out as the mask was built for) has a day inside.
    #[inline]
    fn hits(&self, row: &[u64]) -> bool {
        let mut any = (row[self.first] & self.first_mask) | (row[self.last] & self.last_mask);
        for w in &row[self.middle.clone()] {
            any |= w;
        }
        any != 0
    }
}

/// The days each org was seen in one place (one country, or anywhere).
///
/// Column-major day bits: the span of days (the union of every org's days,
/// from a 64-aligned base) is cut into columns of 64 days, and a column
/// holds one word per org row. A window touches one or two columns unless
/// it is longer than 64 days, so counting the orgs seen in it reads one or
/// two contiguous arrays of `rows` words (OR-ed and masked in chunks that
/// stay in cache), not every word of every row. The span grows by whole
/// columns when a day outside it arrives (about once per 64 days of new
/// data), without moving the others; an org costs one word per column even
/// if it was seen on one day, and ingest's age and skew limits bound the
/// span.
#[derive(Clone, Debug, Default)]
pub struct OrgDays {
    /// Day of bit 0 of column 0; a multiple of 64.
    base: u32,
    /// Column -> one word per row (`orgs.len()` of them).
    cols: Vec<Vec<u64>>,
    /// Row -> org dimension.
    orgs: Vec<u64>,
    /// Org dimension -> row.
    rows: FxHashMap<u64, u32>,
}

impl OrgDays {
    /// Orgs with at least one day.
    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    pub fn insert(&mut self, org: u64, day: Day) {
        let word_base = day.0 & !63;
        self.cover(word_base, u64::from(word_base) + 64);
        let row = self.row(org);
        self.cols[((day.0 - self.base) / 64) as usize][row] |= 1 << (day.0 % 64);
    }

    /// Adds every day of `days` to `org`'s row.
    pub fn insert_days(&mut self, org: u64, days: &DayBits) {
        let Some(last) = days.words.iter().rposition(|&w| w != 0) else {
            return;
        };
        let first = days.words.iter().position(|&w| w != 0).unwrap_or(last);
        let from = days.base + 64 * first as u32;
        self.cover(from, u64::from(days.base) + 64 * (last as u64 + 1));
        let row = self.row(org);
        let offset = ((from - self.base) / 64) as usize;
        for (i, w) in days.words[first..=last].iter().enumerate() {
            self.cols[offset + i][row] |= w;
        }
    }

    /// The days `org` was seen here, if any.
    pub fn days(&self, org: u64) -> Option<DayBits> {
        let row = *self.rows.get(&org)? as usize;
        Some(DayBits {
            base: self.base,
            words: self.cols.iter().map(|col| col[row]).collect(),
        })
    }

    /// How many orgs were seen on a day of `window`.
    pub fn count_in(&self, window: DayWindow) -> u64 {
        let mut count = 0;
        self.rows_in(window, |_, hits| {
            count += hits.iter().filter(|&&w| w != 0).count() as u64;
        });
        count
    }

    /// The orgs seen on a day of `window`.
    pub fn orgs_in(&self, window: DayWindow) -> impl Iterator<Item = u64> + '_ {
        let mut orgs = Vec::new();
        self.rows_in(window, |first, hits| {
            let seen = hits.iter().enumerate().filter(|(_, &w)| w != 0);
            orgs.extend(seen.map(|(i, _)| self.orgs[first + i]));
        });
        orgs.into_iter()
    }

    /// Of the orgs that `keep` accepts: how many were seen in `a`, and how
    /// many of those also in `b`. `keep` is asked only about orgs seen in `a`.
    pub fn retention(
        &self,
        a: DayWindow,
        b: DayWindow,
        mut keep: impl FnMut(u64) -> bool,
    ) -> (u64, u64) {
        let in_b = WordMask::new(self.base, self.cols.len(), b);
        let mut b_hits = [0u64; ROW_CHUNK];
        let (mut seen, mut retained) = (0, 0);
        self.rows_in(a, |first, hits| {
            let b_hits = &mut b_hits[..hits.len()];
            match &in_b {
                Some(mask) => self.mask_rows(mask, first, b_hits),
                None => b_hits.fill(0),
            }
            for (i, (&in_a, &in_b)) in hits.iter().zip(b_hits.iter()).enumerate() {
                if in_a != 0 && keep(self.orgs[first + i]) {
                    seen += 1;
                    retained += u64::from(in_b != 0);
                }
            }
        });
        (seen, retained)
    }

    /// Calls `f(first, hits)` for consecutive chunks of rows from row 0,
    /// `hits[i]` being row `first + i`'s days within `window` (non-zero iff
    /// the org was seen in it). Nothing is called if the window misses
    /// the span.
    fn rows_in(&self, window: DayWindow, mut f: impl FnMut(usize, &[u64])) {
        let Some(mask) = WordMask::new(self.base, self.cols.len(), window) else {
            return;
        };
        let mut hits = [0u64; ROW_CHUNK];
        for first in (0..self.orgs.len()).step_by(ROW_CHUNK) {
            let n = ROW_CHUNK.min(self.orgs.len() - first);
            self.mask_rows(&mask, first, &mut hits[..n]);
            f(first, &hits[..n]);
        }
    }

    /// Fills `hits` with rows `first..first + hits.len()` under `mask`.
    fn mask_rows(&self, mask: &WordMask, first: usize, hits: &mut [u64]) {
        let rows = first..first + hits.len();
        let col = &self.cols[mask.first][rows.clone()];
        for (h, w) in hits.iter_mut().zip(col) {
            *h = w & mask.first_mask;
        }
        for col in &self.cols[mask.middle.clone()] {
            for (h, w) in hits.iter_mut().zip(&col[rows.clone()]) {
                *h |= w;
            }
        }
        if mask.last_mask != 0 {
            for (h, w) in hits.iter_mut().zip(&self.cols[mask.last][rows]) {
                *h |= w & mask.last_mask;
            }
        }
    }

    /// The row of `org`, added (empty) if new. The span must be laid out.
    fn row(&mut self, org: u64) -> usize {
        let next = self.orgs.len() as u32;
        let row = *self.rows.entry(org).or_insert(next);
        if row == next {
            self.orgs.push(org);
            for col in &mut self.cols {
                col.push(0);
            }
        }
        row as usize
    }

    /// Widens the span to hold the days `[from, to)` (`from` 64-aligned,
    /// `to` a multiple of 64) with empty columns on either side.
    fn cover(&mut self, from: u32, to: u64) {
        let rows = self.orgs.len();
        if self.cols.is_empty() {
            self.base = from;
        }
        if from < self.base {
            let add = ((self.base - from) / 64) as usize;
            self.cols
                .splice(0..0, std::iter::repeat_with(|| vec![0; rows]).take(add));
            self.base = from;
        }
        let end = u64::from(self.base) + 64 * self.cols.len() as u64;
        if to > end {
            let add = ((to - end) / 64) as usize;
            self.cols
                .extend(std::iter::repeat_with(|| vec![0; rows]).take(add));
        }
    }
}

/// Rows masked at a time: two arrays of this many words stay in L1.
const ROW_CHUNK: usize = 512;

/// Org presence of one namespace: per country the days each org was seen
/// there, and the union over countries (an org's days anywhere), so that
/// global and per-country questions read one [`OrgDays`] each.
#[derive(Clone, Debug, Default)]
pub struct OrgPresence {
    countries: FxHashMap<[u8; 2], OrgDays>,
    anywhere: OrgDays,
}

impl OrgPresence {
    pub fn insert(&mut self, oc: OrgCountry, day: Day) {
        self.countries
            .entry(oc.country)
            .or_default()
            .insert(oc.org, day);
        self.anywhere.insert(oc.org, day);
    }

    pub fn insert_days(&mut self, oc: OrgCountry, days: &DayBits) {
        self.countries
            .entry(oc.country)
            .or_default()
            .insert_days(oc.org, days);
        self.anywhere.insert_days(oc.org, days);
    }

    /// Forgets every day before `cutoff` (orgs left without a day go).
    pub fn remove_days_before(&mut self, cutoff: Day) {
        let trim = |days: &OrgDays| {
            let mut kept = OrgDays::default();
            for &org in &days.orgs {
                let mut bits = days.days(org).unwrap_or_default();
                bits.clear_before(cutoff);
                if !bits.is_empty() {
                    kept.insert_days(org, &bits);
                }
            }
            kept
        };
        self.countries = self
            .countries
            .iter()
            .map(|(cc, days)| (*cc, trim(days)))
            .filter(|(_, days)| !days.is_empty())
            .collect();
        self.anywhere = trim(&self.anywhere);
    }

    /// The orgs seen in `country`, if any was.
    pub fn country(&self, country: [u8; 2]) -> Option<&OrgDays> {
        self.countries.get(&country)
    }

    /// Every country with orgs, in no particular order.
    pub fn countries(&self) -> impl Iterator<Item = ([u8; 2], &OrgDays)> {
        self.countries.iter().map(|(cc, days)| (*cc, days))
    }

    /// Every org, with its days in any country.
    pub fn anywhere(&self) -> &OrgDays {
        &self.anywhere
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
    pub names: FxHashMap<(NamespaceId, u64), String>,
    pub table_versions: HashMap<NamespaceId, std::collections::BTreeSet<String>>,
    pub dims: HashMap<(NamespaceId, Family), FxHashSet<u64>>,
    pub presence: HashMap<NamespaceId, OrgPresence>,
    /// Regions merged into this server (replication provenance).
    pub regions: std::collections::BTreeMap<String, RegionMark>,
}

impl Index {
    pub fn name(&self, ns: NamespaceId, dim: u64) -> Option<&str> {
        self.names.get(&(ns, dim)).map(String::as_str)
    }

    pub fn dims(&self, ns: NamespaceId, family: Family) -> impl Iterator<Item = u64> + '_ {
        self.dims.get(&(ns, family)).into_iter().flatten().copied()
    }

    /// Forgets everything of a deleted namespace.
    pub fn remove_namespace(&mut self, ns: NamespaceId) {
        self.names.retain(|(n, _), _| *n != ns);
        self.table_versions.remove(&ns);
        self.dims.retain(|(n, _), _| *n != ns);
        self.presence.remove(&ns);
    }
}

/// Provenance of one region merged into this server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionMark {
    /// The highest revision of the region merged.
    pub revision: u64,
    /// When it was merged (unix seconds).
    pub merged_at: i64,
    /// Records merged from the region in all.
    pub records: u64,
}

impl RegionMark {
    pub fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.revision.to_le_bytes());
        v[8..16].copy_from_slice(&self.merged_at.to_le_bytes());
        v[16..].copy_from_slice(&self.records.to_le_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<RegionMark> {
        if bytes.len() != 24 {
            return None;
        }
        Some(RegionMark {
            revision: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            merged_at: i64::from_le_bytes(bytes[8..16].try_into().ok()?),
            records: u64::from_le_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn removing_days_before_a_cutoff_keeps_exactly_the_later_ones() {
        let mut bits = DayBits::default();
        for d in [3, 63, 64, 65, 130, 200] {
            bits.insert(Day(d));
        }
        bits.clear_before(Day(65));
        assert_eq!(bits.iter().collect::<Vec<_>>(), [65, 130, 200].map(Day));
        bits.clear_before(Day(201));
        assert!(bits.is_empty());

        let mut p = OrgPresence::default();
        let oc = |org, country| OrgCountry { org, country };
        p.insert(oc(1, *b"DE"), Day(10));
        p.insert(oc(1, *b"US"), Day(100));
        p.insert(oc(2, *b"DE"), Day(20));
        p.remove_days_before(Day(50));
        let all = DayWindow {
            from: Day(0),
            to: Day(1000),
        };
        assert_eq!(p.anywhere().count_in(all), 1);
        assert_eq!(p.anywhere().len(), 1);
        assert!(p.country(*b"DE").is_none());
        assert_eq!(p.country(*b"US").unwrap().count_in(all), 1);
    }

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

    /// A small xorshift generator.
    fn rng(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

    /// Windows of many lengths and places around `days`, including ones
    /// outside every row and the whole line.
    fn windows(days: std::ops::Range<u32>) -> Vec<DayWindow> {
        let mut out = vec![DayWindow {
            from: Day(0),
            to: Day(u32::MAX),
        }];
        for from in (days.start - 70..days.end + 70).step_by(7) {
            for len in [0, 1, 2, 30, 63, 64, 65, 128, 150, 400] {
                out.push(DayWindow {
                    from: Day(from),
                    to: Day(from + len),
                });
            }
        }
        out
    }

    #[test]
    fn org_days_agree_with_a_set_of_days_per_org() {
        let mut next = rng(0x0dd5_eed5);
        let mut table = OrgDays::default();
        let mut truth: HashMap<u64, std::collections::BTreeSet<u32>> = HashMap::new();
        // Days arrive out of order and widen the span on both sides; some
        // orgs get whole bitmaps (a load or a replicated merge).
        for step in 0..3_000u64 {
            let org = 1_000 + next(120);
            let day = 20_100 + next(230) as u32 - if step > 2_000 { 150 } else { 0 };
            if next(10) == 0 {
                let mut bits = DayBits::default();
                for d in [day, day + next(90) as u32, day + 200] {
                    bits.insert(Day(d));
                    truth.entry(org).or_default().insert(d);
                }
                table.insert_days(org, &bits);
            } else {
                table.insert(org, Day(day));
                truth.entry(org).or_default().insert(day);
            }
        }
        table.insert_days(7, &DayBits::default());
        assert_eq!(table.len(), truth.len(), "an empty bitmap adds no org");
        for (org, days) in &truth {
            let got: Vec<u32> = table.days(*org).unwrap().iter().map(|d| d.0).collect();
            assert_eq!(got, days.iter().copied().collect::<Vec<_>>());
        }
        let all = windows(19_950..20_330);
        for (i, w) in all.iter().enumerate() {
            let seen = |org: &u64| truth[org].iter().any(|d| w.contains(Day(*d)));
            let want: HashSet<u64> = truth.keys().copied().filter(seen).collect();
            assert_eq!(table.count_in(*w), want.len() as u64, "{w:?}");
            assert_eq!(table.orgs_in(*w).collect::<HashSet<_>>(), want, "{w:?}");
            let b = all[(i * 7 + 3) % all.len()];
            let even = |org: u64| org.is_multiple_of(2);
            let in_b = |org: &u64| truth[org].iter().any(|d| b.contains(Day(*d)));
            let kept: Vec<u64> = want.iter().copied().filter(|o| even(*o)).collect();
            assert_eq!(
                table.retention(*w, b, even),
                (
                    kept.len() as u64,
                    kept.iter().filter(|o| in_b(o)).count() as u64
                ),
                "{w:?} {b:?}"
            );
        }
        let empty = OrgDays::default();
        assert_eq!(empty.count_in(all[0]), 0);
        assert_eq!(empty.orgs_in(all[0]).count(), 0);
        assert_eq!(empty.retention(all[0], all[0], |_| true), (0, 0));
    }

    #[test]
    fn org_presence_keeps_countries_apart_and_their_union() {
        let mut next = rng(0x0c0f_fee0);
        let mut presence = OrgPresence::default();
        let mut truth: HashMap<OrgCountry, std::collections::BTreeSet<u32>> = HashMap::new();
        let countries = [*b"DE", *b"US", *b"JP", *b"BR"];
        for _ in 0..2_000 {
            let oc = OrgCountry {
                org: next(60),
                country: countries[next(4) as usize],
            };
            let day = 20_000 + next(214) as u32;
            if next(4) == 0 {
                let mut bits = DayBits::default();
                bits.insert(Day(day));
                presence.insert_days(oc, &bits);
            } else {
                presence.insert(oc, Day(day));
            }
            truth.entry(oc).or_default().insert(day);
        }
        let mut listed: Vec<[u8; 2]> = presence.countries().map(|(cc, _)| cc).collect();
        listed.sort();
        let mut want_countries = countries.to_vec();
        want_countries.sort();
        assert_eq!(listed, want_countries);
        assert!(presence.country(*b"FR").is_none());
        for w in windows(20_000..20_214) {
            let seen = |(oc, days): (&OrgCountry, &std::collections::BTreeSet<u32>)| {
                days.iter().any(|d| w.contains(Day(*d))).then_some(*oc)
            };
            let pairs: Vec<OrgCountry> = truth.iter().filter_map(seen).collect();
            for cc in countries {
                let want = pairs.iter().filter(|oc| oc.country == cc).count() as u64;
                assert_eq!(presence.country(cc).unwrap().count_in(w), want, "{w:?}");
            }
            let anywhere: HashSet<u64> = pairs.iter().map(|oc| oc.org).collect();
            assert_eq!(presence.anywhere().count_in(w), anywhere.len() as u64);
        }
    }
}
