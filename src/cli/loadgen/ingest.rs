//! The ingest driver: `--collectors` tasks, each with its own connection,
//! collector id and sequence numbers, send the world's chunks one batch in
//! flight at a time (the next encoded on a blocking thread meanwhile),
//! retrying batches the server refuses as overloaded; a sampler reports
//! progress and the server's RSS every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tokio::task::JoinHandle;

use sketchd::client::Client;
use sketchd::pb;

use super::probe::proc_sample;
use super::report::mib;
use super::world::{Encoder, World};
use super::LoadgenArgs;

/// Attempts for a batch the server refuses as overloaded.
pub(super) const MAX_ATTEMPTS: u32 = 200;

pub(super) struct IngestStats {
    /// Rows acknowledged (all of them unless `error`).
    pub(super) rows: u64,
    /// Why ingest stopped early (e.g. the server died).
    pub(super) error: Option<String>,
    /// Largest server RSS seen by the 1 s sampler (the server's own peak
    /// is lost if it dies).
    pub(super) server_rss_seen: u64,
    pub(super) batches: u64,
    pub(super) duplicates: u64,
    pub(super) retries: u64,
    pub(super) wall: Duration,
    /// Acknowledgement latency of every batch, in ms.
    pub(super) ack_ms: Vec<f64>,
    pub(super) client_cpu_s: f64,
}

pub(super) struct Plan {
    pub(super) namespace: String,
    pub(super) batch_rows: usize,
    pub(super) rows: u64,
    pub(super) collectors: usize,
}

impl Plan {
    pub(super) fn chunks(&self) -> u64 {
        self.rows.div_ceil(self.batch_rows as u64)
    }

    /// First record and row count of chunk `k`.
    pub(super) fn chunk(&self, k: u64) -> (u64, usize) {
        let first = k * self.batch_rows as u64;
        (
            first,
            (self.rows - first).min(self.batch_rows as u64) as usize,
        )
    }
}

#[derive(Default)]
pub(super) struct CollectorResult {
    pub(super) error: Option<anyhow::Error>,
    pub(super) rows: u64,
    pub(super) batches: u64,
    pub(super) duplicates: u64,
    pub(super) retries: u64,
    pub(super) ack_ms: Vec<f64>,
}

pub(super) async fn ingest(args: &LoadgenArgs, world: &Arc<World>) -> anyhow::Result<IngestStats> {
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
pub(super) fn spawn_encode(
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
pub(super) async fn collector(
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

pub(super) async fn send_chunks(
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
