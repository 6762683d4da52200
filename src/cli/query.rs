//! `sketchd query …`: one question, printed as text or JSON.

use anyhow::{anyhow, bail};
use serde_json::json;

use sketchd::client::Client;
use sketchd::ingest::parse_country;
use sketchd::query::{Metric, Scope};
use sketchd::time::DayWindow;

use super::DEFAULT_SERVER;

#[derive(clap::Subcommand)]
pub enum QueryCommand {
    /// Distinct IPs or organisations of one scope over [from, to).
    Count(CountArgs),
    /// Exact number of observations of a scope over [from, to).
    Observations(ObservationsArgs),
}

#[derive(clap::Args)]
pub struct CountArgs {
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long)]
    namespace: String,
    /// ips or orgs.
    #[arg(long)]
    metric: String,
    /// global, country:CC or org:ID.
    #[arg(long, default_value = "global")]
    scope: String,
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    from: String,
    /// First day not included, YYYY-MM-DD.
    #[arg(long)]
    to: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ObservationsArgs {
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long)]
    namespace: String,
    /// global or country:CC.
    #[arg(long, default_value = "global")]
    scope: String,
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
    #[arg(long)]
    json: bool,
}

pub async fn run(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::Count(a) => count(a).await,
        QueryCommand::Observations(a) => observations(a).await,
    }
}

fn parse_metric(text: &str) -> anyhow::Result<Metric> {
    match text {
        "ips" => Ok(Metric::Ips),
        "orgs" => Ok(Metric::Orgs),
        other => bail!("--metric {other:?}: use ips or orgs"),
    }
}

pub fn parse_scope(text: &str) -> anyhow::Result<Scope> {
    if text == "global" {
        return Ok(Scope::Global);
    }
    match text.split_once(':') {
        Some(("country", cc)) => parse_country(cc)
            .map(Scope::Country)
            .map_err(|e| anyhow!("--scope {text:?}: {e}")),
        Some(("org", id)) if !id.is_empty() => Ok(Scope::Org(id.to_owned())),
        _ => bail!("--scope {text:?}: use global, country:CC or org:ID"),
    }
}

fn parse_window(from: &str, to: &str) -> anyhow::Result<DayWindow> {
    DayWindow::parse("--from", from, "--to", to).map_err(|e| anyhow!("{e}"))
}

async fn count(a: CountArgs) -> anyhow::Result<()> {
    let metric = parse_metric(&a.metric)?;
    let scope = parse_scope(&a.scope)?;
    let window = parse_window(&a.from, &a.to)?;
    let client = Client::connect(&a.server).await?;
    let reply = client.count(&a.namespace, metric, &scope, window).await?;
    let e = reply.estimate;
    if a.json {
        let doc = json!({
            "estimate": e.value,
            "lower": e.lower,
            "upper": e.upper,
            "confidence": e.confidence,
            "exact": e.exact,
            "from": reply.covered.from.to_string(),
            "to": reply.covered.to.to_string(),
        });
        println!("{doc}");
    } else if e.exact {
        println!(
            "{} distinct {} (exact), {} to {} (exclusive)",
            e.value, a.metric, reply.covered.from, reply.covered.to
        );
    } else {
        println!(
            "{:.0} distinct {} ({:.0}% interval {:.0} to {:.0}), {} to {} (exclusive)",
            e.value,
            a.metric,
            e.confidence * 100.0,
            e.lower,
            e.upper,
            reply.covered.from,
            reply.covered.to
        );
    }
    Ok(())
}

async fn observations(a: ObservationsArgs) -> anyhow::Result<()> {
    let scope = parse_scope(&a.scope)?;
    let window = parse_window(&a.from, &a.to)?;
    let client = Client::connect(&a.server).await?;
    let n = client.observations(&a.namespace, &scope, window).await?;
    if a.json {
        println!("{}", json!({ "observations": n }));
    } else {
        println!("{n} observations");
    }
    Ok(())
}
