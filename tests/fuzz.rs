//! Malformed bytes on every method of a real server over a real socket:
//! no answer may be `INTERNAL` (a server fault clients retry) or `UNKNOWN`.
//!
//! Each method gets a valid message of its request type, then mutations of
//! it (truncations, flipped bytes, a string field that is not UTF-8, a
//! truncated varint, a bad wire type, a length past the end) and random
//! bytes, sent as raw frames. Bounded: a fixed number of requests per
//! method and a deadline for all of them.

mod common;

use std::time::Duration;

use common::Rng;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use sketchd::pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Requests sent per method, besides the fixed malformed cases.
const RANDOM_PER_METHOD: usize = 40;

/// Sends and receives raw message bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = buf.chunk().to_vec();
        buf.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Every method the server serves, with a valid request of its type.
fn methods() -> Vec<(&'static str, Vec<u8>)> {
    let scope = || {
        Some(pb::Scope {
            country: "DE".into(),
            ..Default::default()
        })
    };
    vec![
        (
            "/sketchd.v1.Ingest/Ingest",
            pb::IngestRequest {
                namespace: "fuzz".into(),
                collector_id: "c".into(),
                sequence: 1,
                ipv4: vec![0x0102_0304],
                unix_seconds: vec![common::NOW - 60],
                country_dict: vec!["DE".into()],
                country_index: vec![1],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Count",
            pb::CountRequest {
                namespace: "fuzz".into(),
                metric: 1,
                scope: scope(),
                from: "2026-11-01".into(),
                to: "2026-11-28".into(),
                confidence: 0.0,
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Observations",
            pb::ObservationsRequest {
                namespace: "fuzz".into(),
                scope: scope(),
                from: "2026-11-01".into(),
                to: "2026-11-28".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/GroupBy",
            pb::GroupByRequest {
                namespace: "fuzz".into(),
                metric: 1,
                by: 1,
                from: "2026-11-01".into(),
                to: "2026-11-28".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Compare",
            pb::CompareRequest {
                namespace: "fuzz".into(),
                metric: 1,
                by: 1,
                a_from: "2026-11-01".into(),
                a_to: "2026-11-10".into(),
                b_from: "2026-11-10".into(),
                b_to: "2026-11-28".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Retention",
            pb::RetentionRequest {
                namespace: "fuzz".into(),
                scope: scope(),
                a_from: "2026-11-01".into(),
                a_to: "2026-11-10".into(),
                b_from: "2026-11-10".into(),
                b_to: "2026-11-28".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Overlap",
            pb::OverlapRequest {
                namespace: "fuzz".into(),
                scope: scope(),
                a_from: "2026-11-01".into(),
                a_to: "2026-11-10".into(),
                b_from: "2026-11-10".into(),
                b_to: "2026-11-28".into(),
                confidence: 0.9,
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Query/Series",
            pb::SeriesRequest {
                namespace: "fuzz".into(),
                metric: 1,
                scope: scope(),
                from: "2026-11-01".into(),
                to: "2026-11-28".into(),
                step: "week".into(),
                confidence: 0.0,
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Admin/CreateNamespace",
            pb::CreateNamespaceRequest {
                name: "fuzz-created".into(),
                policy: Some(pb::NamespacePolicy {
                    precision: 12,
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Admin/GetNamespace",
            pb::GetNamespaceRequest {
                name: "fuzz".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Admin/ListNamespaces",
            pb::ListNamespacesRequest {}.encode_to_vec(),
        ),
        (
            "/sketchd.v1.Admin/ReloadTables",
            pb::ReloadTablesRequest {}.encode_to_vec(),
        ),
        (
            "/sketchd.v1.Admin/GetTables",
            pb::GetTablesRequest {}.encode_to_vec(),
        ),
        (
            "/sketchd.v1.Replication/Push",
            pb::PushChunk {
                region: "eu".into(),
                revision: 1,
                chunk: 0,
                last: true,
                namespace: "fuzz".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Replication/Digest",
            pb::DigestRequest {
                region: "eu".into(),
                namespace: "fuzz".into(),
                buckets: 16,
            }
            .encode_to_vec(),
        ),
        (
            "/sketchd.v1.Replication/Status",
            pb::ReplicationStatusRequest {}.encode_to_vec(),
        ),
        (
            "/sketchd.v1.Replication/Sync",
            pb::SyncRequest {}.encode_to_vec(),
        ),
        (
            "/grpc.health.v1.Health/Check",
            tonic_health::pb::HealthCheckRequest {
                service: "sketchd.v1.Query".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/grpc.health.v1.Health/Watch",
            tonic_health::pb::HealthCheckRequest {
                service: "sketchd.v1.Query".into(),
            }
            .encode_to_vec(),
        ),
    ]
}

/// Malformed forms of `valid`: fixed cases first, then random ones.
fn malformed(valid: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = vec![
        // Field 1 (a string in every request that has one) not UTF-8.
        vec![0x0a, 0x02, 0xff, 0xfe],
        // A varint cut short.
        vec![0x08, 0xff],
        // Wire type 7 does not exist.
        vec![0x0f],
        // Tag 0.
        vec![0x00, 0x01],
        // A length past the end.
        vec![0x0a, 0x7f, 0x41],
        // A 10-byte varint that overflows.
        vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ];
    for _ in 0..RANDOM_PER_METHOD {
        let mut bytes = valid.to_vec();
        match rng.below(3) {
            // Cut anywhere.
            0 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            // Flip a few bytes.
            1 if !bytes.is_empty() => {
                for _ in 0..=rng.below(3) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            // Random bytes.
            _ => {
                let len = 1 + rng.below(48) as usize;
                bytes = (0..len).map(|_| rng.next_u64() as u8).collect();
            }
        }
        out.push(bytes);
    }
    out
}

/// The status of one call of `path` with `message` (OK when it succeeded).
async fn call(channel: &Channel, path: &'static str, message: Vec<u8>) -> Status {
    call_with(channel, path, vec![message]).await
}

/// The status of one call of `path` with `messages` (any number, also none
/// for a unary method).
async fn call_with(channel: &Channel, path: &'static str, messages: Vec<Vec<u8>>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Err(e) = grpc.ready().await {
        return Status::unknown(format!("channel not ready: {e}"));
    }
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut stream = match grpc.streaming(request, path.clone(), RawCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    // Watch never ends by itself: its first answer is enough.
    let endless = path.path().ends_with("/Watch");
    loop {
        match stream.message().await {
            Ok(Some(_)) if endless => return Status::ok(""),
            Ok(Some(_)) => continue,
            Ok(None) => return Status::ok(""),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn malformed_requests_are_never_internal_on_any_method() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rng = Rng(20);
    let mut sent = 0usize;
    let mut invalid = 0usize;
    let all = async {
        for (path, valid) in methods() {
            // The valid message is understood (whatever the domain answers).
            let status = call(&channel, path, valid.clone()).await;
            assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown),
                "{path} with a valid message: {status:?}"
            );
            // No message at all.
            let status = call_with(&channel, path, Vec::new()).await;
            assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown),
                "{path} without a message: {status:?}"
            );
            for bytes in malformed(&valid, &mut rng) {
                let status = call(&channel, path, bytes.clone()).await;
                sent += 1;
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{path} with {bytes:02x?}: {status:?}"
                );
                if status.code() == Code::InvalidArgument {
                    invalid += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the fuzz run finishes within 120 s");
    // Most malformed messages do not parse at all; they must be refused
    // as the caller's fault, naming the message.
    assert!(invalid * 2 > sent, "{invalid} of {sent} INVALID_ARGUMENT");
    let status = call(
        &channel,
        "/sketchd.v1.Query/Count",
        vec![0x0a, 0x02, 0xff, 0xfe],
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("sketchd.v1.CountRequest")
            && status.message().contains("CountRequest.namespace"),
        "{status:?}"
    );
    let status = call(&channel, "/grpc.health.v1.Health/Check", vec![0x08, 0xff]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = call_with(&channel, "/sketchd.v1.Query/Count", Vec::new()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("holds no message"), "{status:?}");
    drop(channel);
    server.stop().await;
}
