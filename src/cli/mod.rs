//! Command-line interface: `serve`, `ingest`, `query`.

mod ingest;
mod query;
mod report;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sketchd::attribution::Attributor;
use sketchd::config::RawConfig;
use sketchd::engine::Engine;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Parser)]
#[command(
    name = "sketchd",
    version,
    about = "Distinct IPs and organisations over any window, with error bars"
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded sled under --data).
    Serve(ServeArgs),
    /// Send observations from CSV files to a server.
    Ingest(ingest::IngestArgs),
    /// Ask a server.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// The study-style report of two windows (A before, B after).
    Report(report::ReportArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<String>,
    /// Data directory [default: ./data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(a) => serve(a).await,
        Command::Ingest(a) => ingest::run(a).await,
        Command::Query(q) => query::run(q).await,
        Command::Report(a) => report::run(a).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    if args.listen.is_some() {
        raw.listen = args.listen;
    }
    if args.data.is_some() {
        raw.data_dir = args.data;
    }
    let config = raw.validate()?;
    let tables = Attributor::load(&config.tables).context("loading attribution tables")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let data_dir = config.data_dir.clone();
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::open(&config, tables)).await??
    };
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, data = %data_dir.display(), "sketchd ready");
    // One plain line on stdout, for scripts and tests that start the server.
    println!("sketchd listening on {addr}");
    sketchd::server::run(
        listener,
        Arc::new(engine),
        &config,
        sketchd::server::shutdown_signal(),
    )
    .await?;
    tracing::info!("sketchd stopped cleanly");
    Ok(())
}
