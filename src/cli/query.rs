//! `sketchd query …`: one question, printed as a table or as one JSON
//! document (`--json`).

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use sketchd::client::Client;
use sketchd::ingest::parse_country;
use sketchd::query::{GroupBy, Metric, OrgLabel, Scope};
use sketchd::report::dates;
use sketchd::report::text::{count as show_count, pct as show_change, thousands};
use sketchd::report::Sort;
use sketchd::sketch::Estimate;
use sketchd::time::DayWindow;

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Subcommand)]
pub enum QueryCommand {
    /// Distinct IPs or organisations of one scope over [from, to).
    Count(CountArgs),
    /// Exact number of observations of a scope over [from, to).
    Observations(ObservationsArgs),
    /// One metric for every country or org over [from, to), largest first.
    Group(GroupArgs),
    /// Every country or org in window A and window B, with the change in %.
    Compare(CompareArgs),
    /// Share of organisations seen in window A that are still seen in B (exact).
    Retention(RetentionArgs),
    /// Distinct IPs of one scope seen in both of two windows (estimated).
    Overlap(OverlapArgs),
    /// A metric per day, week, month or N days, for charts.
    Series(SeriesArgs),
}

/// `--scope` of the counting questions.
const SCOPE: &str = "What to count within: global, country:CC (e.g. country:DE), org:ID or org:NAME \
(e.g. org:AS15169, org:\"Google LLC\"; a name must match one org), sector:S (a sector label of the org registry, e.g. sector:government) or \
country:CC,sector:S";
/// `--scope` of the questions over organisations (no org:ID).
const ORG_SCOPE: &str = "Which organisations: global, country:CC (e.g. country:DE), sector:S \
(a sector label of the org registry) or country:CC,sector:S";
/// `--scope` of group and compare.
const GROUP_SCOPE: &str = "Narrow the groups: global, country:CC (with --by org or sector), \
sector:S (with --by country or org) or country:CC,sector:S (with --by org)";

#[derive(clap::Args)]
pub struct Conn {
    /// Server URL (http://HOST:PORT, https://… with --ca-cert), or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Namespace to ask.
    #[arg(long)]
    pub namespace: String,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.connect.connect(&self.server).await
    }
}

#[derive(clap::Args)]
pub struct CountArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to count: ips (distinct addresses) or orgs (distinct organisations).
    #[arg(long)]
    metric: String,
    #[arg(long, default_value = "global", help = SCOPE)]
    scope: String,
    /// First day: YYYY-MM-DD, an RFC 3339 time, today, or -30d / -4w from today.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// First day not included (same forms as --from).
    #[arg(long, allow_hyphen_values = true)]
    to: String,
}

#[derive(clap::Args)]
pub struct ObservationsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Where: global or country:CC (observations are counted globally and per country).
    #[arg(long, default_value = "global")]
    scope: String,
    /// First day: YYYY-MM-DD, an RFC 3339 time, today, or -30d / -4w from today.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// First day not included (same forms as --from).
    #[arg(long, allow_hyphen_values = true)]
    to: String,
}

#[derive(clap::Args)]
pub struct GroupArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to count: ips or orgs.
    #[arg(long)]
    metric: String,
    /// What a row is: country, org or sector.
    #[arg(long)]
    by: String,
    #[arg(long, default_value = "global", help = GROUP_SCOPE)]
    scope: String,
    /// First day: YYYY-MM-DD, an RFC 3339 time, today, or -30d / -4w from today.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// First day not included (same forms as --from).
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// Most rows; 0 = all.
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

#[derive(clap::Args)]
pub struct TwoWindows {
    /// First day of window A (the earlier one): YYYY-MM-DD, an RFC 3339 time, today, or -30d / -4w.
    #[arg(long, allow_hyphen_values = true)]
    pub a_from: String,
    /// First day not in window A (same forms).
    #[arg(long, allow_hyphen_values = true)]
    pub a_to: String,
    /// First day of window B (the later one; same forms).
    #[arg(long, allow_hyphen_values = true)]
    pub b_from: String,
    /// First day not in window B (same forms).
    #[arg(long, allow_hyphen_values = true)]
    pub b_to: String,
}

impl TwoWindows {
    pub fn parse(&self) -> anyhow::Result<(DayWindow, DayWindow)> {
        Ok((
            parse_window("--a-from", &self.a_from, "--a-to", &self.a_to)?,
            parse_window("--b-from", &self.b_from, "--b-to", &self.b_to)?,
        ))
    }
}

#[derive(clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to count: ips or orgs.
    #[arg(long)]
    metric: String,
    /// What a row is: country, org or sector.
    #[arg(long)]
    by: String,
    #[arg(long, default_value = "global", help = GROUP_SCOPE)]
    scope: String,
    #[command(flatten)]
    windows: TwoWindows,
    /// Order: a (largest in A first), b, change (largest decline first) or name.
    #[arg(long, default_value = "a")]
    sort: String,
    /// Most rows (the first of --sort); 0 = all.
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

#[derive(clap::Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, default_value = "global", help = ORG_SCOPE)]
    scope: String,
    #[command(flatten)]
    windows: TwoWindows,
}

#[derive(clap::Args)]
pub struct OverlapArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, default_value = "global", help = SCOPE)]
    scope: String,
    #[command(flatten)]
    windows: TwoWindows,
}

#[derive(clap::Args)]
pub struct SeriesArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to count: ips or orgs.
    #[arg(long)]
    metric: String,
    #[arg(long, default_value = "global", help = SCOPE)]
    scope: String,
    /// First day: YYYY-MM-DD, an RFC 3339 time, today, or -30d / -4w from today.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// First day not included (same forms as --from).
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// day, week, month or Nd.
    #[arg(long, default_value = "day")]
    step: String,
}

pub async fn run(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::Count(a) => count(a).await,
        QueryCommand::Observations(a) => observations(a).await,
        QueryCommand::Group(a) => group(a).await,
        QueryCommand::Compare(a) => compare(a).await,
        QueryCommand::Retention(a) => retention(a).await,
        QueryCommand::Overlap(a) => overlap(a).await,
        QueryCommand::Series(a) => series(a).await,
    }
}

pub fn parse_metric(text: &str) -> anyhow::Result<Metric> {
    match text {
        "ips" => Ok(Metric::Ips),
        "orgs" => Ok(Metric::Orgs),
        other => bail!("--metric {other:?}: use ips or orgs"),
    }
}

pub fn parse_by(text: &str) -> anyhow::Result<GroupBy> {
    match text {
        "country" => Ok(GroupBy::Country),
        "org" => Ok(GroupBy::Org),
        "sector" => Ok(GroupBy::Sector),
        other => bail!("--by {other:?}: use country, org or sector"),
    }
}

/// `global`, `country:CC`, `org:ID` (or `org:NAME`), `sector:S` or `country:CC,sector:S`.
pub fn parse_scope(text: &str) -> anyhow::Result<Scope> {
    if text == "global" {
        return Ok(Scope::Global);
    }
    // An org stands alone; its name may hold commas ("Example, Inc.").
    if let Some(org) = text.strip_prefix("org:").filter(|o| !o.trim().is_empty()) {
        return Ok(Scope::Org(org.trim().to_owned()));
    }
    let (mut country, mut org, mut sector) = (None, None, None);
    for part in text.split(',') {
        match part.split_once(':') {
            Some(("country", cc)) => {
                country = Some(parse_country(cc).map_err(|e| anyhow!("--scope {text:?}: {e}"))?)
            }
            Some(("org", id)) if !id.is_empty() => org = Some(id.to_owned()),
            Some(("sector", s)) if !s.is_empty() => sector = Some(s.to_owned()),
            _ => bail!(
                "--scope {text:?}: use global, country:CC, org:ID, sector:S or country:CC,sector:S"
            ),
        }
    }
    Ok(match (country, org, sector) {
        (Some(cc), None, None) => Scope::Country(cc),
        (None, Some(id), None) => Scope::Org(id),
        (None, None, Some(s)) => Scope::Sector(s),
        (Some(cc), None, Some(s)) => Scope::CountrySector(cc, s),
        _ => bail!("--scope {text:?}: org cannot be combined with country or sector"),
    })
}

/// A window from two flags: days as YYYY-MM-DD, RFC 3339 times, `today`
/// or distances from today (`-30d`, `-4w`).
pub fn parse_window(
    from_flag: &str,
    from: &str,
    to_flag: &str,
    to: &str,
) -> anyhow::Result<DayWindow> {
    dates::parse_window(from_flag, from, to_flag, to, dates::today()).map_err(|e| anyhow!("{e}"))
}

/// Header of the name and country columns of org rows.
const NAME_HEADER: &str = "name                             country  ";

/// An org's name (cut to 32 characters) and country, for org rows.
fn name_cell(label: Option<&OrgLabel>) -> String {
    let (name, country) = label
        .map(|l| (l.name.as_str(), l.country.as_deref().unwrap_or("")))
        .unwrap_or(("", ""));
    let name: String = name.chars().take(32).collect();
    format!("{name:<32} {country:<8} ")
}

/// Adds `"name"` and `"country"` of an org row.
fn add_label(v: &mut Value, label: Option<&OrgLabel>) {
    if let Some(l) = label {
        v["name"] = json!(l.name);
        v["country"] = json!(l.country);
    }
}

/// `{"estimate", "lower", "upper", "exact"}`.
pub fn estimate_json(e: &Estimate) -> Value {
    json!({ "estimate": e.value, "lower": e.lower, "upper": e.upper, "exact": e.exact })
}

async fn count(a: CountArgs) -> anyhow::Result<()> {
    let metric = parse_metric(&a.metric)?;
    let scope = parse_scope(&a.scope)?;
    let window = parse_window("--from", &a.from, "--to", &a.to)?;
    let reply = a
        .conn
        .client()
        .await?
        .count(&a.conn.namespace, metric, &scope, window)
        .await?;
    let e = reply.estimate;
    let asked = format!("{} to {} (exclusive)", window.from, window.to);
    let data = if reply.covered == window {
        String::new()
    } else if reply.covered.is_empty() {
        "; no data in it".to_owned()
    } else {
        format!(
            "; data only from {} to {} (exclusive)",
            reply.covered.from, reply.covered.to
        )
    };
    if a.conn.json {
        let doc = json!({
            "estimate": e.value,
            "lower": e.lower,
            "upper": e.upper,
            "confidence": e.confidence,
            "exact": e.exact,
            "from": window.from.to_string(),
            "to": window.to.to_string(),
            "data_from": reply.covered.from.to_string(),
            "data_to": reply.covered.to.to_string(),
        });
        outln!("{doc}");
    } else if e.exact {
        outln!(
            "{} distinct {} (exact), {asked}{data}",
            thousands(e.value),
            a.metric
        );
    } else {
        outln!(
            "{} distinct {} ({:.0}% interval {} to {}), {asked}{data}",
            thousands(e.value),
            a.metric,
            e.confidence * 100.0,
            thousands(e.lower),
            thousands(e.upper)
        );
    }
    Ok(())
}

async fn observations(a: ObservationsArgs) -> anyhow::Result<()> {
    let scope = parse_scope(&a.scope)?;
    let window = parse_window("--from", &a.from, "--to", &a.to)?;
    let n = a
        .conn
        .client()
        .await?
        .observations(&a.conn.namespace, &scope, window)
        .await?;
    if a.conn.json {
        outln!("{}", json!({ "observations": n }));
    } else {
        outln!("{n} observations");
    }
    Ok(())
}

async fn group(a: GroupArgs) -> anyhow::Result<()> {
    let metric = parse_metric(&a.metric)?;
    let by = parse_by(&a.by)?;
    let scope = parse_scope(&a.scope)?;
    let window = parse_window("--from", &a.from, "--to", &a.to)?;
    let rows = a
        .conn
        .client()
        .await?
        .group(&a.conn.namespace, metric, by, &scope, window, a.limit)
        .await?;
    if a.conn.json {
        let doc: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = estimate_json(&r.estimate);
                v["group"] = json!(r.group);
                add_label(&mut v, r.org.as_ref());
                v
            })
            .collect();
        outln!("{}", Value::Array(doc));
    } else {
        let names = by == GroupBy::Org;
        outln!(
            "{:<24} {}distinct {} [95 % interval]",
            a.by,
            if names { NAME_HEADER } else { "" },
            a.metric
        );
        for r in rows {
            outln!(
                "{:<24} {}{}",
                r.group,
                if names {
                    name_cell(r.org.as_ref())
                } else {
                    String::new()
                },
                show_count(&r.estimate)
            );
        }
    }
    Ok(())
}

async fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let metric = parse_metric(&a.metric)?;
    let by = parse_by(&a.by)?;
    let scope = parse_scope(&a.scope)?;
    let (wa, wb) = a.windows.parse()?;
    let sort = Sort::parse("--sort", &a.sort)?;
    // Every row, then ordered and cut here, so that --limit keeps the
    // first rows of the order asked.
    let mut rows = a
        .conn
        .client()
        .await?
        .compare(&a.conn.namespace, metric, by, &scope, wa, wb, 0)
        .await?;
    sort.apply(&mut rows, |r| {
        (
            r.group.as_str(),
            r.a.value,
            r.b.value,
            r.change_pct.map(|c| c.value),
        )
    });
    if a.limit > 0 {
        rows.truncate(a.limit as usize);
    }
    if a.conn.json {
        let pick = |e: &Estimate| json!({ "estimate": e.value, "lower": e.lower, "upper": e.upper, "exact": e.exact });
        let doc: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "group": r.group,
                    "a": pick(&r.a),
                    "b": pick(&r.b),
                    "change_pct": r.change_pct.as_ref().map(pick),
                });
                add_label(&mut v, r.org.as_ref());
                v
            })
            .collect();
        outln!("{}", Value::Array(doc));
    } else {
        let names = by == GroupBy::Org;
        outln!(
            "{:<24} {}{:>34} {:>34} {:>30}",
            a.by,
            if names { NAME_HEADER } else { "" },
            "A",
            "B",
            "change [95 % interval]"
        );
        for r in rows {
            outln!(
                "{:<24} {}{:>34} {:>34} {:>30}",
                r.group,
                if names {
                    name_cell(r.org.as_ref())
                } else {
                    String::new()
                },
                show_count(&r.a),
                show_count(&r.b),
                show_change(r.change_pct.as_ref())
            );
        }
    }
    Ok(())
}

async fn retention(a: RetentionArgs) -> anyhow::Result<()> {
    let scope = parse_scope(&a.scope)?;
    let (wa, wb) = a.windows.parse()?;
    let r = a
        .conn
        .client()
        .await?
        .retention(&a.conn.namespace, &scope, wa, wb)
        .await?;
    if a.conn.json {
        outln!(
            "{}",
            json!({ "in_a": r.in_a, "in_both": r.in_both, "share": r.share(), "exact": true })
        );
    } else {
        outln!(
            "{} of {} organisations seen in A are seen in B: {:.1} % (exact)",
            r.in_both,
            r.in_a,
            100.0 * r.share()
        );
    }
    Ok(())
}

async fn overlap(a: OverlapArgs) -> anyhow::Result<()> {
    let scope = parse_scope(&a.scope)?;
    let (wa, wb) = a.windows.parse()?;
    let o = a
        .conn
        .client()
        .await?
        .overlap(&a.conn.namespace, &scope, wa, wb)
        .await?;
    if a.conn.json {
        outln!(
            "{}",
            json!({
                "a": estimate_json(&o.a),
                "b": estimate_json(&o.b),
                "both": estimate_json(&o.both),
                "either": estimate_json(&o.either),
            })
        );
    } else {
        outln!("in A      {}", show_count(&o.a));
        outln!("in B      {}", show_count(&o.b));
        outln!("in both   {}", show_count(&o.both));
        outln!("in either {}", show_count(&o.either));
    }
    Ok(())
}

async fn series(a: SeriesArgs) -> anyhow::Result<()> {
    let metric = parse_metric(&a.metric)?;
    let scope = parse_scope(&a.scope)?;
    let window = parse_window("--from", &a.from, "--to", &a.to)?;
    let points = a
        .conn
        .client()
        .await?
        .series(&a.conn.namespace, metric, &scope, window, &a.step)
        .await?;
    if a.conn.json {
        let doc: Vec<Value> = points
            .iter()
            .map(|(w, e)| {
                let mut v = estimate_json(e);
                v["from"] = json!(w.from.to_string());
                v["to"] = json!(w.to.to_string());
                v
            })
            .collect();
        outln!("{}", Value::Array(doc));
    } else {
        for (w, e) in points {
            outln!("{} .. {}  {}", w.from, w.to, show_count(&e));
        }
    }
    Ok(())
}
