//! `sketchd ingest`: observation files or standard input to a server.
//!
//! A thin shell over the library: [`sketchd::client::formats`] reads CSV,
//! NDJSON or PEEROBS1 (by `--format`, else by extension, else by the first
//! bytes), and [`sketchd::client::Collector`] batches, numbers, sends and
//! retries (see its module doc for the exactly-once scheme: re-running the
//! same input never counts a row twice). This file adds the progress line
//! (stderr, terminals only) and the final summary (stdout).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use sketchd::client::collector::Progress;
use sketchd::client::formats::{self, Format, Location};
use sketchd::client::{
    Collector, CollectorError, CollectorOptions, RetryPolicy, Sequences, Summary,
};

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Server URL (http://HOST:PORT, https://… with --ca-cert, or HOST:PORT);
    /// several nodes of a cluster separated by commas (URL,URL,...): a batch
    /// that fails on one is retried on the next.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Namespace to count into.
    #[arg(long)]
    namespace: String,
    /// Collector id sent with every batch.
    #[arg(long, default_value = "cli")]
    collector: String,
    /// Input format: csv, ndjson, peerobs, or auto (by extension, else by
    /// the first bytes: the PEEROBS1 magic, `{`, else CSV).
    #[arg(long, default_value = "auto")]
    format: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// Send a partial batch once its first row has waited this long (for
    /// slow streams on standard input).
    #[arg(long)]
    max_batch_delay_ms: Option<u64>,
    /// Once the server has answered, give up on a batch that has been failing this long (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    max_retry_time: Duration,
    /// Keep trying this long to reach a server that has not answered yet (e.g. 30s for one that is starting); by default an unreachable server fails at once.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    wait_for_server: Duration,
    /// One attempt without an answer for this long is retried (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    attempt_timeout: Duration,
    /// Number batches from here (at least 1) instead of hashing their content and position.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    first_sequence: Option<u64>,
    /// No summary line (errors still go to stderr).
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// Print the summary as one JSON document.
    #[arg(long)]
    json: bool,
    /// Input files (`-` for standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let format = match args.format.as_str() {
        "auto" => None,
        other => Some(
            other
                .parse::<Format>()
                .map_err(|e| anyhow::anyhow!("--format: {e} or auto"))?,
        ),
    };
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    if args.max_batch_delay_ms == Some(0) {
        bail!("--max-batch-delay-ms must be at least 1");
    }
    let options = CollectorOptions {
        batch_rows: args.batch_rows,
        max_batch_delay: args.max_batch_delay_ms.map(Duration::from_millis),
        sequences: args
            .first_sequence
            .map_or(Sequences::ContentHash, Sequences::From),
        retry: RetryPolicy {
            max_elapsed: args.max_retry_time,
            wait_for_server: args.wait_for_server,
            ..RetryPolicy::default()
        },
        attempt_timeout: args.attempt_timeout,
        ..CollectorOptions::new(&args.namespace, &args.collector)
    };
    let mut collector = Collector::connecting_with(&args.server, args.connect.options()?, options)?;
    let bar = ProgressLine::start(collector.progress());
    let result = async {
        for path in &args.files {
            let input = formats::open(path, format)?;
            collector.send_input(input).await?;
        }
        collector.finish().await
    }
    .await;
    bar.stop().await;
    let summary = result.map_err(|e| at_line(e, &args.files, format))?;
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else if !args.quiet {
        outln!("{}", summary_line(&summary));
    }
    Ok(())
}

/// A row the server refused, at its line (or record) in the file it came
/// from; other errors as they are.
fn at_line(error: CollectorError, files: &[PathBuf], format: Option<Format>) -> anyhow::Error {
    if let CollectorError::RowRefused {
        input,
        observation,
        reason,
    } = &error
    {
        let path = files.iter().find(|p| p.display().to_string() == *input);
        match path.and_then(|p| formats::locate(p, format, observation - 1)) {
            Some(Location::Line(n)) => return anyhow!("{input}:{n}: {reason}"),
            Some(Location::Record(n)) => return anyhow!("{input}: record {n}: {reason}"),
            _ => {}
        }
    }
    error.into()
}

fn summary_line(s: &Summary) -> String {
    format!("ingested {s}")
}

/// `90s`, `10m`, `2h`, `500ms`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A one-line progress display on stderr, redrawn every 250 ms, only when
/// stderr is a terminal.
struct ProgressLine {
    task: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl ProgressLine {
    fn start(progress: Arc<Progress>) -> ProgressLine {
        if !std::io::stderr().is_terminal() {
            return ProgressLine { task: None };
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let sent = get(&progress.rows_sent);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{sent} rows sent ({} read), {:.0} rows/s, {} batches, {} retries",
                    get(&progress.rows_read),
                    sent as f64 / secs,
                    get(&progress.batches),
                    get(&progress.retries),
                );
                let _ = err.flush();
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        ProgressLine {
            task: Some((task, stop)),
        }
    }

    async fn stop(self) {
        if let Some((task, stop)) = self.task {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
