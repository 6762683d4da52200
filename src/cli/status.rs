//! `sketchd status` and `sketchd sync`: replication and cluster state, and a
//! push on demand.

use time::OffsetDateTime;

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// URL of the regional server to sync.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn when(unix: i64) -> String {
    if unix == 0 {
        return "never".into();
    }
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

pub async fn status(args: super::ServerArgs) -> anyhow::Result<()> {
    let client = args.connect.connect(&args.server).await?;
    let s = client.replication_status().await?;
    if args.json {
        let regions: Vec<_> = s
            .regions
            .iter()
            .map(|r| {
                serde_json::json!({
                    "region": r.region,
                    "revision": r.revision,
                    "merged_at_unix": r.merged_at_unix,
                    "records": r.records,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "region": s.region,
            "upstream": s.upstream,
            "revision": s.revision,
            "acked_revision": s.acked_revision,
            "acked_at_unix": s.acked_at_unix,
            "pending_records": s.pending_records,
            "last_error": s.last_error,
            "regions": regions,
            "cluster": s.cluster.as_ref().map(|c| serde_json::json!({
                "node": c.node,
                "log": c.log,
                "applied_position": c.applied_position,
                "staleness_ms": (c.staleness_ms >= 0).then_some(c.staleness_ms),
                "max_staleness_ms": c.max_staleness_ms,
                "failed": (!c.failed.is_empty()).then_some(&c.failed),
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    outln!("revision          {}", s.revision);
    if let Some(c) = &s.cluster {
        outln!("cluster node      {} ({})", c.node, c.log);
        outln!("applied position  {}", c.applied_position);
        if c.staleness_ms < 0 {
            outln!("staleness         catching up (reads refused)");
        } else {
            let refused = if c.staleness_ms > c.max_staleness_ms {
                " (reads refused)"
            } else {
                ""
            };
            outln!(
                "staleness         {} ms, bound {} ms{refused}",
                c.staleness_ms,
                c.max_staleness_ms
            );
        }
        if !c.failed.is_empty() {
            outln!("stopped applying  {} (restart this node)", c.failed);
        }
    }
    if s.upstream.is_empty() {
        outln!("upstream          none");
    } else {
        outln!("region            {}", s.region);
        outln!("upstream          {}", s.upstream);
        outln!(
            "acknowledged      revision {} at {}",
            s.acked_revision,
            when(s.acked_at_unix)
        );
        outln!("pending records   {}", s.pending_records);
        if !s.last_error.is_empty() {
            outln!("last error        {}", s.last_error);
        }
    }
    if s.regions.is_empty() {
        outln!("regions merged    none");
    } else {
        outln!(
            "{:<20} {:>12} {:>14}  merged at",
            "region",
            "revision",
            "records"
        );
        for r in &s.regions {
            outln!(
                "{:<20} {:>12} {:>14}  {}",
                r.region,
                r.revision,
                r.records,
                when(r.merged_at_unix)
            );
        }
    }
    Ok(())
}

pub async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let client = args.connect.connect(&args.server).await?;
    let r = client.sync().await?;
    outln!(
        "pushed {} records; the upstream acknowledged revision {}",
        r.records_pushed,
        r.acked_revision
    );
    Ok(())
}
