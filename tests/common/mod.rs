//! Starts the real server on 127.0.0.1:0 with a temp data dir, in-process.
#![allow(dead_code)]

pub mod world;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sketchd::attribution::Attributor;
use sketchd::client::{Client, ClientOptions, Observation};
use sketchd::config::ServerConfig;
use sketchd::engine::Engine;
use sketchd::pb;
use sketchd::time::{Clock, Day, ManualClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2026-11-27T00:00:00Z: "now" for tests, after the study's April–November.
pub const NOW: i64 = 1_795_737_600;
/// 2026-04-01T00:00:00Z.
pub const APRIL_1: i64 = 1_775_001_600;
pub const DAY: i64 = 86_400;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The Prometheus endpoint of the same engine.
    pub metrics_addr: SocketAddr,
    /// The report page of the same engine.
    pub web_addr: SocketAddr,
    pub url: String,
    pub client: Client,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<sketchd::error::Result<()>>>,
}

pub fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        data_dir: data_dir.to_owned(),
        ..ServerConfig::default()
    }
}

pub async fn start(data_dir: &Path) -> TestServer {
    start_with(config(data_dir)).await
}

/// Starts a server with `config`, loading the tables it names.
pub async fn start_with(config: ServerConfig) -> TestServer {
    start_on(config, "127.0.0.1:0".parse().unwrap(), NOW).await
}

/// Starts a server with `config` listening on `addr` (a restart on the
/// same port).
pub async fn start_at(config: ServerConfig, addr: SocketAddr) -> TestServer {
    start_on(config, addr, NOW).await
}

/// Starts a server with `config` on `addr` (port 0: any), with its clock
/// at `now`.
pub async fn start_on(config: ServerConfig, addr: SocketAddr, now: i64) -> TestServer {
    start_full(config, ClientOptions::default(), addr, now).await
}

/// Starts a server with `config`; its `client` connects with `options`
/// (and its `url` is `https://` when the server speaks TLS).
pub async fn start_with_client(config: ServerConfig, options: ClientOptions) -> TestServer {
    start_full(config, options, "127.0.0.1:0".parse().unwrap(), NOW).await
}

async fn start_full(
    config: ServerConfig,
    options: ClientOptions,
    addr: SocketAddr,
    now: i64,
) -> TestServer {
    let engine = Arc::new(open_engine(&config, now).await);
    let listener = bind(addr).await;
    let addr = listener.local_addr().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    tokio::spawn(sketchd::metrics::serve(metrics, Arc::downgrade(&engine)));
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(sketchd::web::serve(
        web,
        Arc::downgrade(&engine),
        config.tokens.clone(),
    ));
    let (tx, rx) = oneshot::channel::<()>();
    let data_dir = config.data_dir.clone();
    let config_tls = config.tls.is_some();
    let handle = tokio::spawn(async move {
        sketchd::server::run(listener, engine, &config, async {
            let _ = rx.await;
        })
        .await
    });
    let scheme = if config_tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    let client = Client::connect_with(&url, options)
        .await
        .expect("client connects");
    TestServer {
        addr,
        metrics_addr,
        web_addr,
        url,
        client,
        data_dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// Binds `addr`, retrying a moment if a server just left it.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Opens the engine with the tables its configuration names.
async fn open_engine(config: &ServerConfig, now: i64) -> Engine {
    match try_open_engine_at(config, now).await {
        Ok(engine) => engine,
        Err(e) => panic!("engine opens: {e}"),
    }
}

/// Opens the engine, returning its error. sled releases the file lock of a
/// database closed moments ago (a restart within one test) from its
/// background threads, so a lock error is retried for a few seconds.
pub async fn try_open_engine(config: &ServerConfig) -> sketchd::error::Result<Engine> {
    try_open_engine_at(config, NOW).await
}

async fn try_open_engine_at(config: &ServerConfig, now: i64) -> sketchd::error::Result<Engine> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let config = config.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let tables = Attributor::load(&config.tables).expect("tables load");
            let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
            Engine::open_with_clock(&config, tables, clock)
        })
        .await
        .unwrap();
        match opened {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

impl TestServer {
    /// Graceful stop: in-flight requests finish, then checkpoint and flush.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            drop(self.client);
            handle.await.unwrap().expect("server stops cleanly");
        }
    }
}

/// A deterministic pseudo-random sequence (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Checks estimates against exact truths: every truth must lie within the
/// interval widened from 95 % to 99.9 % (z 1.96 -> 3.29), and across all
/// checks the 95 % intervals must cover at least `min_share` of truths.
/// Exact answers must equal the truth.
#[derive(Default)]
pub struct Coverage {
    pub checks: usize,
    pub covered: usize,
}

impl Coverage {
    pub fn check(&mut self, what: &str, truth: f64, e: &sketchd::sketch::Estimate) {
        assert!(
            e.lower <= e.value && e.value <= e.upper,
            "{what}: value outside its own interval"
        );
        if e.exact {
            let tolerance = 1e-9 * truth.abs().max(1.0);
            assert!(
                (e.value - truth).abs() <= tolerance,
                "{what}: claims exact {} but truth is {truth}",
                e.value
            );
        }
        let widen = 3.29 / 1.96;
        let lower = e.value - (e.value - e.lower) * widen;
        let upper = e.value + (e.upper - e.value) * widen;
        assert!(
            lower <= truth && truth <= upper,
            "{what}: truth {truth} far outside [{}, {}] (estimate {})",
            e.lower,
            e.upper,
            e.value
        );
        self.checks += 1;
        self.covered += usize::from(e.lower <= truth && truth <= e.upper);
    }

    pub fn assert_share(&self, min_share: f64) {
        assert!(self.checks > 0);
        let share = self.covered as f64 / self.checks as f64;
        assert!(
            share >= min_share,
            "95 % intervals covered {} of {} truths ({share:.3})",
            self.covered,
            self.checks
        );
    }
}

/// Starts `sketchd serve` as a child process on an ephemeral port with the
/// configuration `toml`, its data under `dir/data`; returns it and its URL.
pub fn spawn_server(dir: &Path, toml: &str) -> (std::process::Child, String) {
    spawn_server_with_env(dir, toml, &[])
}

/// [`spawn_server`] with environment variables set (`Some`) or removed
/// (`None`).
pub fn spawn_server_with_env(
    dir: &Path,
    toml: &str,
    env: &[(&str, Option<&str>)],
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let config = dir.join("sketchd.toml");
    std::fs::write(&config, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sketchd"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .env("SKETCHD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    let mut child = cmd.spawn().expect("server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("sketchd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("http://{addr}"))
}

/// Every stored record a server's state is made of (not its log position,
/// batch ids or replication bookkeeping), by key.
pub fn dump(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(dir.join("sled")).open() {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    };
    let data = db.open_tree("data").unwrap();
    data.iter()
        .map(|r| r.unwrap())
        .filter(|(k, _)| b"scfpoive".contains(&k[0]))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// [`dump`] with every day in a day group (`f` key) listed as the `s` key
/// it would have, with its envelope: the days a store holds, wherever it
/// keeps them. Where a day is kept (its group or its key) depends on when
/// checkpoints ran (a rolled series keeps the days it wrote while flat in
/// groups), so two stores with the same state compare equal only this way.
pub fn records(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    expand_groups(&dump(dir))
}

/// Every record of `dump` but its day groups, and the days of those
/// groups (`f` keys: version 2, the exact header, then per day dim u64 BE
/// and either tag 0, a hash count u16 LE and the hashes (5 bytes each
/// under hash id 2, 8 under hash id 1), or tag 1, length u32 LE and the
/// envelope; a CRC-32 last) as the `s` keys they would have, with their
/// envelopes. Panics if a day is in both.
pub fn expand_groups(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use sketchd::sketch::{join_exact, ExactHeader};
    let mut out: BTreeMap<Vec<u8>, Vec<u8>> = dump
        .iter()
        .filter(|(k, _)| k[0] != b'f')
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in dump.iter().filter(|(k, _)| k[0] == b'f') {
        assert_eq!(k.len(), 12, "group key {k:?}");
        assert_eq!(v[0], 2, "group version");
        let (v, crc) = v.split_at(v.len() - 4);
        assert_eq!(crc32fast::hash(v).to_le_bytes(), crc, "group checksum");
        let header = ExactHeader::from_bytes(v[1..11].try_into().unwrap());
        let width = if header.hash_id == 1 { 8 } else { 5 };
        let mut at = 11;
        while at < v.len() {
            let dim = &v[at..at + 8];
            let day = match v[at + 8] {
                0 => {
                    let n = u16::from_le_bytes(v[at + 9..at + 11].try_into().unwrap()) as usize;
                    let hashes = &v[at + 11..at + 11 + width * n];
                    at += 11 + width * n;
                    join_exact(header, hashes).unwrap()
                }
                1 => {
                    let len = u32::from_le_bytes(v[at + 9..at + 13].try_into().unwrap()) as usize;
                    let envelope = v[at + 13..at + 13 + len].to_vec();
                    at += 13 + len;
                    envelope
                }
                tag => panic!("entry tag {tag}"),
            };
            let mut key = vec![b's'];
            key.extend_from_slice(&k[1..6]); // ns, family
            key.push(0); // level
            key.extend_from_slice(&k[6..10]); // day
            key.extend_from_slice(dim);
            assert!(
                out.insert(key.clone(), day).is_none(),
                "{key:?} stored twice"
            );
        }
    }
    out
}

pub fn day(unix: i64) -> String {
    Day::from_unix_seconds(unix).unwrap().to_string()
}

/// The answers of a server to a broad set of queries over namespace `ns`
/// (windows around `now`), as text.
pub async fn answers(ns: &str, client: &Client, now: i64) -> Vec<String> {
    let mut q = client.query_client();
    let mut out = Vec::new();
    let windows = [
        (now - 60 * DAY, now + DAY),
        (now - 30 * DAY, now + DAY),
        (now - 9 * DAY, now - 2 * DAY),
        (now - DAY, now + DAY),
    ];
    let scopes = [
        pb::Scope::default(),
        pb::Scope {
            country: "DE".into(),
            ..Default::default()
        },
        pb::Scope {
            org: "AS64007".into(),
            ..Default::default()
        },
    ];
    for (from, to) in windows {
        for scope in &scopes {
            for metric in [pb::Metric::Ips, pb::Metric::Orgs] {
                let r = q
                    .count(pb::CountRequest {
                        namespace: ns.into(),
                        metric: metric as i32,
                        scope: Some(scope.clone()),
                        from: day(from),
                        to: day(to),
                        confidence: 0.95,
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| (s.code(), s.message().to_owned()));
                out.push(format!("count {from} {to} {scope:?} {metric:?}: {r:?}"));
            }
            let r = q
                .observations(pb::ObservationsRequest {
                    namespace: ns.into(),
                    scope: Some(scope.clone()),
                    from: day(from),
                    to: day(to),
                })
                .await;
            let r = r
                .map(|r| r.into_inner())
                .map_err(|s| (s.code(), s.message().to_owned()));
            out.push(format!("observations {from} {to} {scope:?}: {r:?}"));
        }
        for by in [pb::GroupKind::Country, pb::GroupKind::Org] {
            let mut rows = q
                .group_by(pb::GroupByRequest {
                    namespace: ns.into(),
                    metric: pb::Metric::Ips as i32,
                    by: by as i32,
                    from: day(from),
                    to: day(to),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            while let Some(row) = rows.message().await.unwrap() {
                out.push(format!("group {by:?} {from} {to}: {row:?}"));
            }
        }
    }
    let mut rows = q
        .compare(pb::CompareRequest {
            namespace: ns.into(),
            metric: pb::Metric::Ips as i32,
            by: pb::GroupKind::Country as i32,
            a_from: day(now - 60 * DAY),
            a_to: day(now - 30 * DAY),
            b_from: day(now - 30 * DAY),
            b_to: day(now + DAY),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(row) = rows.message().await.unwrap() {
        out.push(format!("compare: {row:?}"));
    }
    let r = q
        .retention(pb::RetentionRequest {
            namespace: ns.into(),
            scope: Some(pb::Scope::default()),
            a_from: day(now - 60 * DAY),
            a_to: day(now - 30 * DAY),
            b_from: day(now - 30 * DAY),
            b_to: day(now + DAY),
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("retention: {r:?}"));
    let r = q
        .series(pb::SeriesRequest {
            namespace: ns.into(),
            metric: pb::Metric::Ips as i32,
            scope: Some(pb::Scope::default()),
            from: day(now - 60 * DAY),
            to: day(now + DAY),
            step: "week".into(),
            confidence: 0.95,
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("series: {r:?}"));
    out
}

/// One batch of a collector: rows over the 60 days before `now`, 420 orgs
/// (20 of them unnamed), five countries (every seventh org without one).
pub fn study_rows(collector: u64, sequence: u64, n: usize, now: i64) -> Vec<Observation> {
    let mut rng = Rng(collector << 40 | sequence);
    (0..n)
        .map(|_| {
            let org = rng.below(420);
            Observation {
                ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + rng.below(200_000) as u32)),
                unix_seconds: now - 1 - rng.below(60 * DAY as u64) as i64,
                org: (org < 400).then(|| format!("AS{}", 64_000 + org)),
                country: (!org.is_multiple_of(7))
                    .then(|| ["DE", "GB", "IT", "US", "FR"][(org % 5) as usize].to_owned()),
            }
        })
        .collect()
}
