//! Days as a reader writes them: `2026-04-01`, an RFC 3339 time
//! (`2026-04-01T12:00:00Z`, `2026-04-01T02:00:00+02:00`: its UTC day),
//! `today`, or a distance from today: `-30d`, `-4w`, `+1d`.
//!
//! A window's `to` stays exclusive whichever form names it: `--from -30d
//! --to today` is the 30 days before today. Today is the UTC day of the
//! caller's clock, passed in, so that tests and pages agree on it.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{quoted, Error, Result};
use crate::time::{Day, DayWindow};

/// The day `text` names, with `today` for the relative forms; an error
/// names `field`.
pub fn parse_day(field: &str, text: &str, today: Day) -> Result<Day> {
    let text = text.trim();
    let relative = |sign: i64, rest: &str| -> Option<Day> {
        let (n, unit) = rest.split_at(rest.len().checked_sub(1)?);
        let n: i64 = n.parse().ok()?;
        let days = match unit {
            "d" => n,
            "w" => n.checked_mul(7)?,
            _ => return None,
        };
        let day = i64::from(today.0).checked_add(sign.checked_mul(days)?)?;
        u32::try_from(day).ok().map(Day)
    };
    let parsed = match text {
        "today" => Some(today),
        "yesterday" => today.0.checked_sub(1).map(Day),
        _ if text.starts_with('-') => relative(-1, &text[1..]),
        _ if text.starts_with('+') => relative(1, &text[1..]),
        _ if text.len() > 10 => OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .and_then(|t| Day::from_unix_seconds(t.unix_timestamp())),
        _ => Day::parse(text).ok(),
    };
    parsed.ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "{} is not a day: write YYYY-MM-DD, an RFC 3339 time (its UTC day), today, \
                 or a distance from today such as -30d or -4w",
                quoted(text)
            ),
        )
    })
}

/// The window `[from, to)` the two texts name; a reversed window is an
/// error naming `to_field`.
pub fn parse_window(
    from_field: &str,
    from: &str,
    to_field: &str,
    to: &str,
    today: Day,
) -> Result<DayWindow> {
    let from_day = parse_day(from_field, from, today)?;
    let to_day = parse_day(to_field, to, today)?;
    if from_day > to_day {
        return Err(Error::invalid(
            to_field,
            format!("window is reversed: {from_field} {from_day} is after {to_field} {to_day}"),
        ));
    }
    Ok(DayWindow {
        from: from_day,
        to: to_day,
    })
}

/// Today's UTC day by the system clock.
pub fn today() -> Day {
    Day::from_unix_seconds(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(Day(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_in_every_form() {
        let today = Day::parse("2026-12-06").unwrap();
        let day = |t: &str| parse_day("from", t, today).map(|d| d.to_string());
        assert_eq!(day("2026-04-01").unwrap(), "2026-04-01");
        assert_eq!(day("today").unwrap(), "2026-12-06");
        assert_eq!(day("yesterday").unwrap(), "2026-12-05");
        assert_eq!(day("-30d").unwrap(), "2026-11-06");
        assert_eq!(day("-4w").unwrap(), "2026-11-08");
        assert_eq!(day("+1d").unwrap(), "2026-12-07");
        assert_eq!(day("2026-04-01T23:30:00Z").unwrap(), "2026-04-01");
        assert_eq!(day("2026-04-02T01:00:00+02:00").unwrap(), "2026-04-01");
        for bad in ["2026-13-01", "-30", "-30y", "soon", "", "-99999999d"] {
            let err = day(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid from: "), "{err}");
            assert!(err.contains("-30d"), "{err}");
        }
        let w = parse_window("from", "-30d", "to", "today", today).unwrap();
        assert_eq!(w.len(), 30);
        let err = parse_window("a_from", "today", "a_to", "-1d", today).unwrap_err();
        assert!(err.to_string().contains("invalid a_to: window is reversed"));
    }
}
