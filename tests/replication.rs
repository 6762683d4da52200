//! Replication on loopback: regional servers push into a global one.
//!
//! The reference is one server that ingested every row. After a sync, the
//! global server's stored day sketches (wherever each is kept: its day
//! group or its own key, which depends on when checkpoints ran), rollup
//! blocks, counters, presence, names and dimensions are byte-identical to
//! the reference's, and every query gives the same answer.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::{TestServer, DAY, NOW};
use sketchd::client::{BatchBuilder, Client};
use sketchd::config::{ReplicationConfig, ServerConfig};
use sketchd::pb;
use sketchd::time::Day;

const NS: &str = "study";

fn request(collector: u64, sequence: u64, n: usize, now: i64) -> pb::IngestRequest {
    let mut b = BatchBuilder::new();
    for o in common::study_rows(collector, sequence, n, now) {
        b.push(&o);
    }
    b.build(NS, &format!("collector-{collector}"), sequence)
}

async fn send(client: &Client, collector: u64, sequence: u64, n: usize, now: i64) {
    client
        .ingest(request(collector, sequence, n, now))
        .await
        .expect("batch accepted");
}

fn regional(dir: &Path, region: &str, upstream: &str) -> ServerConfig {
    let mut r = ReplicationConfig::new(region.into(), upstream.into()).unwrap();
    // Pushes in the background too, so that tests see both paths.
    r.push_interval = Duration::from_millis(150);
    ServerConfig {
        replication: Some(r),
        ..common::config(dir)
    }
}

async fn observations(client: &Client) -> u64 {
    client
        .query_client()
        .observations(pb::ObservationsRequest {
            namespace: NS.into(),
            scope: Some(pb::Scope::default()),
            from: "2000-01-01".into(),
            to: "2100-01-01".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .observations
}

fn assert_same_records(global: &Path, single: &Path) {
    let g = common::records(global);
    let s = common::records(single);
    assert!(
        s.keys().any(|k| k[0] == b's') && s.keys().any(|k| k[0] == b'c'),
        "the reference holds sketches and counters"
    );
    let only_g: Vec<_> = g.keys().filter(|k| !s.contains_key(*k)).take(3).collect();
    let only_s: Vec<_> = s.keys().filter(|k| !g.contains_key(*k)).take(3).collect();
    assert!(
        only_g.is_empty() && only_s.is_empty(),
        "keys only in global {only_g:?}, only in single {only_s:?}"
    );
    let differing: Vec<_> = g
        .iter()
        .filter(|(k, v)| s.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .take(3)
        .collect();
    assert!(differing.is_empty(), "values differ for {differing:?}");
    assert_eq!(g.len(), s.len());
}

/// Two regions, a global server and a single reference server; rows come in
/// two phases (the second with late data for old days and repeated batches),
/// with a sync after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_converge_to_the_single_server_byte_for_byte() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let global = common::start(dirs[0].path()).await;
    let eu = common::start_with(regional(dirs[1].path(), "eu", &global.url)).await;
    let us = common::start_with(regional(dirs[2].path(), "us", &global.url)).await;
    let single = common::start(dirs[3].path()).await;

    let mut sent = 0u64;
    for phase in 0..2u64 {
        for collector in 1..=4u64 {
            for seq in 1..=3u64 {
                let seq = phase * 10 + seq;
                let n = 2_000 + (collector * 500) as usize;
                let region = if collector <= 2 { &eu } else { &us };
                send(&region.client, collector, seq, n, NOW).await;
                send(&single.client, collector, seq, n, NOW).await;
                sent += n as u64;
            }
        }
        // A collector retries a batch it already sent: never counted twice.
        send(&eu.client, 1, phase * 10 + 1, 2_500, NOW).await;
        send(&single.client, 1, phase * 10 + 1, 2_500, NOW).await;
        for r in [&eu, &us] {
            let synced = r.client.sync().await.expect("sync");
            assert!(synced.acked_revision > 0);
            let status = r.client.replication_status().await.unwrap();
            assert_eq!(status.acked_revision, synced.acked_revision);
            assert_eq!(status.pending_records, 0, "{status:?}");
            assert!(status.last_error.is_empty(), "{status:?}");
        }
        assert_eq!(observations(&global.client).await, sent);
        assert_eq!(
            common::answers(NS, &global.client, NOW).await,
            common::answers(NS, &single.client, NOW).await,
            "phase {phase}"
        );
    }

    // Provenance: both regions, with the revision each acknowledged.
    let status = global.client.replication_status().await.unwrap();
    let eu_rev = eu.client.replication_status().await.unwrap().acked_revision;
    let regions: Vec<(String, u64)> = status
        .regions
        .iter()
        .map(|r| (r.region.clone(), r.revision))
        .collect();
    assert_eq!(regions.len(), 2, "{regions:?}");
    assert_eq!(regions[0], ("eu".to_owned(), eu_rev));
    assert!(status
        .regions
        .iter()
        .all(|r| r.merged_at_unix == NOW && r.records > 0));
    // The same, from the command line.
    let url = global.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(["status", "--json", "--server", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["regions"][0]["region"], "eu", "{doc}");
    assert_eq!(doc["regions"][0]["revision"], eu_rev, "{doc}");
    assert_eq!(doc["regions"][1]["region"], "us", "{doc}");

    for s in [eu, us, global, single] {
        s.stop().await;
    }
    assert_same_records(dirs[0].path(), dirs[3].path());
}

/// The global server loses its data (restored empty); anti-entropy finds
/// every bucket differing and the region pushes everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_global_server_that_lost_its_data() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let global = common::start(dirs[0].path()).await;
    let addr: SocketAddr = global.addr;
    let eu = common::start_with(regional(dirs[1].path(), "eu", &global.url)).await;
    let single = common::start(dirs[3].path()).await;
    for seq in 1..=4 {
        send(&eu.client, 1, seq, 3_000, NOW).await;
        send(&single.client, 1, seq, 3_000, NOW).await;
    }
    eu.client.sync().await.unwrap();
    assert_eq!(observations(&global.client).await, 12_000);

    // Replace the global server by an empty one on the same address.
    global.stop().await;
    let wiped = tempfile::tempdir().unwrap();
    let global = common::start_on(common::config(wiped.path()), addr, NOW).await;
    assert_eq!(
        eu.client
            .replication_status()
            .await
            .unwrap()
            .pending_records,
        0,
        "nothing is pending: only digests can tell"
    );
    let synced = eu.client.sync().await.unwrap();
    assert!(synced.records_pushed > 0);
    assert_eq!(observations(&global.client).await, 12_000);
    assert_eq!(
        common::answers(NS, &global.client, NOW).await,
        common::answers(NS, &single.client, NOW).await
    );
    // A further sync finds nothing to repair.
    assert_eq!(eu.client.sync().await.unwrap().records_pushed, 0);
    for s in [eu, global, single] {
        s.stop().await;
    }
    assert_same_records(wiped.path(), dirs[3].path());
}

fn chunk(records: Vec<pb::ReplicatedRecord>, fingerprint: &str) -> pb::PushChunk {
    pb::PushChunk {
        region: "eu".into(),
        revision: 7,
        chunk: 0,
        last: true,
        namespace: NS.into(),
        policy: Some(pb::NamespacePolicy {
            precision: 14,
            max_age_days: 0,
            max_future_skew_seconds: 0,
            retention_days: None,
        }),
        seed_fingerprint: fingerprint.into(),
        records,
    }
}

async fn push(client: &Client, c: pb::PushChunk) -> Result<Vec<pb::PushAck>, tonic::Status> {
    let mut acks = client
        .replication_client()
        .push(tokio_stream::iter(vec![c]))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(a) = acks.message().await? {
        out.push(a);
    }
    Ok(out)
}

/// A peer hashing with another seed, or sending a bad record, is refused
/// with a clear status and nothing of its chunk is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    send(&server.client, 1, 1, 1_000, NOW).await;
    let before = common::answers(NS, &server.client, NOW).await;
    let ns = server
        .client
        .admin_client()
        .get_namespace(pb::GetNamespaceRequest { name: NS.into() })
        .await
        .unwrap()
        .into_inner();
    let counter = |value: u64| pb::ReplicatedRecord {
        key: {
            let mut k = vec![b'c'];
            k.extend_from_slice(&0u64.to_be_bytes());
            k.extend_from_slice(&Day::from_unix_seconds(NOW - DAY).unwrap().0.to_be_bytes());
            k
        },
        value: value.to_le_bytes().to_vec(),
    };

    let err = push(&server.client, chunk(vec![counter(5)], "0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("seed fingerprint"), "{err:?}");

    let bad = pb::ReplicatedRecord {
        key: b"s-garbage".to_vec(),
        value: vec![1, 2, 3],
    };
    let err = push(
        &server.client,
        chunk(vec![counter(5), bad], &ns.seed_fingerprint),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("records[1].key"), "{err:?}");
    assert_eq!(common::answers(NS, &server.client, NOW).await, before);

    // A good counter, pushed three times, counts once; a lower value later
    // (a stale push) changes nothing.
    for _ in 0..3 {
        let acks = push(
            &server.client,
            chunk(vec![counter(5)], &ns.seed_fingerprint),
        )
        .await
        .unwrap();
        assert_eq!(acks.len(), 1);
    }
    push(
        &server.client,
        chunk(vec![counter(2)], &ns.seed_fingerprint),
    )
    .await
    .unwrap();
    assert_eq!(observations(&server.client).await, 1_000 + 5);
    server.stop().await;
}

/// A child server, killed when dropped (also when a test fails).
struct Regional(Child);

impl Drop for Regional {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sketchd serve` as a child process replicating to `upstream`.
fn spawn_regional(dir: &Path, upstream: &str) -> (Regional, String) {
    let toml = format!(
        "checkpoint_interval_ms = 50\n[replication]\nregion = \"eu\"\n\
         push_interval_ms = 20\nupstream = \"{upstream}\"\n"
    );
    let (child, url) = common::spawn_server(dir, &toml);
    (Regional(child), url)
}

async fn connect(url: &str) -> Client {
    for _ in 0..200 {
        if let Ok(c) = Client::connect(url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("cannot connect to {url}");
}

/// A regional server killed with SIGKILL while it pushes: after a restart,
/// the global server converges to the single server and counts nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_server_killed_mid_push_converges_without_double_counting() {
    // The child serves with the system clock: rows are stamped relative to it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let global: TestServer = common::start_on(common::config(dirs[0].path()), any, now).await;
    let single = common::start_on(common::config(dirs[2].path()), any, now).await;
    let (mut child, url) = spawn_regional(dirs[1].path(), &global.url);
    let eu = connect(&url).await;

    // Send until the global server has merged part of the pushes, then
    // kill the regional server (it pushes every 20 ms, so mid-push or near).
    let mut sent = 0u64;
    let mut seq = 1u64;
    loop {
        send(&eu, 1 + seq % 3, seq, 4_000, now).await;
        send(&single.client, 1 + seq % 3, seq, 4_000, now).await;
        sent += 4_000;
        seq += 1;
        let merged = global.client.replication_status().await.unwrap();
        if seq > 20 && merged.regions.first().is_some_and(|r| r.records > 0) {
            break;
        }
        assert!(seq < 40, "the global server never merged anything");
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let (child, url) = spawn_regional(dirs[1].path(), &global.url);
    let eu = connect(&url).await;
    // Collectors re-send batches acknowledged before the kill: duplicates.
    for again in seq - 3..seq {
        let r = eu
            .ingest(request(1 + again % 3, again, 4_000, now))
            .await
            .unwrap();
        assert!(
            r.duplicate,
            "batch {again} was acknowledged before the kill"
        );
    }
    for seq in seq..seq + 5 {
        send(&eu, 1 + seq % 3, seq, 4_000, now).await;
        send(&single.client, 1 + seq % 3, seq, 4_000, now).await;
        sent += 4_000;
    }
    eu.sync().await.expect("sync after restart");
    assert_eq!(observations(&global.client).await, sent);
    assert_eq!(
        common::answers(NS, &global.client, now).await,
        common::answers(NS, &single.client, now).await
    );
    drop(child);
    global.stop().await;
    single.stop().await;
    assert_same_records(dirs[0].path(), dirs[2].path());
}

/// With tokens on the global server, only a token with the peer role on the
/// namespace may push, and only a region hashing with the same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_need_the_peer_role_and_the_same_hash_seed() {
    use sketchd::auth::{Grant, Namespaces, Role, Secret, TokenTable};
    use sketchd::client::ClientOptions;
    use sketchd::sketch::HashSeed;

    const PEER: &str = "peer-token-0123456789";
    const COLLECTOR: &str = "collector-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    let mut tokens = TokenTable::new();
    for (name, token, role) in [
        ("eu-replica", PEER, Role::Peer),
        ("eu-collector", COLLECTOR, Role::Collector),
        ("root", ADMIN, Role::Admin),
    ] {
        let namespaces =
            Namespaces::parse(&[if role == Role::Admin { "*" } else { NS }.to_owned()]).unwrap();
        tokens
            .add(name, &Secret::new(token), Grant { role, namespaces })
            .unwrap();
    }
    let secret = HashSeed::from_secret(b"study-namespace-secret");
    let keyed = |mut config: ServerConfig| {
        config.seeds.by_namespace.insert(NS.into(), secret);
        config
    };
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut global_config = keyed(common::config(dirs[0].path()));
    global_config.tokens = tokens;
    let global = common::start_with_client(
        global_config,
        ClientOptions {
            token: Some(ADMIN.into()),
            tls: None,
        },
    )
    .await;
    let with_token = |mut config: ServerConfig, token: Option<&str>| {
        if let Some(r) = config.replication.as_mut() {
            r.client.token = token.map(str::to_owned);
        }
        config
    };
    let peer = common::start_with(with_token(
        keyed(regional(dirs[1].path(), "eu", &global.url)),
        Some(PEER),
    ))
    .await;
    let collector = common::start_with(with_token(
        keyed(regional(dirs[2].path(), "eu2", &global.url)),
        Some(COLLECTOR),
    ))
    .await;
    let anonymous = common::start_with(keyed(regional(dirs[3].path(), "eu3", &global.url))).await;
    let other_seed = common::start_with(with_token(
        regional(dirs[4].path(), "eu4", &global.url),
        Some(PEER),
    ))
    .await;
    for (i, r) in [&peer, &collector, &anonymous, &other_seed]
        .into_iter()
        .enumerate()
    {
        send(&r.client, i as u64 + 1, 1, 1_000, NOW).await;
    }
    peer.client.sync().await.expect("a peer token may push");
    for (r, expected) in [
        (&collector, "needs role peer"),
        (&anonymous, "authorization"),
        (&other_seed, "seed fingerprint"),
    ] {
        let err = r.client.sync().await.unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
        let status = r.client.replication_status().await.unwrap();
        assert!(status.last_error.contains(expected), "{status:?}");
        assert!(status.pending_records > 0, "nothing was acknowledged");
    }
    assert_eq!(observations(&global.client).await, 1_000);
    let regions = global.client.replication_status().await.unwrap().regions;
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].region, "eu");
    for s in [peer, collector, anonymous, other_seed, global] {
        s.stop().await;
    }
}
