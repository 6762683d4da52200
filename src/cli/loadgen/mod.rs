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
//!
//! This file holds the arguments and the run; `world` reads and encodes the
//! world file, `ingest` drives the collectors, `queries` answers the query
//! set, `score` scores answers like the peers, `probe` observes the server
//! (`/proc`, metrics, disk) and `report` prints the table, the JSON summary
//! and the peers' results.

mod ingest;
mod probe;
mod queries;
mod report;
mod score;
mod world;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use sketchd::client::Client;
use sketchd::pb;

use super::{ConnectArgs, DEFAULT_SERVER};

use ingest::ingest;
use probe::{disk_usage, proc_sample, scrape_metrics, settle, try_scrape, ServerWork};
use queries::query_phase;
use report::Report;
use world::World;

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

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.collectors == 0 || args.batch_rows == 0 || args.repeats == 0 {
        bail!("--collectors, --batch-rows and --repeats must be at least 1");
    }
    if args.skip_ingest && args.truth.is_none() {
        bail!(
            "--skip-ingest without --truth has nothing to do: pass --truth <truth.json> \
             to answer and score the world's queries"
        );
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
