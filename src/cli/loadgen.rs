//! `sketchd loadgen`: measures a running server with the peers' synthetic
//! world (`../shared/peers`), over real gRPC.
//!
//! Ingest: the `PEEROBS1` world file (32-byte header, then packed 14-byte
//! records `ts u32 | ip u32 | org u32 | cc 2 bytes`, little-endian) is cut
//! into chunks of `--batch-rows` records. Collector `i` of `N` sends chunks
//! `i, i + N, i + 2N, …` on its own connection, with its own collector id
//! (`loadgen-<i>`) and sequence numbers `1, 2, 3, …`, one batch in flight at
//! a time; the next batch is read (positioned reads, the file is never
//! loaded whole) and encoded on a blocking thread while the current one
//! waits for its acknowledgement, which the server sends only once the batch
//! is durable. Batches are columnar `IngestRequest`s filled directly, with a
//! per-batch dictionary of orgs (the decimal org id, e.g. `"1234"`) and
//! countries.
//!
//! Queries (with `--truth`): every query of `truth.json` is answered with
//! one RPC (`Count`, `GroupBy`, `Compare` or `Retention`), `--repeats`
//! times, and scored like the peers' `common.score`: relative error for
//! counts (zero truths skipped), absolute percentage points for
//! `drop_pct_by_country` and `org_retention`.
//!
//! Server CPU seconds and peak RSS come from `/proc/<--server-pid>`; bytes
//! on disk from walking `--data-dir`. `--results` writes the peers' results
//! JSON so that `summarize.py` shows sketchd beside Redis and PostgreSQL.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use sketchd::client::Client;
use sketchd::pb;
use sketchd::query::{GroupBy, Metric, Scope};
use sketchd::time::DayWindow;

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Server URL (http://HOST:PORT, https://… with --ca-cert, or HOST:PORT);
    /// nodes of a cluster separated by commas (collector i sends to node
    /// i mod n; queries go to the first).
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// World file of the peers harness (`observations.bin`, PEEROBS1).
    #[arg(long)]
    world: PathBuf,
    /// The world's `truth.json`: answer and score its query set.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Namespace to load into (created with max_age_days = 3650).
    #[arg(long, default_value = "peers")]
    namespace: String,
    /// Concurrent collectors, each with its own connection, id and sequence numbers.
    #[arg(long, default_value_t = 4)]
    collectors: usize,
    /// Observations per batch.
    #[arg(long, default_value_t = 100_000)]
    batch_rows: usize,
    /// Server process id: report its CPU seconds and peak RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server data directory: report its bytes on disk.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's Prometheus endpoint (`sketchd serve --metrics-listen`),
    /// e.g. http://127.0.0.1:9464/metrics: report where its time went
    /// (checkpoints, rollup passes, log syncs, server-side query time).
    #[arg(long)]
    metrics: Option<String>,
    /// Executions of every query.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// HLL precision of the namespace created for the run.
    #[arg(long, default_value_t = 14)]
    precision: u32,
    /// Send only the first N observations (0 = all).
    #[arg(long, default_value_t = 0)]
    max_rows: u64,
    /// Do not ingest; query what the namespace already holds.
    #[arg(long)]
    skip_ingest: bool,
    /// After ingest, wait up to this many seconds for the server to go idle
    /// (its checkpoints caught up) before querying; 0 = query at once.
    #[arg(long, default_value_t = 600)]
    settle_timeout: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the peers' results JSON (schema: peers/README.md) here.
    #[arg(long)]
    results: Option<PathBuf>,
}

impl LoadgenArgs {
    /// The server queries go to: the first of `--server`.
    fn first_server(&self) -> &str {
        self.server.split(',').next().unwrap_or_default().trim()
    }
}

/// Oldest accepted observation in the namespace the load generator creates:
/// the world's days are in 2024.
const MAX_AGE_DAYS: u32 = 3650;
/// Attempts for a batch the server refuses as overloaded.
const MAX_ATTEMPTS: u32 = 200;
/// Query kinds in the peers' order; `ip_global_whole` is the `ipglob:whole`
/// query of `ip_global_window`, timed on its own.
const KIND_ORDER: [&str; 9] = [
    "ip_country_window",
    "ip_all_countries",
    "ip_global_window",
    "ip_global_whole",
    "drop_pct_by_country",
    "org_country_window",
    "org_global_window",
    "ip_org_window",
    "org_retention",
];

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.collectors == 0 || args.batch_rows == 0 || args.repeats == 0 {
        bail!("--collectors, --batch-rows and --repeats must be at least 1");
    }
    let world = Arc::new(World::open(&args.world)?);
    let truth: Option<Value> = match &args.truth {
        Some(path) => Some(
            serde_json::from_reader(std::io::BufReader::new(
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
            ))
            .with_context(|| format!("{}: not JSON", path.display()))?,
        ),
        None => None,
    };
    let client = args.connect.connect(args.first_server()).await?;
    prepare_namespace(&client, &args).await?;

    let server_before = args.server_pid.map(proc_sample).transpose()?;
    let metrics_before = match &args.metrics {
        Some(url) => Some(scrape_metrics(url).await?),
        None => None,
    };
    let ingest = if args.skip_ingest {
        None
    } else {
        Some(ingest(&args, &world).await?)
    };
    let failed = ingest.as_ref().and_then(|i| i.error.clone());
    // A server that died during ingest has no /proc entry any more.
    let server_after_ingest = args.server_pid.and_then(|pid| proc_sample(pid).ok());
    let settle = match (args.server_pid, &ingest) {
        (Some(pid), Some(_)) if args.settle_timeout > 0 && failed.is_none() => {
            Some(settle(pid, Duration::from_secs(args.settle_timeout)).await?)
        }
        _ => None,
    };

    let metrics_after_ingest = match &args.metrics {
        Some(url) if failed.is_none() => try_scrape(url).await,
        _ => None,
    };
    let (queries, rpc_floor_ms) = match failed {
        None => query_phase(&args, truth.as_ref())?,
        Some(_) => (None, None),
    };
    let server_end = args.server_pid.and_then(|pid| proc_sample(pid).ok());
    let metrics_end = match (&args.metrics, &metrics_after_ingest) {
        (Some(url), Some(_)) => try_scrape(url).await,
        _ => None,
    };
    let server_work = metrics_before
        .zip(metrics_after_ingest)
        .map(|(before, after)| ServerWork::between(&before, &after, metrics_end.as_ref()));
    let disk = args.data_dir.as_deref().map(disk_usage).transpose()?;

    let report = Report {
        world: &world,
        ingest: ingest.as_ref(),
        server_before,
        server_after_ingest,
        settle,
        server_end,
        disk,
        queries: queries.as_ref(),
        rpc_floor_ms,
        server_work,
    };
    if args.json {
        outln!("{}", report.summary_json());
    } else {
        out!("{}", report.table());
    }
    if let Some(path) = &args.results {
        let doc = report.peers_results(&args, truth.as_ref());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    match failed {
        Some(e) => Err(anyhow!("ingest stopped early: {e}")),
        None => Ok(()),
    }
}

/// Creates the namespace with a policy that accepts 2024 observations
/// (creating is idempotent for an equal policy). It must hold no data yet,
/// unless only queries are asked: then it must exist and hold data.
async fn prepare_namespace(client: &Client, args: &LoadgenArgs) -> anyhow::Result<()> {
    let ns = &args.namespace;
    let info = if args.skip_ingest {
        client
            .admin_client()
            .get_namespace(pb::GetNamespaceRequest { name: ns.clone() })
            .await
            .map_err(|s| {
                anyhow!(
                    "--skip-ingest: namespace {ns:?}: {}: {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner()
    } else {
        let request = pb::CreateNamespaceRequest {
            name: ns.clone(),
            policy: Some(pb::NamespacePolicy {
                precision: args.precision,
                max_age_days: MAX_AGE_DAYS,
                max_future_skew_seconds: 0,
                retention_days: None,
            }),
        };
        client
            .admin_client()
            .create_namespace(request)
            .await
            .map_err(|s| {
                anyhow!(
                    "creating namespace {ns:?} (precision {}, max_age_days {MAX_AGE_DAYS}): {}: {} \
                     (use a fresh data directory or another --namespace)",
                    args.precision,
                    s.code(),
                    s.message()
                )
            })?
            .into_inner()
    };
    let has_data = !info.first_day.is_empty();
    if args.skip_ingest && !has_data {
        bail!("--skip-ingest: namespace {ns:?} holds no data");
    }
    if !args.skip_ingest && has_data {
        bail!(
            "namespace {ns:?} already holds data ({} .. {}); use a fresh data directory, \
             another --namespace, or --skip-ingest",
            info.first_day,
            info.end_day
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- the world

const MAGIC: &[u8; 8] = b"PEEROBS1";
const HEADER_LEN: u64 = 32;
const RECORD_LEN: usize = 14;

/// An open world file; records are read with positioned reads.
struct World {
    path: PathBuf,
    file: File,
    records: u64,
    t0: u32,
    days: u32,
}

impl World {
    fn open(path: &Path) -> anyhow::Result<World> {
        let name = path.display();
        let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .with_context(|| format!("{name}: shorter than the 32-byte header"))?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4"));
        if &header[..8] != MAGIC || u32_at(8) != 1 || u32_at(12) as usize != RECORD_LEN {
            bail!("{name}: not a PEEROBS1 version 1 file with 14-byte records");
        }
        let records = u64::from_le_bytes(header[16..24].try_into().expect("8"));
        let len = file.metadata()?.len();
        if len < HEADER_LEN + records * RECORD_LEN as u64 {
            bail!("{name}: header promises {records} records but the file has {len} bytes");
        }
        Ok(World {
            path: path.to_owned(),
            file,
            records,
            t0: u32_at(24),
            days: u32_at(28),
        })
    }

    /// Reads records `[first, first + rows)` into `buf`.
    fn read(&self, first: u64, rows: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.resize(rows * RECORD_LEN, 0);
        self.file
            .read_exact_at(buf, HEADER_LEN + first * RECORD_LEN as u64)
    }
}

/// Per-batch dictionary codes (1-based) of small integer keys. Dense slots
/// stamped with a batch generation make the reset between batches O(1).
#[derive(Default)]
struct Codes {
    slots: Vec<(u32, u32)>,
    spill: FxHashMap<u32, u32>,
    generation: u32,
    next: u32,
}

impl Codes {
    /// Keys below this use the dense slots (org ids are 1..n_orgs).
    const DENSE: u32 = 1 << 22;

    fn reset(&mut self) {
        self.generation += 1;
        self.next = 0;
        self.spill.clear();
    }

    /// The key's code and whether it is new in this batch.
    #[inline]
    fn code(&mut self, key: u32) -> (u32, bool) {
        if key < Self::DENSE {
            let k = key as usize;
            if k >= self.slots.len() {
                self.slots.resize(k + 1, (0, 0));
            }
            let slot = &mut self.slots[k];
            if slot.0 == self.generation {
                return (slot.1, false);
            }
            self.next += 1;
            *slot = (self.generation, self.next);
            (self.next, true)
        } else {
            let next = self.next + 1;
            let code = *self.spill.entry(key).or_insert(next);
            let new = code == next;
            if new {
                self.next = next;
            }
            (code, new)
        }
    }
}

/// Turns chunks of records into columnar requests.
#[derive(Default)]
struct Encoder {
    raw: Vec<u8>,
    orgs: Codes,
    countries: Codes,
}

impl Encoder {
    fn encode(
        &mut self,
        world: &World,
        first: u64,
        rows: usize,
        namespace: &str,
        collector: &str,
        sequence: u64,
    ) -> anyhow::Result<pb::IngestRequest> {
        world
            .read(first, rows, &mut self.raw)
            .with_context(|| format!("{}: reading record {first}", world.path.display()))?;
        self.orgs.reset();
        self.countries.reset();
        let mut req = pb::IngestRequest {
            namespace: namespace.to_owned(),
            collector_id: collector.to_owned(),
            sequence,
            ipv4: Vec::with_capacity(rows),
            ipv6: Vec::new(),
            unix_seconds: Vec::with_capacity(rows),
            org_dict: Vec::new(),
            org_index: Vec::with_capacity(rows),
            country_dict: Vec::new(),
            country_index: Vec::with_capacity(rows),
        };
        for rec in self.raw.chunks_exact(RECORD_LEN) {
            let word = |at: usize| u32::from_le_bytes(rec[at..at + 4].try_into().expect("4"));
            req.unix_seconds.push(i64::from(word(0)));
            // Host-order integer: 1.2.3.4 = 0x01020304, as the proto wants.
            req.ipv4.push(word(4));
            let org = word(8);
            req.org_index.push(if org == 0 {
                0
            } else {
                let (code, new) = self.orgs.code(org);
                if new {
                    req.org_dict.push(org.to_string());
                }
                code
            });
            let (code, new) = self
                .countries
                .code(u32::from(u16::from_le_bytes([rec[12], rec[13]])));
            if new {
                req.country_dict
                    .push(String::from_utf8_lossy(&rec[12..14]).into_owned());
            }
            req.country_index.push(code);
        }
        if req.org_dict.is_empty() {
            req.org_index.clear();
        }
        Ok(req)
    }
}

// ---------------------------------------------------------------- ingest

struct IngestStats {
    /// Rows acknowledged (all of them unless `error`).
    rows: u64,
    /// Why ingest stopped early (e.g. the server died).
    error: Option<String>,
    /// Largest server RSS seen by the 1 s sampler (the server's own peak
    /// is lost if it dies).
    server_rss_seen: u64,
    batches: u64,
    duplicates: u64,
    retries: u64,
    wall: Duration,
    /// Acknowledgement latency of every batch, in ms.
    ack_ms: Vec<f64>,
    client_cpu_s: f64,
}

struct Plan {
    namespace: String,
    batch_rows: usize,
    rows: u64,
    collectors: usize,
}

impl Plan {
    fn chunks(&self) -> u64 {
        self.rows.div_ceil(self.batch_rows as u64)
    }

    /// First record and row count of chunk `k`.
    fn chunk(&self, k: u64) -> (u64, usize) {
        let first = k * self.batch_rows as u64;
        (
            first,
            (self.rows - first).min(self.batch_rows as u64) as usize,
        )
    }
}

#[derive(Default)]
struct CollectorResult {
    error: Option<anyhow::Error>,
    rows: u64,
    batches: u64,
    duplicates: u64,
    retries: u64,
    ack_ms: Vec<f64>,
}

async fn ingest(args: &LoadgenArgs, world: &Arc<World>) -> anyhow::Result<IngestStats> {
    let rows = if args.max_rows > 0 {
        args.max_rows.min(world.records)
    } else {
        world.records
    };
    let plan = Arc::new(Plan {
        namespace: args.namespace.clone(),
        batch_rows: args.batch_rows,
        rows,
        collectors: args.collectors,
    });
    let mut clients = Vec::with_capacity(args.collectors);
    let servers: Vec<&str> = args.server.split(',').map(str::trim).collect();
    for i in 0..args.collectors {
        clients.push(args.connect.connect(servers[i % servers.len()]).await?);
    }
    eprintln!(
        "loadgen: {} observations in {} batches of {} rows, {} collectors",
        rows,
        plan.chunks(),
        args.batch_rows,
        args.collectors
    );
    let acked = Arc::new(AtomicU64::new(0));
    let rss_seen = Arc::new(AtomicU64::new(0));
    let client_cpu0 = proc_sample(std::process::id())?.cpu_s;
    let started = Instant::now();
    let sampler = {
        let (acked, rss_seen, pid) = (acked.clone(), rss_seen.clone(), args.server_pid);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for second in 0u64.. {
                tick.tick().await;
                let rss = pid.and_then(|p| proc_sample(p).ok()).map(|s| s.rss_bytes);
                if let Some(rss) = rss {
                    rss_seen.fetch_max(rss, Ordering::Relaxed);
                }
                if second > 0 && second % 10 == 0 {
                    let n = acked.load(Ordering::Relaxed);
                    let s = started.elapsed().as_secs_f64();
                    eprintln!(
                        "loadgen: {n}/{rows} acknowledged, {:.0} obs/s{}",
                        n as f64 / s.max(1e-9),
                        rss.map_or(String::new(), |r| format!(", server RSS {:.0} MiB", mib(r)))
                    );
                }
            }
        })
    };
    let tasks: Vec<JoinHandle<CollectorResult>> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(collector(
                i,
                client,
                world.clone(),
                plan.clone(),
                acked.clone(),
            ))
        })
        .collect();
    let mut total = CollectorResult::default();
    for task in tasks {
        match task.await {
            Ok(r) => {
                total.rows += r.rows;
                total.batches += r.batches;
                total.duplicates += r.duplicates;
                total.retries += r.retries;
                total.ack_ms.extend(r.ack_ms);
                if let Some(e) = r.error {
                    total.error.get_or_insert(e);
                }
            }
            Err(e) => {
                total
                    .error
                    .get_or_insert(anyhow!("collector task failed: {e}"));
            }
        }
    }
    let wall = started.elapsed();
    sampler.abort();
    if total.error.is_none() && total.rows != rows {
        total.error = Some(anyhow!("{} of {rows} rows were acknowledged", total.rows));
    }
    Ok(IngestStats {
        rows: total.rows,
        error: total.error.map(|e| format!("{e:#}")),
        server_rss_seen: rss_seen.load(Ordering::Relaxed),
        batches: total.batches,
        duplicates: total.duplicates,
        retries: total.retries,
        wall,
        ack_ms: total.ack_ms,
        client_cpu_s: proc_sample(std::process::id())?.cpu_s - client_cpu0,
    })
}

/// Encodes chunk `k` for collector `id` on a blocking thread.
fn spawn_encode(
    world: Arc<World>,
    plan: Arc<Plan>,
    mut encoder: Encoder,
    id: String,
    k: u64,
    sequence: u64,
) -> JoinHandle<anyhow::Result<(pb::IngestRequest, Encoder)>> {
    tokio::task::spawn_blocking(move || {
        let (first, rows) = plan.chunk(k);
        let req = encoder.encode(&world, first, rows, &plan.namespace, &id, sequence)?;
        Ok((req, encoder))
    })
}

/// Sends collector `index`'s chunks; stops at the first refused batch.
async fn collector(
    index: usize,
    client: Client,
    world: Arc<World>,
    plan: Arc<Plan>,
    acked: Arc<AtomicU64>,
) -> CollectorResult {
    let mut out = CollectorResult::default();
    if let Err(e) = send_chunks(index, client, world, plan, acked, &mut out).await {
        out.error = Some(e);
    }
    out
}

async fn send_chunks(
    index: usize,
    client: Client,
    world: Arc<World>,
    plan: Arc<Plan>,
    acked: Arc<AtomicU64>,
    out: &mut CollectorResult,
) -> anyhow::Result<()> {
    let id = format!("loadgen-{index}");
    let step = plan.collectors as u64;
    let mut k = index as u64;
    let mut sequence = 1u64;
    if k >= plan.chunks() {
        return Ok(());
    }
    let mut pending = Some(spawn_encode(
        world.clone(),
        plan.clone(),
        Encoder::default(),
        id.clone(),
        k,
        sequence,
    ));
    let mut ingest = client.ingest_client();
    while let Some(handle) = pending.take() {
        let (mut request, encoder) = handle.await??;
        let rows = request.ipv4.len() as u64;
        // Read and encode the next batch while this one is in flight.
        if k + step < plan.chunks() {
            pending = Some(spawn_encode(
                world.clone(),
                plan.clone(),
                encoder,
                id.clone(),
                k + step,
                sequence + 1,
            ));
        }
        let started = Instant::now();
        let mut attempt = 1;
        let reply = loop {
            match ingest.ingest(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::ResourceExhausted
                        && status.metadata().get("retry-after-ms").is_some()
                        && attempt < MAX_ATTEMPTS =>
                {
                    let wait = status
                        .metadata()
                        .get("retry-after-ms")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(100u64);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    attempt += 1;
                    out.retries += 1;
                    // The request was consumed: encode the same batch again.
                    let (w, p, i) = (world.clone(), plan.clone(), id.clone());
                    request = tokio::task::spawn_blocking(move || {
                        let (first, rows) = p.chunk(k);
                        Encoder::default().encode(&w, first, rows, &p.namespace, &i, sequence)
                    })
                    .await??;
                }
                Err(status) => {
                    bail!(
                        "{id}: batch {sequence} (records from {}) refused: {}: {}",
                        plan.chunk(k).0,
                        status.code(),
                        status.message()
                    )
                }
            }
        };
        out.ack_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if reply.duplicate {
            out.duplicates += 1;
        } else if reply.rows_accepted != rows {
            bail!(
                "{id}: batch {sequence}: {} of {rows} rows accepted",
                reply.rows_accepted
            );
        }
        out.rows += rows;
        out.batches += 1;
        acked.fetch_add(rows, Ordering::Relaxed);
        k += step;
        sequence += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------- queries

/// One RPC answering one query of the set.
enum Call {
    Count {
        metric: Metric,
        scope: Scope,
        window: DayWindow,
    },
    Group {
        metric: Metric,
        window: DayWindow,
    },
    /// Drop % per country: 100·(1 − |B|/|A|).
    Drop {
        a: DayWindow,
        b: DayWindow,
    },
    /// 100·|A∩B|/|A| of the orgs of one country.
    Retention {
        country: [u8; 2],
        a: DayWindow,
        b: DayWindow,
    },
}

#[derive(Clone, Debug)]
enum Answer {
    Value(f64),
    PerCountry(BTreeMap<String, f64>),
}

impl Answer {
    fn to_json(&self) -> Value {
        match self {
            Answer::Value(v) => json!(v),
            Answer::PerCountry(m) => json!(m),
        }
    }
}

struct Query {
    id: String,
    kind: String,
    /// The kind its latency is reported under.
    latency_kind: String,
    call: Call,
    truth: Value,
}

struct QueryResults {
    /// Seconds of every execution, per latency kind.
    latency: BTreeMap<String, Vec<f64>>,
    answers: Vec<(String, Answer)>,
    /// Per error kind (the query kind) the (estimate, truth) pairs.
    errors: BTreeMap<String, ErrorStats>,
    /// Error stats of the `ipglob:whole` query alone.
    whole_error: Option<ErrorStats>,
    skipped: Vec<String>,
    wall: Duration,
}

fn window(start: &Value, end: &Value) -> anyhow::Result<DayWindow> {
    let s = start
        .as_str()
        .ok_or_else(|| anyhow!("start is not a date"))?;
    let e = end.as_str().ok_or_else(|| anyhow!("end is not a date"))?;
    DayWindow::parse("start", s, "end", e).map_err(|e| anyhow!("{e}"))
}

fn country(q: &Value) -> anyhow::Result<[u8; 2]> {
    q["cc"]
        .as_str()
        .and_then(|s| s.as_bytes().try_into().ok())
        .ok_or_else(|| anyhow!("cc is not a two-letter code"))
}

/// The RPC for one query of truth.json, or `None` for an unknown kind.
fn parse_query(q: &Value) -> anyhow::Result<Option<Query>> {
    let id = q["id"].as_str().unwrap_or("?").to_owned();
    let kind = q["kind"].as_str().unwrap_or("?").to_owned();
    let whole = || window(&q["start"], &q["end"]);
    let call = match kind.as_str() {
        "ip_country_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Country(country(q)?),
            window: whole()?,
        },
        "ip_all_countries" => Call::Group {
            metric: Metric::Ips,
            window: whole()?,
        },
        "ip_global_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Global,
            window: whole()?,
        },
        "drop_pct_by_country" => Call::Drop {
            a: window(&q["a"][0], &q["a"][1])?,
            b: window(&q["b"][0], &q["b"][1])?,
        },
        "org_country_window" => Call::Group {
            metric: Metric::Orgs,
            window: whole()?,
        },
        "org_global_window" => Call::Count {
            metric: Metric::Orgs,
            scope: Scope::Global,
            window: whole()?,
        },
        "ip_org_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Org(
                q["org"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("org is not an integer"))?
                    .to_string(),
            ),
            window: whole()?,
        },
        "org_retention" => Call::Retention {
            country: country(q)?,
            a: window(&q["start"], &q["cutoff"])?,
            b: window(&q["cutoff"], &q["end"])?,
        },
        _ => return Ok(None),
    };
    let latency_kind = if id == "ipglob:whole" {
        "ip_global_whole".to_owned()
    } else {
        kind.clone()
    };
    Ok(Some(Query {
        id,
        kind,
        latency_kind,
        call,
        truth: q["truth"].clone(),
    }))
}

async fn answer(client: &Client, ns: &str, call: &Call) -> anyhow::Result<Answer> {
    Ok(match call {
        Call::Count {
            metric,
            scope,
            window,
        } => Answer::Value(
            client
                .count(ns, *metric, scope, *window)
                .await?
                .estimate
                .value,
        ),
        Call::Group { metric, window } => {
            let rows = client
                .group(ns, *metric, GroupBy::Country, &Scope::Global, *window, 0)
                .await?;
            Answer::PerCountry(
                rows.into_iter()
                    .map(|r| (r.group, r.estimate.value))
                    .collect(),
            )
        }
        Call::Drop { a, b } => {
            let rows = client
                .compare(ns, Metric::Ips, GroupBy::Country, &Scope::Global, *a, *b, 0)
                .await?;
            Answer::PerCountry(
                rows.into_iter()
                    .filter(|r| r.a.value > 0.0)
                    .map(|r| (r.group, 100.0 * (1.0 - r.b.value / r.a.value)))
                    .collect(),
            )
        }
        Call::Retention { country, a, b } => {
            let r = client
                .retention(ns, &Scope::Country(*country), *a, *b)
                .await?;
            Answer::Value(100.0 * r.share())
        }
    })
}

async fn run_queries(
    client: &Client,
    args: &LoadgenArgs,
    truth: &Value,
) -> anyhow::Result<QueryResults> {
    let list = truth["queries"]
        .as_array()
        .ok_or_else(|| anyhow!("truth.json has no `queries` list"))?;
    let mut queries = Vec::with_capacity(list.len());
    let mut skipped = Vec::new();
    for q in list {
        match parse_query(q).with_context(|| format!("query {}", q["id"]))? {
            Some(query) => queries.push(query),
            None => skipped.push(q["id"].as_str().unwrap_or("?").to_owned()),
        }
    }
    eprintln!(
        "loadgen: {} queries x {} repeats",
        queries.len(),
        args.repeats
    );
    let started = Instant::now();
    let mut latency: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut answers = Vec::with_capacity(queries.len());
    for q in &queries {
        let mut last = None;
        for _ in 0..args.repeats {
            let t = Instant::now();
            let a = answer(client, &args.namespace, &q.call)
                .await
                .with_context(|| format!("query {}", q.id))?;
            latency
                .entry(q.latency_kind.clone())
                .or_default()
                .push(t.elapsed().as_secs_f64());
            last = Some(a);
        }
        answers.push((q.id.clone(), last.expect("repeats >= 1")));
    }
    let wall = started.elapsed();
    let mut pairs: BTreeMap<String, (Vec<ScoredPair>, bool)> = BTreeMap::new();
    let mut whole_pairs = Vec::new();
    for (q, (_, a)) in queries.iter().zip(&answers) {
        let abs = matches!(q.kind.as_str(), "drop_pct_by_country" | "org_retention");
        let list = &mut pairs.entry(q.kind.clone()).or_insert((Vec::new(), abs)).0;
        match (&q.truth, a) {
            (Value::Object(t), Answer::PerCountry(est)) => {
                for (cc, tv) in t {
                    let e = est.get(cc).copied().or(if abs { None } else { Some(0.0) });
                    list.push((e, tv.as_f64().unwrap_or(0.0)));
                }
            }
            (t, Answer::Value(v)) => {
                list.push((Some(*v), t.as_f64().unwrap_or(0.0)));
                if q.id == "ipglob:whole" {
                    whole_pairs.push((Some(*v), t.as_f64().unwrap_or(0.0)));
                }
            }
            (t, Answer::PerCountry(_)) => bail!("query {}: truth {t} is not per country", q.id),
        }
    }
    let errors = pairs
        .into_iter()
        .map(|(k, (p, abs))| (k, ErrorStats::of(&p, abs)))
        .collect();
    let whole_error = (!whole_pairs.is_empty()).then(|| ErrorStats::of(&whole_pairs, false));
    Ok(QueryResults {
        latency,
        answers,
        errors,
        whole_error,
        skipped,
        wall,
    })
}

/// Runs the queries of `truth` (if any) and measures the round-trip floor,
/// on a thread of its own with a single-threaded runtime and its own
/// connections: a query then costs no wake-up of another client thread, so
/// the latencies are the server's and the transport's, like those of the
/// peers' single-threaded clients.
fn query_phase(
    args: &LoadgenArgs,
    truth: Option<&Value>,
) -> anyhow::Result<(Option<QueryResults>, Option<f64>)> {
    let phase = || -> anyhow::Result<(Option<QueryResults>, Option<f64>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the query runtime")?;
        runtime.block_on(async {
            let queries = match truth {
                Some(truth) => {
                    let client = args.connect.connect(args.first_server()).await?;
                    Some(run_queries(&client, args, truth).await?)
                }
                None => None,
            };
            Ok((queries, rpc_floor(args.first_server()).await?))
        })
    };
    let on_own_thread = || {
        std::thread::scope(|scope| {
            scope
                .spawn(phase)
                .join()
                .map_err(|_| anyhow!("the query phase panicked"))?
        })
    };
    // The caller's runtime has nothing else to do meanwhile; tell it so
    // when it can be told (block_in_place panics on a current-thread one).
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(on_own_thread)
        }
        _ => on_own_thread(),
    }
}

/// A Prometheus text exposition as `name{labels}` -> value.
type Scrape = BTreeMap<String, f64>;

/// Fetches and parses the server's metrics (plain HTTP/1.1, no TLS).
async fn scrape_metrics(url: &str) -> anyhow::Result<Scrape> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--metrics {url}: expected http://HOST:PORT/PATH"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut conn = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot connect to the metrics endpoint {url}"))?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{url}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{url}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse_exposition(body))
}

/// [`scrape_metrics`] once the run has measured something: a failure then
/// loses only the server's account, not the run's report.
async fn try_scrape(url: &str) -> Option<Scrape> {
    match scrape_metrics(url).await {
        Ok(scrape) => Some(scrape),
        Err(e) => {
            eprintln!("loadgen: cannot read the server's metrics: {e:#}");
            None
        }
    }
}

fn parse_exposition(body: &str) -> Scrape {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The server's own account of a run, from its metrics: the background
/// work of ingest (until it was idle) and its time per query RPC.
#[derive(Debug, PartialEq)]
struct ServerWork {
    checkpoints: f64,
    checkpoint_s: f64,
    rollup_passes: f64,
    rollup_s: f64,
    rollup_blocks: f64,
    wal_syncs: f64,
    wal_sync_s: f64,
    /// RPC -> (calls, mean server-side ms) during the query phase.
    queries: BTreeMap<String, (f64, f64)>,
}

impl ServerWork {
    fn between(before: &Scrape, after: &Scrape, end: Option<&Scrape>) -> ServerWork {
        let delta = |a: &Scrape, b: &Scrape, name: &str| {
            b.get(name).copied().unwrap_or(0.0) - a.get(name).copied().unwrap_or(0.0)
        };
        let mut queries = BTreeMap::new();
        if let Some(end) = end {
            for (name, _) in end.range("sketchd_query_seconds_count".to_owned()..) {
                let Some(labels) = name.strip_prefix("sketchd_query_seconds_count") else {
                    break;
                };
                let calls = delta(after, end, name);
                if calls > 0.0 {
                    let sum = delta(after, end, &format!("sketchd_query_seconds_sum{labels}"));
                    let rpc = labels
                        .trim_start_matches("{rpc=\"")
                        .trim_end_matches("\"}")
                        .to_owned();
                    queries.insert(rpc, (calls, sum * 1e3 / calls));
                }
            }
        }
        ServerWork {
            checkpoints: delta(before, after, "sketchd_checkpoint_seconds_count"),
            checkpoint_s: delta(before, after, "sketchd_checkpoint_seconds_sum"),
            rollup_passes: delta(before, after, "sketchd_rollup_seconds_count"),
            rollup_s: delta(before, after, "sketchd_rollup_seconds_sum"),
            rollup_blocks: delta(before, after, "sketchd_rollup_blocks_total"),
            wal_syncs: delta(before, after, "sketchd_wal_sync_seconds_count"),
            wal_sync_s: delta(before, after, "sketchd_wal_sync_seconds_sum"),
            queries,
        }
    }

    fn json(&self) -> Value {
        let queries: serde_json::Map<String, Value> = self
            .queries
            .iter()
            .map(|(rpc, (calls, ms))| (rpc.clone(), json!({"calls": calls, "mean_ms": ms})))
            .collect();
        json!({
            "checkpoints": self.checkpoints,
            "checkpoint_s": self.checkpoint_s,
            "rollup_passes": self.rollup_passes,
            "rollup_s": self.rollup_s,
            "rollup_blocks": self.rollup_blocks,
            "wal_syncs": self.wal_syncs,
            "wal_sync_s": self.wal_sync_s,
            "query_rpcs": queries,
        })
    }

    fn table(&self) -> String {
        let mut out = format!(
            "server work until idle (its metrics): {} checkpoints {:.1} s, {} rollup passes {:.1} s ({} blocks), {} log syncs {:.1} s\n",
            self.checkpoints,
            self.checkpoint_s,
            self.rollup_passes,
            self.rollup_s,
            self.rollup_blocks,
            self.wal_syncs,
            self.wal_sync_s
        );
        if !self.queries.is_empty() {
            let per_rpc: Vec<String> = self
                .queries
                .iter()
                .map(|(rpc, (calls, ms))| format!("{rpc} {ms:.3} ms x {calls}"))
                .collect();
            out.push_str(&format!(
                "server-side query time (mean): {}\n",
                per_rpc.join(", ")
            ));
        }
        out
    }
}

/// Health checks answered on one connection.
const FLOOR_CALLS: usize = 200;

/// Median latency (ms) of a gRPC health check: the transport's share of
/// every query latency. `None` when the server does not serve health checks.
async fn rpc_floor(url: &str) -> anyhow::Result<Option<f64>> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let mut health = HealthClient::new(channel);
    let mut ms = Vec::with_capacity(FLOOR_CALLS);
    for _ in 0..FLOOR_CALLS {
        let t = Instant::now();
        if health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err()
        {
            return Ok(None);
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(percentile(&ms, 50.0))
}

/// An estimate (`None`: not answered) and its truth.
type ScoredPair = (Option<f64>, f64);

/// Error statistics like the peers' `common.error_stats`.
#[derive(Clone, Debug)]
struct ErrorStats {
    abs: bool,
    n: usize,
    median: Option<f64>,
    p95: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    zero_truth_nonzero_est: usize,
}

impl ErrorStats {
    fn of(pairs: &[ScoredPair], abs: bool) -> ErrorStats {
        let mut errs = Vec::with_capacity(pairs.len());
        let mut zero_truth_nonzero_est = 0;
        for &(est, truth) in pairs {
            let Some(est) = est else { continue };
            if abs {
                errs.push((est - truth).abs());
            } else if truth == 0.0 {
                zero_truth_nonzero_est += usize::from(est != 0.0);
            } else {
                errs.push((est - truth).abs() / truth);
            }
        }
        ErrorStats {
            abs,
            n: errs.len(),
            median: percentile(&errs, 50.0),
            p95: percentile(&errs, 95.0),
            max: errs.iter().copied().reduce(f64::max),
            mean: (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64),
            zero_truth_nonzero_est,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "metric": if self.abs { "abs" } else { "rel" },
            "n": self.n,
            "median": self.median,
            "p95": self.p95,
            "max": self.max,
            "mean": self.mean,
            "zero_truth_nonzero_est": self.zero_truth_nonzero_est,
        })
    }

    /// Median / p95 / max, as % for relative errors and pp for absolute ones.
    fn show(&self) -> String {
        let (scale, unit) = if self.abs {
            (1.0, " pp")
        } else {
            (100.0, " %")
        };
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{:.2}", v * scale));
        format!(
            "{} / {} / {}{unit}",
            f(self.median),
            f(self.p95),
            f(self.max)
        )
    }
}

/// numpy's default (linear) percentile.
fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

// ---------------------------------------------------------------- /proc

#[derive(Clone, Copy, Debug)]
struct ProcSample {
    cpu_s: f64,
    rss_bytes: u64,
    peak_rss_bytes: u64,
}

/// CPU seconds (user + system) and resident memory of a process.
fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is the server running?)"))?;
    // Fields after the parenthesised command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {}", i + 3))? as f64)
    };
    let cpu_s = (ticks(11)? + ticks(12)?) / clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    if !status.contains("VmRSS:") {
        // A zombie: it has exited and its memory is gone.
        bail!("process {pid} has exited");
    }
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcSample {
        cpu_s,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    })
}

/// `sysconf(_SC_CLK_TCK)`, read from the auxiliary vector (`AT_CLKTCK`).
fn clock_ticks_per_second() -> f64 {
    const AT_CLKTCK: u64 = 17;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 100.0;
    };
    auxv.chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().expect("8")),
                u64::from_ne_bytes(c[8..].try_into().expect("8")),
            )
        })
        .find(|&(key, _)| key == AT_CLKTCK)
        .map_or(100.0, |(_, v)| v as f64)
}

/// How long a server stayed busy after the last acknowledgement.
#[derive(Clone, Copy, Debug)]
struct Settle {
    /// Seconds until the server used under [`IDLE_CPU`] of a core for a second.
    seconds: f64,
    /// False when the timeout passed first.
    idle: bool,
    /// The server once idle (or at the timeout).
    sample: ProcSample,
}

/// A server using less than this share of one core is idle.
const IDLE_CPU: f64 = 0.05;
/// Consecutive idle seconds that count as done: longer than the server's
/// default checkpoint interval (2 s), so a checkpoint still to come is seen.
const IDLE_SECONDS: u32 = 4;

/// Waits until the server is idle: checkpoints of the ingested data are done.
async fn settle(pid: u32, timeout: Duration) -> anyhow::Result<Settle> {
    let started = Instant::now();
    let mut last = proc_sample(pid)?;
    // When the current run of idle seconds began.
    let mut idle_since: Option<f64> = None;
    let mut idle_seconds = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = proc_sample(pid)?;
        let at = started.elapsed().as_secs_f64();
        if now.cpu_s - last.cpu_s < IDLE_CPU {
            idle_since.get_or_insert(at - 1.0);
            idle_seconds += 1;
        } else {
            idle_since = None;
            idle_seconds = 0;
        }
        let idle = idle_seconds >= IDLE_SECONDS;
        if idle || started.elapsed() >= timeout {
            return Ok(Settle {
                seconds: if idle {
                    idle_since.unwrap_or(0.0).max(0.0)
                } else {
                    at
                },
                idle,
                sample: now,
            });
        }
        last = now;
    }
}

/// Bytes allocated on disk under `dir` (st_blocks), in total and per
/// top-level entry (`sled`, `wal`).
#[derive(Clone, Debug, Default)]
struct DiskUsage {
    total: u64,
    parts: BTreeMap<String, u64>,
}

fn disk_usage(dir: &Path) -> anyhow::Result<DiskUsage> {
    fn walk(path: &Path) -> std::io::Result<u64> {
        let meta = std::fs::symlink_metadata(path)?;
        let mut sum = meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                sum += walk(&entry?.path())?;
            }
        }
        Ok(sum)
    }
    let mut usage = DiskUsage::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let bytes = walk(&entry.path())?;
        usage.total += bytes;
        usage
            .parts
            .insert(entry.file_name().to_string_lossy().into_owned(), bytes);
    }
    Ok(usage)
}

// ---------------------------------------------------------------- reports

struct Report<'a> {
    world: &'a World,
    ingest: Option<&'a IngestStats>,
    server_before: Option<ProcSample>,
    server_after_ingest: Option<ProcSample>,
    /// Background work after the last acknowledgement.
    settle: Option<Settle>,
    server_end: Option<ProcSample>,
    disk: Option<DiskUsage>,
    queries: Option<&'a QueryResults>,
    /// Median round trip of a gRPC health check: the floor of any query.
    rpc_floor_ms: Option<f64>,
    /// What the server's metrics say it did.
    server_work: Option<ServerWork>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report<'_> {
    fn obs_per_s(&self) -> Option<f64> {
        self.ingest
            .map(|i| i.rows as f64 / i.wall.as_secs_f64().max(1e-9))
    }

    fn ack(&self, q: f64) -> Option<f64> {
        self.ingest.and_then(|i| percentile(&i.ack_ms, q))
    }

    /// Server CPU seconds spent until the last acknowledgement.
    fn server_ingest_cpu_s(&self) -> Option<f64> {
        Some(self.server_after_ingest?.cpu_s - self.server_before?.cpu_s)
    }

    /// Server CPU seconds spent on the ingested data, background
    /// checkpoints included (until idle), else until the last ack.
    fn server_total_cpu_s(&self) -> Option<f64> {
        match self.settle {
            Some(s) => Some(s.sample.cpu_s - self.server_before?.cpu_s),
            None => self.server_ingest_cpu_s(),
        }
    }

    /// Observations per second counting the time until the server was idle.
    fn settled_obs_per_s(&self) -> Option<f64> {
        let i = self.ingest?;
        let s = self.settle?;
        Some(i.rows as f64 / (i.wall.as_secs_f64() + s.seconds).max(1e-9))
    }

    /// The server's RSS once its background work was done (or after ingest).
    fn steady_rss(&self) -> Option<u64> {
        self.settle
            .map(|s| s.sample.rss_bytes)
            .or(self.server_after_ingest.map(|s| s.rss_bytes))
    }

    /// The server's peak RSS (`VmHWM`), or the largest RSS sampled during
    /// ingest when the server is gone.
    fn peak_rss(&self) -> Option<u64> {
        let sampled = self.ingest.map(|i| i.server_rss_seen).filter(|&r| r > 0);
        match (self.server_end.map(|s| s.peak_rss_bytes), sampled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The server's peak RSS (`VmHWM`) before the queries: through ingest
    /// and the checkpoints until it was idle.
    fn ingest_peak_rss(&self) -> Option<u64> {
        self.settle
            .map(|s| s.sample.peak_rss_bytes)
            .or(self.server_after_ingest.map(|s| s.peak_rss_bytes))
    }

    /// Latency stats per kind, in the peers' order.
    fn latency_rows(&self) -> Vec<(&'static str, Vec<f64>)> {
        let Some(q) = self.queries else {
            return Vec::new();
        };
        KIND_ORDER
            .iter()
            .filter_map(|&k| {
                q.latency
                    .get(k)
                    .map(|s| (k, s.iter().map(|x| x * 1e3).collect()))
            })
            .collect()
    }

    /// The error stats a latency kind is judged by.
    fn error_of(&self, kind: &str) -> Option<&ErrorStats> {
        let q = self.queries?;
        if kind == "ip_global_whole" {
            q.whole_error.as_ref()
        } else {
            q.errors.get(kind)
        }
    }

    fn summary_json(&self) -> Value {
        let queries: Vec<Value> = self
            .latency_rows()
            .into_iter()
            .map(|(kind, ms)| {
                let e = self.error_of(kind);
                json!({
                    "name": kind,
                    "n": ms.len(),
                    "median_ms": percentile(&ms, 50.0),
                    "p95_ms": percentile(&ms, 95.0),
                    "rel_error": e.and_then(|e| e.median),
                    "error_metric": e.map(|e| if e.abs { "abs_pp" } else { "rel" }),
                    "error_p95": e.and_then(|e| e.p95),
                    "error_max": e.and_then(|e| e.max),
                })
            })
            .collect();
        json!({
            "observations": self.ingest.map(|i| i.rows),
            "error": self.ingest.and_then(|i| i.error.clone()),
            "batches": self.ingest.map(|i| i.batches),
            "duplicate_batches": self.ingest.map(|i| i.duplicates),
            "overloaded_retries": self.ingest.map(|i| i.retries),
            "ingest_wall_s": self.ingest.map(|i| i.wall.as_secs_f64()),
            "ingest_obs_per_s": self.obs_per_s(),
            "ack_p50_ms": self.ack(50.0),
            "ack_p99_ms": self.ack(99.0),
            "client_cpu_s": self.ingest.map(|i| i.client_cpu_s),
            "server_cpu_s": self.server_total_cpu_s(),
            "server_cpu_until_last_ack_s": self.server_ingest_cpu_s(),
            "settle_s": self.settle.map(|s| s.seconds),
            "settled": self.settle.map(|s| s.idle),
            "ingest_obs_per_s_settled": self.settled_obs_per_s(),
            "server_query_cpu_s": self.server_end.zip(self.server_after_ingest).map(|(e, a)| e.cpu_s - a.cpu_s),
            "server_rss_after_ingest_bytes": self.steady_rss(),
            "server_peak_rss_bytes": self.peak_rss(),
            "server_peak_rss_ingest_bytes": self.ingest_peak_rss(),
            "disk_bytes": self.disk.as_ref().map(|d| d.total),
            "disk_parts_bytes": self.disk.as_ref().map(|d| json!(d.parts)),
            "query_phase_s": self.queries.map(|q| q.wall.as_secs_f64()),
            "rpc_floor_ms": self.rpc_floor_ms,
            "server_work": self.server_work.as_ref().map(ServerWork::json),
            "queries": queries,
        })
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let opt = |x: Option<f64>, nd: usize| x.map_or("-".to_owned(), |v| format!("{v:.nd$}"));
        if let Some(e) = self.ingest.and_then(|i| i.error.as_ref()) {
            let _ = writeln!(out, "INGEST STOPPED EARLY: {e}");
        }
        if let Some(i) = self.ingest {
            let _ = writeln!(
                out,
                "ingest: {} observations in {} batches, {:.1} s, {} obs/s (ack p50 {} ms, p99 {} ms; {} duplicate batches, {} overloaded retries)",
                i.rows,
                i.batches,
                i.wall.as_secs_f64(),
                opt(self.obs_per_s(), 0),
                opt(self.ack(50.0), 1),
                opt(self.ack(99.0), 1),
                i.duplicates,
                i.retries,
            );
            let _ = writeln!(
                out,
                "        server CPU {} s until the last ack, {} s until idle ({} s after it; {} obs/s counting that); client CPU {:.1} s",
                opt(self.server_ingest_cpu_s(), 1),
                opt(self.server_total_cpu_s(), 1),
                opt(self.settle.map(|s| s.seconds), 1),
                opt(self.settled_obs_per_s(), 0),
                i.client_cpu_s
            );
        }
        if let Some(peak) = self.peak_rss() {
            let _ = writeln!(
                out,
                "server: RSS after ingest {} MiB, peak RSS {:.1} MiB ({} MiB before the queries)",
                opt(self.steady_rss().map(mib), 1),
                mib(peak),
                opt(self.ingest_peak_rss().map(mib), 1)
            );
        }
        if let Some(d) = &self.disk {
            let parts: Vec<String> = d
                .parts
                .iter()
                .map(|(k, v)| format!("{k} {:.1}", mib(*v)))
                .collect();
            let _ = writeln!(
                out,
                "disk:   {:.1} MiB ({})",
                mib(d.total),
                parts.join(", ")
            );
        }
        let rows = self.latency_rows();
        if !rows.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<22} {:>6} {:>10} {:>10}   error median / p95 / max",
                "query kind", "calls", "median ms", "p95 ms"
            );
            for (kind, ms) in rows {
                let _ = writeln!(
                    out,
                    "{kind:<22} {:>6} {:>10} {:>10}   {}",
                    ms.len(),
                    opt(percentile(&ms, 50.0), 3),
                    opt(percentile(&ms, 95.0), 3),
                    self.error_of(kind).map_or("-".to_owned(), ErrorStats::show)
                );
            }
        }
        if let Some(floor) = self.rpc_floor_ms {
            let _ = writeln!(out, "gRPC round trip floor (health check): {floor:.3} ms");
        }
        if let Some(w) = &self.server_work {
            out.push_str(&w.table());
        }
        if let Some(q) = self.queries.filter(|q| !q.skipped.is_empty()) {
            let _ = writeln!(out, "skipped (unknown kind): {}", q.skipped.join(", "));
        }
        out
    }

    /// The peers' results JSON (see peers/README.md, "Adding the project").
    fn peers_results(&self, args: &LoadgenArgs, truth: Option<&Value>) -> Value {
        let meta = truth.map(|t| &t["meta"]);
        let latency: serde_json::Map<String, Value> = self
            .latency_rows()
            .into_iter()
            .map(|(kind, ms)| {
                (
                    kind.to_owned(),
                    json!({
                        "n": ms.len(),
                        "median_ms": percentile(&ms, 50.0),
                        "p95_ms": percentile(&ms, 95.0),
                        "min_ms": ms.iter().copied().reduce(f64::min),
                    }),
                )
            })
            .collect();
        let errors: serde_json::Map<String, Value> = self
            .queries
            .map(|q| {
                q.errors
                    .iter()
                    .map(|(k, e)| (k.clone(), e.to_json()))
                    .collect()
            })
            .unwrap_or_default();
        let answers: serde_json::Map<String, Value> = self
            .queries
            .map(|q| {
                q.answers
                    .iter()
                    .map(|(id, a)| (id.clone(), a.to_json()))
                    .collect()
            })
            .unwrap_or_default();
        let ingest = self.ingest.map(|i| {
            let server_cpu = self.server_total_cpu_s();
            json!({
                "n_obs": i.rows,
                "error": i.error,
                "wall_s": i.wall.as_secs_f64(),
                "obs_per_s": self.obs_per_s(),
                "server_cpu_s": server_cpu,
                "client_cpu_s": i.client_cpu_s,
                "server_obs_per_cpu_s": server_cpu.filter(|c| *c > 0.0).map(|c| i.rows as f64 / c),
                "batches": i.batches,
                "batch_rows": args.batch_rows,
                "collectors": args.collectors,
                "ack_p50_ms": self.ack(50.0),
                "ack_p99_ms": self.ack(99.0),
                "server_cpu_until_last_ack_s": self.server_ingest_cpu_s(),
                "settle_s": self.settle.map(|s| s.seconds),
                "obs_per_s_settled": self.settled_obs_per_s(),
                "overloaded_retries": i.retries,
                "mode": "columnar gRPC batches, ack after WAL fsync (group commit)",
            })
        });
        let dataset_dir = self
            .world
            .path
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .map(|p| p.display().to_string());
        json!({
            "peer": "sketchd",
            "version": format!("sketchd {}", env!("CARGO_PKG_VERSION")),
            "scale": meta.map(|m| m["scale"].clone()),
            "dataset": {
                "dir": dataset_dir,
                "n_obs": self.world.records,
                "sha256_records": meta.map(|m| m["obs_sha256_records"].clone()),
                "t0": self.world.t0,
                "n_days": self.world.days,
            },
            "config": {
                "namespace": args.namespace,
                "precision": args.precision,
                "collectors": args.collectors,
                "batch_rows": args.batch_rows,
                "repeats": args.repeats,
                "hll": format!("sketchd HLL, 2^{} registers (exact below 2^{})", args.precision, args.precision.saturating_sub(4)),
            },
            "ingest": ingest,
            "footprint": {
                "bytes": self.peak_rss(),
                "what": "server peak RSS (VmHWM)",
                "rss_after_ingest": self.steady_rss(),
                "peak_rss_before_queries": self.ingest_peak_rss(),
                "disk_bytes": self.disk.as_ref().map(|d| d.total),
                "disk_parts": self.disk.as_ref().map(|d| json!(d.parts)),
            },
            "query_phase_s": self.queries.map(|q| q.wall.as_secs_f64()),
            "rpc_floor_ms": self.rpc_floor_ms,
            "server_work": self.server_work.as_ref().map(ServerWork::json),
            "latency": latency,
            "errors": errors,
            "answers": answers,
            "host": host_info(),
        })
    }
}

fn host_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    json!({
        "cpu_model": cpu,
        "mem_gib": mem_gib,
        "machine": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 95.0).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn codes_reset_per_batch() {
        let mut c = Codes::default();
        c.reset();
        assert_eq!(c.code(7), (1, true));
        assert_eq!(c.code(3), (2, true));
        assert_eq!(c.code(7), (1, false));
        assert_eq!(c.code(u32::MAX), (3, true));
        assert_eq!(c.code(u32::MAX), (3, false));
        c.reset();
        assert_eq!(c.code(3), (1, true));
        assert_eq!(c.code(u32::MAX), (2, true));
    }

    #[test]
    fn errors_score_like_the_peers() {
        let rel = ErrorStats::of(
            &[(Some(110.0), 100.0), (Some(5.0), 0.0), (None, 1.0)],
            false,
        );
        assert_eq!((rel.n, rel.zero_truth_nonzero_est), (1, 1));
        assert!((rel.median.unwrap() - 0.1).abs() < 1e-12);
        let abs = ErrorStats::of(&[(Some(40.0), 39.5), (None, 1.0)], true);
        assert_eq!(abs.n, 1);
        assert!((abs.max.unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn world_chunks_encode_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obs.bin");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        for v in [1u32, 14] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&1_711_929_600u32.to_le_bytes());
        bytes.extend_from_slice(&244u32.to_le_bytes());
        for (ts, ip, org, cc) in [
            (1_711_929_600u32, 0x0102_0304u32, 12u32, b"DE"),
            (1_711_929_601, 0x0506_0708, 7, b"US"),
            (1_711_929_602, 0x0102_0304, 12, b"DE"),
        ] {
            bytes.extend_from_slice(&ts.to_le_bytes());
            bytes.extend_from_slice(&ip.to_le_bytes());
            bytes.extend_from_slice(&org.to_le_bytes());
            bytes.extend_from_slice(cc);
        }
        std::fs::write(&path, bytes).unwrap();
        let world = World::open(&path).unwrap();
        assert_eq!((world.records, world.days), (3, 244));
        let req = Encoder::default()
            .encode(&world, 1, 2, "ns", "c", 9)
            .unwrap();
        assert_eq!(req.ipv4, vec![0x0506_0708, 0x0102_0304]);
        assert_eq!(req.unix_seconds, vec![1_711_929_601, 1_711_929_602]);
        assert_eq!(req.org_dict, vec!["7".to_owned(), "12".to_owned()]);
        assert_eq!(req.org_index, vec![1, 2]);
        assert_eq!(req.country_dict, vec!["US".to_owned(), "DE".to_owned()]);
        assert_eq!(req.country_index, vec![1, 2]);
        assert_eq!(req.sequence, 9);
    }

    #[test]
    fn server_work_is_the_difference_of_two_scrapes() {
        let before = parse_exposition(
            "# HELP sketchd_checkpoint_seconds x\n\
             sketchd_checkpoint_seconds_count 2\n\
             sketchd_checkpoint_seconds_sum 0.5\n\
             sketchd_rollup_blocks_total 10\n\
             sketchd_query_seconds_count{rpc=\"count\"} 1\n\
             sketchd_query_seconds_sum{rpc=\"count\"} 0.001\n",
        );
        let after = parse_exposition(
            "sketchd_checkpoint_seconds_count 5\n\
             sketchd_checkpoint_seconds_sum 2\n\
             sketchd_rollup_seconds_count 1\n\
             sketchd_rollup_seconds_sum 0.25\n\
             sketchd_rollup_blocks_total 110\n\
             sketchd_query_seconds_count{rpc=\"count\"} 1\n\
             sketchd_query_seconds_sum{rpc=\"count\"} 0.001\n",
        );
        let mut end = after.clone();
        end.insert("sketchd_query_seconds_count{rpc=\"count\"}".into(), 5.0);
        end.insert("sketchd_query_seconds_sum{rpc=\"count\"}".into(), 0.009);
        end.insert("sketchd_query_seconds_count{rpc=\"retention\"}".into(), 0.0);
        let work = ServerWork::between(&before, &after, Some(&end));
        assert_eq!(work.checkpoints, 3.0);
        assert_eq!(work.checkpoint_s, 1.5);
        assert_eq!((work.rollup_passes, work.rollup_s), (1.0, 0.25));
        assert_eq!(work.rollup_blocks, 100.0);
        assert_eq!(work.wal_syncs, 0.0);
        // Four calls took 8 ms in all; RPCs not called are left out.
        assert_eq!(work.queries.len(), 1);
        let (calls, mean_ms) = work.queries["count"];
        assert_eq!(calls, 4.0);
        assert!((mean_ms - 2.0).abs() < 1e-9, "{mean_ms}");
    }
}
