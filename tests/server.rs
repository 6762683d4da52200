//! End-to-end tests over real gRPC sockets against the real server with a
//! real sled directory.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{Rng, TestServer, APRIL_1, DAY, NOW};
use sketchd::client::{BatchBuilder, Observation};
use sketchd::pb;
use sketchd::query::{Metric, Scope};
use sketchd::time::{Day, DayWindow};
use tonic::Code;

const NS: &str = "vendor-x-updates";
const COUNTRIES: [&str; 5] = ["DE", "GB", "IT", "US", "JP"];

/// Rows over `days` days from April 1st with IPs drawn from a pool, so that
/// IPs repeat within and across days; every row carries org and country.
fn world(seed: u64, rows: usize, days: i64, pool: u64) -> Vec<Observation> {
    let mut rng = Rng(seed);
    (0..rows)
        .map(|_| {
            let n = rng.below(pool);
            let ip = if n.is_multiple_of(10) {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    (n >> 16) as u16,
                    n as u16,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(n as u32 * 7919)))
            };
            // An IP keeps its org and country.
            let org = format!("AS{}", 64_500 + n % 300);
            let country = COUNTRIES[(n % 300 % 5) as usize];
            Observation {
                ip,
                unix_seconds: APRIL_1
                    + rng.below(days as u64) as i64 * DAY
                    + rng.below(DAY as u64) as i64,
                org: Some(org),
                country: Some(country.to_owned()),
            }
        })
        .collect()
}

async fn send(
    server: &TestServer,
    rows: &[Observation],
    collector: &str,
    sequence: u64,
) -> pb::IngestResponse {
    let mut b = BatchBuilder::new();
    rows.iter().for_each(|r| b.push(r));
    server
        .client
        .ingest(b.build(NS, collector, sequence))
        .await
        .expect("batch accepted")
}

fn day_of(t: i64) -> Day {
    Day::from_unix_seconds(t).unwrap()
}

fn window(from_day: i64, to_day: i64) -> DayWindow {
    DayWindow::new(
        day_of(APRIL_1 + from_day * DAY),
        day_of(APRIL_1 + to_day * DAY),
    )
    .unwrap()
}

/// Exact distinct counts of a window, for a scope.
fn truth(rows: &[Observation], w: DayWindow, metric: Metric, scope: &Scope) -> usize {
    let mut ips = HashSet::new();
    let mut orgs = HashSet::new();
    for r in rows.iter().filter(|r| w.contains(day_of(r.unix_seconds))) {
        let keep = match scope {
            Scope::Global => true,
            Scope::Country(cc) => r.country.as_deref() == Some(std::str::from_utf8(cc).unwrap()),
            Scope::Org(o) => r.org.as_deref() == Some(o.as_str()),
            Scope::Sector(_) | Scope::CountrySector(..) => unreachable!("no sectors in this world"),
        };
        if keep {
            ips.insert(r.ip);
            orgs.insert(r.org.clone());
        }
    }
    match metric {
        Metric::Ips => ips.len(),
        Metric::Orgs => orgs.len(),
    }
}

async fn assert_counts_match(server: &TestServer, rows: &[Observation], windows: &[DayWindow]) {
    let mut coverage = common::Coverage::default();
    let scopes = [
        Scope::Global,
        Scope::Country(*b"DE"),
        Scope::Country(*b"US"),
        Scope::Org("AS64501".into()),
    ];
    for &w in windows {
        for scope in &scopes {
            for metric in [Metric::Ips, Metric::Orgs] {
                if matches!((metric, scope), (Metric::Orgs, Scope::Org(_))) {
                    continue;
                }
                let exact = truth(rows, w, metric, scope) as f64;
                let got = server
                    .client
                    .count(NS, metric, scope, w)
                    .await
                    .unwrap()
                    .estimate;
                assert_eq!(got.confidence, 0.95);
                coverage.check(&format!("{metric:?} {scope:?} {w:?}"), exact, &got);
            }
        }
    }
    coverage.assert_share(0.8);
}

#[tokio::test]
async fn ingest_then_count_matches_truth_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let rows = world(1, 120_000, 10, 40_000);
    let mut acked = 0;
    for (i, chunk) in rows.chunks(25_000).enumerate() {
        let reply = send(&server, chunk, "c1", i as u64 + 1).await;
        assert!(!reply.duplicate);
        acked += reply.rows_accepted;
    }
    assert_eq!(acked, rows.len() as u64);
    let windows = [window(0, 10), window(0, 1), window(3, 7), window(9, 10)];
    assert_counts_match(&server, &rows, &windows).await;

    // Exact observation counters, globally and per country.
    let all = window(0, 10);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, all)
            .await
            .unwrap(),
        rows.len() as u64
    );
    let de = rows
        .iter()
        .filter(|r| r.country.as_deref() == Some("DE"))
        .count() as u64;
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Country(*b"DE"), all)
            .await
            .unwrap(),
        de
    );

    // A window beyond the data is empty and says what it covered.
    let later = window(20, 30);
    let reply = server
        .client
        .count(NS, Metric::Ips, &Scope::Global, later)
        .await
        .unwrap();
    assert_eq!(reply.estimate.value, 0.0);
    assert!(reply.estimate.exact);
    assert!(reply.covered.is_empty());
    // A window wider than the data reports the days that hold data.
    let wide = window(-5, 40);
    let reply = server
        .client
        .count(NS, Metric::Ips, &Scope::Global, wide)
        .await
        .unwrap();
    assert_eq!(reply.covered, window(0, 10));
    server.stop().await;
}

#[tokio::test]
async fn restart_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let rows = world(2, 60_000, 5, 30_000);
    let server = common::start(dir.path()).await;
    for (i, chunk) in rows.chunks(20_000).enumerate() {
        send(&server, chunk, "c1", i as u64 + 1).await;
    }
    let w = window(0, 5);
    let before = server
        .client
        .count(NS, Metric::Ips, &Scope::Global, w)
        .await
        .unwrap()
        .estimate;
    let before_de = server
        .client
        .count(NS, Metric::Orgs, &Scope::Country(*b"DE"), w)
        .await
        .unwrap()
        .estimate;
    server.stop().await;

    let server = common::start(dir.path()).await;
    let after = server
        .client
        .count(NS, Metric::Ips, &Scope::Global, w)
        .await
        .unwrap()
        .estimate;
    let after_de = server
        .client
        .count(NS, Metric::Orgs, &Scope::Country(*b"DE"), w)
        .await
        .unwrap()
        .estimate;
    assert_eq!(
        (before.value, before.lower, before.upper),
        (after.value, after.lower, after.upper)
    );
    assert_eq!(before_de.value, after_de.value);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, w)
            .await
            .unwrap(),
        rows.len() as u64
    );
    assert_counts_match(&server, &rows, &[w]).await;
    server.stop().await;
}

#[tokio::test]
async fn a_retried_batch_is_not_double_counted_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rows = world(3, 5_000, 3, 4_000);
    let w = window(0, 3);
    let server = common::start(dir.path()).await;
    let first = send(&server, &rows, "eu-1", 7).await;
    assert_eq!((first.rows_accepted, first.duplicate), (5_000, false));
    let again = send(&server, &rows, "eu-1", 7).await;
    assert_eq!((again.rows_accepted, again.duplicate), (0, true));
    // Same sequence from another collector is another batch.
    let other = send(&server, &rows[..10], "eu-2", 7).await;
    assert!(!other.duplicate);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, w)
            .await
            .unwrap(),
        5_010
    );
    server.stop().await;

    let server = common::start(dir.path()).await;
    let after_restart = send(&server, &rows, "eu-1", 7).await;
    assert!(after_restart.duplicate);
    // The id with other rows is another batch that reuses it: refused,
    // also after the restart (the digest of the rows is kept with the id).
    let mut b = BatchBuilder::new();
    rows[1..].iter().for_each(|r| b.push(r));
    let reused = server.client.ingest(b.build(NS, "eu-1", 7)).await;
    match reused {
        Err(sketchd::client::ClientError::Status(s)) => {
            assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
            assert!(s.message().contains("sequence 7"), "{s:?}");
        }
        other => panic!("a reused id: {other:?}"),
    }
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, w)
            .await
            .unwrap(),
        5_010
    );
    server.stop().await;
}

#[tokio::test]
async fn an_ipv4_mapped_ipv6_address_counts_as_the_ipv4_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let v4 = Ipv4Addr::new(192, 0, 2, 1);
    let rows: Vec<Observation> = [IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())]
        .into_iter()
        .map(|ip| Observation {
            ip,
            unix_seconds: APRIL_1,
            org: Some("AS64500".into()),
            country: Some("DE".into()),
        })
        .collect();
    send(&server, &rows, "c", 1).await;
    let got = server
        .client
        .count(NS, Metric::Ips, &Scope::Global, window(0, 1))
        .await
        .unwrap();
    assert_eq!((got.estimate.value, got.estimate.exact), (1.0, true));
    server.stop().await;
}

/// A valid one-row request to mutate.
fn valid() -> pb::IngestRequest {
    pb::IngestRequest {
        namespace: NS.into(),
        collector_id: "c".into(),
        sequence: 1000,
        ipv4: vec![0x0102_0304, 0x0102_0305],
        ipv6: vec![0x20; 16],
        unix_seconds: vec![APRIL_1, APRIL_1, APRIL_1],
        org_dict: vec!["AS1".into()],
        org_index: vec![1, 1, 0],
        country_dict: vec!["DE".into()],
        country_index: vec![1, 1, 1],
    }
}

#[tokio::test]
async fn bad_batches_are_rejected_whole_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Namespaces created on first use refuse rows older than three years.
    let mut config = common::config(dir.path());
    config.default_policy.max_age_days = 3 * 366;
    let server = common::start_with(config).await;
    // Something already counted, to see that it does not change.
    let rows = world(4, 2_000, 3, 1_500);
    send(&server, &rows, "base", 1).await;
    let w = window(0, 3);
    let snapshot = |s: &TestServer| {
        let client = s.client.clone();
        async move {
            let ips = client
                .count(NS, Metric::Ips, &Scope::Global, w)
                .await
                .unwrap()
                .estimate
                .value;
            let orgs = client
                .count(NS, Metric::Orgs, &Scope::Global, w)
                .await
                .unwrap()
                .estimate
                .value;
            let obs = client.observations(NS, &Scope::Global, w).await.unwrap();
            (ips, orgs, obs)
        }
    };
    let before = snapshot(&server).await;

    type Mutation = fn(&mut pb::IngestRequest);
    let cases: Vec<(&str, Mutation, Code, &str)> = vec![
        (
            "ipv6 not a multiple of 16",
            |r| r.ipv6.push(1),
            Code::InvalidArgument,
            "ipv6",
        ),
        (
            "times column short",
            |r| {
                r.unix_seconds.pop();
            },
            Code::InvalidArgument,
            "unix_seconds",
        ),
        (
            "org index column short",
            |r| {
                r.org_index.pop();
            },
            Code::InvalidArgument,
            "org_index",
        ),
        (
            "org index out of dictionary",
            |r| r.org_index[2] = 5,
            Code::InvalidArgument,
            "row 2: invalid org_index",
        ),
        (
            "country index out of dictionary",
            |r| r.country_index[1] = 2,
            Code::InvalidArgument,
            "row 1: invalid country_index",
        ),
        (
            "lower-case country",
            |r| r.country_dict[0] = "de".into(),
            Code::InvalidArgument,
            "country_dict[0]",
        ),
        (
            "unassigned country",
            |r| r.country_dict[0] = "XX".into(),
            Code::InvalidArgument,
            "country_dict[0]",
        ),
        (
            "empty org",
            |r| r.org_dict[0] = String::new(),
            Code::InvalidArgument,
            "org_dict[0]",
        ),
        (
            "too old",
            |r| r.unix_seconds[1] = NOW - 5 * 366 * DAY,
            Code::InvalidArgument,
            "row 1: invalid unix_seconds",
        ),
        (
            "in the future",
            |r| r.unix_seconds[2] = NOW + 2 * 3600,
            Code::InvalidArgument,
            "row 2: invalid unix_seconds",
        ),
        (
            "empty collector",
            |r| r.collector_id.clear(),
            Code::InvalidArgument,
            "collector_id",
        ),
        (
            "bad namespace name",
            |r| r.namespace = "a b".into(),
            Code::InvalidArgument,
            "namespace",
        ),
        (
            "empty namespace",
            |r| r.namespace.clear(),
            Code::InvalidArgument,
            "namespace",
        ),
    ];
    for (what, mutate, code, needle) in cases {
        let mut req = valid();
        mutate(&mut req);
        let err = server
            .client
            .ingest_client()
            .ingest(req)
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{what}: {:?} does not name {needle:?}",
            err.message()
        );
        assert_eq!(snapshot(&server).await, before, "{what} changed the counts");
    }
    // The valid request itself goes through, so the cases above failed for
    // their mutation alone.
    let ok = server.client.ingest(valid()).await.unwrap();
    assert_eq!(ok.rows_accepted, 3);
    assert_ne!(snapshot(&server).await, before);
    server.stop().await;
}

#[tokio::test]
async fn too_many_rows_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.max_rows_per_batch = 2;
    let server = common::start_with(config).await;
    let err = server
        .client
        .ingest_client()
        .ingest(valid())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("3 rows"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.max_message_bytes = 64 * 1024;
    let server = common::start_with(config).await;
    let rows = world(8, 20_000, 1, 20_000);
    let mut b = BatchBuilder::new();
    rows.iter().for_each(|r| b.push(r));
    let err = server
        .client
        .ingest_client()
        .ingest(b.build(NS, "c", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    // Nothing was applied; a batch under the limit goes through.
    send(&server, &rows[..100], "c", 2).await;
    let w = window(0, 1);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, w)
            .await
            .unwrap(),
        100
    );
    server.stop().await;
}

#[tokio::test]
async fn query_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    send(&server, &world(5, 100, 1, 100), "c", 1).await;
    let base = pb::CountRequest {
        namespace: NS.into(),
        metric: pb::Metric::Ips as i32,
        scope: None,
        from: "2026-04-01".into(),
        to: "2026-04-02".into(),
        confidence: 0.0,
    };
    type Mutation = fn(&mut pb::CountRequest);
    let cases: Vec<(Mutation, Code, &str)> = vec![
        (
            |r| r.to = "2026-03-01".into(),
            Code::InvalidArgument,
            "reversed",
        ),
        (|r| r.from = "April".into(), Code::InvalidArgument, "from"),
        (|r| r.metric = 0, Code::InvalidArgument, "metric"),
        (|r| r.namespace = "nope".into(), Code::NotFound, "nope"),
        (
            |r| {
                r.scope = Some(pb::Scope {
                    country: "Germany".into(),
                    ..Default::default()
                })
            },
            Code::InvalidArgument,
            "scope.country",
        ),
        (
            |r| {
                r.scope = Some(pb::Scope {
                    country: "DE".into(),
                    org: "AS1".into(),
                    ..Default::default()
                })
            },
            Code::InvalidArgument,
            "scope",
        ),
        (
            |r| {
                r.metric = pb::Metric::Orgs as i32;
                r.scope = Some(pb::Scope {
                    org: "AS1".into(),
                    ..Default::default()
                })
            },
            Code::InvalidArgument,
            "scope.org",
        ),
        (|r| r.confidence = 1.5, Code::InvalidArgument, "confidence"),
    ];
    for (mutate, code, needle) in cases {
        let mut req = base.clone();
        mutate(&mut req);
        let err = server
            .client
            .query_client()
            .count(req.clone())
            .await
            .expect_err("must fail");
        assert_eq!(err.code(), code, "{req:?}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{:?} does not name {needle:?}",
            err.message()
        );
    }
    // An empty window is fine and exact.
    let mut empty = base.clone();
    empty.to = empty.from.clone();
    let reply = server
        .client
        .query_client()
        .count(empty)
        .await
        .unwrap()
        .into_inner();
    let e = reply.estimate.unwrap();
    assert_eq!((e.estimate, e.exact), (0.0, true));
    // An org no row ever had is NOT_FOUND, not a zero that looks real.
    let mut unknown = base;
    unknown.scope = Some(pb::Scope {
        org: "AS999999".into(),
        ..Default::default()
    });
    let err = server
        .client
        .query_client()
        .count(unknown)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("\"AS999999\""), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn namespaces_are_created_with_a_policy_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut admin = server.client.admin_client();
    let policy = pb::NamespacePolicy {
        precision: 12,
        max_age_days: 30,
        max_future_skew_seconds: 60,
        retention_days: Some(0),
    };
    let info = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "small".into(),
            policy: Some(policy),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.policy.unwrap().precision, 12);
    // Same policy again: fine. Another policy: ALREADY_EXISTS.
    admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "small".into(),
            policy: Some(policy),
        })
        .await
        .unwrap();
    let err = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "small".into(),
            policy: Some(pb::NamespacePolicy {
                precision: 14,
                ..policy
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = admin
        .create_namespace(pb::CreateNamespaceRequest {
            name: "bad".into(),
            policy: Some(pb::NamespacePolicy {
                precision: 19,
                ..policy
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("policy.precision"),
        "{}",
        err.message()
    );

    // The namespace's own age limit applies: 30 days.
    let mut req = valid();
    req.namespace = "small".into();
    req.unix_seconds = vec![NOW - 40 * DAY; 3];
    let err = server.client.ingest_client().ingest(req).await.unwrap_err();
    assert!(
        err.message().contains("row 0: invalid unix_seconds"),
        "{}",
        err.message()
    );

    // Auto-created on first ingest with the default policy.
    send(&server, &world(6, 10, 1, 10), "c", 1).await;
    let list = admin
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["small", NS]);
    let got = admin
        .get_namespace(pb::GetNamespaceRequest { name: NS.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.policy.unwrap().precision, 14);
    assert_eq!(got.first_day, "2026-04-01");
    assert_eq!(got.end_day, "2026-04-02");
    server.stop().await;

    // Policies survive a restart.
    let server = common::start(dir.path()).await;
    let got = server
        .client
        .admin_client()
        .get_namespace(pb::GetNamespaceRequest {
            name: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.policy.unwrap(), policy);
    server.stop().await;
}

#[tokio::test]
async fn unknown_namespaces_are_refused_when_auto_create_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.auto_create_namespaces = false;
    let server = common::start_with(config).await;
    let err = server
        .client
        .ingest_client()
        .ingest(valid())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["sketchd.v1.Ingest", "sketchd.v1.Query", "sketchd.v1.Admin"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: HashSet<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "sketchd.v1.Ingest",
        "sketchd.v1.Query",
        "sketchd.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(service), "{service} missing from {names:?}");
    }

    // v1alpha too, for clients that know only it (grpcurl 1.8, Python's
    // grpcio-reflection).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(
        tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let reply = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected v1alpha reflection answer");
    };
    let names: HashSet<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("sketchd.v1.Ingest"), "{names:?}");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_collectors_share_group_commits_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let rows = world(7, 80_000, 4, 50_000);
    let mut tasks = Vec::new();
    for (i, chunk) in rows.chunks(2_000).enumerate() {
        let client = server.client.clone();
        let mut b = BatchBuilder::new();
        chunk.iter().for_each(|r| b.push(r));
        let req = b.build(NS, &format!("collector-{}", i % 8), i as u64 + 1);
        tasks.push(tokio::spawn(async move {
            client.ingest(req).await.unwrap().rows_accepted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, rows.len() as u64);
    let w = window(0, 4);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, w)
            .await
            .unwrap(),
        total
    );
    assert_counts_match(&server, &rows, &[w]).await;
    let mut per_country: HashMap<&str, u64> = HashMap::new();
    for r in &rows {
        *per_country
            .entry(r.country.as_deref().unwrap())
            .or_default() += 1;
    }
    for (cc, n) in per_country {
        let code: [u8; 2] = cc.as_bytes().try_into().unwrap();
        assert_eq!(
            server
                .client
                .observations(NS, &Scope::Country(code), w)
                .await
                .unwrap(),
            n
        );
    }
    server.stop().await;
}

/// Scrapes the metrics endpoint with a plain HTTP/1.1 request.
async fn scrape(server: &TestServer) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(server.metrics_addr)
        .await
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn prometheus_metrics_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let rows = world(9, 3_000, 2, 2_000);
    send(&server, &rows, "c", 1).await;
    send(&server, &rows, "c", 1).await; // duplicate
    let mut bad = valid();
    bad.country_dict[0] = "XX".into();
    server.client.ingest_client().ingest(bad).await.unwrap_err();
    server
        .client
        .count(NS, Metric::Ips, &Scope::Global, window(0, 2))
        .await
        .unwrap();

    let text = scrape(&server).await;
    assert_eq!(metric(&text, "sketchd_rows_ingested_total"), 3_000.0);
    assert_eq!(metric(&text, "sketchd_batches_total"), 2.0);
    assert_eq!(metric(&text, "sketchd_duplicate_batches_total"), 1.0);
    assert_eq!(metric(&text, "sketchd_rejected_batches_total"), 1.0);
    assert_eq!(metric(&text, "sketchd_rows_rejected_total"), 3.0);
    assert_eq!(metric(&text, "sketchd_batch_ack_seconds_count"), 2.0);
    assert!(metric(&text, "sketchd_wal_sync_seconds_count") >= 1.0);
    assert_eq!(
        metric(&text, "sketchd_query_seconds_count{rpc=\"count\"}"),
        1.0
    );
    assert!(
        metric(&text, "sketchd_memtable_sketches") > 0.0
            || metric(&text, "sketchd_disk_bytes") > 0.0
    );
    assert!(text.contains("# TYPE sketchd_batch_ack_seconds histogram"));
    assert!(text.contains("# TYPE sketchd_rollup_seconds histogram"));
    // The days just written have their blocks rebuilt by a rollup pass
    // (at the latest when the server is idle after a checkpoint).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = scrape(&server).await;
        if metric(&text, "sketchd_rollup_seconds_count") >= 1.0
            && metric(&text, "sketchd_stale_rollup_blocks") == 0.0
        {
            assert!(metric(&text, "sketchd_rollup_blocks_total") > 0.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rollup pass");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// The memtable stays within its byte budget: a full memtable is
/// checkpointed early, long before the checkpoint interval, and nothing is
/// lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memtable_keeps_to_its_byte_budget() {
    const BUDGET: usize = 4 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let config = sketchd::config::ServerConfig {
        memtable_max_bytes: BUDGET,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..common::config(dir.path())
    };
    let server = common::start_with(config).await;
    let mut sent = 0;
    let mut peak = 0.0f64;
    let mut first_batch = 0.0f64;
    for seq in 1..=12 {
        // Dense global and country sketches on 30 days: ~1.5 MiB per batch.
        let rows = world(1_000 + seq, 40_000, 30, 500_000);
        send(&server, &rows, "budget", seq).await;
        sent += rows.len() as u64;
        let bytes = metric(&scrape(&server).await, "sketchd_memtable_bytes");
        if seq == 1 {
            first_batch = bytes;
        }
        peak = peak.max(bytes);
    }
    // Active and frozen memtable together at most the budget plus one
    // group of batches; without the budget, all 12 would sit in memory.
    let bound = BUDGET as f64 + 2.0 * first_batch;
    assert!(
        peak <= bound && peak < 10.0 * first_batch,
        "memtable peaked at {peak} bytes (bound {bound}, one batch {first_batch})"
    );
    // Full memtables were checkpointed early (the interval is an hour).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&scrape(&server).await, "sketchd_checkpoint_seconds_count") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "no early checkpoints");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let whole = DayWindow::new(
        Day::from_unix_seconds(APRIL_1 - 40 * DAY).unwrap(),
        Day::from_unix_seconds(NOW + DAY).unwrap(),
    )
    .unwrap();
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, whole)
            .await
            .unwrap(),
        sent
    );
    server.stop().await;
}

/// `THP_enabled` of a process, from `/proc/<pid>/status` (Linux 5.0+).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// The server process turns transparent huge pages off for itself: mimalloc
/// asks for them, and a 2 MiB page stays resident while any of its 4 KiB
/// holds a live object (peak RSS 554-584 MiB with them at scale 1, 460-470
/// without; docs/performance-history.md). `MIMALLOC_ALLOW_THP` leaves the choice to
/// mimalloc.
#[cfg(target_os = "linux")]
#[test]
fn the_server_process_turns_transparent_huge_pages_off() {
    let Some(ours) = thp_enabled("self") else {
        eprintln!("skipped: this kernel does not report THP_enabled");
        return;
    };
    let server_thp = |allow: Option<&str>| -> String {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _) =
            common::spawn_server_with_env(dir.path(), "", &[("MIMALLOC_ALLOW_THP", allow)]);
        let thp = thp_enabled(&child.id().to_string()).expect("THP_enabled");
        child.kill().unwrap();
        child.wait().unwrap();
        thp
    };
    assert_eq!(server_thp(None), "0", "huge pages off by default");
    // The flag is inherited: only a process started with it on can show
    // that the variable keeps it on.
    if ours == "1" {
        assert_eq!(server_thp(Some("1")), "1", "MIMALLOC_ALLOW_THP=1");
    }
}

/// The server's codec (prost over slices, `sketchd::wire`) speaks the same
/// bytes as tonic's own prost codec: a client generated with the stock
/// codec gets its batch applied and its answer decoded.
#[tokio::test]
async fn a_client_with_tonics_own_prost_codec_is_understood() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let rows = world(11, 5_000, 3, 800);
    let mut b = BatchBuilder::new();
    rows.iter().for_each(|r| b.push(r));
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let reply: pb::IngestResponse = grpc
        .unary(
            tonic::Request::new(b.build(NS, "stock-codec", 1)),
            "/sketchd.v1.Ingest/Ingest".parse().unwrap(),
            tonic_prost::ProstCodec::<pb::IngestRequest, pb::IngestResponse>::default(),
        )
        .await
        .expect("batch accepted")
        .into_inner();
    assert_eq!(reply.rows_accepted, rows.len() as u64);
    assert!(!reply.duplicate);
    let w = window(0, 3);
    for scope in [Scope::Global, Scope::Country(*b"DE")] {
        let got = server
            .client
            .count(NS, Metric::Ips, &scope, w)
            .await
            .unwrap()
            .estimate;
        let exact = truth(&rows, w, Metric::Ips, &scope) as f64;
        assert!(got.exact, "{scope:?}: small sets are exact");
        assert_eq!(got.value, exact, "{scope:?}");
    }
    server.stop().await;
}
