//! Operating a real server process: deleting namespaces (`sketchd
//! namespaces`), and a full data directory survived without a restart.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::NOW;
use sketchd::client::{BatchBuilder, Client};
use sketchd::pb;

const ROWS: usize = 500;

fn request(ns: &str, collector: u64, b: u64) -> pb::IngestRequest {
    let mut builder = BatchBuilder::new();
    for obs in common::study_rows(collector, b, ROWS, NOW) {
        builder.push(&obs);
    }
    builder.build(ns, &format!("collector-{collector}"), b + 1)
}

async fn observations(client: &Client, ns: &str) -> Result<u64, tonic::Status> {
    Ok(client
        .query_client()
        .observations(pb::ObservationsRequest {
            namespace: ns.into(),
            scope: Some(Default::default()),
            from: "2000-01-01".into(),
            to: "2100-01-01".into(),
        })
        .await?
        .into_inner()
        .observations)
}

fn sketchd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sketchd"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().unwrap()
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_frees_its_name_and_space_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = common::spawn_server(dir.path(), "checkpoint_interval_ms = 200\n");
    let client = Client::connect(&url).await.unwrap();
    for b in 0..40 {
        client.ingest(request("gone", 1, b)).await.unwrap();
    }
    for b in 0..4 {
        client.ingest(request("kept", 2, b)).await.unwrap();
    }
    let kept = observations(&client, "kept").await.unwrap();
    assert_eq!(kept, 4 * ROWS as u64);
    let kept_answers = common::answers("kept", &client, NOW).await;

    let list = sketchd(&["namespaces", "list", "--server", &url, "--json"]);
    assert!(list.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gone", "kept"]);

    let deleted = sketchd(&["namespaces", "delete", "gone", "--server", &url]);
    let said = String::from_utf8_lossy(&deleted.stdout);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(said.contains("deleted namespace \"gone\""), "{said}");

    // The name is gone, the other namespace untouched.
    let status = observations(&client, "gone").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let again = sketchd(&["namespaces", "delete", "gone", "--server", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("does not exist"));
    let list = sketchd(&["namespaces", "list", "--server", &url]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(!text.contains("gone") && text.contains("kept"), "{text}");
    assert_eq!(common::answers("kept", &client, NOW).await, kept_answers);

    // The name is free: the same batch ids make a new namespace holding
    // only what came after the deletion.
    for b in 0..2 {
        let reply = client.ingest(request("gone", 1, b)).await.unwrap();
        assert!(!reply.duplicate, "batch {b} of the deleted namespace");
    }
    assert_eq!(
        observations(&client, "gone").await.unwrap(),
        2 * ROWS as u64
    );

    // After kill -9, the log's records of the deleted namespace stay dead.
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, url) = common::spawn_server(dir.path(), "checkpoint_interval_ms = 200\n");
    let client = Client::connect(&url).await.unwrap();
    assert_eq!(
        observations(&client, "gone").await.unwrap(),
        2 * ROWS as u64
    );
    assert_eq!(common::answers("kept", &client, NOW).await, kept_answers);

    // Its space is reused: deleting the new one and loading as much as the
    // first held again grows the data directory by less than the first did.
    let empty_dir = tempfile::tempdir().unwrap();
    let (mut fresh, fresh_url) =
        common::spawn_server(empty_dir.path(), "checkpoint_interval_ms = 200\n");
    let fresh_client = Client::connect(&fresh_url).await.unwrap();
    for b in 0..40 {
        fresh_client.ingest(request("gone", 1, b)).await.unwrap();
    }
    assert!(stop(&mut fresh).success());
    let one_load = du(&empty_dir.path().join("data"));
    let before = du(&dir.path().join("data"));
    let deleted = sketchd(&["namespaces", "delete", "gone", "--server", &url]);
    assert!(deleted.status.success());
    for round in 0..3 {
        for b in 0..40 {
            client
                .ingest(request(&format!("round-{round}"), 1, b))
                .await
                .unwrap();
        }
        let deleted = sketchd(&[
            "namespaces",
            "delete",
            &format!("round-{round}"),
            "--server",
            &url,
        ]);
        assert!(deleted.status.success());
    }
    assert!(stop(&mut server).success());
    let after = du(&dir.path().join("data"));
    eprintln!(
        "data directory: {before} bytes before, {after} after loading and deleting 3 x {one_load} \
         bytes' worth"
    );
    assert!(
        after < before + 2 * one_load,
        "{after} bytes after 3 loads of {one_load} deleted, {before} before"
    );
    // No record of a deleted namespace is left: only the two live ids.
    let ids: std::collections::BTreeSet<[u8; 4]> = common::dump(&dir.path().join("data"))
        .keys()
        .map(|k| k[1..5].try_into().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "namespace ids with records: {ids:?}");
}

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop; `None` when this
/// process may not mount one (not root, or no CAP_SYS_ADMIN).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_refuses_ingest_keeps_answering_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), 64) else {
        eprintln!("skipped: this test mounts a tmpfs and may not (run it as root)");
        return;
    };
    let log = dir.path().join("server.log");
    let config = dir.path().join("sketchd.toml");
    std::fs::write(
        &config,
        "checkpoint_interval_ms = 100\nmin_free_disk_bytes = 8388608\nmemtable_max_bytes = 4194304\n",
    )
    .unwrap();
    let spawn = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(fs.0.join("data"))
            .arg("--config")
            .arg(&config)
            .env("SKETCHD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("sketchd listening on ")
            .unwrap()
            .to_owned();
        (child, format!("http://{addr}"))
    };
    let (mut server, url) = spawn();
    let client = Client::connect(&url).await.unwrap();
    let mut acknowledged = 0u64;
    let mut next = 0u64;
    for _ in 0..10 {
        client.ingest(request("study", 1, next)).await.unwrap();
        acknowledged += ROWS as u64;
        next += 1;
    }
    // Fill the file system to 1 MiB below the floor.
    let free = sketchd::store::space::free_bytes(&fs.0).unwrap();
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; (free - 7 * 1024 * 1024) as usize]).unwrap();

    let refused_at = Instant::now();
    let mut refusals = 0;
    for _ in 0..200 {
        match client.ingest(request("study", 1, next)).await {
            Ok(_) => {
                acknowledged += ROWS as u64;
                next += 1;
            }
            Err(e) => {
                let status = match e {
                    sketchd::client::ClientError::Status(s) => s,
                    other => panic!("{other}"),
                };
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("is full"), "{}", status.message());
                assert!(status.metadata().get("retry-after-ms").is_some());
                refusals += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refusals >= 150, "only {refusals} of 200 batches refused");
    // Queries go on.
    assert_eq!(observations(&client, "study").await.unwrap(), acknowledged);
    let refusing_for = refused_at.elapsed();

    // Space returns: ingest resumes within seconds, without a restart, and
    // the refused batch is applied once.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        match client.ingest(request("study", 1, next)).await {
            Ok(reply) => {
                assert!(!reply.duplicate);
                acknowledged += ROWS as u64;
                next += 1;
                break;
            }
            Err(e) => {
                assert!(
                    freed.elapsed() < Duration::from_secs(5),
                    "still refused: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for _ in 0..5 {
        client.ingest(request("study", 1, next)).await.unwrap();
        acknowledged += ROWS as u64;
        next += 1;
    }
    assert!(
        client
            .ingest(request("study", 1, 0))
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(observations(&client, "study").await.unwrap(), acknowledged);
    assert!(
        stop(&mut server).success(),
        "the server did not stop cleanly"
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().filter(|l| l.contains("is full")).count();
    let budget = refusing_for.as_secs() as usize + 2;
    assert!(
        (1..=budget).contains(&lines),
        "{lines} log lines about the full disk over {refusing_for:?}:\n{text}"
    );

    // Nothing acknowledged was lost, nothing counted twice.
    let (mut server, url) = spawn();
    let client = Client::connect(&url).await.unwrap();
    assert_eq!(observations(&client, "study").await.unwrap(), acknowledged);
    assert!(stop(&mut server).success());
}

/// Rows of collector `c`, batch `b`, over the 28 days before `NOW`.
fn recent_rows(c: u64, b: u64) -> Vec<sketchd::client::Observation> {
    let mut rows = common::study_rows(c, b, ROWS, NOW);
    for (i, row) in rows.iter_mut().enumerate() {
        row.unix_seconds = NOW - 1 - ((b * 7919 + i as u64 * 104_729) % (28 * 86_400)) as i64;
    }
    rows
}

fn batch(ns: &str, b: u64, rows: &[sketchd::client::Observation]) -> pb::IngestRequest {
    let mut builder = BatchBuilder::new();
    for obs in rows {
        builder.push(obs);
    }
    builder.build(ns, "collector-1", b + 1)
}

/// The sketches (days wherever kept), counters and org presence of a
/// data directory (kinds `s`, `c`, `p`), by key.
fn day_records(dir: &Path) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    common::records(dir)
        .into_iter()
        .filter(|(k, _)| b"scp".contains(&k[0]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_exactly_the_expired_days_and_refuses_rows_for_them() {
    const NS: &str = "kept-30";
    const LATER: i64 = NOW + 10 * common::DAY;
    let policy = pb::NamespacePolicy {
        retention_days: Some(30),
        ..Default::default()
    };
    let config = |dir: &Path| sketchd::config::ServerConfig {
        retention_interval: Duration::from_millis(100),
        checkpoint_interval: Duration::from_millis(100),
        ..common::config(dir)
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = common::start_with(config(a_dir.path())).await;
    a.client.create_namespace(NS, policy).await.unwrap();
    let batches: Vec<_> = (0..30).map(|b| recent_rows(1, b)).collect();
    for (b, rows) in batches.iter().enumerate() {
        a.client.ingest(batch(NS, b as u64, rows)).await.unwrap();
    }
    let addr = a.addr;
    a.stop().await;

    // Ten days later: the days before LATER + 1 - 30 go.
    let first_kept = sketchd::time::Day::from_unix_seconds(LATER).unwrap().0 + 1 - 30;
    let kept_from = i64::from(first_kept) * common::DAY;
    let a = common::start_on(config(a_dir.path()), addr, LATER).await;
    let b = common::start_on(config(b_dir.path()), "127.0.0.1:0".parse().unwrap(), LATER).await;
    b.client.create_namespace(NS, policy).await.unwrap();
    let mut kept_rows = 0u64;
    for (i, rows) in batches.iter().enumerate() {
        let kept: Vec<_> = rows
            .iter()
            .filter(|r| r.unix_seconds >= kept_from)
            .cloned()
            .collect();
        kept_rows += kept.len() as u64;
        if !kept.is_empty() {
            b.client.ingest(batch(NS, i as u64, &kept)).await.unwrap();
        }
    }
    assert!(kept_rows > 0 && kept_rows < 30 * ROWS as u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    while observations(&a.client, NS).await.unwrap() != kept_rows {
        assert!(
            Instant::now() < deadline,
            "retention did not remove the expired days"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The counters go before the extent moves (the pass's last step):
    // the answers, `covered_from` among them, settle a moment later.
    let want = common::answers(NS, &b.client, LATER).await;
    while common::answers(NS, &a.client, LATER).await != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(common::answers(NS, &a.client, LATER).await, want);

    // A row for a removed day is refused, naming the policy.
    let old = vec![sketchd::client::Observation {
        unix_seconds: kept_from - 1,
        ..batches[0][0].clone()
    }];
    let err = a.client.ingest(batch(NS, 1000, &old)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("retention_days = 30"), "{text}");

    // After a restart (rollups rebuilt at the stop), the stored records
    // are those of a server that only ever had the kept days.
    a.stop().await;
    b.stop().await;
    assert_eq!(day_records(a_dir.path()), day_records(b_dir.path()));
    let a = common::start_on(config(a_dir.path()), addr, LATER).await;
    assert_eq!(observations(&a.client, NS).await.unwrap(), kept_rows);
    a.stop().await;
}
