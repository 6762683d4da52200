//! The query set of `truth.json`: each query becomes one RPC (`Count`,
//! `GroupBy`, `Compare` or `Retention`), run `--repeats` times on a thread
//! of its own and scored against its truth; the round-trip floor of a
//! health check is measured alongside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use sketchd::client::Client;
use sketchd::query::{GroupBy, Metric, Scope};
use sketchd::time::DayWindow;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use super::score::{percentile, ErrorStats, ScoredPair};
use super::LoadgenArgs;

/// One RPC answering one query of the set.
pub(super) enum Call {
    Count {
        metric: Metric,
        scope: Scope,
        window: DayWindow,
    },
    Group {
        metric: Metric,
        by: GroupBy,
        window: DayWindow,
    },
    /// Drop % per country or per org: 100·(1 − |B|/|A|).
    Drop {
        by: GroupBy,
        a: DayWindow,
        b: DayWindow,
    },
    /// 100·|A∩B|/|A| of the orgs of one country.
    Retention {
        country: [u8; 2],
        a: DayWindow,
        b: DayWindow,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Answer {
    Value(f64),
    PerGroup(BTreeMap<String, f64>),
}

impl Answer {
    pub(super) fn to_json(&self) -> Value {
        match self {
            Answer::Value(v) => json!(v),
            Answer::PerGroup(m) => json!(m),
        }
    }
}

pub(super) struct Query {
    pub(super) id: String,
    pub(super) kind: String,
    /// The kind its latency is reported under.
    pub(super) latency_kind: String,
    pub(super) call: Call,
    pub(super) truth: Value,
}

pub(super) struct QueryResults {
    /// Seconds of every execution, per latency kind.
    pub(super) latency: BTreeMap<String, Vec<f64>>,
    pub(super) answers: Vec<(String, Answer)>,
    /// Per error kind (the query kind) the (estimate, truth) pairs.
    pub(super) errors: BTreeMap<String, ErrorStats>,
    /// Error stats of the `ipglob:whole` query alone.
    pub(super) whole_error: Option<ErrorStats>,
    pub(super) skipped: Vec<String>,
    pub(super) wall: Duration,
    /// Health checks alternating with the set's first `Count`.
    pub(super) between: Option<Between>,
}

/// Medians (ms) of a health check and a `Count` called in turn,
/// [`FLOOR_CALLS`] of each: the round trip in the state a query leaves
/// client and server in. Back to back, health checks can stay on one CPU
/// (client and server threads waking each other where they run); after a
/// query the wake-ups may cross CPUs, which on a virtual machine costs
/// more than the query's own work.
#[derive(Clone, Copy, Debug)]
pub(super) struct Between {
    pub(super) health_ms: f64,
    pub(super) count_ms: f64,
}

pub(super) fn window(start: &Value, end: &Value) -> anyhow::Result<DayWindow> {
    let s = start
        .as_str()
        .ok_or_else(|| anyhow!("start is not a date"))?;
    let e = end.as_str().ok_or_else(|| anyhow!("end is not a date"))?;
    DayWindow::parse("start", s, "end", e).map_err(|e| anyhow!("{e}"))
}

pub(super) fn country(q: &Value) -> anyhow::Result<[u8; 2]> {
    q["cc"]
        .as_str()
        .and_then(|s| s.as_bytes().try_into().ok())
        .ok_or_else(|| anyhow!("cc is not a two-letter code"))
}

/// The RPC for one query of truth.json, or `None` for an unknown kind.
pub(super) fn parse_query(q: &Value) -> anyhow::Result<Option<Query>> {
    let id = q["id"].as_str().unwrap_or("?").to_owned();
    let kind = q["kind"].as_str().unwrap_or("?").to_owned();
    let whole = || window(&q["start"], &q["end"]);
    let change = |by| -> anyhow::Result<Call> {
        Ok(Call::Drop {
            by,
            a: window(&q["a"][0], &q["a"][1])?,
            b: window(&q["b"][0], &q["b"][1])?,
        })
    };
    let call = match kind.as_str() {
        "ip_country_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Country(country(q)?),
            window: whole()?,
        },
        "ip_all_countries" => Call::Group {
            metric: Metric::Ips,
            by: GroupBy::Country,
            window: whole()?,
        },
        "ip_global_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Global,
            window: whole()?,
        },
        "drop_pct_by_country" => change(GroupBy::Country)?,
        "org_country_window" => Call::Group {
            metric: Metric::Orgs,
            by: GroupBy::Country,
            window: whole()?,
        },
        "org_global_window" => Call::Count {
            metric: Metric::Orgs,
            scope: Scope::Global,
            window: whole()?,
        },
        "ip_org_window" => Call::Count {
            metric: Metric::Ips,
            scope: Scope::Org(
                q["org"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("org is not an integer"))?
                    .to_string(),
            ),
            window: whole()?,
        },
        "ip_all_orgs_window" => Call::Group {
            metric: Metric::Ips,
            by: GroupBy::Org,
            window: whole()?,
        },
        "ip_orgs_compare" => change(GroupBy::Org)?,
        "org_retention" => Call::Retention {
            country: country(q)?,
            a: window(&q["start"], &q["cutoff"])?,
            b: window(&q["cutoff"], &q["end"])?,
        },
        _ => return Ok(None),
    };
    let latency_kind = if id == "ipglob:whole" {
        "ip_global_whole".to_owned()
    } else {
        kind.clone()
    };
    Ok(Some(Query {
        id,
        kind,
        latency_kind,
        call,
        truth: q["truth"].clone(),
    }))
}

pub(super) async fn answer(client: &Client, ns: &str, call: &Call) -> anyhow::Result<Answer> {
    Ok(match call {
        Call::Count {
            metric,
            scope,
            window,
        } => Answer::Value(
            client
                .count(ns, *metric, scope, *window)
                .await?
                .estimate
                .value,
        ),
        Call::Group { metric, by, window } => {
            let rows = client
                .group(ns, *metric, *by, &Scope::Global, *window, 0)
                .await?;
            Answer::PerGroup(
                rows.into_iter()
                    .map(|r| (r.group, r.estimate.value))
                    .collect(),
            )
        }
        Call::Drop { by, a, b } => {
            let rows = client
                .compare(ns, Metric::Ips, *by, &Scope::Global, *a, *b, 0)
                .await?;
            Answer::PerGroup(
                rows.into_iter()
                    .filter(|r| r.a.value > 0.0)
                    .map(|r| (r.group, 100.0 * (1.0 - r.b.value / r.a.value)))
                    .collect(),
            )
        }
        Call::Retention { country, a, b } => {
            let r = client
                .retention(ns, &Scope::Country(*country), *a, *b)
                .await?;
            Answer::Value(100.0 * r.share())
        }
    })
}

pub(super) async fn run_queries(
    client: &Client,
    args: &LoadgenArgs,
    truth: &Value,
) -> anyhow::Result<QueryResults> {
    let list = truth["queries"]
        .as_array()
        .ok_or_else(|| anyhow!("truth.json has no `queries` list"))?;
    let mut queries = Vec::with_capacity(list.len());
    let mut skipped = Vec::new();
    for q in list {
        match parse_query(q).with_context(|| format!("query {}", q["id"]))? {
            Some(query) => queries.push(query),
            None => skipped.push(q["id"].as_str().unwrap_or("?").to_owned()),
        }
    }
    eprintln!(
        "loadgen: {} queries x {} repeats",
        queries.len(),
        args.repeats
    );
    let started = Instant::now();
    let mut latency: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut answers = Vec::with_capacity(queries.len());
    for q in &queries {
        let mut last = None;
        for _ in 0..args.repeats {
            let t = Instant::now();
            let a = answer(client, &args.namespace, &q.call)
                .await
                .with_context(|| format!("query {}", q.id))?;
            latency
                .entry(q.latency_kind.clone())
                .or_default()
                .push(t.elapsed().as_secs_f64());
            last = Some(a);
        }
        answers.push((q.id.clone(), last.expect("repeats >= 1")));
    }
    let wall = started.elapsed();
    let first_count = queries
        .iter()
        .find(|q| matches!(q.call, Call::Count { .. }));
    let between = match first_count {
        Some(q) => between_counts(client, &args.namespace, &q.call, args.first_server()).await?,
        None => None,
    };
    let mut pairs: BTreeMap<String, (Vec<ScoredPair>, bool)> = BTreeMap::new();
    let mut whole_pairs = Vec::new();
    for (q, (_, a)) in queries.iter().zip(&answers) {
        let abs = matches!(
            q.kind.as_str(),
            "drop_pct_by_country" | "ip_orgs_compare" | "org_retention"
        );
        let list = &mut pairs.entry(q.kind.clone()).or_insert((Vec::new(), abs)).0;
        match (&q.truth, a) {
            (Value::Object(t), Answer::PerGroup(est)) => {
                for (cc, tv) in t {
                    let e = est.get(cc).copied().or(if abs { None } else { Some(0.0) });
                    list.push((e, tv.as_f64().unwrap_or(0.0)));
                }
            }
            (t, Answer::Value(v)) => {
                list.push((Some(*v), t.as_f64().unwrap_or(0.0)));
                if q.id == "ipglob:whole" {
                    whole_pairs.push((Some(*v), t.as_f64().unwrap_or(0.0)));
                }
            }
            (t, Answer::PerGroup(_)) => bail!("query {}: truth {t} is not per group", q.id),
        }
    }
    let errors = pairs
        .into_iter()
        .map(|(k, (p, abs))| (k, ErrorStats::of(&p, abs)))
        .collect();
    let whole_error = (!whole_pairs.is_empty()).then(|| ErrorStats::of(&whole_pairs, false));
    Ok(QueryResults {
        latency,
        answers,
        errors,
        whole_error,
        skipped,
        wall,
        between,
    })
}

/// Runs the queries of `truth` (if any) and measures the round-trip floor,
/// on a thread of its own with a single-threaded runtime and its own
/// connections: a query then costs no wake-up of another client thread, so
/// the latencies are the server's and the transport's, like those of the
/// peers' single-threaded clients.
pub(super) fn query_phase(
    args: &LoadgenArgs,
    truth: Option<&Value>,
) -> anyhow::Result<(Option<QueryResults>, Option<f64>)> {
    let phase = || -> anyhow::Result<(Option<QueryResults>, Option<f64>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the query runtime")?;
        runtime.block_on(async {
            let queries = match truth {
                Some(truth) => {
                    let client = args.connect.connect(args.first_server()).await?;
                    Some(run_queries(&client, args, truth).await?)
                }
                None => None,
            };
            Ok((queries, rpc_floor(args.first_server()).await?))
        })
    };
    let on_own_thread = || {
        std::thread::scope(|scope| {
            scope
                .spawn(phase)
                .join()
                .map_err(|_| anyhow!("the query phase panicked"))?
        })
    };
    // The caller's runtime has nothing else to do meanwhile; tell it so
    // when it can be told (block_in_place panics on a current-thread one).
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(on_own_thread)
        }
        _ => on_own_thread(),
    }
}

/// Health checks answered on one connection.
pub(super) const FLOOR_CALLS: usize = 200;

/// [`Between`] for `call` (a `Count`); `None` when the server does not
/// serve health checks.
async fn between_counts(
    client: &Client,
    ns: &str,
    call: &Call,
    url: &str,
) -> anyhow::Result<Option<Between>> {
    let mut health = health_client(url).await?;
    let (mut health_ms, mut count_ms) = (Vec::new(), Vec::new());
    for _ in 0..FLOOR_CALLS {
        let t = Instant::now();
        answer(client, ns, call).await?;
        count_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let Some(ms) = check_ms(&mut health).await else {
            return Ok(None);
        };
        health_ms.push(ms);
    }
    Ok(percentile(&health_ms, 50.0)
        .zip(percentile(&count_ms, 50.0))
        .map(|(health_ms, count_ms)| Between {
            health_ms,
            count_ms,
        }))
}

/// A health client on a connection of its own to `url`.
async fn health_client(url: &str) -> anyhow::Result<HealthClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(HealthClient::new(channel))
}

/// Median latency (ms) of a gRPC health check: the transport's share of
/// every query latency. `None` when the server does not serve health checks.
pub(super) async fn rpc_floor(url: &str) -> anyhow::Result<Option<f64>> {
    let mut health = health_client(url).await?;
    let mut ms = Vec::with_capacity(FLOOR_CALLS);
    for _ in 0..FLOOR_CALLS {
        let Some(one) = check_ms(&mut health).await else {
            return Ok(None);
        };
        ms.push(one);
    }
    Ok(percentile(&ms, 50.0))
}

/// The milliseconds of one health check; `None` if it failed.
async fn check_ms(health: &mut HealthClient<Channel>) -> Option<f64> {
    let t = Instant::now();
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(t.elapsed().as_secs_f64() * 1e3)
}
