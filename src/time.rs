//! UTC days and half-open windows of days.
//!
//! A [`Day`] is a count of days since 1970-01-01 (UTC). Observations before
//! 1970 are not representable and are rejected at validation. A [`DayWindow`]
//! is `[from, to)`; `from <= to` always holds for a constructed window. A
//! [`Block`] is an aligned run of `2^level` days; [`DayWindow::cover`] tiles
//! a window with the fewest blocks of a given set of levels.
//! Time-dependent code reads the time from a [`Clock`] so tests can pin it.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use time::{macros::format_description, Date, OffsetDateTime};

use crate::error::{quoted, Error, Result};

/// Seconds in a UTC day.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// `unix_seconds` as an RFC 3339 UTC time (`2019-04-10T14:22:30Z`), for
/// messages; `None` past the year 9999.
pub fn utc_text(unix_seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `unix_seconds` followed by its UTC time in parentheses, when it has one.
pub fn seconds_text(unix_seconds: i64) -> String {
    match utc_text(unix_seconds) {
        Some(utc) => format!("{unix_seconds} ({utc})"),
        None => unix_seconds.to_string(),
    }
}

/// A UTC day: days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u32);

impl Day {
    /// The day holding `unix_seconds`, or `None` before 1970 or after the
    /// year 11 million.
    pub fn from_unix_seconds(unix_seconds: i64) -> Option<Day> {
        if unix_seconds < 0 {
            return None;
        }
        u32::try_from(unix_seconds / SECONDS_PER_DAY).ok().map(Day)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> std::result::Result<Day, String> {
        let format = format_description!("[year]-[month]-[day]");
        let date = Date::parse(text, &format)
            .map_err(|e| format!("{} is not a date YYYY-MM-DD ({e})", quoted(text)))?;
        let unix = date.midnight().assume_utc().unix_timestamp();
        Day::from_unix_seconds(unix).ok_or_else(|| format!("{} is before 1970-01-01", quoted(text)))
    }

    /// Parses a field of a request, naming the field in the error.
    pub fn parse_field(field: &str, text: &str) -> Result<Day> {
        Day::parse(text).map_err(|reason| Error::invalid(field, reason))
    }

    /// Unix seconds at the start of this day.
    pub fn start_unix_seconds(self) -> i64 {
        i64::from(self.0) * SECONDS_PER_DAY
    }

    pub fn next(self) -> Day {
        Day(self.0.saturating_add(1))
    }

    /// The first day of the calendar month after this day's.
    pub fn first_of_next_month(self) -> Day {
        let Ok(t) = OffsetDateTime::from_unix_timestamp(self.start_unix_seconds()) else {
            return self.next();
        };
        let (year, month) = match t.month() {
            time::Month::December => (t.year() + 1, time::Month::January),
            m => (t.year(), m.next()),
        };
        Date::from_calendar_date(year, month, 1)
            .ok()
            .and_then(|d| Day::from_unix_seconds(d.midnight().assume_utc().unix_timestamp()))
            .unwrap_or_else(|| self.next())
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.start_unix_seconds()) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}",
                t.year(),
                u8::from(t.month()),
                t.day()
            ),
            Err(_) => write!(f, "day+{}", self.0),
        }
    }
}

/// A half-open window of days `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayWindow {
    pub from: Day,
    pub to: Day,
}

impl DayWindow {
    /// A window; `from > to` is an error naming the fields.
    pub fn new(from: Day, to: Day) -> Result<DayWindow> {
        if from > to {
            return Err(Error::invalid(
                "to",
                format!("window is reversed: from {from} is after to {to}"),
            ));
        }
        Ok(DayWindow { from, to })
    }

    /// Parses the `from`/`to` fields of a request.
    pub fn parse(from_field: &str, from: &str, to_field: &str, to: &str) -> Result<DayWindow> {
        let from = Day::parse_field(from_field, from)?;
        let to = Day::parse_field(to_field, to)?;
        if from > to {
            return Err(Error::invalid(
                to_field,
                format!("window is reversed: {from_field} {from} is after {to_field} {to}"),
            ));
        }
        Ok(DayWindow { from, to })
    }

    pub fn is_empty(&self) -> bool {
        self.from == self.to
    }

    pub fn len(&self) -> u32 {
        self.to.0 - self.from.0
    }

    pub fn contains(&self, day: Day) -> bool {
        self.from <= day && day < self.to
    }

    /// The part of this window inside `other` (empty at `self.from` when
    /// they do not meet).
    pub fn intersect(&self, other: &DayWindow) -> DayWindow {
        let from = self.from.max(other.from);
        let to = self.to.min(other.to);
        if from >= to {
            DayWindow {
                from: self.from,
                to: self.from,
            }
        } else {
            DayWindow { from, to }
        }
    }

    pub fn days(&self) -> impl Iterator<Item = Day> {
        (self.from.0..self.to.0).map(Day)
    }

    /// The fewest aligned blocks of the given levels that tile the window
    /// exactly, in order: from each day on, the largest block of `levels`
    /// that starts there (aligned) and ends within the window. `levels` must
    /// be strictly increasing and start at 0 (days), so that a block of one
    /// level is a union of blocks of each lower level; then these blocks are
    /// the maximal blocks inside the window, and no tiling has fewer. For
    /// levels `l0 < l1 < ... < lk` that is at most `2^(l(i+1) - li) - 1`
    /// blocks of each level `li < lk` on either side, plus
    /// `len / 2^lk` of level `lk`.
    pub fn cover(&self, levels: &[u8]) -> Vec<Block> {
        debug_assert!(levels.first() == Some(&0), "levels must start with days");
        debug_assert!(levels.windows(2).all(|w| w[0] < w[1] && w[1] < 32));
        let mut blocks = Vec::new();
        let (mut at, end) = (u64::from(self.from.0), u64::from(self.to.0));
        while at < end {
            let level = levels
                .iter()
                .rev()
                .copied()
                .find(|&l| at % (1u64 << l) == 0 && at + (1u64 << l) <= end)
                .unwrap_or(0);
            blocks.push(Block {
                level,
                start: Day(at as u32),
            });
            at += 1u64 << level;
        }
        blocks
    }
}

/// An aligned dyadic block of days: `[start, start + 2^level)`, with
/// `start` a multiple of `2^level`. Level 0 is one day. Which levels are
/// stored is the store's choice (`store::ROLLUP_LEVELS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub level: u8,
    pub start: Day,
}

impl Block {
    /// The block of `level` that holds `day`.
    pub fn containing(day: Day, level: u8) -> Block {
        Block {
            level,
            start: Day(day.0 >> level << level),
        }
    }

    pub fn days(&self) -> u32 {
        1 << self.level
    }

    /// The blocks of a lower `level` that tile this one, in order.
    pub fn parts(self, level: u8) -> impl Iterator<Item = Block> {
        debug_assert!(level <= self.level);
        let step = 1u32 << level;
        (0..1u32 << (self.level - level)).map(move |i| Block {
            level,
            start: Day(self.start.0 + i * step),
        })
    }
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now_unix_seconds(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_seconds(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(unix_seconds: i64) -> ManualClock {
        ManualClock(AtomicI64::new(unix_seconds))
    }

    pub fn set(&self, unix_seconds: i64) {
        self.0.store(unix_seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_seconds(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_days() {
        let d = Day::parse("2026-04-01").unwrap();
        assert_eq!(d.start_unix_seconds(), 1_775_001_600);
        assert_eq!(d.to_string(), "2026-04-01");
        assert_eq!(Day::parse("1970-01-01").unwrap(), Day(0));
        assert_eq!(d.first_of_next_month().to_string(), "2026-05-01");
        let dec = Day::parse("2026-12-31").unwrap();
        assert_eq!(dec.first_of_next_month().to_string(), "2027-01-01");
        assert!(Day::parse("1969-12-31").is_err());
        assert!(Day::parse("2026-02-30").is_err());
        assert!(Day::parse("2026-4-1").is_err());
    }

    #[test]
    fn day_of_unix_seconds() {
        assert_eq!(Day::from_unix_seconds(86_399), Some(Day(0)));
        assert_eq!(Day::from_unix_seconds(86_400), Some(Day(1)));
        assert_eq!(Day::from_unix_seconds(-1), None);
    }

    #[test]
    fn windows() {
        let w = DayWindow::parse("from", "2026-04-01", "to", "2026-04-08").unwrap();
        assert_eq!(w.len(), 7);
        assert_eq!(w.days().count(), 7);
        assert!(w.contains(w.from) && !w.contains(w.to));
        let err = DayWindow::parse("from", "2026-04-08", "to", "2026-04-01").unwrap_err();
        assert!(err.to_string().contains("reversed"), "{err}");
        let other = DayWindow::new(Day(w.from.0 + 3), Day(w.to.0 + 10)).unwrap();
        assert_eq!(
            w.intersect(&other),
            DayWindow::new(other.from, w.to).unwrap()
        );
        let far = DayWindow::new(Day(w.to.0 + 5), Day(w.to.0 + 6)).unwrap();
        assert!(w.intersect(&far).is_empty());
    }

    /// A small deterministic generator for the cover tests.
    fn lcg(seed: u64) -> impl FnMut(u32) -> u32 {
        let mut seed = seed;
        move |n: u32| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as u32) % n
        }
    }

    /// The most blocks a cover with `levels` may have for `len` days.
    fn cover_bound(levels: &[u8], len: u32) -> u32 {
        let top = *levels.last().unwrap();
        let sides: u32 = levels
            .windows(2)
            .map(|w| 2 * ((1u32 << (w[1] - w[0])) - 1))
            .sum();
        sides + len / (1 << top)
    }

    #[test]
    fn covers_tile_windows_exactly_with_few_aligned_blocks() {
        let mut next = lcg(12345);
        let sets: [&[u8]; 5] = [
            &[0],
            &[0, 1, 2, 3],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[0, 2, 4, 6, 8],
            &[0, 3, 5, 8],
        ];
        for i in 0..3000 {
            let from = next(5000);
            // Some windows longer than the largest block, some aligned ones.
            let len = if i % 10 == 0 {
                next(40) * 64
            } else {
                next(1200)
            };
            let w = DayWindow::new(Day(from), Day(from + len)).unwrap();
            for levels in sets {
                let cover = w.cover(levels);
                let mut at = w.from.0;
                for b in &cover {
                    assert_eq!(b.start.0, at, "blocks must tile in order");
                    assert!(levels.contains(&b.level), "{b:?} is not stored");
                    assert_eq!(Block::containing(b.start, b.level), *b, "aligned");
                    at += b.days();
                }
                assert_eq!(at, w.to.0, "{w:?} {levels:?}: the cover ends at `to`");
                let bound = cover_bound(levels, len);
                assert!(
                    cover.len() as u32 <= bound,
                    "{w:?} {levels:?}: {} blocks > {bound}",
                    cover.len()
                );
            }
        }
        assert!(DayWindow::new(Day(7), Day(7))
            .unwrap()
            .cover(&[0, 2, 4, 6, 8])
            .is_empty());
    }

    #[test]
    fn covers_are_the_maximal_blocks_inside_the_window() {
        // No two neighbours of the same level may form a stored block of
        // the next level inside the window: otherwise fewer blocks would do.
        let mut next = lcg(99);
        let levels = [0u8, 2, 4, 6, 8];
        for _ in 0..2000 {
            let from = next(3000);
            let w = DayWindow::new(Day(from), Day(from + next(2000))).unwrap();
            let cover = w.cover(&levels);
            for b in &cover {
                for &up in levels.iter().filter(|&&l| l > b.level) {
                    let parent = Block::containing(b.start, up);
                    let inside = parent.start >= w.from && parent.start.0 + parent.days() <= w.to.0;
                    assert!(!inside, "{w:?}: {b:?} lies in {parent:?}");
                }
            }
        }
        // A worked example: 3 days, 3 blocks of 4, one of 16, then back down.
        let w = DayWindow::new(Day(1), Day(35)).unwrap();
        let got: Vec<(u8, u32)> = w
            .cover(&levels)
            .iter()
            .map(|b| (b.level, b.start.0))
            .collect();
        assert_eq!(
            got,
            [
                (0, 1),
                (0, 2),
                (0, 3),
                (2, 4),
                (2, 8),
                (2, 12),
                (4, 16),
                (0, 32),
                (0, 33),
                (0, 34)
            ]
        );
    }

    #[test]
    fn parts_tile_a_block() {
        let b = Block::containing(Day(1000), 6);
        let parts: Vec<Block> = b.parts(4).collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].start, b.start);
        assert!(parts.windows(2).all(|p| p[1].start.0 == p[0].start.0 + 16));
        assert!(parts.iter().all(|p| Block::containing(p.start, 6) == b));
        assert_eq!(b.parts(6).collect::<Vec<_>>(), [b]);
    }
}
