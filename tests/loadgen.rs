//! `sketchd loadgen`, the binary, against the real server over real
//! sockets: a small world file in the peers' format is sent by several
//! collectors, and what the server then holds is checked against the world.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{Rng, APRIL_1, DAY};
use serde_json::Value;
use sketchd::query::{Metric, Scope};
use sketchd::time::{Day, DayWindow};

const NS: &str = "peers";
const RECORDS: usize = 2_500;
const DAYS: i64 = 3;

/// One observation of the world file: (unix seconds, IPv4, org id, country).
type Record = (u32, u32, u32, [u8; 2]);

/// Writes `records` as a PEEROBS1 world file (32-byte header, 14-byte
/// little-endian records), sorted by time like the peers' generator.
fn write_world(path: &Path, records: &[Record]) {
    let mut bytes = b"PEEROBS1".to_vec();
    for v in [1u32, 14] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(APRIL_1 as u32).to_le_bytes());
    bytes.extend_from_slice(&(DAYS as u32).to_le_bytes());
    for (ts, ip, org, cc) in records {
        bytes.extend_from_slice(&ts.to_le_bytes());
        bytes.extend_from_slice(&ip.to_le_bytes());
        bytes.extend_from_slice(&org.to_le_bytes());
        bytes.extend_from_slice(cc);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs the sketchd binary with `args` off the runtime's threads.
async fn sketchd(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_a_world_that_the_server_then_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("server")).await;

    // 2,500 observations of 400 IPs in 12 orgs over 3 days: every set stays
    // below the exact limit, so the server's counts must equal the truth.
    let mut rng = Rng(7);
    let mut records: Vec<Record> = (0..RECORDS)
        .map(|_| {
            let n = rng.below(400) as u32;
            let org = 1 + n % 12;
            let cc = if org.is_multiple_of(3) {
                *b"US"
            } else {
                *b"DE"
            };
            let ts = (APRIL_1 + rng.below((DAYS * DAY) as u64) as i64) as u32;
            (ts, 0x0a00_0000 + n, org, cc)
        })
        .collect();
    records.sort_by_key(|r| r.0);
    let world = dir.path().join("observations.bin");
    write_world(&world, &records);

    // loadgen of this world into this server's namespace, and `more`.
    let loadgen = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "loadgen".into(),
            "--server".into(),
            server.url.clone(),
            "--world".into(),
            world.display().to_string(),
            "--namespace".into(),
            NS.into(),
        ];
        args.extend(more.iter().map(|a| a.to_string()));
        args
    };
    let metrics = format!("http://{}/metrics", server.metrics_addr);
    let args = loadgen(&[
        "--collectors",
        "3",
        "--batch-rows",
        "200",
        "--settle-timeout",
        "0",
        "--metrics",
        &metrics,
        "--json",
    ]);
    let out = sketchd(args).await;
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"], Value::Null);
    assert_eq!(report["observations"], RECORDS as u64);
    // 13 batches of at most 200 rows, none of them a duplicate.
    assert_eq!(report["batches"], 13);
    assert_eq!(report["duplicate_batches"], 0);
    assert!(report["ingest_obs_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["ack_p99_ms"].as_f64().unwrap() >= report["ack_p50_ms"].as_f64().unwrap());
    assert!(report["rpc_floor_ms"].as_f64().unwrap() > 0.0);
    // The server's own account: every batch was logged under some sync.
    let work = &report["server_work"];
    let syncs = work["wal_syncs"].as_f64().unwrap();
    assert!((1.0..=13.0).contains(&syncs), "{work}");

    let whole = DayWindow::new(
        Day::from_unix_seconds(APRIL_1).unwrap(),
        Day::from_unix_seconds(APRIL_1 + DAYS * DAY).unwrap(),
    )
    .unwrap();
    let count = |metric, scope: Scope| {
        let client = server.client.clone();
        async move {
            let reply = client.count(NS, metric, &scope, whole).await.unwrap();
            assert!(reply.estimate.exact);
            reply.estimate.value as usize
        }
    };
    let ips: HashSet<u32> = records.iter().map(|r| r.1).collect();
    let orgs: HashSet<u32> = records.iter().map(|r| r.2).collect();
    let us_ips: HashSet<u32> = records
        .iter()
        .filter(|r| &r.3 == b"US")
        .map(|r| r.1)
        .collect();
    assert_eq!(count(Metric::Ips, Scope::Global).await, ips.len());
    assert_eq!(count(Metric::Orgs, Scope::Global).await, orgs.len());
    assert_eq!(
        count(Metric::Ips, Scope::Country(*b"US")).await,
        us_ips.len()
    );
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, whole)
            .await
            .unwrap(),
        RECORDS as u64
    );

    // Querying without the truth's query set would run nothing: refused,
    // and the namespace is left as it was.
    let out = sketchd(loadgen(&["--skip-ingest"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--truth"), "{stderr}");
    assert_eq!(count(Metric::Ips, Scope::Global).await, ips.len());

    // A query set in the peers' truth format: answered, scored against the
    // truth (exact here), and the round trip measured between its Counts.
    let (from, to) = (whole.from.to_string(), whole.to.to_string());
    let truth = serde_json::json!({"queries": [
        {"id": "ipglob:whole", "kind": "ip_global_window", "start": from, "end": to,
         "truth": ips.len()},
        {"id": "ipcc:US", "kind": "ip_country_window", "cc": "US", "start": from, "end": to,
         "truth": us_ips.len()},
    ]});
    let truth_path = dir.path().join("truth.json");
    std::fs::write(&truth_path, truth.to_string()).unwrap();
    let truth_arg = truth_path.display().to_string();
    let out = sketchd(loadgen(&[
        "--skip-ingest",
        "--truth",
        &truth_arg,
        "--repeats",
        "2",
        "--json",
    ]))
    .await;
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&Value> = report["queries"].as_array().unwrap().iter().collect();
    for kind in ["ip_global_whole", "ip_country_window"] {
        let q = kinds.iter().find(|q| q["name"] == kind).expect(kind);
        assert_eq!(q["n"], 2, "{q}");
        assert_eq!(q["error_max"].as_f64(), Some(0.0), "{q}");
    }
    let between = &report["rpc_between_counts"];
    assert!(between["health_ms"].as_f64().unwrap() > 0.0, "{between}");
    assert!(between["count_ms"].as_f64().unwrap() > 0.0, "{between}");
    server.stop().await;
}
