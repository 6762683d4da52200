//! A [`Report`] as one JSON document (`sketchd report --json`, and the web
//! page's `/api/report`). Every estimate is `{"estimate", "lower",
//! "upper", "confidence", "exact"}`; every change `{"a", "b",
//! "change_pct"}` with `change_pct` an estimate or null (nothing in A);
//! windows `{"from", "to", "data_from", "data_to"}` (the asked window,
//! `to` exclusive, and the part holding data).

use serde_json::{json, Value};

use super::{Change, CountryLine, Global, Report, Window};
use crate::query::Retention;
use crate::sketch::Estimate;

pub fn estimate(e: &Estimate) -> Value {
    json!({
        "estimate": e.value,
        "lower": e.lower,
        "upper": e.upper,
        "confidence": e.confidence,
        "exact": e.exact,
    })
}

fn change(c: &Change) -> Value {
    json!({
        "a": estimate(&c.a),
        "b": estimate(&c.b),
        "change_pct": c.pct.as_ref().map(estimate),
    })
}

fn retention(r: &Retention) -> Value {
    json!({ "in_a": r.in_a, "in_both": r.in_both, "share": r.share(), "exact": true })
}

fn window(w: &Window) -> Value {
    json!({
        "from": w.asked.from.to_string(),
        "to": w.asked.to.to_string(),
        "days": w.asked.len(),
        "data_from": w.covered.from.to_string(),
        "data_to": w.covered.to.to_string(),
    })
}

fn global(g: &Global) -> Value {
    json!({
        "ips": change(&g.ips),
        "orgs": change(&g.orgs),
        "org_retention": retention(&g.retention),
    })
}

fn countries(lines: &[CountryLine]) -> Value {
    lines
        .iter()
        .map(|l| {
            json!({
                "country": l.country,
                "ips": change(&l.ips),
                "orgs": change(&l.orgs),
                "org_retention": retention(&l.retention),
            })
        })
        .collect()
}

/// The whole report.
pub fn render(r: &Report) -> Value {
    let cut = r.cut.as_ref().map(|c| {
        json!({
            "day": c.day.to_string(),
            "before": window(&c.before),
            "after": window(&c.after),
            "global": global(&c.global),
            "countries": countries(&c.countries),
        })
    });
    let sectors: Vec<Value> = r
        .sectors
        .iter()
        .map(|s| {
            let mut v = json!({
                "sector": s.sector,
                "country": s.country,
                "seen_before": s.retention.in_a,
                "still_seen_after": s.retention.in_both,
                "share": s.retention.share(),
            });
            if let Some(orgs) = &s.orgs {
                v["orgs"] = orgs
                    .iter()
                    .map(|o| {
                        json!({
                            "org": o.id,
                            "name": o.name,
                            "country": o.country,
                            "still_seen_after": o.retained,
                        })
                    })
                    .collect();
            }
            v
        })
        .collect();
    json!({
        "namespace": r.namespace,
        "a": window(&r.a),
        "b": window(&r.b),
        "sort": r.sort.name(),
        "global": global(&r.global),
        "countries": countries(&r.countries),
        "cutoff": cut,
        "sectors": sectors,
    })
}
