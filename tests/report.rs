//! `sketchd report` (the real binary) against a real server holding a
//! generated world, and org names over gRPC: every figure is checked
//! against the exact truth (exact figures equal it; estimates cover it).

mod common;

use std::process::{Command, Output, Stdio};

use common::world::{self, window, World, COUNTRIES, CUTOFF, TWIN_NAME, UNIQUE_NAME};
use common::{Coverage, TestServer};
use serde_json::Value;
use sketchd::attribution::TableFiles;
use sketchd::client::ClientError;
use sketchd::query::{GroupBy, Metric, Scope};
use sketchd::sketch::Estimate;
use tonic::Code;

const NS: &str = "study";

async fn loaded(dir: &std::path::Path) -> (TestServer, World) {
    let world = world::generate(120, 0x5eed_0021);
    let orgs = dir.join("orgs.csv");
    world.write_orgs(&orgs);
    let config = sketchd::config::ServerConfig {
        tables: TableFiles {
            orgs: Some(orgs),
            ..TableFiles::default()
        },
        ..common::config(&dir.join("data"))
    };
    let server = common::start_with(config).await;
    world.load(&server.client, NS).await;
    (server, world)
}

async fn sketchd(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(&args)
            .env("SKETCHD_LOG", "error")
            .env_remove("SKETCHD_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn estimate(v: &Value) -> Estimate {
    Estimate {
        value: v["estimate"].as_f64().unwrap(),
        lower: v["lower"].as_f64().unwrap(),
        upper: v["upper"].as_f64().unwrap(),
        confidence: v["confidence"].as_f64().unwrap(),
        exact: v["exact"].as_bool().unwrap(),
    }
}

/// Checks a `{"a", "b", "change_pct"}` change against truths for A and B:
/// both estimates cover them, the change has an interval around its value.
fn check_change(what: &str, v: &Value, a: usize, b: usize, coverage: &mut Coverage) {
    coverage.check(&format!("{what} A"), a as f64, &estimate(&v["a"]));
    coverage.check(&format!("{what} B"), b as f64, &estimate(&v["b"]));
    let change = estimate(&v["change_pct"]);
    assert!(
        change.lower <= change.value && change.value <= change.upper,
        "{what}: change without its interval"
    );
    let truth = 100.0 * (b as f64 - a as f64) / a as f64;
    let (ea, eb) = (estimate(&v["a"]), estimate(&v["b"]));
    if ea.exact && eb.exact {
        assert!(
            change.exact && (change.value - truth).abs() < 1e-9,
            "{what}"
        );
    } else {
        assert!(!change.exact && change.upper > change.lower, "{what}");
        assert!(
            (change.value - truth).abs() <= 2.0 * (change.upper - change.lower) + 0.5,
            "{what}: change {} far from the truth {truth}",
            change.value
        );
    }
}

fn check_retention(what: &str, v: &Value, truth: (u64, u64)) {
    assert_eq!(
        (v["in_a"].as_u64().unwrap(), v["in_both"].as_u64().unwrap()),
        truth,
        "{what}"
    );
    assert_eq!(v["exact"], true);
}

#[tokio::test]
async fn the_report_tells_the_study_against_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (server, world) = loaded(dir.path()).await;
    let (a, b) = (window(0, 30), window(170, 200));
    // B asked to 2026-11-01: the data ends on 2026-10-18.
    let b_asked = sketchd::time::DayWindow::new(b.from, world::day(214)).unwrap();
    let out = sketchd(args(&[
        "report",
        "--server",
        &server.url,
        "--namespace",
        NS,
        "--a-from",
        "2026-04-01T00:00:00Z",
        "--a-to",
        &a.to.to_string(),
        "--b-from",
        &b.from.to_string(),
        "--b-to",
        &b_asked.to.to_string(),
        "--cutoff",
        &world::day(CUTOFF).to_string(),
        "--sort",
        "change",
        "--names",
        "--json",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut coverage = Coverage::default();

    // Windows as asked, with the days that hold data.
    assert_eq!(r["a"]["from"], "2026-04-01");
    assert_eq!(r["b"]["to"], "2026-11-01");
    assert_eq!(r["b"]["data_to"], world::day(200).to_string());
    assert_eq!(r["a"]["data_to"], r["a"]["to"]);

    // Global: IPs estimated, orgs and retention exact.
    check_change(
        "global IPs",
        &r["global"]["ips"],
        world.ips(a, None),
        world.ips(b, None),
        &mut coverage,
    );
    check_change(
        "global orgs",
        &r["global"]["orgs"],
        world.orgs_in(a, None, None).len(),
        world.orgs_in(b, None, None).len(),
        &mut coverage,
    );
    assert!(r["global"]["orgs"]["a"]["exact"].as_bool().unwrap());
    check_retention(
        "global retention",
        &r["global"]["org_retention"],
        world.retention(a, b, None, None),
    );

    // Every country (there are 5, all listed), sorted by change.
    let countries = r["countries"].as_array().unwrap();
    assert_eq!(countries.len(), COUNTRIES.len());
    let changes: Vec<f64> = countries
        .iter()
        .map(|c| c["ips"]["change_pct"]["estimate"].as_f64().unwrap())
        .collect();
    assert!(
        changes.windows(2).all(|w| w[0] <= w[1]),
        "largest decline first: {changes:?}"
    );
    for c in countries {
        let cc = c["country"].as_str().unwrap();
        check_change(
            &format!("{cc} IPs"),
            &c["ips"],
            world.ips(a, Some(cc)),
            world.ips(b, Some(cc)),
            &mut coverage,
        );
        check_change(
            &format!("{cc} orgs"),
            &c["orgs"],
            world.orgs_in(a, Some(cc), None).len(),
            world.orgs_in(b, Some(cc), None).len(),
            &mut coverage,
        );
        check_retention(
            &format!("{cc} retention"),
            &c["org_retention"],
            world.retention(a, b, Some(cc), None),
        );
    }

    // Across the cut-off: [A's first day, cut-off) against [cut-off, B's end).
    let (before, after) = (
        window(0, CUTOFF),
        sketchd::time::DayWindow::new(world::day(CUTOFF), b_asked.to).unwrap(),
    );
    let cut = &r["cutoff"];
    assert_eq!(cut["day"], world::day(CUTOFF).to_string());
    assert_eq!(cut["before"]["to"], cut["day"]);
    assert_eq!(cut["after"]["to"], "2026-11-01");
    check_retention(
        "retention across the cut-off",
        &cut["global"]["org_retention"],
        world.retention(before, after, None, None),
    );
    for c in cut["countries"].as_array().unwrap() {
        let cc = c["country"].as_str().unwrap();
        check_retention(
            &format!("{cc} retention across the cut-off"),
            &c["org_retention"],
            world.retention(before, after, Some(cc), None),
        );
        check_change(
            &format!("{cc} IPs across the cut-off"),
            &c["ips"],
            world.ips(before, Some(cc)),
            world.ips(after, Some(cc)),
            &mut coverage,
        );
    }

    // Country x sector lines, with names: US government above all.
    let sectors = r["sectors"].as_array().unwrap();
    let line = |sector: &str, country: Option<&str>| {
        sectors
            .iter()
            .find(|l| l["sector"] == sector && l["country"].as_str() == country)
    };
    let us_gov = line("government", Some("US")).expect("a US government line");
    let (seen, kept) = world.retention(before, after, Some("US"), Some("government"));
    assert!(
        seen >= 5 && kept < seen,
        "the world has a US government story"
    );
    assert_eq!(us_gov["seen_before"], seen);
    assert_eq!(us_gov["still_seen_after"], kept);
    let listed = us_gov["orgs"].as_array().unwrap();
    assert_eq!(listed.len() as u64, seen);
    let still = world.orgs_in(after, Some("US"), Some("government"));
    for o in listed {
        let id = o["org"].as_str().unwrap();
        assert_eq!(o["name"], world.org(id).name, "{id}: the registry's name");
        assert_eq!(o["country"], "US");
        assert_eq!(o["still_seen_after"], still.contains(id), "{id}");
    }
    assert!(listed.iter().any(|o| o["name"] == UNIQUE_NAME));
    for sector in world::SECTORS {
        for country in COUNTRIES.iter().map(|c| Some(*c)).chain([None]) {
            let truth = world.retention(before, after, country, Some(sector));
            match line(sector, country) {
                Some(l) => assert_eq!(
                    (l["seen_before"].as_u64(), l["still_seen_after"].as_u64()),
                    (Some(truth.0), Some(truth.1)),
                    "{sector} {country:?}"
                ),
                None => assert_eq!(truth.0, 0, "{sector} {country:?} missing"),
            }
        }
    }
    coverage.assert_share(0.8);

    // The same as text: windows as asked with the data's extent, numbers
    // with separators, changes with intervals; relative dates.
    let out = sketchd(args(&[
        "report",
        "--server",
        &server.url,
        "--namespace",
        NS,
        "--a-from",
        &a.from.to_string(),
        "--a-to",
        &a.to.to_string(),
        "--b-from",
        &b.from.to_string(),
        "--b-to",
        "today",
        "--countries",
        "US,DE",
        "--cutoff",
        &world::day(CUTOFF).to_string(),
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let today = sketchd::report::dates::today();
    assert!(
        text.contains(&format!(
            "B  {} to {today} (exclusive, {} days); data only from {} to {} (exclusive)",
            b.from,
            today.0 - b.from.0,
            b.from,
            world::day(200)
        )),
        "{text}"
    );
    let ips_a = world.ips(a, None);
    assert!(ips_a > 10_000);
    assert!(text.contains("% ["), "changes with intervals: {text}");
    assert!(text.contains(&format!("{},", ips_a / 1000)), "{text}");
    assert!(text.contains("government       US"), "{text}");
    let country_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  US ") || l.starts_with("  DE "))
        .collect();
    assert_eq!(country_lines.len(), 4, "US and DE, for A/B and the cut-off");

    // Bad input: an error naming the flag.
    for (flag, value, needle) in [
        ("--cutoff", "2025-01-01", "invalid --cutoff"),
        ("--cutoff", "soon", "invalid --cutoff"),
        ("--sort", "size", "invalid --sort"),
    ] {
        let mut list = args(&[
            "report",
            "--server",
            &server.url,
            "--namespace",
            NS,
            "--a-from",
            "-300d",
            "--a-to",
            "2026-05-01",
            "--b-from",
            "2026-09-01",
            "--b-to",
            "2026-10-01",
        ]);
        list.extend(args(&[flag, value]));
        let out = sketchd(list).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{flag} {value}: {stderr}");
    }
    server.stop().await;
}

#[tokio::test]
async fn org_rows_carry_names_and_names_resolve_to_orgs() {
    let dir = tempfile::tempdir().unwrap();
    let (server, world) = loaded(dir.path()).await;
    let c = &server.client;
    let april = window(0, 30);
    let rows = c
        .group(NS, Metric::Ips, GroupBy::Org, &Scope::Global, april, 0)
        .await
        .unwrap();
    assert!(rows.len() > 50);
    for row in &rows {
        let org = world.org(&row.group);
        let label = row.org.as_ref().expect("every org row has its label");
        assert_eq!(label.name, org.name);
        assert_eq!(label.country.as_deref(), Some(org.country));
    }
    let compared = c
        .compare(
            NS,
            Metric::Ips,
            GroupBy::Org,
            &Scope::Country(*b"US"),
            april,
            window(170, 200),
            0,
        )
        .await
        .unwrap();
    assert!(compared
        .iter()
        .all(|r| r.org.as_ref().unwrap().name == world.org(&r.group).name));
    // Country rows are not orgs.
    let by_country = c
        .group(NS, Metric::Ips, GroupBy::Country, &Scope::Global, april, 0)
        .await
        .unwrap();
    assert!(by_country.iter().all(|r| r.org.is_none()));

    // org:NAME counts what org:ID counts; a name of two orgs is refused
    // with both; a name of none is NOT_FOUND.
    let by_id = c
        .count(NS, Metric::Ips, &Scope::Org("1000".into()), april)
        .await
        .unwrap();
    let by_name = c
        .count(NS, Metric::Ips, &Scope::Org(UNIQUE_NAME.into()), april)
        .await
        .unwrap();
    assert_eq!(by_id.estimate.value, by_name.estimate.value);
    let lower = c
        .count(
            NS,
            Metric::Ips,
            &Scope::Org("acme government".into()),
            april,
        )
        .await
        .unwrap();
    assert_eq!(lower.estimate.value, by_id.estimate.value);
    let mut coverage = Coverage::default();
    coverage.check(
        "org 1000",
        world
            .rows
            .iter()
            .filter(|r| r.org.as_deref() == Some("1000"))
            .filter(|r| {
                april.contains(sketchd::time::Day::from_unix_seconds(r.unix_seconds).unwrap())
            })
            .map(|r| r.ip)
            .collect::<std::collections::HashSet<_>>()
            .len() as f64,
        &by_id.estimate,
    );
    match c
        .count(NS, Metric::Ips, &Scope::Org(TWIN_NAME.into()), april)
        .await
    {
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().contains("scope.org"), "{}", s.message());
            assert!(
                s.message().contains("1001") && s.message().contains("1002"),
                "{}",
                s.message()
            );
        }
        other => panic!("ambiguous name answered: {other:?}"),
    }
    match c
        .count(NS, Metric::Ips, &Scope::Org("Nobody Inc".into()), april)
        .await
    {
        Err(ClientError::Status(s)) => assert_eq!(s.code(), Code::NotFound),
        other => panic!("unknown name answered: {other:?}"),
    }

    // The CLI: names in the table and in JSON, org:NAME as a scope.
    let out = sketchd(args(&[
        "query",
        "count",
        "--server",
        &server.url,
        "--namespace",
        NS,
        "--metric",
        "ips",
        "--scope",
        &format!("org:{UNIQUE_NAME}"),
        "--from",
        "2026-04-01",
        "--to",
        "2026-05-01",
        "--json",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["estimate"].as_f64().unwrap(), by_id.estimate.value);
    // A window wider than the data is printed as asked, the data's days beside it.
    let out = sketchd(args(&[
        "query",
        "count",
        "--server",
        &server.url,
        "--namespace",
        NS,
        "--metric",
        "orgs",
        "--from",
        "2026-04-01",
        "--to",
        "2026-12-01",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!(
            "{} distinct orgs (exact), 2026-04-01 to 2026-12-01 (exclusive); data only from \
             2026-04-01 to {} (exclusive)",
            world.orgs_in(window(0, 200), None, None).len(),
            world::day(200)
        )
    );
    let out = sketchd(args(&[
        "query",
        "compare",
        "--server",
        &server.url,
        "--namespace",
        NS,
        "--metric",
        "ips",
        "--by",
        "org",
        "--scope",
        "country:US",
        "--a-from",
        "2026-04-01",
        "--a-to",
        "2026-05-01",
        "--b-from",
        "2026-09-18",
        "--b-to",
        "2026-10-18",
        "--sort",
        "change",
        "--limit",
        "5",
        "--json",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for row in rows {
        let org = world.org(row["group"].as_str().unwrap());
        assert_eq!(row["name"], org.name);
        assert_eq!(row["country"], "US");
    }
    // Largest decline first: orgs gone by B (-100 %) lead.
    assert_eq!(rows[0]["change_pct"]["estimate"].as_f64(), Some(-100.0));
    server.stop().await;
}
