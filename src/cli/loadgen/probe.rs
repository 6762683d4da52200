//! What the load generator observes of the server besides its answers: CPU
//! and memory from `/proc/<pid>`, when it went idle after ingest, bytes on
//! disk under its data directory, and its own account from its Prometheus
//! metrics.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
pub(super) struct ProcSample {
    pub(super) cpu_s: f64,
    pub(super) rss_bytes: u64,
    pub(super) peak_rss_bytes: u64,
}

/// CPU seconds (user + system) and resident memory of a process.
pub(super) fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
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
pub(super) fn clock_ticks_per_second() -> f64 {
    pub(super) const AT_CLKTCK: u64 = 17;
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
pub(super) struct Settle {
    /// Seconds until the server used under [`IDLE_CPU`] of a core for a second.
    pub(super) seconds: f64,
    /// False when the timeout passed first.
    pub(super) idle: bool,
    /// The server once idle (or at the timeout).
    pub(super) sample: ProcSample,
}

/// A server using less than this share of one core is idle.
pub(super) const IDLE_CPU: f64 = 0.05;
/// Consecutive idle seconds that count as done: longer than the server's
/// default checkpoint interval (1 s), so a checkpoint still to come is seen.
pub(super) const IDLE_SECONDS: u32 = 4;

/// Waits until the server is idle: checkpoints of the ingested data are done.
pub(super) async fn settle(pid: u32, timeout: Duration) -> anyhow::Result<Settle> {
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
pub(super) struct DiskUsage {
    pub(super) total: u64,
    pub(super) parts: BTreeMap<String, u64>,
}

pub(super) fn disk_usage(dir: &Path) -> anyhow::Result<DiskUsage> {
    pub(super) fn walk(path: &Path) -> std::io::Result<u64> {
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

/// A Prometheus text exposition as `name{labels}` -> value.
pub(super) type Scrape = BTreeMap<String, f64>;

/// Fetches and parses the server's metrics (plain HTTP/1.1, no TLS).
pub(super) async fn scrape_metrics(url: &str) -> anyhow::Result<Scrape> {
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
pub(super) async fn try_scrape(url: &str) -> Option<Scrape> {
    match scrape_metrics(url).await {
        Ok(scrape) => Some(scrape),
        Err(e) => {
            eprintln!("loadgen: cannot read the server's metrics: {e:#}");
            None
        }
    }
}

pub(super) fn parse_exposition(body: &str) -> Scrape {
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
pub(super) struct ServerWork {
    pub(super) checkpoints: f64,
    pub(super) checkpoint_s: f64,
    pub(super) rollup_passes: f64,
    pub(super) rollup_s: f64,
    pub(super) rollup_blocks: f64,
    pub(super) wal_syncs: f64,
    pub(super) wal_sync_s: f64,
    /// RPC -> (calls, mean server-side ms) during the query phase.
    pub(super) queries: BTreeMap<String, (f64, f64)>,
}

impl ServerWork {
    pub(super) fn between(before: &Scrape, after: &Scrape, end: Option<&Scrape>) -> ServerWork {
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

    pub(super) fn json(&self) -> Value {
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

    pub(super) fn table(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
