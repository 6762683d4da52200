//! Group-by, compare, retention, overlap and series against exact ground
//! truth on a generated world, over real gRPC.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use common::{Coverage, Rng, TestServer, APRIL_1, DAY};
use sketchd::client::{BatchBuilder, ClientError, Observation};
use sketchd::pb;
use sketchd::query::{GroupBy, Metric, Scope};
use sketchd::time::{Day, DayWindow};
use tonic::Code;

const NS: &str = "study";
const COUNTRIES: [&str; 6] = ["DE", "GB", "IT", "US", "FR", "JP"];
const DAYS: i64 = 61; // April and May 2026

/// IPs belong to orgs, orgs to countries. Activity declines over time:
/// an org stops on a random day (or never); IPs are seen on random days.
fn world() -> Vec<Observation> {
    let mut rng = Rng(42);
    let mut rows = Vec::new();
    for org in 0..240u64 {
        let country = COUNTRIES[(org % 6) as usize];
        let last_day = if rng.below(10) < 4 {
            DAYS
        } else {
            10 + rng.below(50) as i64
        };
        let ips = 20 + rng.below(if org < 6 { 12_000 } else { 600 });
        for i in 0..ips {
            let ip = IpAddr::V4(Ipv4Addr::from(((org as u32 + 1) << 20) | i as u32));
            for _ in 0..1 + rng.below(4) {
                let day = rng.below(last_day as u64) as i64;
                rows.push(Observation {
                    ip,
                    unix_seconds: APRIL_1 + day * DAY + rng.below(DAY as u64) as i64,
                    org: Some(format!("AS{}", 65_000 + org)),
                    country: Some(country.to_owned()),
                });
            }
        }
    }
    rows
}

struct Truth<'a>(&'a [Observation]);

impl Truth<'_> {
    fn rows(&self, w: DayWindow) -> impl Iterator<Item = &Observation> {
        self.0
            .iter()
            .filter(move |r| w.contains(Day::from_unix_seconds(r.unix_seconds).unwrap()))
    }

    fn by_country(&self, metric: Metric, w: DayWindow) -> BTreeMap<String, usize> {
        let mut sets: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for r in self.rows(w) {
            let key = match metric {
                Metric::Ips => r.ip.to_string(),
                Metric::Orgs => r.org.clone().unwrap(),
            };
            sets.entry(r.country.clone().unwrap())
                .or_default()
                .insert(key);
        }
        sets.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    fn ips_by_org(&self, w: DayWindow, country: Option<&str>) -> BTreeMap<String, usize> {
        let mut sets: BTreeMap<String, HashSet<IpAddr>> = BTreeMap::new();
        for r in self
            .rows(w)
            .filter(|r| country.is_none_or(|c| r.country.as_deref() == Some(c)))
        {
            sets.entry(r.org.clone().unwrap()).or_default().insert(r.ip);
        }
        sets.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    fn orgs(&self, w: DayWindow, country: Option<&str>) -> HashSet<String> {
        self.rows(w)
            .filter(|r| country.is_none_or(|c| r.country.as_deref() == Some(c)))
            .map(|r| r.org.clone().unwrap())
            .collect()
    }

    fn ips(&self, w: DayWindow) -> HashSet<IpAddr> {
        self.rows(w).map(|r| r.ip).collect()
    }
}

fn window(from_day: i64, to_day: i64) -> DayWindow {
    let day = |d: i64| Day::from_unix_seconds(APRIL_1 + d * DAY).unwrap();
    DayWindow::new(day(from_day), day(to_day)).unwrap()
}

async fn loaded() -> (tempfile::TempDir, TestServer, Vec<Observation>) {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let rows = world();
    for (i, chunk) in rows.chunks(50_000).enumerate() {
        let mut b = BatchBuilder::new();
        chunk.iter().for_each(|r| b.push(r));
        server
            .client
            .ingest(b.build(NS, "c", i as u64 + 1))
            .await
            .unwrap();
    }
    (dir, server, rows)
}

#[tokio::test]
async fn every_question_of_the_study_matches_the_truth() {
    let (_dir, server, rows) = loaded().await;
    let truth = Truth(&rows);
    let c = &server.client;
    let april = window(0, 30);
    let may = window(30, 61);
    let mut coverage = Coverage::default();

    // Group by country, both metrics.
    for metric in [Metric::Ips, Metric::Orgs] {
        let want = truth.by_country(metric, april);
        let got = c
            .group(NS, metric, GroupBy::Country, &Scope::Global, april, 0)
            .await
            .unwrap();
        assert_eq!(got.len(), want.len(), "{metric:?}: one row per country");
        for pair in got.windows(2) {
            assert!(
                pair[0].estimate.value >= pair[1].estimate.value,
                "ordered largest first"
            );
        }
        for row in &got {
            coverage.check(
                &format!("group {metric:?} {}", row.group),
                want[&row.group] as f64,
                &row.estimate,
            );
        }
        let top2 = c
            .group(NS, metric, GroupBy::Country, &Scope::Global, april, 2)
            .await
            .unwrap();
        assert_eq!(top2.len(), 2);
        assert_eq!(top2[0].group, got[0].group);
    }

    // Group IPs by org, within a country.
    let want = truth.ips_by_org(may, Some("DE"));
    let got = c
        .group(
            NS,
            Metric::Ips,
            GroupBy::Org,
            &Scope::Country(*b"DE"),
            may,
            0,
        )
        .await
        .unwrap();
    let names: HashSet<_> = got.iter().map(|r| r.group.clone()).collect();
    assert_eq!(names, want.keys().cloned().collect::<HashSet<_>>());
    for row in &got {
        // Orgs live in one country here, so the org's IPs are the country's.
        coverage.check(
            &format!("org {}", row.group),
            want[&row.group] as f64,
            &row.estimate,
        );
    }

    // Compare April with May for every country: the study's drop table.
    let ips_a = truth.by_country(Metric::Ips, april);
    let ips_b = truth.by_country(Metric::Ips, may);
    let table = c
        .compare(
            NS,
            Metric::Ips,
            GroupBy::Country,
            &Scope::Global,
            april,
            may,
            0,
        )
        .await
        .unwrap();
    assert_eq!(table.len(), COUNTRIES.len());
    for row in &table {
        let (a, b) = (ips_a[&row.group] as f64, ips_b[&row.group] as f64);
        coverage.check(&format!("compare A {}", row.group), a, &row.a);
        coverage.check(&format!("compare B {}", row.group), b, &row.b);
        let change = row.change_pct.expect("A is not empty");
        coverage.check(
            &format!("change {}", row.group),
            100.0 * (b - a) / a,
            &change,
        );
        assert!(change.value < 0.0, "activity declines in {}", row.group);
    }

    // Retention: exact, globally and per country.
    for country in [None, Some("US"), Some("DE")] {
        let (in_a, in_b) = (truth.orgs(april, country), truth.orgs(may, country));
        let scope = match country {
            Some(cc) => Scope::Country(cc.as_bytes().try_into().unwrap()),
            None => Scope::Global,
        };
        let got = c.retention(NS, &scope, april, may).await.unwrap();
        assert_eq!(got.in_a, in_a.len() as u64, "{country:?}");
        assert_eq!(
            got.in_both,
            in_a.intersection(&in_b).count() as u64,
            "{country:?}"
        );
        assert!(
            got.share() > 0.2 && got.share() < 0.9,
            "{country:?}: {}",
            got.share()
        );
    }

    // IP overlap of two windows, estimated.
    let first = window(0, 20);
    let second = window(10, 40);
    let (ia, ib) = (truth.ips(first), truth.ips(second));
    let o = c.overlap(NS, &Scope::Global, first, second).await.unwrap();
    coverage.check("overlap a", ia.len() as f64, &o.a);
    coverage.check("overlap b", ib.len() as f64, &o.b);
    coverage.check("overlap both", ia.intersection(&ib).count() as f64, &o.both);
    coverage.check("overlap either", ia.union(&ib).count() as f64, &o.either);

    // Series: months and weeks equal their single counts.
    let span = window(0, 61);
    let months = c
        .series(NS, Metric::Ips, &Scope::Global, span, "month")
        .await
        .unwrap();
    assert_eq!(
        months.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        vec![april, window(30, 61)]
    );
    for (w, e) in &months {
        let single = c
            .count(NS, Metric::Ips, &Scope::Global, *w)
            .await
            .unwrap()
            .estimate;
        assert_eq!(e.value, single.value);
        coverage.check(&format!("series {w:?}"), truth.ips(*w).len() as f64, e);
    }
    let weeks = c
        .series(NS, Metric::Orgs, &Scope::Country(*b"US"), span, "week")
        .await
        .unwrap();
    assert_eq!(weeks.len(), 9);
    assert_eq!(weeks.last().unwrap().0, window(56, 61));
    for (w, e) in &weeks {
        coverage.check(
            &format!("weekly orgs {w:?}"),
            truth.orgs(*w, Some("US")).len() as f64,
            e,
        );
    }
    let every_3 = c
        .series(NS, Metric::Ips, &Scope::Global, window(0, 10), "3d")
        .await
        .unwrap();
    assert_eq!(every_3.len(), 4);
    coverage.assert_share(0.85);
    server.stop().await;
}

#[tokio::test]
async fn edge_windows_and_bad_requests() {
    let (_dir, server, rows) = loaded().await;
    let truth = Truth(&rows);
    let c = &server.client;

    // One day.
    let one = window(5, 6);
    let got = c
        .group(NS, Metric::Orgs, GroupBy::Country, &Scope::Global, one, 0)
        .await
        .unwrap();
    let want = truth.by_country(Metric::Orgs, one);
    for row in got {
        assert_eq!(
            row.estimate.value, want[&row.group] as f64,
            "few orgs per day: exact"
        );
        assert!(row.estimate.exact);
    }
    // Empty window and windows beyond the data: no rows, zero counts.
    assert!(c
        .group(
            NS,
            Metric::Ips,
            GroupBy::Country,
            &Scope::Global,
            window(5, 5),
            0
        )
        .await
        .unwrap()
        .is_empty());
    assert!(c
        .group(
            NS,
            Metric::Ips,
            GroupBy::Country,
            &Scope::Global,
            window(100, 200),
            0
        )
        .await
        .unwrap()
        .is_empty());
    let r = c
        .retention(NS, &Scope::Global, window(100, 130), window(0, 30))
        .await
        .unwrap();
    assert_eq!((r.in_a, r.in_both, r.share()), (0, 0, 0.0));
    // A country the namespace never saw is NOT_FOUND, not a zero that
    // looks real; a known one outside its days is a real zero.
    let not_found = |r: Result<_, ClientError>| match r {
        Err(ClientError::Status(s)) => s.code() == Code::NotFound && s.message().contains("\"BR\""),
        _ => false,
    };
    assert!(not_found(
        c.count(NS, Metric::Ips, &Scope::Country(*b"BR"), window(0, 61))
            .await
            .map(|_| ())
    ));
    assert!(not_found(
        c.retention(NS, &Scope::Country(*b"BR"), window(0, 30), window(30, 61))
            .await
            .map(|_| ())
    ));
    let known = truth.by_country(Metric::Ips, window(0, 61));
    let cc: [u8; 2] = known.keys().next().unwrap().as_bytes().try_into().unwrap();
    let zero = c
        .count(NS, Metric::Ips, &Scope::Country(cc), window(100, 130))
        .await
        .unwrap();
    assert_eq!(zero.estimate.value, 0.0);

    // Reversed windows and bad arguments.
    let mut q = server.client.query_client();
    let err = q
        .compare(pb::CompareRequest {
            namespace: NS.into(),
            metric: pb::Metric::Ips as i32,
            by: pb::GroupKind::Country as i32,
            a_from: "2026-05-01".into(),
            a_to: "2026-04-01".into(),
            b_from: "2026-05-01".into(),
            b_to: "2026-06-01".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("a_to"), "{}", err.message());
    let err = q
        .group_by(pb::GroupByRequest {
            namespace: NS.into(),
            metric: pb::Metric::Orgs as i32,
            by: pb::GroupKind::Org as i32,
            from: "2026-04-01".into(),
            to: "2026-05-01".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = q
        .series(pb::SeriesRequest {
            namespace: NS.into(),
            metric: pb::Metric::Ips as i32,
            from: "2026-04-01".into(),
            to: "2026-05-01".into(),
            step: "fortnight".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("step"), "{}", err.message());
    let err = q
        .retention(pb::RetentionRequest {
            namespace: NS.into(),
            a_from: "2026-04-10".into(),
            a_to: "2026-04-01".into(),
            b_from: "2026-05-01".into(),
            b_to: "2026-06-01".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn answers_survive_restart_and_late_data_reaches_rollups() {
    let (dir, server, mut rows) = loaded().await;
    let span = window(0, 61);
    let before = server
        .client
        .group(NS, Metric::Ips, GroupBy::Country, &Scope::Global, span, 0)
        .await
        .unwrap();
    server.stop().await;

    let server = common::start(dir.path()).await;
    let after = server
        .client
        .group(NS, Metric::Ips, GroupBy::Country, &Scope::Global, span, 0)
        .await
        .unwrap();
    let pairs: HashMap<_, _> = before
        .iter()
        .map(|r| (r.group.clone(), r.estimate.value))
        .collect();
    for r in &after {
        assert_eq!(pairs[&r.group], r.estimate.value, "{}", r.group);
    }
    // Late data for an early day: new IPs in Italy on April 2nd.
    let late: Vec<Observation> = (0..3_000u32)
        .map(|i| Observation {
            ip: IpAddr::V4(Ipv4Addr::from(0xc000_0000 | i)),
            unix_seconds: APRIL_1 + DAY + 10,
            org: Some("AS65002".into()),
            country: Some("IT".into()),
        })
        .collect();
    let mut b = BatchBuilder::new();
    late.iter().for_each(|r| b.push(r));
    server.client.ingest(b.build(NS, "late", 1)).await.unwrap();
    server.stop().await;
    rows.extend(late);

    // After a restart the late rows come from sled's rollup blocks.
    let server = common::start(dir.path()).await;
    let truth = Truth(&rows);
    let mut coverage = Coverage::default();
    for w in [span, window(0, 32), window(1, 2)] {
        let got = server
            .client
            .count(NS, Metric::Ips, &Scope::Country(*b"IT"), w)
            .await
            .unwrap();
        coverage.check(
            &format!("IT {w:?}"),
            truth.by_country(Metric::Ips, w)["IT"] as f64,
            &got.estimate,
        );
    }
    coverage.assert_share(0.6);
    server.stop().await;
}

/// Orgs in one to three countries each, plus rows no table attributes
/// (counted under `unattributed` in ZZ, which is no organisation).
fn travelling_orgs(rng: &mut Rng, orgs: std::ops::Range<u64>, days: i64) -> Vec<Observation> {
    let mut rows = Vec::new();
    for org in orgs {
        let home = rng.below(6) as usize;
        for k in 0..1 + rng.below(3) as usize {
            let country = COUNTRIES[(home + 2 * k) % 6];
            for i in 0..1 + rng.below(5) {
                rows.push(Observation {
                    ip: IpAddr::V4(Ipv4Addr::from(((org as u32 + 1) << 12) | i as u32)),
                    unix_seconds: APRIL_1 + rng.below(days as u64) as i64 * DAY + 60,
                    org: Some(format!("AS{}", 70_000 + org)),
                    country: Some(country.to_owned()),
                });
            }
        }
    }
    rows.extend((0..40).map(|i| Observation {
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)),
        unix_seconds: APRIL_1 + rng.below(days as u64) as i64 * DAY,
        org: None,
        country: None,
    }));
    rows
}

/// Org counts (count, group and compare by country, series) and retention
/// are exact and equal the truth, globally and per country, and so are the
/// orgs listed within a country.
async fn check_org_answers(server: &TestServer, rows: &[Observation]) {
    let truth = Truth(rows);
    // Rows without an org are no organisation's.
    let orgs = |w: DayWindow, country: Option<&str>| -> HashSet<String> {
        truth
            .rows(w)
            .filter(|r| country.is_none_or(|c| r.country.as_deref() == Some(c)))
            .filter_map(|r| r.org.clone())
            .collect()
    };
    let c = &server.client;
    let exact = |e: &sketchd::sketch::Estimate, want: usize, what: &str| {
        assert!(e.exact && e.lower == e.upper, "{what}: exact");
        assert_eq!(e.value, want as f64, "{what}");
    };
    for (a, b) in [
        (window(0, 30), window(30, 61)),
        (window(5, 6), window(0, 61)),
    ] {
        let got = c.count(NS, Metric::Orgs, &Scope::Global, a).await.unwrap();
        exact(&got.estimate, orgs(a, None).len(), "global orgs");
        let rows_a = c
            .group(NS, Metric::Orgs, GroupBy::Country, &Scope::Global, a, 0)
            .await
            .unwrap();
        let table = c
            .compare(NS, Metric::Orgs, GroupBy::Country, &Scope::Global, a, b, 0)
            .await
            .unwrap();
        let mut with_orgs = 0;
        for cc in COUNTRIES {
            let code = cc.as_bytes().try_into().unwrap();
            let (in_a, in_b) = (orgs(a, Some(cc)), orgs(b, Some(cc)));
            let got = c
                .count(NS, Metric::Orgs, &Scope::Country(code), a)
                .await
                .unwrap();
            exact(&got.estimate, in_a.len(), cc);
            match rows_a.iter().find(|r| r.group == cc) {
                Some(row) => exact(&row.estimate, in_a.len(), cc),
                None => assert!(in_a.is_empty(), "{cc}: a row when it has orgs"),
            }
            with_orgs += usize::from(!in_a.is_empty());
            let row = table.iter().find(|r| r.group == cc).unwrap();
            exact(&row.a, in_a.len(), cc);
            exact(&row.b, in_b.len(), cc);
            let r = c.retention(NS, &Scope::Country(code), a, b).await.unwrap();
            assert_eq!(r.in_a, in_a.len() as u64, "{cc}");
            assert_eq!(r.in_both, in_a.intersection(&in_b).count() as u64, "{cc}");
            let listed: HashSet<String> = c
                .group(NS, Metric::Ips, GroupBy::Org, &Scope::Country(code), a, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.group)
                .collect();
            assert_eq!(listed, in_a, "{cc}: orgs seen there");
        }
        assert_eq!(rows_a.len(), with_orgs, "no row for ZZ");
        let (in_a, in_b) = (orgs(a, None), orgs(b, None));
        let r = c.retention(NS, &Scope::Global, a, b).await.unwrap();
        assert_eq!(
            (r.in_a, r.in_both),
            (in_a.len() as u64, in_a.intersection(&in_b).count() as u64)
        );
    }
    let weeks = c
        .series(NS, Metric::Orgs, &Scope::Global, window(0, 61), "week")
        .await
        .unwrap();
    for (w, e) in &weeks {
        exact(e, orgs(*w, None).len(), "weekly orgs");
    }
}

#[tokio::test]
async fn org_answers_are_exact_with_late_data_and_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut rng = Rng(7);
    // May first; April arrives late.
    let mut rows: Vec<Observation> = travelling_orgs(&mut rng, 0..150, DAYS)
        .into_iter()
        .filter(|r| r.unix_seconds >= APRIL_1 + 30 * DAY)
        .collect();
    let ingest = |rows: &[Observation], sequence: u64| {
        let mut b = BatchBuilder::new();
        rows.iter().for_each(|r| b.push(r));
        b.build(NS, "c", sequence)
    };
    server.client.ingest(ingest(&rows, 1)).await.unwrap();
    check_org_answers(&server, &rows).await;
    server.stop().await;

    // Presence loaded from sled; then late rows (new orgs, and known orgs
    // in new countries and earlier days) beside it in the memtable.
    let server = common::start(dir.path()).await;
    check_org_answers(&server, &rows).await;
    let mut late = travelling_orgs(&mut rng, 100..200, 30);
    late.extend(travelling_orgs(&mut Rng(8), 0..50, 30));
    server.client.ingest(ingest(&late, 2)).await.unwrap();
    rows.extend(late);
    check_org_answers(&server, &rows).await;
    server.stop().await;

    let server = common::start(dir.path()).await;
    check_org_answers(&server, &rows).await;
    server.stop().await;
}

/// Every org over a window (`group --by org --limit 0`) and every org in
/// two windows (`compare --by org`), over enough orgs that the server reads
/// them on two threads, each scanning its own day groups: small orgs
/// (flat series) and large ones (more than 128 IPs a day: rolled) are all
/// exact and equal the truth, from the memtable and from sled.
#[tokio::test]
async fn every_org_group_and_compare_equal_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut rng = Rng(19);
    let mut rows = travelling_orgs(&mut rng, 0..900, DAYS);
    rows.retain(|r| r.org.is_some());
    for org in 900..904u64 {
        for i in 0..300u32 {
            rows.push(Observation {
                ip: IpAddr::V4(Ipv4Addr::from(((org as u32 + 1) << 12) | i)),
                unix_seconds: APRIL_1 + (org as i64 % 3) * DAY + 40 * DAY,
                org: Some(format!("AS{}", 70_000 + org)),
                country: Some("US".to_owned()),
            });
        }
    }
    let mut b = BatchBuilder::new();
    rows.iter().for_each(|r| b.push(r));
    server.client.ingest(b.build(NS, "c", 1)).await.unwrap();
    let (april, may) = (window(0, 30), window(30, DAYS));
    let check = |server: &TestServer| {
        let client = server.client.clone();
        let rows = rows.clone();
        async move {
            let truth = Truth(&rows);
            let (want_a, want_b) = (truth.ips_by_org(april, None), truth.ips_by_org(may, None));
            assert!(want_b.len() > 600, "{} orgs in May", want_b.len());
            let got = client
                .group(NS, Metric::Ips, GroupBy::Org, &Scope::Global, may, 0)
                .await
                .unwrap();
            let got: BTreeMap<String, f64> = got
                .into_iter()
                .map(|r| {
                    assert!(r.estimate.exact, "{}", r.group);
                    (r.group, r.estimate.value)
                })
                .collect();
            let want: BTreeMap<String, f64> =
                want_b.iter().map(|(k, &v)| (k.clone(), v as f64)).collect();
            let wrong: Vec<_> = want
                .iter()
                .filter(|(org, v)| got.get(*org) != Some(v))
                .take(5)
                .collect();
            assert!(
                wrong.is_empty(),
                "truth of orgs answered otherwise: {wrong:?}"
            );
            assert_eq!(got.len(), want.len());
            let rows = client
                .compare(NS, Metric::Ips, GroupBy::Org, &Scope::Global, april, may, 0)
                .await
                .unwrap();
            let orgs: HashSet<&String> = want_a.keys().chain(want_b.keys()).collect();
            assert_eq!(rows.len(), orgs.len());
            for row in &rows {
                let (a, b) = (
                    want_a.get(&row.group).copied().unwrap_or(0) as f64,
                    want_b.get(&row.group).copied().unwrap_or(0) as f64,
                );
                assert_eq!((row.a.value, row.b.value), (a, b), "{}", row.group);
            }
        }
    };
    check(&server).await;
    server.stop().await;
    let server = common::start(dir.path()).await;
    check(&server).await;
    server.stop().await;
}
