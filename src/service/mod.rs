//! The gRPC layer: an adapter between `pb` types and the domain.
//!
//! Each RPC first checks that its caller may do it (`auth::authorize`),
//! then converts and validates its request (errors name the field),
//! calls domain code, and converts the answer. Domain errors become a
//! `Status` in one exhaustive match ([`status`]). Generated types do not
//! leave this module.

mod backup;
mod replication;

use std::sync::Arc;

use tonic::{Request, Response, Status};

pub use replication::ReplicationService;

use crate::attribution::Attributor;
use crate::auth::{authorize, authorize_everywhere, authorize_somewhere, Role};
use crate::catalog::{fingerprint_hex, Namespace};
use crate::config::NamespacePolicy;
use crate::engine::Engine;
use crate::error::{quoted, Error};
use crate::ingest::{parse_country, ObservationBatch};
use crate::pb;
use crate::query::{self, GroupBy, GroupSpec, Metric, Scope, Step, DEFAULT_CONFIDENCE};
use crate::sketch::Estimate;
use crate::time::DayWindow;
use crate::wire;

/// Longest status message sent, in bytes: it travels in a header. Values
/// are quoted short (`error::quoted`); this bounds everything else.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes on a character boundary.
pub fn capped(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE - "…".len();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Maps a domain error to a gRPC status.
pub fn status(err: Error) -> Status {
    let message = capped(err.to_string());
    match err {
        Error::InvalidArgument { .. } => Status::invalid_argument(message),
        Error::InvalidRow { row, .. } => {
            // The row again as metadata, so that a collector can point at
            // the input line it came from.
            let mut s = Status::invalid_argument(message);
            s.metadata_mut()
                .insert(wire::ROW_METADATA, row.to_string().parse().expect("digits"));
            s
        }
        Error::LimitExceeded(_) => Status::resource_exhausted(message),
        Error::Overloaded(_) => {
            let mut s = Status::resource_exhausted(message);
            s.metadata_mut().insert(
                "retry-after-ms",
                tonic::metadata::MetadataValue::from_static("100"),
            );
            s
        }
        Error::DiskFull { .. } => {
            let mut s = Status::resource_exhausted(message);
            s.metadata_mut().insert(
                "retry-after-ms",
                tonic::metadata::MetadataValue::from_static("2000"),
            );
            s
        }
        Error::Refused(_) => Status::failed_precondition(message),
        Error::NamespaceNotFound(_) | Error::UnknownInScope { .. } => Status::not_found(message),
        Error::NamespaceExists(_) | Error::SequenceReused { .. } => Status::already_exists(message),
        Error::NamespaceAutoCreateDisabled(_) => Status::failed_precondition(message),
        Error::Incompatible(_) => Status::failed_precondition(message),
        Error::Unavailable(_) => Status::unavailable(message),
        Error::Corrupt(_) => Status::data_loss(message),
        Error::Sketch(_)
        | Error::NotInMemory
        | Error::Storage(_)
        | Error::Io { .. }
        | Error::Attribution(_)
        | Error::Config(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

fn estimate_pb(e: Estimate) -> pb::Estimate {
    pb::Estimate {
        estimate: e.value,
        lower: e.lower,
        upper: e.upper,
        confidence: e.confidence,
        exact: e.exact,
    }
}

/// An org's name and country as the two string fields of a row (empty
/// when unknown).
fn label_pb(label: Option<query::OrgLabel>) -> (String, String) {
    label
        .map(|l| (l.name, l.country.unwrap_or_default()))
        .unwrap_or_default()
}

fn metric(value: i32) -> Result<Metric, Error> {
    match pb::Metric::try_from(value) {
        Ok(pb::Metric::Ips) => Ok(Metric::Ips),
        Ok(pb::Metric::Orgs) => Ok(Metric::Orgs),
        _ => Err(Error::invalid(
            "metric",
            format!("{value} is not METRIC_IPS or METRIC_ORGS"),
        )),
    }
}

fn scope(scope: Option<pb::Scope>) -> Result<Scope, Error> {
    scope_field("scope", scope)
}

fn scope_field(field: &str, scope: Option<pb::Scope>) -> Result<Scope, Error> {
    let scope = scope.unwrap_or_default();
    let country = if scope.country.is_empty() {
        None
    } else {
        Some(
            parse_country(&scope.country)
                .map_err(|reason| Error::invalid(format!("{field}.country"), reason))?,
        )
    };
    if !scope.sector.is_empty() {
        validate_sector(&scope.sector)
            .map_err(|reason| Error::invalid(format!("{field}.sector"), reason))?;
    }
    match (country, scope.org.is_empty(), scope.sector.is_empty()) {
        (None, true, true) => Ok(Scope::Global),
        (Some(cc), true, true) => Ok(Scope::Country(cc)),
        (None, false, true) => Ok(Scope::Org(scope.org)),
        (None, true, false) => Ok(Scope::Sector(scope.sector)),
        (Some(cc), true, false) => Ok(Scope::CountrySector(cc, scope.sector)),
        (_, false, _) => Err(Error::invalid(
            field,
            "org cannot be combined with country or sector",
        )),
    }
}

fn validate_sector(sector: &str) -> Result<(), String> {
    if sector.len() > 64
        || sector
            .chars()
            .any(|c| c.is_control() || c == '/' || c.is_uppercase())
    {
        return Err(format!(
            "{} is not a sector label (lower case, no '/', at most 64 bytes)",
            quoted(sector)
        ));
    }
    Ok(())
}

fn confidence(value: f64) -> f64 {
    if value == 0.0 {
        DEFAULT_CONFIDENCE
    } else {
        value
    }
}

fn policy_pb(p: NamespacePolicy) -> pb::NamespacePolicy {
    pb::NamespacePolicy {
        precision: u32::from(p.precision),
        max_age_days: p.max_age_days,
        max_future_skew_seconds: p.max_future_skew_seconds,
        retention_days: Some(p.retention_days),
    }
}

fn namespace_info(engine: &Engine, ns: &Namespace) -> Result<pb::NamespaceInfo, Error> {
    let extent = query::extent(engine, ns)?;
    Ok(pb::NamespaceInfo {
        name: ns.name.clone(),
        policy: Some(policy_pb(ns.policy)),
        seed_fingerprint: fingerprint_hex(ns.seed),
        first_day: extent.map(|w| w.from.to_string()).unwrap_or_default(),
        end_day: extent.map(|w| w.to.to_string()).unwrap_or_default(),
        table_versions: query::table_versions(engine, ns),
    })
}

/// Runs blocking domain code (sled reads, merges) without stalling the
/// other tasks of the async workers. Records the latency under `rpc` when
/// it is a query RPC.
///
/// On the multi-threaded runtime (the server's) the closure runs right here
/// under `block_in_place`, which hands this worker's other tasks to another
/// thread: a query that is answered from memory in microseconds then costs
/// no thread switch (measured at scale 0.1 against `spawn_blocking`: 60-160
/// us less per query, a third of a one-key query; docs/performance-history.md).
/// Elsewhere (a current-thread runtime, e.g. some tests) it goes to the
/// blocking pool.
async fn blocking<T, F>(engine: &Arc<Engine>, rpc: &'static str, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
{
    let started = std::time::Instant::now();
    let engine = engine.clone();
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let result = if multi_thread {
        tokio::task::block_in_place(|| f(&engine)).map_err(status)
    } else {
        tokio::task::spawn_blocking({
            let engine = engine.clone();
            move || f(&engine)
        })
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(status)
    };
    observe(&engine, rpc, started);
    result
}

/// Records a query's time in the metrics.
fn observe(engine: &Engine, rpc: &'static str, started: std::time::Instant) {
    if let Some(h) = engine.metrics().query(rpc) {
        h.observe(started.elapsed());
    }
}

/// [`blocking`] for reads: a cluster node that may be too far behind the
/// cluster's log refuses them (UNAVAILABLE) so that the client asks
/// another node.
async fn reading<T, F>(engine: &Arc<Engine>, rpc: &'static str, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
{
    engine.check_readable().map_err(status)?;
    blocking(engine, rpc, f).await
}

/// [`reading`] for a one-key read: answered on the async worker itself
/// when every sketch it needs is in the cache and no writer holds the
/// memtables ([`crate::store::from_memory_only`]), which spares it the hand-off
/// of the worker's other tasks (a third of a cached one-key query's time);
/// otherwise as [`reading`], starting over.
async fn reading_cached<T, F>(engine: &Arc<Engine>, rpc: &'static str, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: Fn(&Engine) -> Result<T, Error> + Send + 'static,
{
    engine.check_readable().map_err(status)?;
    let started = std::time::Instant::now();
    match crate::store::from_memory_only(|| f(engine)) {
        Err(Error::NotInMemory) => blocking(engine, rpc, f).await,
        answered => {
            observe(engine, rpc, started);
            answered.map_err(status)
        }
    }
}

#[derive(Clone)]
pub struct IngestService {
    engine: Arc<Engine>,
}

impl IngestService {
    pub fn new(engine: Arc<Engine>) -> Self {
        IngestService { engine }
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn ingest(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Collector)?;
        let r = request.into_inner();
        let batch = ObservationBatch {
            namespace: r.namespace,
            collector: r.collector_id,
            sequence: r.sequence,
            ipv4: r.ipv4,
            ipv6: r.ipv6,
            unix_seconds: r.unix_seconds,
            org_dict: r.org_dict,
            org_index: r.org_index,
            country_dict: r.country_dict,
            country_index: r.country_index,
        };
        let applied = self.engine.ingest(batch).await.map_err(status)?;
        Ok(Response::new(pb::IngestResponse {
            rows_accepted: applied.rows,
            duplicate: applied.duplicate,
            rows_attributed: applied.attributed,
            rows_unattributed: applied.unattributed,
        }))
    }
}

#[derive(Clone)]
pub struct QueryService {
    engine: Arc<Engine>,
}

impl QueryService {
    pub fn new(engine: Arc<Engine>) -> Self {
        QueryService { engine }
    }
}

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let metric = metric(r.metric).map_err(status)?;
        let scope = scope(r.scope).map_err(status)?;
        let window = DayWindow::parse("from", &r.from, "to", &r.to).map_err(status)?;
        let confidence = confidence(r.confidence);
        let namespace = r.namespace;
        let answer = reading_cached(&self.engine, "count", move |e| {
            query::count(e, &namespace, metric, &scope, window, confidence)
        })
        .await?;
        Ok(Response::new(pb::CountResponse {
            estimate: Some(estimate_pb(answer.estimate)),
            covered_from: answer.covered.from.to_string(),
            covered_to: answer.covered.to.to_string(),
        }))
    }

    async fn observations(
        &self,
        request: Request<pb::ObservationsRequest>,
    ) -> Result<Response<pb::ObservationsResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let scope = scope(r.scope).map_err(status)?;
        let window = DayWindow::parse("from", &r.from, "to", &r.to).map_err(status)?;
        let namespace = r.namespace;
        let observations = reading(&self.engine, "observations", move |e| {
            query::observations(e, &namespace, &scope, window)
        })
        .await?;
        Ok(Response::new(pb::ObservationsResponse { observations }))
    }

    type GroupByStream = RowStream<pb::GroupRow>;

    async fn group_by(
        &self,
        request: Request<pb::GroupByRequest>,
    ) -> Result<Response<Self::GroupByStream>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let spec = group_spec(r.metric, r.by, r.within, r.confidence, r.limit)?;
        let window = DayWindow::parse("from", &r.from, "to", &r.to).map_err(status)?;
        let namespace = r.namespace;
        let rows = reading(&self.engine, "group_by", move |e| {
            query::group(e, &namespace, &spec, window)
        })
        .await?;
        Ok(stream(rows.into_iter().map(|row| {
            let (org_name, org_country) = label_pb(row.org);
            pb::GroupRow {
                group: row.group,
                estimate: Some(estimate_pb(row.estimate)),
                org_name,
                org_country,
            }
        })))
    }

    type CompareStream = RowStream<pb::CompareRow>;

    async fn compare(
        &self,
        request: Request<pb::CompareRequest>,
    ) -> Result<Response<Self::CompareStream>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let spec = group_spec(r.metric, r.by, r.within, r.confidence, r.limit)?;
        let (a, b) = two_windows(&r.a_from, &r.a_to, &r.b_from, &r.b_to)?;
        let namespace = r.namespace;
        let rows = reading(&self.engine, "compare", move |e| {
            query::compare(e, &namespace, &spec, a, b)
        })
        .await?;
        Ok(stream(rows.into_iter().map(|row| {
            let (org_name, org_country) = label_pb(row.org);
            pb::CompareRow {
                group: row.group,
                a: Some(estimate_pb(row.a)),
                b: Some(estimate_pb(row.b)),
                change_pct: row.change_pct.map(estimate_pb),
                org_name,
                org_country,
            }
        })))
    }

    async fn retention(
        &self,
        request: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let scope = scope(r.scope).map_err(status)?;
        let (a, b) = two_windows(&r.a_from, &r.a_to, &r.b_from, &r.b_to)?;
        let namespace = r.namespace;
        let ret = reading(&self.engine, "retention", move |e| {
            query::retention(e, &namespace, &scope, a, b)
        })
        .await?;
        Ok(Response::new(pb::RetentionResponse {
            in_a: ret.in_a,
            in_both: ret.in_both,
            share: ret.share(),
            exact: true,
        }))
    }

    async fn overlap(
        &self,
        request: Request<pb::OverlapRequest>,
    ) -> Result<Response<pb::OverlapResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let scope = scope(r.scope).map_err(status)?;
        let (a, b) = two_windows(&r.a_from, &r.a_to, &r.b_from, &r.b_to)?;
        let confidence = confidence(r.confidence);
        let namespace = r.namespace;
        let o = reading(&self.engine, "overlap", move |e| {
            query::overlap(e, &namespace, &scope, a, b, confidence)
        })
        .await?;
        Ok(Response::new(pb::OverlapResponse {
            a: Some(estimate_pb(o.a)),
            b: Some(estimate_pb(o.b)),
            both: Some(estimate_pb(o.both)),
            either: Some(estimate_pb(o.either)),
        }))
    }

    async fn series(
        &self,
        request: Request<pb::SeriesRequest>,
    ) -> Result<Response<pb::SeriesResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Reader)?;
        let r = request.into_inner();
        let metric = metric(r.metric).map_err(status)?;
        let scope = scope(r.scope).map_err(status)?;
        let window = DayWindow::parse("from", &r.from, "to", &r.to).map_err(status)?;
        let step = Step::parse("step", &r.step).map_err(status)?;
        let confidence = confidence(r.confidence);
        let namespace = r.namespace;
        let points = reading(&self.engine, "series", move |e| {
            query::series(e, &namespace, metric, &scope, window, step, confidence)
        })
        .await?;
        Ok(Response::new(pb::SeriesResponse {
            points: points
                .into_iter()
                .map(|(w, e)| pb::SeriesPoint {
                    from: w.from.to_string(),
                    to: w.to.to_string(),
                    estimate: Some(estimate_pb(e)),
                })
                .collect(),
        }))
    }
}

/// A server stream of already computed rows.
pub type RowStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn stream<T: Send + 'static>(rows: impl Iterator<Item = T>) -> Response<RowStream<T>> {
    let rows: Vec<Result<T, Status>> = rows.map(Ok).collect();
    Response::new(Box::pin(tokio_stream::iter(rows)))
}

fn group_spec(
    metric_value: i32,
    by: i32,
    within: Option<pb::Scope>,
    confidence_value: f64,
    limit: u32,
) -> Result<GroupSpec, Status> {
    Ok(GroupSpec {
        metric: metric(metric_value).map_err(status)?,
        by: group_kind(by).map_err(status)?,
        within: scope_field("within", within).map_err(status)?,
        confidence: confidence(confidence_value),
        limit: limit as usize,
    })
}

fn two_windows(
    a_from: &str,
    a_to: &str,
    b_from: &str,
    b_to: &str,
) -> Result<(DayWindow, DayWindow), Status> {
    Ok((
        DayWindow::parse("a_from", a_from, "a_to", a_to).map_err(status)?,
        DayWindow::parse("b_from", b_from, "b_to", b_to).map_err(status)?,
    ))
}

fn group_kind(value: i32) -> Result<GroupBy, Error> {
    match pb::GroupKind::try_from(value) {
        Ok(pb::GroupKind::Country) => Ok(GroupBy::Country),
        Ok(pb::GroupKind::Org) => Ok(GroupBy::Org),
        Ok(pb::GroupKind::Sector) => Ok(GroupBy::Sector),
        _ => Err(Error::invalid(
            "by",
            format!("{value} is not GROUP_KIND_COUNTRY, GROUP_KIND_ORG or GROUP_KIND_SECTOR"),
        )),
    }
}

#[derive(Clone)]
pub struct AdminService {
    engine: Arc<Engine>,
}

impl AdminService {
    pub fn new(engine: Arc<Engine>) -> Self {
        AdminService { engine }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        authorize(&request, &request.get_ref().name, Role::Admin)?;
        let r = request.into_inner();
        let defaults = self.engine.catalog().default_policy_for(&r.name);
        let p = r.policy.unwrap_or_default();
        let precision = match p.precision {
            0 => defaults.precision,
            n => u8::try_from(n).map_err(|_| {
                status(Error::invalid(
                    "policy.precision",
                    format!("{n} is outside 4..=18"),
                ))
            })?,
        };
        let policy = NamespacePolicy {
            precision,
            max_age_days: if p.max_age_days == 0 {
                defaults.max_age_days
            } else {
                p.max_age_days
            },
            max_future_skew_seconds: if p.max_future_skew_seconds == 0 {
                defaults.max_future_skew_seconds
            } else {
                p.max_future_skew_seconds
            },
            retention_days: p.retention_days.unwrap_or(defaults.retention_days),
        };
        let ns = self
            .engine
            .create_namespace(&r.name, policy)
            .await
            .map_err(status)?;
        let info = blocking(&self.engine, "create_namespace", move |e| {
            namespace_info(e, &ns)
        })
        .await?;
        Ok(Response::new(info))
    }

    async fn get_namespace(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        authorize(&request, &request.get_ref().name, Role::Reader)?;
        let name = request.into_inner().name;
        let info = reading(&self.engine, "get_namespace", move |e| {
            let ns = e.catalog().require("name", &name)?;
            namespace_info(e, &ns)
        })
        .await?;
        Ok(Response::new(info))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let caller = authorize_somewhere(&request, Role::Reader)?;
        let namespaces = reading(&self.engine, "list_namespaces", move |e| {
            e.catalog()
                .list()
                .iter()
                .filter(|ns| caller.may(Role::Reader, &ns.name))
                .map(|ns| namespace_info(e, ns))
                .collect()
        })
        .await?;
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        authorize(&request, &request.get_ref().name, Role::Admin)?;
        let name = request.into_inner().name;
        let records_removed = self.engine.delete_namespace(&name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteNamespaceResponse {
            name,
            records_removed,
        }))
    }

    async fn reload_tables(
        &self,
        request: Request<pb::ReloadTablesRequest>,
    ) -> Result<Response<pb::TablesInfo>, Status> {
        authorize_everywhere(&request, Role::Admin)?;
        let tables = blocking(&self.engine, "reload_tables", |e| e.reload_tables()).await?;
        Ok(Response::new(tables_info(&tables)))
    }

    async fn get_tables(
        &self,
        request: Request<pb::GetTablesRequest>,
    ) -> Result<Response<pb::TablesInfo>, Status> {
        authorize_everywhere(&request, Role::Admin)?;
        Ok(Response::new(tables_info(&self.engine.tables())))
    }

    type BackupStream = RowStream<pb::BackupChunk>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        authorize_everywhere(&request, Role::Admin)?;
        backup::stream(self.engine.clone()).await
    }
}

fn tables_info(tables: &Attributor) -> pb::TablesInfo {
    let stats = tables.stats();
    pb::TablesInfo {
        version: tables.version().to_owned(),
        orgs: stats.orgs as u64,
        ipv4_intervals: stats.lookup_intervals_v4 as u64,
        ipv6_intervals: stats.lookup_intervals_v6 as u64,
    }
}
