//! Every refusal of the API, table-driven, over gRPC against the real
//! server: the exact wrong input, the status code, and a stable part of
//! the message (which names the field, and says what to do).

mod common;

use common::APRIL_1;
use sketchd::client::{BatchBuilder, Client, Observation};
use sketchd::pb;
use tonic::{Code, Status};

const NS: &str = "errors";

/// One request of any RPC the table uses.
enum Call {
    Ingest(pb::IngestRequest),
    Count(pb::CountRequest),
}

/// The status of `call` (OK when it succeeded).
async fn status(client: &Client, call: Call) -> Status {
    let result = match call {
        Call::Ingest(r) => client.ingest_client().ingest(r).await.map(|_| ()),
        Call::Count(r) => client.query_client().count(r).await.map(|_| ()),
    };
    match result {
        Ok(()) => Status::ok(""),
        Err(status) => status,
    }
}

/// A batch of `rows` IPv4 rows from 10.0.0.1 at `APRIL_1`.
fn batch(collector: &str, sequence: u64, rows: u32, first_ip: u32) -> pb::IngestRequest {
    let mut b = BatchBuilder::new();
    for i in 0..rows {
        b.push(&Observation {
            ip: std::net::Ipv4Addr::from(0x0a00_0000 + first_ip + i).into(),
            unix_seconds: APRIL_1,
            org: Some("AS64500".into()),
            country: Some("DE".into()),
        });
    }
    b.build(NS, collector, sequence)
}

fn count(namespace: &str, scope: pb::Scope, from: &str, to: &str) -> pb::CountRequest {
    pb::CountRequest {
        namespace: namespace.into(),
        metric: pb::Metric::Ips as i32,
        scope: Some(scope),
        from: from.into(),
        to: to.into(),
        confidence: 0.0,
    }
}

fn country(cc: &str) -> pb::Scope {
    pb::Scope {
        country: cc.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn api_misuse_is_refused_with_a_status_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let client = &server.client;
    // Data to query, and a batch whose id a later case reuses.
    client.ingest(batch("c", 1, 10, 0)).await.unwrap();

    let cases: Vec<(&str, Call, Code, &[&str])> = vec![
        (
            "a client that never sets sequence",
            Call::Ingest(batch("c", 0, 5, 100)),
            Code::InvalidArgument,
            &["invalid sequence", "number batches from 1"],
        ),
        (
            "(namespace, collector, sequence) reused with other rows",
            Call::Ingest(batch("c", 1, 10, 1)),
            Code::AlreadyExists,
            &[
                "collector \"c\" already sent sequence 1 with other rows",
                "nothing of this batch was applied",
                "its own sequence",
            ],
        ),
        (
            "an unknown country in a query",
            Call::Count(count(NS, country("BR"), "2026-04-01", "2026-05-01")),
            Code::NotFound,
            &[
                "scope.country: namespace \"errors\" has no observation of country \"BR\"",
                "GroupBy by country",
            ],
        ),
        (
            "an unknown org in a query",
            Call::Count(count(
                NS,
                pb::Scope {
                    org: "AS6450".into(),
                    ..Default::default()
                },
                "2026-04-01",
                "2026-05-01",
            )),
            Code::NotFound,
            &["scope.org: namespace \"errors\" has no observation of org \"AS6450\""],
        ),
        (
            "an unknown sector in a query",
            Call::Count(count(
                NS,
                pb::Scope {
                    country: "DE".into(),
                    sector: "goverment".into(),
                    ..Default::default()
                },
                "2026-04-01",
                "2026-05-01",
            )),
            Code::NotFound,
            &[
                "scope.sector: namespace \"errors\" has no observation of sector \"goverment\"",
                "check the spelling",
            ],
        ),
        (
            "a known country outside its days is a real zero",
            Call::Count(count(NS, country("DE"), "2026-06-01", "2026-07-01")),
            Code::Ok,
            &[],
        ),
        (
            "a 70 KB value is quoted short",
            Call::Count(count(NS, country("DE"), &"x".repeat(70_000), "2026-05-01")),
            Code::InvalidArgument,
            &[
                "invalid from: \"xxxxxxxx",
                "…\" (70000 bytes) is not a date YYYY-MM-DD",
            ],
        ),
        (
            "a 70 KB country is quoted short",
            Call::Count(count(
                NS,
                country(&"Q".repeat(70_000)),
                "2026-04-01",
                "2026-05-01",
            )),
            Code::InvalidArgument,
            &["invalid scope.country", "(70000 bytes) is not a two-letter"],
        ),
    ];
    for (what, call, code, parts) in cases {
        let got = status(client, call).await;
        assert_eq!(got.code(), code, "{what}: {got:?}");
        for part in parts {
            assert!(
                got.message().contains(part),
                "{what}: {:?} lacks {part:?}",
                got.message()
            );
        }
        assert!(
            got.message().len() <= 1_024,
            "{what}: a message of {} bytes",
            got.message().len()
        );
    }
    server.stop().await;
}
