//! Queries: distinct counts with error bounds over windows of days.
//!
//! A count merges, into one accumulator sketch, the stored day sketches of
//! the series in the window and the memtable deltas of those days. Union is
//! idempotent, so a delta that a checkpoint moved into sled meanwhile is
//! harmless. Exact observation counters are not idempotent: they are summed
//! under the memtable read lock, which a checkpoint's swap excludes.

use crate::catalog::Namespace;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sketch::{Estimate, Sketch};
use crate::store::keys::{country_dim, org_dim, CounterKey, Family, SketchKey};
use crate::time::{Day, DayWindow};

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Ips,
    Orgs,
}

/// Within what it is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Country([u8; 2]),
    Org(String),
}

/// A count and the part of the window that holds data.
#[derive(Clone, Copy, Debug)]
pub struct CountAnswer {
    pub estimate: Estimate,
    pub covered: DayWindow,
}

pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// The sketch series a (metric, scope) pair reads.
fn series(metric: Metric, scope: &Scope) -> Result<(Family, u64)> {
    Ok(match (metric, scope) {
        (Metric::Ips, Scope::Global) => (Family::IpsGlobal, 0),
        (Metric::Ips, Scope::Country(cc)) => (Family::IpsCountry, country_dim(*cc)),
        (Metric::Ips, Scope::Org(id)) => (Family::IpsOrg, org_dim(id)),
        (Metric::Orgs, Scope::Global) => (Family::OrgsGlobal, 0),
        (Metric::Orgs, Scope::Country(cc)) => (Family::OrgsCountry, country_dim(*cc)),
        (Metric::Orgs, Scope::Org(_)) => {
            return Err(Error::invalid(
                "scope.org",
                "distinct organisations within one organisation is not a question; count ips",
            ))
        }
    })
}

/// The namespace's days with data, clipped to `window`.
fn covered(engine: &Engine, ns: &Namespace, window: DayWindow) -> Result<DayWindow> {
    let mut extent = engine.store.extent(ns.id)?;
    for table in engine.mem.read().tables() {
        if let Some(&(first, end)) = table.extents.get(&ns.id) {
            extent = Some(match extent {
                Some((f, e)) => (f.min(first), e.max(end)),
                None => (first, end),
            });
        }
    }
    Ok(match extent {
        Some((first, end)) => window.intersect(&DayWindow {
            from: first,
            to: end,
        }),
        None => DayWindow {
            from: window.from,
            to: window.from,
        },
    })
}

/// Distinct IPs or orgs of one scope over `window`, with bounds at
/// `confidence`.
pub fn count(
    engine: &Engine,
    namespace: &str,
    metric: Metric,
    scope: &Scope,
    window: DayWindow,
    confidence: f64,
) -> Result<CountAnswer> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(Error::invalid(
            "confidence",
            format!("{confidence} is not in (0, 1)"),
        ));
    }
    let ns = engine.catalog.require("namespace", namespace)?;
    let (family, dim) = series(metric, scope)?;
    let covered = covered(engine, &ns, window)?;
    let mut acc = Sketch::new(ns.policy.precision, ns.seed)?;
    if !covered.is_empty() {
        {
            let mem = engine.mem.read();
            for table in mem.tables() {
                for day in covered.days() {
                    let key = SketchKey {
                        ns: ns.id,
                        family,
                        dim,
                        day,
                    };
                    if let Some(delta) = table.sketches.get(&key) {
                        acc.merge(delta)?;
                    }
                }
            }
        }
        for (_, stored) in engine.store.sketches(ns.id, family, dim, covered)? {
            acc.merge(&stored)?;
        }
    }
    Ok(CountAnswer {
        estimate: acc.estimate_at(confidence),
        covered,
    })
}

/// Exact number of rows ingested over `window`, globally or for a country.
pub fn observations(
    engine: &Engine,
    namespace: &str,
    scope: &Scope,
    window: DayWindow,
) -> Result<u64> {
    let ns = engine.catalog.require("namespace", namespace)?;
    let dim = match scope {
        Scope::Global => CounterKey::ALL,
        Scope::Country(cc) => country_dim(*cc),
        Scope::Org(_) => {
            return Err(Error::invalid(
                "scope.org",
                "observation counters are kept globally and per country",
            ))
        }
    };
    let window = covered(engine, &ns, window)?;
    let mem = engine.mem.read();
    let mut sum = engine.store.counter_sum(ns.id, dim, window)?;
    for table in mem.tables() {
        for day in window.days() {
            sum += table
                .counters
                .get(&CounterKey {
                    ns: ns.id,
                    dim,
                    day,
                })
                .copied()
                .unwrap_or(0);
        }
    }
    Ok(sum)
}

/// The namespace's first and end day with data, if any.
pub fn extent(engine: &Engine, ns: &Namespace) -> Result<Option<DayWindow>> {
    let all = DayWindow {
        from: Day(0),
        to: Day(u32::MAX),
    };
    let c = covered(engine, ns, all)?;
    Ok((!c.is_empty()).then_some(c))
}
