//! `sketchd demo`: the whole system in one command, no other service.
//!
//! Starts a server in-process on an ephemeral loopback port with a
//! temporary data directory and the attribution tables (the full tables in
//! ../shared/data/ipmeta when present, else the checked-in samples),
//! generates a world of real organisations and addresses that declines from
//! April to November 2025 (a cut-off on 2025-09-29 hits US government
//! organisations hardest), streams it in through concurrent gRPC collectors
//! that send only IP and time (the server attributes org and country), and
//! prints the study-style report.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use sketchd::attribution::{Attributor, TableFiles};
use sketchd::client::Client;
use sketchd::config::ServerConfig;
use sketchd::engine::Engine;
use sketchd::pb;
use sketchd::report::chart::ChartSpec;
use sketchd::report::{ReportSpec, Sort};
use sketchd::time::{Day, DayWindow};

use super::report;

/// 2025-04-01T00:00:00Z.
const START: i64 = 1_743_465_600;
const DAYS: u64 = 244;
/// Day index of the cut-off (2025-09-29).
const CUTOFF_DAY: u64 = 181;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Size of the world (1.0: about 2,500 organisations and 2.5 M observations).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Directory of the attribution tables [default: ../shared/data/ipmeta if
    /// present, else the checked-in samples].
    #[arg(long)]
    tables: Option<PathBuf>,
    /// Concurrent collectors.
    #[arg(long, default_value_t = 4)]
    collectors: usize,
    /// Also draw IPs and orgs per week into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// After the report, serve the report page here (e.g. 127.0.0.1:8080) until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

fn tables_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        repo.join("../shared/data/ipmeta"),
        repo.join("tests/data/ipmeta"),
    ] {
        if dir.join("asn-ipv4.csv.gz").is_file() || dir.join("asn-ipv4-sample.csv").is_file() {
            return Ok(dir);
        }
    }
    bail!("no attribution tables found; pass --tables DIR")
}

/// IPv4 ranges per ASN, from the ASN table.
fn asn_ranges(files: &TableFiles) -> anyhow::Result<HashMap<String, Vec<(u32, u32)>>> {
    let path = files
        .asn_v4
        .as_ref()
        .context("the tables have no IPv4 ASN table")?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut ranges: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for record in csv.records() {
        let record = record?;
        let (Some(start), Some(end), Some(asn)) = (record.get(0), record.get(1), record.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            start.parse::<std::net::Ipv4Addr>(),
            end.parse::<std::net::Ipv4Addr>(),
        ) else {
            continue;
        };
        ranges
            .entry(format!("AS{asn}"))
            .or_default()
            .push((start.into(), end.into()));
    }
    Ok(ranges)
}

/// One organisation of the world.
struct Org {
    ips: Vec<u32>,
    /// Last active day (exclusive).
    stop: u64,
}

/// Observations as (unix seconds, IPv4), unordered.
fn generate(
    files: &TableFiles,
    tables: &Attributor,
    scale: f64,
    government: &mut Vec<String>,
) -> anyhow::Result<Vec<(i64, u32)>> {
    let ranges = asn_ranges(files)?;
    let mut asns: Vec<&String> = ranges.keys().collect();
    asns.sort();
    let mut rng = Rng(0x5eed_2025);
    let wanted = ((2_500.0 * scale) as usize).clamp(10, asns.len());
    // A fair sample of ASNs, deterministic.
    for i in (1..asns.len()).rev() {
        asns.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut orgs = Vec::with_capacity(wanted);
    for asn in asns.into_iter().take(wanted) {
        let r = &ranges[asn];
        let country = tables
            .org_by_id(asn)
            .and_then(|idx| tables.org(idx).country)
            .unwrap_or(*b"ZZ");
        let is_gov = rng.chance(0.04);
        if is_gov {
            government.push(asn.clone());
        }
        // Churn: orgs stop on a random day; US government orgs mostly stop
        // just before the cut-off.
        let stop = if is_gov && &country == b"US" && rng.chance(0.6) {
            CUTOFF_DAY - 21 + rng.below(21)
        } else if rng.chance(0.55) {
            30 + rng.below(DAYS - 30)
        } else {
            DAYS
        };
        // Heavy-tailed sizes: most orgs are small, a few are large.
        let size = (1.0 / (1.0 - (rng.below(10_000) as f64 / 10_000.0)).powf(1.4)) as u64;
        let n = (4 + size * 3).min(20_000);
        let ips = (0..n)
            .map(|_| {
                let (start, end) = r[rng.below(r.len() as u64) as usize];
                start + rng.below(u64::from(end - start) + 1) as u32
            })
            .collect();
        orgs.push(Org { ips, stop });
    }
    let mut rows = Vec::new();
    for org in &orgs {
        for &ip in &org.ips {
            // Inside surviving orgs, IPs fade out too.
            let stop = if rng.chance(0.5) {
                1 + rng.below(org.stop)
            } else {
                org.stop
            };
            for _ in 0..1 + rng.below(4) {
                let day = rng.below(stop) as i64;
                rows.push((START + day * 86_400 + rng.below(86_400) as i64, ip));
            }
        }
    }
    Ok(rows)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(path) = &args.chart {
        report::check_chart_path(path)?;
    }
    let dir = tables_dir(args.tables)?;
    let scratch = std::env::temp_dir().join(format!("sketchd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = demo(
        &dir,
        &scratch,
        args.scale,
        args.collectors.max(1),
        args.chart,
        args.http_listen,
        started,
    )
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn demo(
    dir: &Path,
    scratch: &Path,
    scale: f64,
    collectors: usize,
    chart: Option<PathBuf>,
    http_listen: Option<std::net::SocketAddr>,
    started: Instant,
) -> anyhow::Result<()> {
    let page = match http_listen {
        Some(addr) if addr.ip().is_loopback() => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--http-listen {addr}: cannot listen there"))?,
        ),
        Some(addr) => bail!("--http-listen {addr}: the demo serves its page on loopback only"),
        None => None,
    };
    eprintln!("tables: {}", dir.display());
    let mut files = TableFiles::from_dir(dir);
    let plain = Attributor::load(&files)?;
    let mut government = Vec::new();
    let rows = generate(&files, &plain, scale, &mut government)?;
    // The operator's orgs file marks the government organisations.
    let orgs_file = scratch.join("orgs.csv");
    let mut text = String::from("org,name,country,sectors\n");
    for asn in &government {
        text.push_str(&format!("{asn},,,government\n"));
    }
    std::fs::write(&orgs_file, text)?;
    files.orgs = Some(orgs_file);

    let config = ServerConfig {
        data_dir: scratch.join("data"),
        tables: files.clone(),
        ..ServerConfig::default()
    };
    let tables = Attributor::load(&files)?;
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::open(&config, tables)).await??
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine = Arc::new(engine);
    let weak = Arc::downgrade(&engine);
    let server = tokio::spawn(async move {
        sketchd::server::run(listener, engine, &config, async {
            let _ = stop_rx.await;
        })
        .await
    });
    eprintln!(
        "server on {url}; {} observations of {} addresses to send",
        rows.len(),
        rows.iter()
            .map(|r| r.1)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    let client = Client::connect(&url).await?;
    client
        .admin_client()
        .create_namespace(pb::CreateNamespaceRequest {
            name: "demo".into(),
            policy: Some(pb::NamespacePolicy {
                max_age_days: 3650,
                ..Default::default()
            }),
        })
        .await?;

    send(&client, rows, collectors).await?;
    let spec = ReportSpec {
        namespace: "demo".into(),
        a: window(0, 30),
        b: window(214, 244),
        cutoff: Some(window(CUTOFF_DAY, CUTOFF_DAY).from),
        countries: Vec::new(),
        top: 10,
        sort: Sort::A,
        names: false,
    };
    let built = sketchd::report::build(&client, &spec).await?;
    outln!("\n{}", sketchd::report::text::render(&built));
    if let Some(path) = chart {
        let chart = ChartSpec {
            namespace: "demo".into(),
            span: window(0, DAYS),
            step: "week".into(),
            countries: Vec::new(),
            top: 4,
            index: false,
            cutoff: spec.cutoff,
            a: Some(spec.a),
            b: Some(spec.b),
        };
        report::write_chart(&client, &chart, &path).await?;
    }
    if let Some(page) = page {
        let at = page.local_addr()?;
        tokio::spawn(sketchd::web::serve(page, weak, Default::default()));
        outln!(
            "\nthe report page: http://{at}/?namespace=demo&a_from={}&a_to={}&b_from={}&b_to={}&cutoff={} (Ctrl-C stops)",
            spec.a.from,
            spec.a.to,
            spec.b.from,
            spec.b.to,
            window(CUTOFF_DAY, CUTOFF_DAY).from
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(client);
    let _ = stop_tx.send(());
    server.await??;
    eprintln!("demo done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn window(from: u64, to: u64) -> DayWindow {
    let day = |d: u64| Day::from_unix_seconds(START + d as i64 * 86_400).expect("after 1970");
    DayWindow {
        from: day(from),
        to: day(to),
    }
}

/// Streams the rows through `collectors` concurrent collectors in batches
/// of 20,000, with a progress line on a terminal.
async fn send(client: &Client, rows: Vec<(i64, u32)>, collectors: usize) -> anyhow::Result<()> {
    const BATCH: usize = 20_000;
    let total = rows.len() as u64;
    let done = Arc::new(AtomicU64::new(0));
    let rows = Arc::new(rows);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..collectors {
        let client = client.clone();
        let rows = rows.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut ingest = client.ingest_client();
            for (seq, chunk) in rows.chunks(BATCH).enumerate().skip(c).step_by(collectors) {
                let request = pb::IngestRequest {
                    namespace: "demo".into(),
                    collector_id: format!("demo-{c}"),
                    // Sequences start at 1 (0 is refused).
                    sequence: seq as u64 + 1,
                    ipv4: chunk.iter().map(|r| r.1).collect(),
                    unix_seconds: chunk.iter().map(|r| r.0).collect(),
                    ..Default::default()
                };
                ingest.ingest(request).await?;
                done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let n = done.load(Ordering::Relaxed);
                if tty {
                    let width = 40;
                    let filled = (n * width / total.max(1)) as usize;
                    eprint!(
                        "\r[{}{}] {n}/{total} observations",
                        "#".repeat(filled),
                        " ".repeat(width as usize - filled)
                    );
                    let _ = std::io::stderr().flush();
                }
                if n >= total {
                    break;
                }
            }
        })
    };
    for t in tasks {
        t.await??;
    }
    progress.await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "\nsent {total} observations in {secs:.1} s ({:.0} observations/s, acknowledged durably)",
        total as f64 / secs
    );
    Ok(())
}
