//! `sketchd backup` against a real server process under load: the backup
//! is a data directory holding every batch acknowledged before it began,
//! whole batches only, and a server started on it answers as the source.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::NOW;
use sketchd::client::{BatchBuilder, Client, Collector, CollectorOptions, Sequences};

const NS: &str = "study";
const ROWS: usize = 250;

async fn send_batches(url: String, collector: u64, batches: std::ops::Range<u64>) {
    let client = Client::connect(&url).await.unwrap();
    let options = CollectorOptions {
        batch_rows: ROWS,
        sequences: Sequences::From(batches.start + 1),
        ..CollectorOptions::new(NS, &format!("collector-{collector}"))
    };
    let mut c = Collector::new(client, options).unwrap();
    for b in batches {
        for obs in common::study_rows(collector, b, ROWS, NOW) {
            c.push(&obs).await.unwrap();
        }
    }
    c.finish().await.unwrap();
}

/// Batch `b` of `collector`, as `send_batches` numbers it.
fn request(collector: u64, b: u64) -> sketchd::pb::IngestRequest {
    let mut builder = BatchBuilder::new();
    for obs in common::study_rows(collector, b, ROWS, NOW) {
        builder.push(&obs);
    }
    builder.build(NS, &format!("collector-{collector}"), b + 1)
}

async fn observations(client: &Client) -> u64 {
    client
        .query_client()
        .observations(sketchd::pb::ObservationsRequest {
            namespace: NS.into(),
            scope: Some(Default::default()),
            from: "2000-01-01".into(),
            to: "2100-01-01".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .observations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_acknowledged_batch_and_serves_as_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (mut source, url) = common::spawn_server(dir.path(), "");
    // Acknowledged before the backup begins.
    for c in 0..2 {
        send_batches(url.clone(), c, 0..8).await;
    }
    let before = 2 * 8 * ROWS as u64;
    // Load while it runs.
    let load: Vec<_> = (0..2)
        .map(|c| tokio::spawn(send_batches(url.clone(), c, 8..200)))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = dir.path().join("backup");
    let backup = tokio::task::spawn_blocking({
        let (url, out) = (url.clone(), out.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_sketchd"))
                .args(["backup", "--server", &url, "--out"])
                .arg(&out)
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(backup.status.success(), "sketchd backup failed");
    let line = String::from_utf8(backup.stdout).unwrap();
    assert!(line.starts_with("backup of revision "), "{line}");
    for l in load {
        l.await.unwrap();
    }
    let source_client = Client::connect(&url).await.unwrap();
    let total = observations(&source_client).await;
    assert_eq!(total, 2 * 200 * ROWS as u64);
    let source_answers = common::answers(NS, &source_client, NOW).await;
    // SIGTERM: the source stops cleanly.
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(source.id() as libc::pid_t, libc::SIGTERM) };
    assert!(source.wait().unwrap().success());

    // A backup into a directory that holds something is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_sketchd"))
        .args(["backup", "--server", &url, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    let restored = common::start(&out).await;
    let held = observations(&restored.client).await;
    eprintln!(
        "the backup holds {held} rows: {before} acknowledged before it began, {total} in all"
    );
    assert!(
        held >= before && held <= total,
        "{held} rows, not between {before} and {total}"
    );
    // Exactly the batches it holds are recognised as duplicates: none of
    // them half there. Sending the rest makes it the source.
    let mut duplicates = 0;
    for c in 0..2 {
        for b in 0..200 {
            let reply = restored.client.ingest(request(c, b)).await.unwrap();
            duplicates += u64::from(reply.duplicate);
        }
    }
    assert_eq!(duplicates * ROWS as u64, held);
    assert_eq!(observations(&restored.client).await, total);
    assert_eq!(
        common::answers(NS, &restored.client, NOW).await,
        source_answers
    );
    restored.stop().await;
}
