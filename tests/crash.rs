//! Durability: a server process killed with SIGKILL while collectors send
//! loses no acknowledged batch, and re-sent batches are not double counted.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Rng;
use sketchd::client::{BatchBuilder, Client, Observation};
use sketchd::pb;
use sketchd::query::{Metric, Scope};
use sketchd::sketch::{hash_ip, HashSeed, Sketch};
use sketchd::time::{Day, DayWindow};

const NS: &str = "crash";
const COLLECTORS: u64 = 4;
const ROWS_PER_BATCH: usize = 3_000;

/// Starts `sketchd serve` on an ephemeral port; returns it and its URL.
fn spawn_server(dir: &Path) -> (Child, String) {
    common::spawn_server(dir, "checkpoint_interval_ms = 40\n")
}

/// The batch `sequence` of `collector`: deterministic, distinct IPs mostly.
fn batch(collector: u64, sequence: u64, now: i64) -> Vec<Observation> {
    let mut rng = Rng(collector << 32 | sequence);
    (0..ROWS_PER_BATCH)
        .map(|_| Observation {
            ip: IpAddr::V4(Ipv4Addr::from(rng.below(3_000_000) as u32 + 0x0b00_0000)),
            unix_seconds: now - rng.below(3 * 86_400) as i64,
            org: Some(format!("AS{}", rng.below(500))),
            country: Some(["DE", "US", "GB"][rng.below(3) as usize].to_owned()),
        })
        .collect()
}

fn request(collector: u64, sequence: u64, now: i64) -> pb::IngestRequest {
    let mut b = BatchBuilder::new();
    batch(collector, sequence, now)
        .iter()
        .for_each(|o| b.push(o));
    b.build(NS, &format!("collector-{collector}"), sequence)
}

#[derive(Default)]
struct Log {
    acked: Vec<(u64, u64)>,
    in_flight: Vec<(u64, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_collectors_send_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (mut child, url) = spawn_server(dir.path());
    let client = Client::connect(&url).await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let mut tasks = Vec::new();
    for c in 0..COLLECTORS {
        let client = client.clone();
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=10_000u64 {
                match client.ingest(request(c, seq, now)).await {
                    Ok(reply) => {
                        assert!(!reply.duplicate);
                        log.lock().unwrap().acked.push((c, seq));
                    }
                    Err(_) => {
                        log.lock().unwrap().in_flight.push((c, seq));
                        return;
                    }
                }
            }
        }));
    }
    // Kill once a fair number of batches were acknowledged (and checkpoints,
    // every 40 ms, have happened), while the collectors keep sending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().acked.len() < 40 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let Log { acked, in_flight } = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        acked.len() >= 40,
        "only {} batches acknowledged",
        acked.len()
    );
    assert_eq!(
        in_flight.len() as u64,
        COLLECTORS,
        "every collector saw the kill"
    );

    let (mut child, url) = spawn_server(dir.path());
    let client = Client::connect(&url).await.unwrap();
    let today = Day::from_unix_seconds(now).unwrap();
    let window = DayWindow::new(Day(today.0 - 5), Day(today.0 + 1)).unwrap();
    let rows = |n: usize| (n * ROWS_PER_BATCH) as u64;
    let after_restart = client
        .observations(NS, &Scope::Global, window)
        .await
        .unwrap();
    assert!(
        after_restart >= rows(acked.len()) && after_restart <= rows(acked.len() + in_flight.len()),
        "{after_restart} observations after restart; {} acknowledged, {} in flight",
        rows(acked.len()),
        rows(in_flight.len())
    );
    // The last acknowledged batch (in the log, or in sled) keeps the
    // digest of its rows: its id with other rows is refused, the same
    // rows again are a duplicate.
    let &(c, seq) = acked.last().unwrap();
    let mut other = request(c + 100, seq, now);
    other.collector_id = format!("collector-{c}");
    match client.ingest(other).await {
        Err(sketchd::client::ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::AlreadyExists, "{s:?}")
        }
        other => panic!("a reused id with other rows: {other:?}"),
    }
    assert!(client.ingest(request(c, seq, now)).await.unwrap().duplicate);
    // Collectors re-send what they did not see acknowledged.
    for &(c, seq) in &in_flight {
        client.ingest(request(c, seq, now)).await.unwrap();
    }
    let all: Vec<(u64, u64)> = acked.iter().chain(&in_flight).copied().collect();
    assert_eq!(
        client
            .observations(NS, &Scope::Global, window)
            .await
            .unwrap(),
        rows(all.len())
    );

    // The estimate equals a reference sketch of exactly those rows.
    let mut reference = Sketch::new(14, HashSeed::DEFAULT).unwrap();
    for &(c, seq) in &all {
        for o in batch(c, seq, now) {
            reference.insert_hash(hash_ip(HashSeed::DEFAULT, o.ip));
        }
    }
    let want = reference.estimate_at(0.95);
    let got = client
        .count(NS, Metric::Ips, &Scope::Global, window)
        .await
        .unwrap()
        .estimate;
    assert_eq!(
        (got.value, got.lower, got.upper),
        (want.value, want.lower, want.upper)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
