//! Command-line interface: `serve`, `ingest`, `query`.

#[macro_use]
pub mod output;

mod backup;
mod demo;
mod ingest;
mod loadgen;
mod namespaces;
mod query;
mod report;
mod startup;
mod status;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sketchd::attribution::{Attributor, TableFiles};
use sketchd::client::{Client, ClientOptions, ClientTls};
use sketchd::config::{table_is_ipv6, RawConfig};
use sketchd::engine::Engine;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How a client subcommand authenticates to the server (flattened into
/// each of them beside `--server`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConnectArgs {
    /// File holding the bearer token [else the SKETCHD_TOKEN environment variable].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; enables TLS.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one; with --client-key.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Name to check the server's certificate against [default: the URL's host].
    #[arg(long)]
    tls_domain: Option<String>,
}

impl ConnectArgs {
    /// Connects to `server` with the token and TLS options given.
    pub async fn connect(&self, server: &str) -> anyhow::Result<Client> {
        Ok(Client::connect_with(server, self.options()?).await?)
    }

    fn options(&self) -> anyhow::Result<ClientOptions> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let token = match &self.token_file {
            Some(path) => Some(
                String::from_utf8(read(path)?)
                    .with_context(|| format!("{}: the token is not UTF-8", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("SKETCHD_TOKEN")
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        let tls =
            if self.ca_cert.is_some() || self.client_cert.is_some() || self.tls_domain.is_some() {
                Some(ClientTls {
                    ca_cert_pem: self.ca_cert.as_ref().map(read).transpose()?,
                    client_cert_pem: self.client_cert.as_ref().map(read).transpose()?,
                    client_key_pem: self.client_key.as_ref().map(read).transpose()?,
                    domain: self.tls_domain.clone(),
                })
            } else {
                None
            };
        Ok(ClientOptions { token, tls })
    }
}

/// `--server`, how to authenticate, and `--json`: the flags of a command
/// that asks a server about no one namespace.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Server URL (http://HOST:PORT, https://… with --ca-cert), or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

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
    /// Send observations (CSV, NDJSON, PEEROBS1; files or stdin) to a server, with retries.
    Ingest(ingest::IngestArgs),
    /// Ask a server.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// The study in one command: windows A (before) and B (after), a cut-off, countries, sectors; text, JSON, chart.
    Report(report::ReportArgs),
    /// Start a server in-process, stream a generated world in, print the report.
    Demo(demo::DemoArgs),
    /// Replay a peers world file against a server and measure ingest and queries.
    Loadgen(loadgen::LoadgenArgs),
    /// Replication and cluster state: pushes, regions merged, the cluster log position and staleness.
    Status(ServerArgs),
    /// Make a regional node checkpoint and push everything to its upstream now.
    Sync(status::SyncArgs),
    /// Write an online backup of a server into a new data directory.
    Backup(backup::BackupArgs),
    /// List, show, create and delete namespaces.
    #[command(subcommand)]
    Namespaces(namespaces::NamespacesCommand),
    /// Print a completion script for a shell, e.g. `sketchd completions bash > /etc/bash_completion.d/sketchd`.
    Completions(CompletionsArgs),
}

#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
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
    /// Allow a non-loopback --listen address although no authentication is
    /// configured (anyone who can reach the server may then use it).
    #[arg(long)]
    allow_insecure_remote: bool,
    /// Serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the report page and its JSON over HTTP here (e.g. 127.0.0.1:8080);
    /// readers authenticate with their gRPC token.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// Directory with the attribution tables (asn-ipv4.csv.gz, asn-country-ipv4.csv.gz, ...,
    /// or their *-sample.csv forms, plus optional orgs.csv and networks.csv).
    #[arg(long)]
    tables: Option<PathBuf>,
    /// IP range -> ASN/org table (start,end,asn,name); IPv4 or IPv6, repeatable.
    #[arg(long = "asn-table")]
    asn_tables: Vec<PathBuf>,
    /// IP range -> country table (start,end,country); IPv4 or IPv6, repeatable.
    #[arg(long = "country-table")]
    country_tables: Vec<PathBuf>,
    /// Operator org file: org,name,country,sectors (sectors separated by ';').
    #[arg(long)]
    orgs: Option<PathBuf>,
    /// Operator networks: cidr,org[,country]; they win over the ASN table.
    #[arg(long)]
    networks: Option<PathBuf>,
    /// This server's region name, for replication (with --upstream).
    #[arg(long, requires = "upstream")]
    region: Option<String>,
    /// Push this server's sketches, presence and counters to this upstream
    /// server (e.g. http://global.example:50051).
    #[arg(long, requires = "region")]
    upstream: Option<String>,
    /// File holding the bearer token (role peer) sent to the upstream.
    #[arg(long)]
    upstream_token_file: Option<PathBuf>,
    /// Run as a node of a cluster whose log is NATS JetStream at these
    /// servers: nats://HOST:PORT[,nats://HOST:PORT...] (with --node).
    #[arg(long, requires = "node", value_name = "URLS")]
    cluster: Option<String>,
    /// This node's name in the cluster (unique; with --cluster).
    #[arg(long, requires = "cluster")]
    node: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(a) => serve(a).await,
        Command::Ingest(a) => ingest::run(a).await,
        Command::Query(q) => query::run(q).await,
        Command::Report(a) => report::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Loadgen(a) => loadgen::run(a).await,
        Command::Status(a) => status::status(a).await,
        Command::Sync(a) => status::sync(a).await,
        Command::Backup(a) => backup::run(a).await,
        Command::Namespaces(c) => namespaces::run(c).await,
        Command::Completions(a) => completions(a),
    }
}

/// Writes the completion script of `a.shell` to stdout.
fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Args::command(), "sketchd", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path).map_err(|e| startup::config_file(path, e))?,
        None => RawConfig::default(),
    };
    if args.listen.is_some() {
        raw.listen = args.listen.clone();
    }
    if args.data.is_some() {
        raw.data_dir = args.data.clone();
    }
    if args.allow_insecure_remote {
        raw.allow_insecure_remote = Some(true);
    }
    if let (Some(nats), Some(node)) = (&args.cluster, &args.node) {
        let cluster = raw.cluster.get_or_insert_with(Default::default);
        cluster.nats = Some(nats.split(',').map(|u| u.trim().to_owned()).collect());
        cluster.node = Some(node.clone());
    }
    let mut config = raw.validate()?;
    table_flags(&args, &mut config.tables)?;
    if let (Some(region), Some(upstream)) = (&args.region, &args.upstream) {
        let mut replication =
            sketchd::config::ReplicationConfig::new(region.clone(), upstream.clone())?;
        if let Some(from_file) = config.replication.take() {
            replication.push_interval = from_file.push_interval;
            replication.anti_entropy_interval = from_file.anti_entropy_interval;
            replication.client = from_file.client;
        }
        config.replication = Some(replication);
    }
    if let Some(path) = &args.upstream_token_file {
        let Some(replication) = config.replication.as_mut() else {
            anyhow::bail!("--upstream-token-file needs --region and --upstream (or [replication])");
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        replication.client.token = Some(token.trim_end().to_owned());
    }
    let tables = Attributor::load(&config.tables).context("loading attribution tables")?;
    let stats = tables.stats();
    tracing::info!(
        version = tables.version(),
        orgs = stats.orgs,
        ipv4_intervals = stats.lookup_intervals_v4,
        ipv6_intervals = stats.lookup_intervals_v6,
        "attribution tables loaded"
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| startup::listen(config.listen, e))?;
    let data_dir = config.data_dir.clone();
    let log = match &config.cluster {
        Some(cluster) => {
            let log: Arc<dyn sketchd::cluster::SharedLog> =
                Arc::new(sketchd::cluster::nats::JetStreamLog::connect(cluster).await?);
            tracing::info!(node = %cluster.node, log = %log.describe(), "cluster node");
            sketchd::engine::cluster::prepare_data_dir(&data_dir, log.as_ref()).await?;
            Some(log)
        }
        None => None,
    };
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::open(&config, tables))
            .await?
            .map_err(|e| startup::data_dir(&data_dir, e))?
    };
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, data = %data_dir.display(), "sketchd ready");
    // One plain line on stdout, for scripts and tests that start the server
    // (a closed stdout does not stop the server).
    let _ = output::write(format_args!("sketchd listening on {addr}\n"));
    let engine = Arc::new(engine);
    if let (Some(log), Some(cluster)) = (log, &config.cluster) {
        sketchd::engine::cluster::start(&engine, log, cluster.clone());
    }
    reload_on_sighup(Arc::downgrade(&engine));
    if let Some(addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr = %metrics.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(sketchd::metrics::serve(metrics, Arc::downgrade(&engine)));
    }
    if let Some(addr) = args.http_listen {
        if !addr.ip().is_loopback() && !config.allow_insecure_remote {
            anyhow::bail!(
                "--http-listen {addr}: the page speaks plain HTTP, so tokens would cross the \
                 network in clear; listen on 127.0.0.1 (behind a TLS proxy) or pass \
                 --allow-insecure-remote"
            );
        }
        let page = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the page"))?;
        let at = page.local_addr()?;
        tracing::info!(addr = %at, "serving the report page at /");
        let _ = output::write(format_args!("sketchd page at http://{at}/\n"));
        tokio::spawn(sketchd::web::serve(
            page,
            Arc::downgrade(&engine),
            config.tokens.clone(),
        ));
    }
    sketchd::server::run(
        listener,
        engine,
        &config,
        sketchd::server::shutdown_signal(),
    )
    .await?;
    tracing::info!("sketchd stopped cleanly");
    Ok(())
}

/// Applies the table flags over the configuration file's `[tables]`.
fn table_flags(args: &ServeArgs, files: &mut TableFiles) -> anyhow::Result<()> {
    if let Some(dir) = &args.tables {
        let found = TableFiles::from_dir(dir);
        if found == TableFiles::default() {
            anyhow::bail!("--tables {}: no table files found there", dir.display());
        }
        *files = found;
    }
    for path in &args.asn_tables {
        if table_is_ipv6(path)? {
            files.asn_v6 = Some(path.clone());
        } else {
            files.asn_v4 = Some(path.clone());
        }
    }
    for path in &args.country_tables {
        if table_is_ipv6(path)? {
            files.country_v6 = Some(path.clone());
        } else {
            files.country_v4 = Some(path.clone());
        }
    }
    if args.orgs.is_some() {
        files.orgs = args.orgs.clone();
    }
    if args.networks.is_some() {
        files.networks = args.networks.clone();
    }
    Ok(())
}

/// Reloads the attribution tables on SIGHUP (holding only a weak
/// reference, so that shutdown is not delayed).
fn reload_on_sighup(engine: std::sync::Weak<Engine>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload tables with the admin RPC");
            return;
        };
        while hup.recv().await.is_some() {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            match tokio::task::spawn_blocking(move || engine.reload_tables()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reloading tables failed; keeping the old ones")
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    });
    #[cfg(not(unix))]
    drop(engine);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument of every subcommand says what it is.
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Args::command(), "sketchd", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    #[test]
    fn the_scope_help_names_every_form() {
        let cmd = Args::command();
        let count = cmd
            .find_subcommand("query")
            .and_then(|q| q.find_subcommand("count"))
            .unwrap();
        let scope = count
            .get_arguments()
            .find(|a| a.get_id() == "scope")
            .unwrap();
        let help = scope.get_help().unwrap().to_string();
        for form in [
            "global",
            "country:CC",
            "org:ID",
            "org:NAME",
            "sector:S",
            "country:CC,sector:S",
        ] {
            assert!(help.contains(form), "{help}");
        }
    }
}
