//! The report of a run: a table or one JSON object on stdout, and the
//! peers' results JSON (`--results`) that puts sketchd beside the other
//! peers in `summarize.py`.

use serde_json::{json, Value};

use super::ingest::IngestStats;
use super::probe::{DiskUsage, ProcSample, ServerWork, Settle};
use super::queries::QueryResults;
use super::score::{percentile, ErrorStats};
use super::world::World;
use super::LoadgenArgs;

/// Query kinds in the peers' order; `ip_global_whole` is the `ipglob:whole`
/// query of `ip_global_window`, timed on its own.
pub(super) const KIND_ORDER: [&str; 11] = [
    "ip_country_window",
    "ip_all_countries",
    "ip_global_window",
    "ip_global_whole",
    "drop_pct_by_country",
    "org_country_window",
    "org_global_window",
    "ip_org_window",
    "ip_all_orgs_window",
    "ip_orgs_compare",
    "org_retention",
];

pub(super) struct Report<'a> {
    pub(super) world: &'a World,
    pub(super) ingest: Option<&'a IngestStats>,
    pub(super) server_before: Option<ProcSample>,
    pub(super) server_after_ingest: Option<ProcSample>,
    /// Background work after the last acknowledgement.
    pub(super) settle: Option<Settle>,
    pub(super) server_end: Option<ProcSample>,
    pub(super) disk: Option<DiskUsage>,
    pub(super) queries: Option<&'a QueryResults>,
    /// Median round trip of a gRPC health check: the floor of any query.
    pub(super) rpc_floor_ms: Option<f64>,
    /// What the server's metrics say it did.
    pub(super) server_work: Option<ServerWork>,
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report<'_> {
    pub(super) fn obs_per_s(&self) -> Option<f64> {
        self.ingest
            .map(|i| i.rows as f64 / i.wall.as_secs_f64().max(1e-9))
    }

    pub(super) fn ack(&self, q: f64) -> Option<f64> {
        self.ingest.and_then(|i| percentile(&i.ack_ms, q))
    }

    /// Server CPU seconds spent until the last acknowledgement.
    pub(super) fn server_ingest_cpu_s(&self) -> Option<f64> {
        Some(self.server_after_ingest?.cpu_s - self.server_before?.cpu_s)
    }

    /// Server CPU seconds spent on the ingested data, background
    /// checkpoints included (until idle), else until the last ack.
    pub(super) fn server_total_cpu_s(&self) -> Option<f64> {
        match self.settle {
            Some(s) => Some(s.sample.cpu_s - self.server_before?.cpu_s),
            None => self.server_ingest_cpu_s(),
        }
    }

    /// Observations per second counting the time until the server was idle.
    pub(super) fn settled_obs_per_s(&self) -> Option<f64> {
        let i = self.ingest?;
        let s = self.settle?;
        Some(i.rows as f64 / (i.wall.as_secs_f64() + s.seconds).max(1e-9))
    }

    /// The server's RSS once its background work was done (or after ingest).
    pub(super) fn steady_rss(&self) -> Option<u64> {
        self.settle
            .map(|s| s.sample.rss_bytes)
            .or(self.server_after_ingest.map(|s| s.rss_bytes))
    }

    /// The server's peak RSS (`VmHWM`), or the largest RSS sampled during
    /// ingest when the server is gone.
    pub(super) fn peak_rss(&self) -> Option<u64> {
        let sampled = self.ingest.map(|i| i.server_rss_seen).filter(|&r| r > 0);
        match (self.server_end.map(|s| s.peak_rss_bytes), sampled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The server's peak RSS (`VmHWM`) before the queries: through ingest
    /// and the checkpoints until it was idle.
    pub(super) fn ingest_peak_rss(&self) -> Option<u64> {
        self.settle
            .map(|s| s.sample.peak_rss_bytes)
            .or(self.server_after_ingest.map(|s| s.peak_rss_bytes))
    }

    /// Latency stats per kind, in the peers' order.
    pub(super) fn latency_rows(&self) -> Vec<(&'static str, Vec<f64>)> {
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
    pub(super) fn error_of(&self, kind: &str) -> Option<&ErrorStats> {
        let q = self.queries?;
        if kind == "ip_global_whole" {
            q.whole_error.as_ref()
        } else {
            q.errors.get(kind)
        }
    }

    pub(super) fn summary_json(&self) -> Value {
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
            "rpc_between_counts": self.between_json(),
            "server_work": self.server_work.as_ref().map(ServerWork::json),
            "queries": queries,
        })
    }

    /// [`super::queries::Between`] as JSON.
    fn between_json(&self) -> Value {
        match self.queries.and_then(|q| q.between) {
            Some(b) => json!({"health_ms": b.health_ms, "count_ms": b.count_ms}),
            None => Value::Null,
        }
    }

    pub(super) fn table(&self) -> String {
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
        if let Some(b) = self.queries.and_then(|q| q.between) {
            let _ = writeln!(
                out,
                "health check between Count calls: {:.3} ms (the Count: {:.3} ms)",
                b.health_ms, b.count_ms
            );
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
    pub(super) fn peers_results(&self, args: &LoadgenArgs, truth: Option<&Value>) -> Value {
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
            "rpc_between_counts": self.between_json(),
            "server_work": self.server_work.as_ref().map(ServerWork::json),
            "latency": latency,
            "errors": errors,
            "answers": answers,
            "host": host_info(),
        })
    }
}

pub(super) fn host_info() -> Value {
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
