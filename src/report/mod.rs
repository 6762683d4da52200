//! The study in one call: a [`Report`] of two windows A (before) and B
//! (after) and optionally a cut-off day between them, built from the query
//! answers of a [`Source`] (a server over gRPC, or this process's engine for
//! the web page), then printed as text ([`text`]), JSON ([`json`]) or drawn
//! ([`chart`]).
//!
//! What it holds:
//! * the windows as asked, and the part of each that holds data;
//! * global distinct IPs and orgs in A and B with the change and its
//!   interval, and org retention from A to B (exact);
//! * one line per country (the largest by IPs in A, or the ones asked):
//!   IPs and orgs in A and B with their changes, and org retention;
//! * with a cut-off: the span `[A's first day, cut-off)` against
//!   `[cut-off, B's end)`: org retention and the IP change across it,
//!   globally and for the same countries;
//! * one line per country and sector (and per sector over all countries):
//!   the orgs seen before (A, or before the cut-off), how many are still
//!   seen after, and on request their names.
//!
//! Lines are sorted as the reader asks ([`Sort`]).

pub mod chart;
pub mod dates;
pub mod json;
pub mod source;
pub mod text;

pub use source::{Local, Source};

use crate::client::ClientError;
use crate::error::Error;
use crate::query::{change_pct, CompareRow, GroupBy, Metric, Retention, Scope};
use crate::sketch::Estimate;
use crate::time::{Day, DayWindow};

/// What can stop a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A question was refused (this process's engine), or the request is bad.
    #[error(transparent)]
    Query(#[from] Error),
    #[error("a query task failed: {0}")]
    Task(String),
}

/// How lines are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Largest in A first (distinct IPs).
    #[default]
    A,
    /// Largest in B first.
    B,
    /// Largest decline first (lowest change in %); lines without a change last.
    Change,
    /// By name (country code, sector).
    Name,
}

impl Sort {
    pub fn parse(field: &str, text: &str) -> Result<Sort, Error> {
        match text {
            "a" => Ok(Sort::A),
            "b" => Ok(Sort::B),
            "change" => Ok(Sort::Change),
            "name" => Ok(Sort::Name),
            other => Err(Error::invalid(
                field,
                format!(
                    "{} is not an order: use a, b, change or name",
                    crate::error::quoted(other)
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::A => "a",
            Sort::B => "b",
            Sort::Change => "change",
            Sort::Name => "name",
        }
    }

    /// Orders `rows` by their `(name, a, b, change)`.
    pub fn apply<T>(self, rows: &mut [T], key: impl Fn(&T) -> (&str, f64, f64, Option<f64>)) {
        rows.sort_by(|x, y| {
            let (nx, ax, bx, cx) = key(x);
            let (ny, ay, by, cy) = key(y);
            let order = match self {
                Sort::A => ay.total_cmp(&ax),
                Sort::B => by.total_cmp(&bx),
                Sort::Change => match (cx, cy) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                },
                Sort::Name => std::cmp::Ordering::Equal,
            };
            order.then_with(|| nx.cmp(ny))
        });
    }
}

/// What a report is asked.
#[derive(Clone, Debug)]
pub struct ReportSpec {
    pub namespace: String,
    pub a: DayWindow,
    pub b: DayWindow,
    /// Splits `[a.from, b.to)` in two for retention and change across it.
    pub cutoff: Option<Day>,
    /// The countries of the per-country lines; empty: the `top` largest by
    /// distinct IPs in A.
    pub countries: Vec<[u8; 2]>,
    pub top: usize,
    pub sort: Sort,
    /// List the orgs of each country × sector line.
    pub names: bool,
}

impl ReportSpec {
    /// Checks what can be checked before asking anything: the cut-off
    /// lies strictly inside `[a.from, b.to)`.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(cut) = self.cutoff {
            if cut <= self.a.from || cut >= self.b.to {
                return Err(Error::invalid(
                    "cutoff",
                    format!(
                        "{cut} is not inside the study's span {} to {} (from A's first day to \
                         B's end, exclusive); give a day between them",
                        self.a.from, self.b.to
                    ),
                ));
            }
        }
        if self.a.is_empty() || self.b.is_empty() {
            let field = if self.a.is_empty() { "a_to" } else { "b_to" };
            return Err(Error::invalid(
                field,
                "the window is empty: its end must be after its first day",
            ));
        }
        Ok(())
    }

    /// The two sides of the cut-off: `[a.from, cutoff)` and `[cutoff, b.to)`.
    pub fn cut_windows(&self) -> Option<(DayWindow, DayWindow)> {
        self.cutoff.map(|cut| {
            (
                DayWindow {
                    from: self.a.from,
                    to: cut,
                },
                DayWindow {
                    from: cut,
                    to: self.b.to,
                },
            )
        })
    }
}

/// A window as asked and the part of it that holds data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub asked: DayWindow,
    pub covered: DayWindow,
}

/// One quantity in two windows and the change between them.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub a: Estimate,
    pub b: Estimate,
    /// 100·(b − a)/a with its interval; `None` when a is 0.
    pub pct: Option<Estimate>,
}

impl Change {
    fn new(a: Estimate, b: Estimate) -> Change {
        Change {
            a,
            b,
            pct: change_pct(&a, &b),
        }
    }

    fn of(row: &CompareRow) -> Change {
        Change {
            a: row.a,
            b: row.b,
            pct: row.change_pct,
        }
    }
}

/// Global figures.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    pub ips: Change,
    pub orgs: Change,
    pub retention: Retention,
}

/// One country over A and B (or across the cut-off).
#[derive(Clone, Debug)]
pub struct CountryLine {
    pub country: String,
    pub ips: Change,
    pub orgs: Change,
    pub retention: Retention,
}

/// Figures across the cut-off.
#[derive(Clone, Debug)]
pub struct Cut {
    pub day: Day,
    pub before: Window,
    pub after: Window,
    pub global: Global,
    pub countries: Vec<CountryLine>,
}

/// An org listed by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgEntry {
    pub id: String,
    pub name: String,
    pub country: Option<String>,
    /// Still seen after.
    pub retained: bool,
}

/// The orgs of one sector (in one country, or in all) seen before and
/// still seen after.
#[derive(Clone, Debug)]
pub struct SectorLine {
    /// `None`: every country.
    pub country: Option<String>,
    pub sector: String,
    pub retention: Retention,
    /// With [`ReportSpec::names`]: the orgs seen before, retained first.
    pub orgs: Option<Vec<OrgEntry>>,
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    pub namespace: String,
    pub a: Window,
    pub b: Window,
    pub sort: Sort,
    pub global: Global,
    pub countries: Vec<CountryLine>,
    pub cut: Option<Cut>,
    /// Before/after: across the cut-off when there is one, else A and B.
    pub sectors: Vec<SectorLine>,
}

/// Asks `source` everything the report holds.
pub async fn build<S: Source>(source: &S, spec: &ReportSpec) -> Result<Report, ReportError> {
    spec.validate()?;
    let ns = spec.namespace.as_str();
    let (global, a, b) = global_figures(source, ns, spec.a, spec.b).await?;
    let countries = country_lines(source, spec, spec.a, spec.b, None).await?;
    // The same countries across the cut-off, so that the lines compare.
    let listed: Vec<String> = countries.iter().map(|l| l.country.clone()).collect();
    let cut = match spec.cut_windows() {
        Some((before, after)) => {
            let (global, before, after) = global_figures(source, ns, before, after).await?;
            Some(Cut {
                day: spec.cutoff.expect("cut windows come from a cut-off"),
                before,
                after,
                global,
                countries: country_lines(source, spec, before.asked, after.asked, Some(&listed))
                    .await?,
            })
        }
        None => None,
    };
    let (before, after) = spec.cut_windows().unwrap_or((spec.a, spec.b));
    let sectors = sector_lines(source, spec, &countries, before, after).await?;
    Ok(Report {
        namespace: spec.namespace.clone(),
        a,
        b,
        sort: spec.sort,
        global,
        countries,
        cut,
        sectors,
    })
}

async fn global_figures<S: Source>(
    source: &S,
    ns: &str,
    a: DayWindow,
    b: DayWindow,
) -> Result<(Global, Window, Window), ReportError> {
    let ips_a = source.count(ns, Metric::Ips, &Scope::Global, a).await?;
    let ips_b = source.count(ns, Metric::Ips, &Scope::Global, b).await?;
    let orgs_a = source.count(ns, Metric::Orgs, &Scope::Global, a).await?;
    let orgs_b = source.count(ns, Metric::Orgs, &Scope::Global, b).await?;
    let retention = source.retention(ns, &Scope::Global, a, b).await?;
    Ok((
        Global {
            ips: Change::new(ips_a.estimate, ips_b.estimate),
            orgs: Change::new(orgs_a.estimate, orgs_b.estimate),
            retention,
        },
        Window {
            asked: a,
            covered: ips_a.covered,
        },
        Window {
            asked: b,
            covered: ips_b.covered,
        },
    ))
}

/// The per-country lines over `a` and `b`: the countries `listed`, else
/// those asked, else the largest by IPs in `a`; sorted as asked.
async fn country_lines<S: Source>(
    source: &S,
    spec: &ReportSpec,
    a: DayWindow,
    b: DayWindow,
    listed: Option<&[String]>,
) -> Result<Vec<CountryLine>, ReportError> {
    let ns = spec.namespace.as_str();
    let ips = source
        .compare(ns, Metric::Ips, GroupBy::Country, &Scope::Global, a, b)
        .await?;
    let orgs = source
        .compare(ns, Metric::Orgs, GroupBy::Country, &Scope::Global, a, b)
        .await?;
    let chosen: Vec<String> = if let Some(listed) = listed {
        listed.to_vec()
    } else if spec.countries.is_empty() {
        ips.iter()
            .filter(|r| r.group != "ZZ")
            .take(spec.top)
            .map(|r| r.group.clone())
            .collect()
    } else {
        spec.countries
            .iter()
            .map(|cc| String::from_utf8_lossy(cc).into_owned())
            .collect()
    };
    let zero = Change::new(Estimate::exact(0), Estimate::exact(0));
    let mut lines = Vec::with_capacity(chosen.len());
    for country in chosen {
        let code: [u8; 2] = country
            .as_bytes()
            .try_into()
            .map_err(|_| Error::invalid("countries", format!("{country:?} is not a code")))?;
        let retention = source.retention(ns, &Scope::Country(code), a, b).await?;
        let find = |rows: &[CompareRow]| {
            rows.iter()
                .find(|r| r.group == country)
                .map_or(zero, Change::of)
        };
        lines.push(CountryLine {
            ips: find(&ips),
            orgs: find(&orgs),
            retention,
            country,
        });
    }
    spec.sort.apply(&mut lines, |l| {
        (
            l.country.as_str(),
            l.ips.a.value,
            l.ips.b.value,
            l.ips.pct.map(|p| p.value),
        )
    });
    Ok(lines)
}

/// Per sector, over all countries and in each country of the report: the
/// orgs seen in `before` and how many of them are seen in `after`.
async fn sector_lines<S: Source>(
    source: &S,
    spec: &ReportSpec,
    countries: &[CountryLine],
    before: DayWindow,
    after: DayWindow,
) -> Result<Vec<SectorLine>, ReportError> {
    let ns = spec.namespace.as_str();
    let mut sectors: Vec<String> = source
        .compare(
            ns,
            Metric::Orgs,
            GroupBy::Sector,
            &Scope::Global,
            before,
            after,
        )
        .await?
        .into_iter()
        .map(|r| r.group)
        .collect();
    sectors.sort();
    let mut lines = Vec::new();
    for sector in sectors {
        let mut places: Vec<Option<[u8; 2]>> = vec![None];
        places.extend(
            countries
                .iter()
                .filter_map(|l| <[u8; 2]>::try_from(l.country.as_bytes()).ok())
                .map(Some),
        );
        for place in places {
            let scope = match place {
                None => Scope::Sector(sector.clone()),
                Some(cc) => Scope::CountrySector(cc, sector.clone()),
            };
            let retention = source.retention(ns, &scope, before, after).await?;
            if retention.in_a == 0 {
                continue;
            }
            let orgs = if spec.names {
                Some(org_entries(source, ns, &scope, before, after).await?)
            } else {
                None
            };
            lines.push(SectorLine {
                country: place.map(|cc| String::from_utf8_lossy(&cc).into_owned()),
                sector: sector.clone(),
                retention,
                orgs,
            });
        }
    }
    Ok(lines)
}

/// The orgs of `scope` (a sector, maybe in a country) seen in `before`,
/// each marked whether it is seen in `after`; retained first, then by name.
async fn org_entries<S: Source>(
    source: &S,
    ns: &str,
    scope: &Scope,
    before: DayWindow,
    after: DayWindow,
) -> Result<Vec<OrgEntry>, ReportError> {
    let seen = source
        .group(ns, Metric::Ips, GroupBy::Org, scope, before)
        .await?;
    let still: std::collections::HashSet<String> = source
        .group(ns, Metric::Ips, GroupBy::Org, scope, after)
        .await?
        .into_iter()
        .map(|r| r.group)
        .collect();
    let mut orgs: Vec<OrgEntry> = seen
        .into_iter()
        .filter(|r| r.group != "unattributed")
        .map(|r| {
            let label = r.org.unwrap_or_default();
            OrgEntry {
                retained: still.contains(&r.group),
                id: r.group,
                name: label.name,
                country: label.country,
            }
        })
        .collect();
    orgs.sort_by(|x, y| {
        y.retained
            .cmp(&x.retained)
            .then_with(|| x.name.cmp(&y.name))
            .then_with(|| x.id.cmp(&y.id))
    });
    Ok(orgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_sort_as_asked() {
        // (name, a, b, change)
        let rows = [
            ("DE", 50.0, 10.0, Some(-80.0)),
            ("US", 90.0, 60.0, Some(-33.3)),
            ("ZZ", 0.0, 5.0, None),
            ("GB", 70.0, 20.0, Some(-71.4)),
        ];
        let order = |sort: Sort| {
            let mut r = rows.to_vec();
            sort.apply(&mut r, |x| (x.0, x.1, x.2, x.3));
            r.iter().map(|x| x.0).collect::<Vec<_>>().join(",")
        };
        assert_eq!(order(Sort::A), "US,GB,DE,ZZ");
        assert_eq!(order(Sort::B), "US,GB,DE,ZZ");
        assert_eq!(order(Sort::Change), "DE,GB,US,ZZ");
        assert_eq!(order(Sort::Name), "DE,GB,US,ZZ");
        assert!(Sort::parse("sort", "size")
            .unwrap_err()
            .to_string()
            .starts_with("invalid sort: "));
    }

    #[test]
    fn the_cutoff_lies_inside_the_span() {
        let day = |s: &str| Day::parse(s).unwrap();
        let mut spec = ReportSpec {
            namespace: "n".into(),
            a: DayWindow::new(day("2024-04-01"), day("2024-05-01")).unwrap(),
            b: DayWindow::new(day("2024-11-01"), day("2024-12-01")).unwrap(),
            cutoff: Some(day("2024-09-29")),
            countries: Vec::new(),
            top: 10,
            sort: Sort::A,
            names: false,
        };
        spec.validate().unwrap();
        let (before, after) = spec.cut_windows().unwrap();
        assert_eq!(
            (before.from, before.to),
            (day("2024-04-01"), day("2024-09-29"))
        );
        assert_eq!(
            (after.from, after.to),
            (day("2024-09-29"), day("2024-12-01"))
        );
        for bad in ["2024-04-01", "2024-12-01", "2023-01-01"] {
            spec.cutoff = Some(day(bad));
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.starts_with("invalid cutoff: "), "{err}");
        }
    }
}
