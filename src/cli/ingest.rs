//! `sketchd ingest`: CSV files to a server, in batches.
//!
//! CSV with a header naming `time` and `ip`, and optionally `org` and
//! `country` (any order, case-insensitive). `time` is unix seconds or
//! RFC 3339. Each batch's sequence number is a hash of its content unless
//! `--first-sequence` is given, so re-running the same files never counts a
//! batch twice, and different files never collide.

use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use prost::Message;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use xxhash_rust::xxh3::xxh3_64;

use sketchd::client::{BatchBuilder, Client, Observation};

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Server URL.
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
    /// Rows per batch.
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// Number batches from here instead of hashing their content.
    #[arg(long)]
    first_sequence: Option<u64>,
    /// CSV files (`-` for standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    accepted: u64,
    batches: u64,
    duplicates: u64,
    attributed: u64,
    unattributed: u64,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    let client = args.connect.connect(&args.server).await?;
    let mut totals = Totals::default();
    let mut next_sequence = args.first_sequence;
    for path in &args.files {
        let reader: Box<dyn Read> = if path == Path::new("-") {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?)
        };
        let mut batch = BatchBuilder::new();
        for obs in read_csv(path, reader)? {
            batch.push(&obs?);
            if batch.len() >= args.batch_rows {
                send(&client, &args, &mut batch, &mut next_sequence, &mut totals).await?;
            }
        }
        if !batch.is_empty() {
            send(&client, &args, &mut batch, &mut next_sequence, &mut totals).await?;
        }
    }
    println!(
        "rows sent {}, acknowledged {} in {} batches ({} duplicate batches), attributed {}, unattributed {}",
        totals.sent, totals.accepted, totals.batches, totals.duplicates, totals.attributed, totals.unattributed
    );
    Ok(())
}

async fn send(
    client: &Client,
    args: &IngestArgs,
    batch: &mut BatchBuilder,
    next_sequence: &mut Option<u64>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let sequence = match next_sequence {
        Some(n) => {
            *n += 1;
            *n - 1
        }
        None => xxh3_64(
            &batch
                .build(&args.namespace, &args.collector, 0)
                .encode_to_vec(),
        ),
    };
    let request = batch.build(&args.namespace, &args.collector, sequence);
    let rows = batch.len() as u64;
    let reply = client.ingest(request).await.with_context(|| {
        format!(
            "batch {} (sequence {sequence}) was refused",
            totals.batches + 1
        )
    })?;
    totals.sent += rows;
    totals.accepted += if reply.duplicate {
        0
    } else {
        reply.rows_accepted
    };
    totals.batches += 1;
    totals.duplicates += u64::from(reply.duplicate);
    totals.attributed += reply.rows_attributed;
    totals.unattributed += reply.rows_unattributed;
    *batch = BatchBuilder::new();
    Ok(())
}

/// Reads observations from CSV with a header; errors name the file and line.
fn read_csv(
    path: &Path,
    reader: Box<dyn Read>,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Observation>>> {
    let name = path.display().to_string();
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = csv
        .headers()
        .with_context(|| format!("{name}: cannot read the header"))?
        .clone();
    let find = |col: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(col));
    let time_col =
        find("time").ok_or_else(|| anyhow!("{name}: the header has no `time` column"))?;
    let ip_col = find("ip").ok_or_else(|| anyhow!("{name}: the header has no `ip` column"))?;
    let org_col = find("org");
    let country_col = find("country");
    Ok(csv.into_records().map(move |record| {
        let record = record.with_context(|| format!("{name}: bad CSV"))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: usize| record.get(i).unwrap_or("");
        let ip: IpAddr = field(ip_col)
            .parse()
            .map_err(|e| anyhow!("{name}:{line}: column ip: {:?}: {e}", field(ip_col)))?;
        let unix_seconds =
            parse_time(field(time_col)).map_err(|e| anyhow!("{name}:{line}: column time: {e}"))?;
        let optional =
            |col: Option<usize>| col.map(field).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(Observation {
            ip,
            unix_seconds,
            org: optional(org_col),
            country: optional(country_col),
        })
    }))
}

/// Unix seconds, or an RFC 3339 timestamp.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| anyhow!("{text:?} is neither unix seconds nor RFC 3339 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1775001600").unwrap(), 1_775_001_600);
        assert_eq!(parse_time("2026-04-01T00:00:00Z").unwrap(), 1_775_001_600);
        assert_eq!(
            parse_time("2026-04-01T02:00:00+02:00").unwrap(),
            1_775_001_600
        );
        assert!(parse_time("yesterday").is_err());
    }
}
