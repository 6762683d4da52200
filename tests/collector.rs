//! The collector (`sketchd::client::Collector` and `sketchd ingest`) against
//! a real server over real sockets: formats, errors, exactly-once delivery
//! across a server that is absent, restarts, overloads or loses acks.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Rng, APRIL_1, DAY};
use sketchd::client::formats::{self, peerobs_record, PeerobsHeader};
use sketchd::client::{Client, ClientError, Collector, CollectorOptions, Observation, Summary};
use sketchd::pb;
use sketchd::query::Scope;
use sketchd::time::{Day, DayWindow};
use tonic::{Request, Response, Status};

const COUNTRIES: [&str; 5] = ["DE", "US", "FR", "GB", "JP"];

/// `n` IPv4 observations in April 2026, with numeric orgs (as PEEROBS1 has
/// them) and countries; some repeat earlier rows exactly.
fn observations(n: usize, seed: u64) -> Vec<Observation> {
    let mut rng = Rng(seed);
    let mut rows: Vec<Observation> = Vec::with_capacity(n);
    for i in 0..n {
        if i > 10 && rng.below(20) == 0 {
            let again = rows[rng.below(i as u64) as usize].clone();
            rows.push(again);
            continue;
        }
        rows.push(Observation {
            ip: Ipv4Addr::from(rng.next_u64() as u32 | 0x0100_0000).into(),
            unix_seconds: APRIL_1 + rng.below(30 * DAY as u64) as i64,
            org: Some((1 + rng.below(40)).to_string()),
            country: Some(COUNTRIES[rng.below(5) as usize].to_owned()),
        });
    }
    rows
}

fn write_csv(path: &Path, rows: &[Observation]) {
    let mut out = String::from("time,ip,org,country\n");
    for r in rows {
        let org = r.org.as_deref().unwrap_or("");
        let cc = r.country.as_deref().unwrap_or("");
        out += &format!("{},{},{org},{cc}\n", r.unix_seconds, r.ip);
    }
    std::fs::write(path, out).unwrap();
}

fn write_ndjson(path: &Path, rows: &[Observation]) {
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        // Alternate the time notations and org types the format allows.
        let time = if i % 2 == 0 {
            serde_json::json!(r.unix_seconds)
        } else {
            let t = time::OffsetDateTime::from_unix_timestamp(r.unix_seconds).unwrap();
            serde_json::json!(t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap())
        };
        let org: u64 = r.org.as_deref().unwrap().parse().unwrap();
        let org = if i % 3 == 0 {
            serde_json::json!(org)
        } else {
            serde_json::json!(org.to_string())
        };
        let line = serde_json::json!({"ip": r.ip.to_string(), "time": time, "org": org, "country": r.country});
        out += &format!("{line}\n");
    }
    std::fs::write(path, out).unwrap();
}

fn write_peerobs(path: &Path, rows: &[Observation]) {
    let mut out = PeerobsHeader {
        records: rows.len() as u64,
        t0: APRIL_1 as u32,
        days: 30,
    }
    .encode()
    .to_vec();
    for r in rows {
        let std::net::IpAddr::V4(ip) = r.ip else {
            panic!("PEEROBS1 holds IPv4 only")
        };
        let cc = r.country.as_deref().unwrap().as_bytes();
        out.extend(peerobs_record(
            r.unix_seconds as u32,
            ip,
            r.org.as_deref().unwrap().parse().unwrap(),
            [cc[0], cc[1]],
        ));
    }
    std::fs::write(path, out).unwrap();
}

fn april() -> DayWindow {
    let day = |t| Day::from_unix_seconds(t).unwrap();
    DayWindow::new(day(APRIL_1), day(APRIL_1 + 61 * DAY)).unwrap()
}

/// Exact observations of April and May in `ns` (0 before it exists).
async fn observation_count(client: &Client, ns: &str) -> u64 {
    match client.observations(ns, &Scope::Global, april()).await {
        Ok(n) => n,
        Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound => 0,
        Err(e) => panic!("observations: {e}"),
    }
}

/// Kills a child process the test started if the test fails before it ends.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn options(ns: &str, batch_rows: usize) -> CollectorOptions {
    CollectorOptions {
        batch_rows,
        ..CollectorOptions::new(ns, "test")
    }
}

/// Runs `sketchd ingest ARGS` (on a blocking thread), optionally with a file
/// as standard input.
async fn ingest_cli(args: Vec<String>, stdin: Option<PathBuf>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sketchd"));
        cmd.arg("ingest")
            .args(&args)
            .env("SKETCHD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = stdin {
            cmd.stdin(std::fs::File::open(path).unwrap());
        }
        cmd.output().expect("sketchd runs")
    })
    .await
    .unwrap()
}

fn json_summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "sketchd ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON summary on stdout")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn every_format_lands_the_same_observations() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let rows = observations(3_000, 1);
    let files = [
        dir.path().join("o.csv"),
        dir.path().join("o.ndjson"),
        dir.path().join("o.bin"),
    ];
    write_csv(&files[0], &rows);
    write_ndjson(&files[1], &rows);
    write_peerobs(&files[2], &rows);

    for (i, path) in files.iter().enumerate() {
        // By extension, and by sniffing the first bytes.
        for format in [None, Some(formats::open(path, None).unwrap().format)] {
            let read: Vec<Observation> = formats::open(path, format)
                .unwrap()
                .observations
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(read, rows, "{}", path.display());
        }
        let ns = format!("lib{i}");
        let mut collector = Collector::new(server.client.clone(), options(&ns, 700)).unwrap();
        collector
            .send_input(formats::open(path, None).unwrap())
            .await
            .unwrap();
        let summary = collector.finish().await.unwrap();
        assert_eq!((summary.rows, summary.rows_new), (3_000, 3_000));
        assert_eq!(summary.batches, 5);
        assert_eq!(observation_count(&server.client, &ns).await, 3_000);
    }

    // The binary, each file through standard input (format sniffed).
    for (i, path) in files.iter().enumerate() {
        let ns = format!("cli{i}");
        let args = strings(&["--server", &server.url, "--namespace", &ns, "--json", "-"]);
        let summary = json_summary(&ingest_cli(args, Some(path.clone())).await);
        assert_eq!(summary["rows"], 3_000);
        assert_eq!(summary["duplicate_batches"], 0);
        assert_eq!(observation_count(&server.client, &ns).await, 3_000);
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_rows_are_reported_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    // Namespaces created on first use refuse rows older than three years.
    let mut config = common::config(&dir.path().join("data"));
    config.default_policy.max_age_days = 3 * 366;
    let server = common::start_with(config).await;
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "time,ip\n1775001600,1.2.3.4\n1775001600,1.2.3.5\n1775001600,1.2.3.500\n",
    )
    .unwrap();
    let nd = dir.path().join("bad.ndjson");
    std::fs::write(
        &nd,
        "{\"ip\":\"1.2.3.4\",\"time\":1775001600}\n{\"ip\":\"1.2.3.4\",\"time\":\"noon\"}\n",
    )
    .unwrap();
    for (path, want) in [
        (&csv, "bad.csv:4: field ip: "),
        (&nd, "bad.ndjson:2: field time: "),
    ] {
        let mut args = strings(&["--server", &server.url, "--namespace", "bad"]);
        args.push(path.display().to_string());
        let out = ingest_cli(args, None).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{stderr}");
    }
    // A row the server refuses (too old for the namespace) stops the
    // collector with the server's message, at the row's file and line
    // (rows are sent IPv4 first: the IPv6 row before it moves it on).
    let old = dir.path().join("old.csv");
    std::fs::write(
        &old,
        "time,ip\n1775001600,1.2.3.4\n\n1775001600,::1\n1000000000,1.2.3.5\n",
    )
    .unwrap();
    let mut args = strings(&["--server", &server.url, "--namespace", "bad"]);
    args.push(old.display().to_string());
    let out = ingest_cli(args, None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("old.csv:5: invalid unix_seconds: 1000000000 (2001-09-09T01:46:40Z) is older than namespace \"bad\" accepts")
            && stderr.contains("policy.max_age_days"),
        "{stderr}"
    );
    server.stop().await;
}

/// The collector starts before the server exists, waits for it, and a
/// re-run of the same file adds nothing.
#[tokio::test]
async fn collector_waits_for_a_server_that_is_not_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("o.csv");
    write_csv(&file, &observations(5_000, 2));
    let addr = free_port();
    let args = strings(&[
        "--server",
        &format!("http://{addr}"),
        "--namespace",
        "late",
        "--batch-rows",
        "1000",
        "--wait-for-server",
        "60s",
        "--json",
        &file.display().to_string(),
    ]);
    let early = tokio::spawn(ingest_cli(args.clone(), None));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let server = common::start_at(common::config(&dir.path().join("data")), addr).await;
    let summary = json_summary(&early.await.unwrap());
    assert_eq!(summary["rows"], 5_000);
    assert_eq!(summary["rows_new"], 5_000);
    assert!(summary["retries"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(observation_count(&server.client, "late").await, 5_000);

    let again = json_summary(&ingest_cli(args, None).await);
    assert_eq!(again["duplicate_batches"], 5);
    assert_eq!(again["rows_new"], 0);
    assert_eq!(observation_count(&server.client, "late").await, 5_000);
    server.stop().await;
}

/// The server stops mid-stream and comes back on the same port and data:
/// the collector retries the same batches, nothing is lost or counted twice.
#[tokio::test]
async fn collector_rides_out_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = common::start(&data).await;
    let (addr, url) = (server.addr, server.url.clone());
    let rows = observations(20_000, 3);

    let send = |rows: Vec<Observation>| {
        let mut collector = Collector::connecting(&url, options("restart", 200)).unwrap();
        let progress = collector.progress();
        let task = tokio::spawn(async move {
            collector.begin_input("generated").await?;
            for chunk in rows.chunks(200) {
                for obs in chunk {
                    collector.push(obs).await?;
                }
                // A steady stream rather than one burst.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            collector.finish().await
        });
        (progress, task)
    };
    let (progress, task) = send(rows.clone());
    wait_for(|| progress.rows_sent.load(Ordering::Relaxed) >= 2_000).await;
    server.stop().await;
    wait_for(|| progress.retries.load(Ordering::Relaxed) >= 2).await;
    let server = common::start_at(common::config(&data), addr).await;
    let summary: Summary = task.await.unwrap().unwrap();
    assert_eq!(summary.rows, 20_000, "{summary}");
    assert!(summary.retries >= 2, "{summary}");
    assert_eq!(observation_count(&server.client, "restart").await, 20_000);

    // The same input again: every batch is recognised.
    let (_, task) = send(rows);
    let again = task.await.unwrap().unwrap();
    assert_eq!((again.duplicate_batches, again.rows_new), (100, 0));
    assert_eq!(observation_count(&server.client, "restart").await, 20_000);
    server.stop().await;
}

async fn wait_for(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An ingest proxy in front of a real server that, for every batch, first
/// answers "overloaded, retry after 150 ms" without forwarding, then
/// forwards but loses the acknowledgement (UNAVAILABLE), and only then
/// forwards and answers.
struct FlakyProxy {
    upstream: Client,
    calls: Arc<AtomicU64>,
    sequences: Arc<std::sync::Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for FlakyProxy {
    async fn ingest(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.sequences.lock().unwrap().push(request.sequence);
        match call % 3 {
            0 => {
                let mut s = Status::resource_exhausted("ingest queue full");
                s.metadata_mut()
                    .insert("retry-after-ms", "150".parse().unwrap());
                Err(s)
            }
            1 => {
                self.upstream.ingest(request).await.unwrap();
                Err(Status::unavailable("connection lost before the ack"))
            }
            _ => match self.upstream.ingest(request).await {
                Ok(reply) => Ok(Response::new(reply)),
                Err(e) => Err(Status::internal(e.to_string())),
            },
        }
    }
}

#[tokio::test]
async fn overload_and_lost_acks_are_retried_with_the_same_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let proxy = FlakyProxy {
        upstream: server.client.clone(),
        calls: Default::default(),
        sequences: Default::default(),
    };
    let (calls, sequences) = (proxy.calls.clone(), proxy.sequences.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::ingest_server::IngestServer::new(proxy))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let rows = observations(4_000, 4);
    let started = Instant::now();
    let mut collector = Collector::connecting(&proxy_url, options("flaky", 1_000)).unwrap();
    for obs in &rows {
        collector.push(obs).await.unwrap();
    }
    let summary = collector.finish().await.unwrap();
    // Four batches, three attempts each; the first retry waited at least
    // the server's 150 ms.
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    assert!(started.elapsed() >= Duration::from_millis(4 * 150));
    assert_eq!(summary.retries, 8);
    // The third attempt found the batch the second one had applied.
    assert_eq!(summary.duplicate_batches, 4);
    assert_eq!(summary.rows, 4_000);
    let sequences = sequences.lock().unwrap().clone();
    for attempts in sequences.chunks(3) {
        assert!(attempts.iter().all(|&s| s == attempts[0]), "{sequences:?}");
    }
    assert_eq!(observation_count(&server.client, "flaky").await, 4_000);
    server.stop().await;
}

/// A slow producer on standard input: `--max-batch-delay-ms` sends rows
/// while the stream is still open.
#[tokio::test]
async fn slow_stdin_streams_are_flushed_by_the_batch_delay() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let mut child = KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(["ingest", "--server", &server.url, "--namespace", "tail"])
            .args([
                "--max-batch-delay-ms",
                "50",
                "--quiet",
                "--max-retry-time",
                "30s",
                "-",
            ])
            .env("SKETCHD_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut stdin = child.0.as_mut().unwrap().stdin.take().unwrap();
    writeln!(stdin, "{{\"ip\":\"1.2.3.4\",\"time\":{APRIL_1}}}").unwrap();
    writeln!(stdin, "{{\"ip\":\"1.2.3.5\",\"time\":{APRIL_1}}}").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while observation_count(&server.client, "tail").await < 2 {
        assert!(
            Instant::now() < deadline,
            "rows not sent while stdin is open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writeln!(stdin, "{{\"ip\":\"1.2.3.6\",\"time\":{APRIL_1}}}").unwrap();
    drop(stdin);
    let child = child.0.take().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "--quiet prints nothing");
    assert_eq!(observation_count(&server.client, "tail").await, 3);
    server.stop().await;
}

/// A server whose ingest queue holds one batch: concurrent collectors get
/// RESOURCE_EXHAUSTED with a retry-after hint, back off, retry the same
/// batches, and every row lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingest_queue_pushes_back_and_nothing_is_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let config = sketchd::config::ServerConfig {
        ingest_queue_depth: 1,
        ..common::config(dir.path())
    };
    let server = common::start_with(config).await;
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            let options = CollectorOptions {
                batch_rows: 250,
                ..CollectorOptions::new("pushback", &format!("collector-{c}"))
            };
            let mut collector = Collector::new(client, options).unwrap();
            for obs in observations(5_000, 100 + c) {
                collector.push(&obs).await.unwrap();
            }
            collector.finish().await.unwrap()
        }));
    }
    let mut retries = 0;
    let mut rows = 0;
    for t in tasks {
        let s: Summary = t.await.unwrap();
        assert_eq!(s.duplicate_batches, 0, "{s}");
        retries += s.retries;
        rows += s.rows_new;
    }
    assert_eq!(rows, 40_000);
    assert!(retries > 0, "the queue of one batch never filled");
    assert_eq!(observation_count(&server.client, "pushback").await, 40_000);
    // The server counted the attempts it turned away.
    let metrics = scrape(server.metrics_addr).await;
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sketchd_rejected_batches_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rejected-batches counter in {metrics}"));
    assert_eq!(rejected, retries, "every retry followed one refusal");
    server.stop().await;
}

/// The Prometheus text of a test server.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
