//! `sketchd report`: the study in one command. The report itself (what is
//! asked, how it is printed and drawn) is `sketchd::report`; this module
//! turns flags into its spec and writes the outputs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use sketchd::client::Client;
use sketchd::ingest::parse_country;
use sketchd::report::{self, chart, dates, ReportSpec, Sort};
use sketchd::time::DayWindow;

use super::query::TwoWindows;
use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Server URL (http://HOST:PORT, https://… with --ca-cert), or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Namespace to report on.
    #[arg(long)]
    namespace: String,
    #[command(flatten)]
    windows: TwoWindows,
    /// A day between A and B (e.g. a ban): org retention and the IP change
    /// from [a-from, cutoff) to [cutoff, b-to), globally and per country.
    #[arg(long, value_name = "DAY", allow_hyphen_values = true)]
    cutoff: Option<String>,
    /// Countries listed, e.g. DE,GB,IT,US [default: the --top largest by IPs in A].
    #[arg(long, value_delimiter = ',', value_name = "CC,CC")]
    countries: Vec<String>,
    /// How many countries are listed without --countries.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Order of the country lines: a (IPs in A), b (IPs in B), change (largest decline first) or name.
    #[arg(long, default_value = "a")]
    sort: String,
    /// Name the organisations of each sector line (seen before, and whether still seen after).
    #[arg(long)]
    names: bool,
    /// Print the whole report as one JSON document.
    #[arg(long)]
    json: bool,
    /// Also draw IPs and orgs over [a-from, b-to) into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// Step of the chart: day, week, month or Nd.
    #[arg(long, default_value = "week")]
    step: String,
    /// Index every line of the chart to 100 at its first step.
    #[arg(long)]
    index: bool,
}

pub async fn run(a: ReportArgs) -> anyhow::Result<()> {
    let spec = spec(&a)?;
    if let Some(path) = &a.chart {
        check_chart_path(path)?;
    }
    let client = a.connect.connect(&a.server).await?;
    let report = report::build(&client, &spec).await?;
    if a.json {
        outln!("{}", report::json::render(&report));
    } else {
        out!("{}", report::text::render(&report));
    }
    if let Some(path) = &a.chart {
        let span = DayWindow::new(spec.a.from, spec.b.to.max(spec.a.to))?;
        let chart = chart::ChartSpec {
            namespace: spec.namespace.clone(),
            span,
            step: a.step.clone(),
            countries: spec.countries.clone(),
            top: 4,
            index: a.index,
            cutoff: spec.cutoff,
            a: Some(spec.a),
            b: Some(spec.b),
        };
        write_chart(&client, &chart, path).await?;
    }
    Ok(())
}

/// The report's spec from the flags; bad values are errors naming the flag.
fn spec(a: &ReportArgs) -> anyhow::Result<ReportSpec> {
    let (wa, wb) = a.windows.parse()?;
    let cutoff = a
        .cutoff
        .as_deref()
        .map(|c| dates::parse_day("--cutoff", c, dates::today()))
        .transpose()?;
    let countries = a
        .countries
        .iter()
        .map(|c| parse_country(c.trim()).map_err(|e| anyhow::anyhow!("--countries: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = ReportSpec {
        namespace: a.namespace.clone(),
        a: wa,
        b: wb,
        cutoff,
        countries,
        top: a.top,
        sort: Sort::parse("--sort", &a.sort)?,
        names: a.names,
    };
    if let Err(e) = spec.validate() {
        match e {
            sketchd::error::Error::InvalidArgument { field, reason } => {
                bail!("invalid --{}: {reason}", field.replace('_', "-"))
            }
            other => return Err(other.into()),
        }
    }
    Ok(spec)
}

/// Checks, before any work, that a chart can be written to `path`: its
/// directory exists, it is not a directory itself, and it names an SVG.
pub fn check_chart_path(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--chart {}: the directory {} does not exist; create it or give another path",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!(
            "--chart {}: that is a directory; give a file name such as {}",
            path.display(),
            path.join("chart.svg").display()
        );
    }
    if path
        .extension()
        .is_some_and(|e| !e.eq_ignore_ascii_case("svg"))
    {
        bail!(
            "--chart {}: charts are written as SVG; give a name ending in .svg",
            path.display()
        );
    }
    Ok(())
}

/// Asks the chart's series and writes it as SVG.
pub async fn write_chart(
    client: &Client,
    spec: &chart::ChartSpec,
    path: &Path,
) -> anyhow::Result<()> {
    let data = chart::fetch(client, spec).await?;
    std::fs::write(path, chart::svg(&data))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("chart written to {}", path.display());
    Ok(())
}
