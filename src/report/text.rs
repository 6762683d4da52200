//! A [`Report`] as text tables: numbers with thousands separators, every
//! estimate and every change with its 95 % interval (or "exact"), windows
//! as asked with the days that hold data beside them when they differ.

use std::fmt::Write as _;

use super::{Change, CountryLine, Report, Sort, Window};
use crate::query::Retention;
use crate::sketch::Estimate;

/// `1234567` as `1,234,567` (rounded to a whole number).
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if rounded < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count with its interval: `7,003,720 [6,950,112–7,057,330]`, or
/// `21,763 exact`.
pub fn count(e: &Estimate) -> String {
    if e.exact {
        format!("{} exact", thousands(e.value))
    } else {
        format!(
            "{} [{}–{}]",
            thousands(e.value),
            thousands(e.lower),
            thousands(e.upper)
        )
    }
}

/// A change in % with its interval: `-68.0 % [-68.4, -67.6]`,
/// `-63.3 % exact`, or `n/a` (nothing in A).
pub fn pct(e: Option<&Estimate>) -> String {
    match e {
        None => "n/a (none in A)".into(),
        Some(e) if e.exact => format!("{:+.1} % exact", e.value),
        Some(e) => format!("{:+.1} % [{:+.1}, {:+.1}]", e.value, e.lower, e.upper),
    }
}

/// `kept of seen = share %`.
pub fn retained(r: &Retention) -> String {
    format!(
        "{} of {} = {:.1} %",
        thousands(r.in_both as f64),
        thousands(r.in_a as f64),
        100.0 * r.share()
    )
}

/// `2026-04-01 to 2026-05-01 (exclusive, 30 days)`, with `; data: …` when
/// only part of it holds data.
pub fn window(w: &Window) -> String {
    let mut s = format!(
        "{} to {} (exclusive, {} days)",
        w.asked.from,
        w.asked.to,
        w.asked.len()
    );
    if w.covered != w.asked {
        if w.covered.is_empty() {
            s.push_str("; no data in it");
        } else {
            let _ = write!(
                s,
                "; data only from {} to {} (exclusive)",
                w.covered.from, w.covered.to
            );
        }
    }
    s
}

fn sorted_by(sort: Sort) -> &'static str {
    match sort {
        Sort::A => "largest in the first window first",
        Sort::B => "largest in the second window first",
        Sort::Change => "largest decline in IPs first",
        Sort::Name => "by country code",
    }
}

fn change_row(out: &mut String, what: &str, c: &Change) {
    let _ = writeln!(
        out,
        "  {what:<6} {:>34} {:>34} {:>30}",
        count(&c.a),
        count(&c.b),
        pct(c.pct.as_ref())
    );
}

fn country_table(out: &mut String, a: &str, b: &str, lines: &[CountryLine]) {
    let _ = writeln!(
        out,
        "  {:<7} {:>34} {:>34} {:>28} {:>8} {:>8} {:>18} {:>22}",
        "country",
        format!("IPs {a}"),
        format!("IPs {b}"),
        "IP change",
        format!("orgs {a}"),
        format!("orgs {b}"),
        "org change",
        "orgs retained"
    );
    for l in lines {
        let _ = writeln!(
            out,
            "  {:<7} {:>34} {:>34} {:>28} {:>8} {:>8} {:>18} {:>22}",
            l.country,
            count(&l.ips.a),
            count(&l.ips.b),
            pct(l.ips.pct.as_ref()),
            thousands(l.orgs.a.value),
            thousands(l.orgs.b.value),
            pct(l.orgs.pct.as_ref()),
            retained(&l.retention)
        );
    }
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sketchd report: namespace {}", r.namespace);
    let _ = writeln!(out, "A  {}", window(&r.a));
    let _ = writeln!(out, "B  {}", window(&r.b));
    if let Some(cut) = &r.cut {
        let _ = writeln!(
            out,
            "cut-off {}: before = {}, after = {}",
            cut.day,
            window(&cut.before),
            window(&cut.after)
        );
    }
    let _ = writeln!(
        out,
        "\nglobal {:>34} {:>34} {:>30}",
        "A [95 % interval]", "B", "change [95 % interval]"
    );
    change_row(&mut out, "IPs", &r.global.ips);
    change_row(&mut out, "orgs", &r.global.orgs);
    let _ = writeln!(
        out,
        "  organisations seen in A still seen in B: {} (exact)",
        retained(&r.global.retention)
    );

    if !r.countries.is_empty() {
        let _ = writeln!(out, "\ncountries, {}:", sorted_by(r.sort));
        country_table(&mut out, "A", "B", &r.countries);
    }

    if let Some(cut) = &r.cut {
        let _ = writeln!(out, "\nacross the cut-off {}:", cut.day);
        let _ = writeln!(
            out,
            "  {:<6} {:>34} {:>34} {:>30}",
            "", "before", "after", "change"
        );
        change_row(&mut out, "IPs", &cut.global.ips);
        change_row(&mut out, "orgs", &cut.global.orgs);
        let _ = writeln!(
            out,
            "  organisations seen before {} still seen after: {} (exact)",
            cut.day,
            retained(&cut.global.retention)
        );
        if !cut.countries.is_empty() {
            let _ = writeln!(out, "  countries, {}:", sorted_by(r.sort));
            country_table(&mut out, "before", "after", &cut.countries);
        }
    }

    if !r.sectors.is_empty() {
        let (before, after) = match &r.cut {
            Some(cut) => (
                format!("seen before {}", cut.day),
                "still seen after".to_owned(),
            ),
            None => ("seen in A".to_owned(), "still seen in B".to_owned()),
        };
        let _ = writeln!(out, "\norganisations per sector and country (exact):");
        let _ = writeln!(
            out,
            "  {:<16} {:<8} {:>20} {:>20} {:>8}",
            "sector", "country", before, after, "share"
        );
        for line in &r.sectors {
            let _ = writeln!(
                out,
                "  {:<16} {:<8} {:>20} {:>20} {:>7.1}%",
                line.sector,
                line.country.as_deref().unwrap_or("all"),
                thousands(line.retention.in_a as f64),
                thousands(line.retention.in_both as f64),
                100.0 * line.retention.share()
            );
            for org in line.orgs.iter().flatten() {
                let _ = writeln!(
                    out,
                    "      {} {:<12} {}{}",
                    if org.retained { "still" } else { "gone " },
                    org.id,
                    if org.name.is_empty() {
                        "(no name)"
                    } else {
                        &org.name
                    },
                    org.country
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_separators_and_intervals() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(7_003_720.0), "7,003,720");
        assert_eq!(thousands(-12_345.0), "-12,345");
        let e = Estimate {
            value: 7_003_720.0,
            lower: 6_950_112.0,
            upper: 7_057_330.0,
            confidence: 0.95,
            exact: false,
        };
        assert_eq!(count(&e), "7,003,720 [6,950,112–7,057,330]");
        assert_eq!(count(&Estimate::exact(21_763)), "21,763 exact");
        assert_eq!(pct(None), "n/a (none in A)");
    }
}
