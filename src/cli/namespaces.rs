//! `sketchd namespaces list|show|create|delete`: the namespace catalog of a
//! server.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{json, Value};

use sketchd::config::MAX_AGE_ANY;
use sketchd::pb;

use super::ServerArgs;

#[derive(clap::Subcommand)]
pub enum NamespacesCommand {
    /// Every namespace the caller may read, with its policy and extent.
    List(ListArgs),
    /// One namespace: policy, seed fingerprint, days held, table versions.
    Show(NameArgs),
    /// Create a namespace with a policy (0 or absent: the server's default).
    Create(CreateArgs),
    /// Delete a namespace and everything stored in it (admin role).
    Delete(DeleteArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct NameArgs {
    /// The namespace.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The namespace: 1 to 128 of A-Z a-z 0-9 . _ -
    name: String,
    /// HyperLogLog precision, 4..=18 [default: the server's, 14].
    #[arg(long, default_value_t = 0)]
    precision: u32,
    /// Oldest accepted observation, in days before now [default: the server's; any day].
    #[arg(long, default_value_t = 0)]
    max_age_days: u32,
    /// How far in the future an observation may lie, in seconds [default: the server's, 3600].
    #[arg(long, default_value_t = 0)]
    max_future_skew_seconds: u32,
    /// Days kept, today included; older ones are removed and refused (0: every day)
    /// [default: the server's, every day].
    #[arg(long)]
    retention_days: Option<u32>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// The namespace.
    name: String,
    /// Do not ask for confirmation (it is asked only on a terminal).
    #[arg(long, short)]
    yes: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(command: NamespacesCommand) -> anyhow::Result<()> {
    match command {
        NamespacesCommand::List(a) => {
            let client = a.server.connect.connect(&a.server.server).await?;
            let all = client.list_namespaces().await?;
            if a.server.json {
                let list: Vec<Value> = all.iter().map(info_json).collect();
                outln!("{}", json!({ "namespaces": list }));
            } else if all.is_empty() {
                outln!("no namespaces (batches create one on first use, or `sketchd namespaces create NAME`)");
            } else {
                outln!(
                    "{:<24} {:>9} {:>12} {:>12} {:<10} {:<10}",
                    "NAME",
                    "PRECISION",
                    "MAX AGE",
                    "RETENTION",
                    "FIRST DAY",
                    "END DAY"
                );
                for ns in &all {
                    let p = ns.policy.unwrap_or_default();
                    outln!(
                        "{:<24} {:>9} {:>12} {:>12} {:<10} {:<10}",
                        ns.name,
                        p.precision,
                        max_age_text(p.max_age_days),
                        retention_text(p.retention_days),
                        or_dash(&ns.first_day),
                        or_dash(&ns.end_day)
                    );
                }
            }
        }
        NamespacesCommand::Show(a) => {
            let client = a.server.connect.connect(&a.server.server).await?;
            let ns = client.get_namespace(&a.name).await?;
            print_one(&ns, a.server.json)?;
        }
        NamespacesCommand::Create(a) => {
            let client = a.server.connect.connect(&a.server.server).await?;
            let ns = client
                .create_namespace(
                    &a.name,
                    pb::NamespacePolicy {
                        precision: a.precision,
                        max_age_days: a.max_age_days,
                        max_future_skew_seconds: a.max_future_skew_seconds,
                        retention_days: a.retention_days,
                    },
                )
                .await?;
            print_one(&ns, a.server.json)?;
        }
        NamespacesCommand::Delete(a) => {
            if !a.yes && std::io::stdin().is_terminal() && !confirm(&a.name, &a.server.server)? {
                anyhow::bail!("not deleted: the answer was not {:?}", a.name);
            }
            let client = a.server.connect.connect(&a.server.server).await?;
            let done = client.delete_namespace(&a.name).await?;
            if a.server.json {
                outln!(
                    "{}",
                    json!({ "deleted": done.name, "records_removed": done.records_removed })
                );
            } else {
                outln!(
                    "deleted namespace {:?}: {} records removed; the name is free",
                    done.name,
                    done.records_removed
                );
            }
        }
    }
    Ok(())
}

/// Asks on the terminal; true when the name is typed back.
fn confirm(name: &str, server: &str) -> anyhow::Result<bool> {
    eprint!(
        "Delete namespace {name:?} on {server} and everything stored in it? Type its name to \
         confirm: "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == name)
}

fn print_one(ns: &pb::NamespaceInfo, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        outln!("{}", info_json(ns));
        return Ok(());
    }
    let p = ns.policy.unwrap_or_default();
    outln!("namespace         {}", ns.name);
    outln!("precision         {}", p.precision);
    outln!("max age           {}", max_age_text(p.max_age_days));
    outln!("max future skew   {} s", p.max_future_skew_seconds);
    outln!("retention         {}", retention_text(p.retention_days));
    outln!("seed fingerprint  {}", ns.seed_fingerprint);
    if ns.first_day.is_empty() {
        outln!("days              none yet");
    } else {
        outln!(
            "days              {} to {} (exclusive)",
            ns.first_day,
            ns.end_day
        );
    }
    if !ns.table_versions.is_empty() {
        outln!("attributed with   {}", ns.table_versions.join(", "));
    }
    Ok(())
}

fn info_json(ns: &pb::NamespaceInfo) -> Value {
    let p = ns.policy.unwrap_or_default();
    json!({
        "name": ns.name,
        "precision": p.precision,
        "max_age_days": if p.max_age_days == MAX_AGE_ANY { Value::Null } else { json!(p.max_age_days) },
        "max_future_skew_seconds": p.max_future_skew_seconds,
        "retention_days": p.retention_days.filter(|&d| d != 0),
        "seed_fingerprint": ns.seed_fingerprint,
        "first_day": (!ns.first_day.is_empty()).then_some(&ns.first_day),
        "end_day": (!ns.end_day.is_empty()).then_some(&ns.end_day),
        "table_versions": ns.table_versions,
    })
}

fn max_age_text(days: u32) -> String {
    if days == MAX_AGE_ANY {
        "any".into()
    } else {
        format!("{days} days")
    }
}

fn retention_text(days: Option<u32>) -> String {
    match days {
        None | Some(0) => "every day".into(),
        Some(n) => format!("{n} days"),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
