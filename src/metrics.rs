//! Prometheus metrics: counters and histograms updated on the hot paths,
//! gauges read at scrape time, served as text by a minimal HTTP endpoint.
//!
//! Everything is atomics: recording never blocks ingest or queries.
//!
//! The endpoint reads what it serves through [`Scrape`], which the engine
//! implements: its [`Metrics`] and a [`Gauges`] snapshot of the moment. So
//! the engine and the commit thread record here, and this module imports
//! nothing of theirs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// The query RPCs whose latency is recorded.
pub const QUERY_RPCS: [&str; 7] = [
    "count",
    "observations",
    "group_by",
    "compare",
    "retention",
    "overlap",
    "series",
];

/// Sizes read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub memtable_sketches: usize,
    pub memtable_bytes: usize,
    pub memtable_rows: u64,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub stale_rollup_blocks: usize,
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
}

/// What the endpoint serves: the metrics recorded and the gauges of the
/// moment (the engine of a running server).
pub trait Scrape: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;

    /// Read at each scrape; may take brief locks.
    fn gauges(&self) -> Gauges;
}

/// Every metric the server records.
#[derive(Default)]
pub struct Metrics {
    pub rows_ingested: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub rejected_batches: AtomicU64,
    /// Batches refused because the data directory is (nearly) full.
    pub disk_full_batches: AtomicU64,
    pub batch_ack: Histogram,
    pub wal_sync: Histogram,
    pub checkpoint: Histogram,
    /// Rollup passes (rebuilding stale blocks, then a flush).
    pub rollup: Histogram,
    pub rollup_blocks: AtomicU64,
    pub queries: [Histogram; QUERY_RPCS.len()],
}

impl Metrics {
    pub fn query(&self, rpc: &str) -> Option<&Histogram> {
        QUERY_RPCS
            .iter()
            .position(|&r| r == rpc)
            .map(|i| &self.queries[i])
    }

    /// The Prometheus text exposition, with the gauges `g`.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "sketchd_rows_ingested_total",
            "Rows applied.",
            &self.rows_ingested,
        );
        counter(
            &mut out,
            "sketchd_rows_rejected_total",
            "Rows of refused batches.",
            &self.rows_rejected,
        );
        counter(
            &mut out,
            "sketchd_batches_total",
            "Batches acknowledged (including duplicates).",
            &self.batches,
        );
        counter(
            &mut out,
            "sketchd_duplicate_batches_total",
            "Batches acknowledged as already applied.",
            &self.duplicate_batches,
        );
        counter(
            &mut out,
            "sketchd_rejected_batches_total",
            "Batches refused.",
            &self.rejected_batches,
        );
        counter(
            &mut out,
            "sketchd_disk_full_batches_total",
            "Batches refused because the data directory's file system is full (also in rejected).",
            &self.disk_full_batches,
        );
        counter(
            &mut out,
            "sketchd_rollup_blocks_total",
            "Rollup blocks rebuilt by rollup passes.",
            &self.rollup_blocks,
        );
        let histograms: [(&str, &str, &Histogram); 4] = [
            (
                "sketchd_batch_ack_seconds",
                "From receipt to durable acknowledgement of a batch.",
                &self.batch_ack,
            ),
            (
                "sketchd_wal_sync_seconds",
                "Write-ahead log append and fdatasync per group commit.",
                &self.wal_sync,
            ),
            (
                "sketchd_checkpoint_seconds",
                "Moving a frozen memtable into sled.",
                &self.checkpoint,
            ),
            (
                "sketchd_rollup_seconds",
                "One rollup pass: rebuilding the stale rollup blocks and flushing.",
                &self.rollup,
            ),
        ];
        for (name, help, h) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        let name = "sketchd_query_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Query latency per RPC, server side.\n# TYPE {name} histogram"
        );
        for (rpc, h) in QUERY_RPCS.iter().zip(&self.queries) {
            h.render(&mut out, name, &format!("rpc=\"{rpc}\""));
        }
        let gauges = [
            (
                "sketchd_memtable_sketches",
                "Dirty sketches in memory (active and checkpointing).",
                g.memtable_sketches as f64,
            ),
            (
                "sketchd_memtable_bytes",
                "Approximate heap bytes of the dirty sketches.",
                g.memtable_bytes as f64,
            ),
            (
                "sketchd_memtable_rows",
                "Rows applied since the last checkpoint.",
                g.memtable_rows as f64,
            ),
            (
                "sketchd_sketch_cache_entries",
                "Decoded rollup sketches cached for queries.",
                g.cache_entries as f64,
            ),
            (
                "sketchd_sketch_cache_bytes",
                "Approximate bytes of the cached sketches.",
                g.cache_bytes as f64,
            ),
            (
                "sketchd_stale_rollup_blocks",
                "Rollup blocks waiting for the next rollup pass (queries read below them).",
                g.stale_rollup_blocks as f64,
            ),
            (
                "sketchd_disk_bytes",
                "Bytes sled uses on disk.",
                g.disk_bytes as f64,
            ),
            (
                "sketchd_disk_free_bytes",
                "Free bytes on the data directory's file system (ingest is refused below min_free_disk_bytes plus room to checkpoint).",
                g.disk_free_bytes as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `source` (the engine) is
/// gone. Holds only a weak reference, so shutdown is not delayed by it.
pub async fn serve<S: Scrape>(listener: TcpListener, source: Weak<S>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let Some(scraped) = source.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let path = std::str::from_utf8(&head)
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .unwrap_or("");
            let (status, body) = if path == "/metrics" || path == "/" {
                let body =
                    tokio::task::spawn_blocking(move || scraped.metrics().render(scraped.gauges()))
                        .await
                        .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
