//! `sketchd report`: the study-style report of two windows.
//!
//! Global distinct IPs and orgs in A and B with the change, the largest
//! countries by distinct IPs in A with their changes, organisation
//! retention from A to B (exact), and optionally a monthly chart (SVG).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use sketchd::client::Client;
use sketchd::query::{change_pct, GroupBy, Metric, Scope};
use sketchd::sketch::Estimate;
use sketchd::time::DayWindow;

use super::query::{show, show_pct, TwoWindows};
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
    /// Countries listed.
    #[arg(long, default_value_t = 10)]
    top: u32,
    /// Also draw distinct IPs per month over [a-from, b-to) into this SVG file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

pub async fn run(a: ReportArgs) -> anyhow::Result<()> {
    let (wa, wb) = a.windows.parse()?;
    if let Some(path) = &a.chart {
        check_chart_path(path)?;
    }
    let client = a.connect.connect(&a.server).await?;
    out!("{}", report(&client, &a.namespace, wa, wb, a.top).await?);
    if let Some(path) = a.chart {
        write_chart(&client, &a.namespace, wa, wb, &path).await?;
    }
    Ok(())
}

/// The report as text: global counts and change, org retention, the
/// largest countries with their changes, and organisations per sector.
pub async fn report(
    client: &Client,
    ns: &str,
    wa: DayWindow,
    wb: DayWindow,
    top: u32,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "sketchd report for namespace {ns}")?;
    writeln!(
        out,
        "A = {} .. {} (exclusive), B = {} .. {} (exclusive)\n",
        wa.from, wa.to, wb.from, wb.to
    )?;

    writeln!(
        out,
        "{:<10} {:>26} {:>26} {:>28}",
        "global", "A", "B", "change"
    )?;
    for metric in [Metric::Ips, Metric::Orgs] {
        let ea = client.count(ns, metric, &Scope::Global, wa).await?.estimate;
        let eb = client.count(ns, metric, &Scope::Global, wb).await?.estimate;
        let name = if metric == Metric::Ips { "IPs" } else { "orgs" };
        writeln!(
            out,
            "{name:<10} {:>26} {:>26} {:>28}",
            show(&ea),
            show(&eb),
            show_pct(change_pct(&ea, &eb).as_ref())
        )?;
    }
    let r = client.retention(ns, &Scope::Global, wa, wb).await?;
    writeln!(
        out,
        "organisations seen in A still seen in B: {} of {} = {:.1} % (exact)\n",
        r.in_both,
        r.in_a,
        100.0 * r.share()
    )?;

    let ips = client
        .compare(
            ns,
            Metric::Ips,
            GroupBy::Country,
            &Scope::Global,
            wa,
            wb,
            top,
        )
        .await?;
    let orgs = client
        .compare(
            ns,
            Metric::Orgs,
            GroupBy::Country,
            &Scope::Global,
            wa,
            wb,
            0,
        )
        .await?;
    writeln!(
        out,
        "{:<8} {:>22} {:>22} {:>16} {:>9} {:>9} {:>10} {:>14}",
        "country",
        "IPs in A",
        "IPs in B",
        "IP change",
        "orgs A",
        "orgs B",
        "org chg",
        "orgs retained"
    )?;
    for row in &ips {
        let org_row = orgs.iter().find(|o| o.group == row.group);
        let country: [u8; 2] = row.group.as_bytes().try_into().context("country code")?;
        let kept = client
            .retention(ns, &Scope::Country(country), wa, wb)
            .await?;
        let value = |e: Option<&Estimate>| e.map(|e| format!("{:.0}", e.value)).unwrap_or_default();
        writeln!(
            out,
            "{:<8} {:>22} {:>22} {:>16} {:>9} {:>9} {:>10} {:>13.1}%",
            row.group,
            show(&row.a),
            show(&row.b),
            row.change_pct
                .map(|c| format!("{:+.1} %", c.value))
                .unwrap_or_else(|| "n/a".into()),
            value(org_row.map(|o| &o.a)),
            value(org_row.map(|o| &o.b)),
            org_row
                .and_then(|o| o.change_pct)
                .map(|c| format!("{:+.1} %", c.value))
                .unwrap_or_else(|| "n/a".into()),
            100.0 * kept.share()
        )?;
    }
    let sectors = client
        .compare(ns, Metric::Orgs, GroupBy::Sector, &Scope::Global, wa, wb, 0)
        .await?;
    if !sectors.is_empty() {
        writeln!(
            out,
            "\n{:<16} {:>10} {:>10} {:>10}",
            "sector", "orgs in A", "orgs in B", "change"
        )?;
        for row in &sectors {
            writeln!(
                out,
                "{:<16} {:>10.0} {:>10.0} {:>10}",
                row.group,
                row.a.value,
                row.b.value,
                row.change_pct
                    .map(|c| format!("{:+.1} %", c.value))
                    .unwrap_or_else(|| "n/a".into())
            )?;
        }
    }
    Ok(out)
}

/// Checks, before any work, that a chart can be written to `path`: its
/// directory exists and it is not a directory itself.
pub fn check_chart_path(path: &std::path::Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "--chart {}: the directory {} does not exist; create it or give another path",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!(
            "--chart {}: that is a directory; give a file name such as {}",
            path.display(),
            path.join("chart.svg").display()
        );
    }
    Ok(())
}

/// Draws distinct IPs per month over both windows into an SVG file.
pub async fn write_chart(
    client: &Client,
    ns: &str,
    wa: DayWindow,
    wb: DayWindow,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let span = DayWindow::new(wa.from.min(wb.from), wa.to.max(wb.to))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let points = client
        .series(ns, Metric::Ips, &Scope::Global, span, "month")
        .await?;
    std::fs::write(path, svg_chart("distinct IPs per month", &points))
        .with_context(|| format!("cannot write {}", path.display()))?;
    outln!("\nchart written to {}", path.display());
    Ok(())
}

/// A line chart with the 95 % interval as a band, in plain SVG.
pub fn svg_chart(title: &str, points: &[(DayWindow, Estimate)]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 360.0, 80.0, 20.0, 40.0, 60.0);
    let max = points.iter().map(|(_, e)| e.upper).fold(1.0f64, f64::max);
    let n = points.len().max(1) as f64;
    let x = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / n;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
"#,
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for tick in 0..=4 {
        let v = max * f64::from(tick) / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{:.0}</text><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
            left - 6.0,
            y(v) + 4.0,
            v,
            y(v),
            w - right,
            y(v)
        );
    }
    if !points.is_empty() {
        let upper: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, (_, e))| format!("{:.1},{:.1}", x(i), y(e.upper)))
            .collect();
        let lower: Vec<String> = points
            .iter()
            .enumerate()
            .rev()
            .map(|(i, (_, e))| format!("{:.1},{:.1}", x(i), y(e.lower)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polygon points="{} {}" fill="#9ecae1" opacity="0.5"/>"##,
            upper.join(" "),
            lower.join(" ")
        );
        let line: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, (_, e))| format!("{:.1},{:.1}", x(i), y(e.value)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#08519c" stroke-width="2"/>"##,
            line.join(" ")
        );
        for (i, (window, e)) in points.iter().enumerate() {
            let label = window.from.to_string();
            let _ = writeln!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#08519c"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
                x(i),
                y(e.value),
                x(i),
                h - bottom + 18.0,
                &label[..7]
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
