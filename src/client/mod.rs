//! A small client for sketchd's gRPC API, used by the CLI and tests.
//!
//! [`BatchBuilder`] turns row-shaped observations into the columnar,
//! dictionary-coded `IngestRequest` (IPv4 rows first, then IPv6 rows).
//! [`Client`] wraps the generated clients with typed calls; with
//! [`ClientOptions`] it sends a bearer token and speaks TLS (optionally
//! with a client certificate).
//! [`Collector`] sends observations with batching, retries and exactly-once
//! sequence numbers; [`formats`] reads CSV, NDJSON and PEEROBS1 inputs.
//!
//! Errors are sentences: a server's refusal is its message (which names the
//! field and says what to do), and a connection that cannot be made or
//! breaks is described by its cause (nothing listening, a host that does
//! not resolve, a TLS port dialled in plain text, a certificate refused)
//! with the URL, never as a `Debug` dump. A URL without a scheme
//! (`HOST:PORT`) means `http://`, or `https://` with TLS options.

pub mod collector;
pub mod formats;

pub use collector::{Collector, CollectorError, CollectorOptions, RetryPolicy, Sequences, Summary};

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use crate::access::{ClientOptions, ClientTls};
use crate::pb;
use crate::query::{CompareRow, GroupBy, GroupRow, Metric, OrgLabel, Overlap, Retention, Scope};
use crate::sketch::Estimate;
use crate::time::{Day, DayWindow};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made; `reason` is a sentence.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server answered with an error; its message is the sentence.
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// The connection failed during a call, before an answer.
    #[error("the connection to {url} failed: {reason}")]
    Broken { url: String, reason: String },
    #[error("bad answer from server: {0}")]
    BadAnswer(String),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::Status(status)
    }
}

/// One observation, as a collector sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub ip: IpAddr,
    pub unix_seconds: i64,
    pub org: Option<String>,
    pub country: Option<String>,
}

/// Builds one columnar batch.
#[derive(Default)]
pub struct BatchBuilder {
    v4: Vec<(u32, i64, u32, u32)>,
    v6: Vec<([u8; 16], i64, u32, u32)>,
    /// Where each IPv6 row was pushed (0-based, ascending).
    v6_at: Vec<usize>,
    orgs: Dict,
    countries: Dict,
}

/// The order rows were pushed in. The server numbers a batch's IPv4 rows
/// first, then its IPv6 rows; this maps its row numbers back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowOrder {
    v4: usize,
    v6_at: Vec<usize>,
}

impl RowOrder {
    /// The 0-based push position of the server's row `row`.
    pub fn pushed(&self, row: usize) -> Option<usize> {
        if row >= self.v4 {
            return self.v6_at.get(row - self.v4).copied();
        }
        // The row-th IPv4 row: every IPv6 row pushed before it moves it on.
        let mut at = row;
        for &v6 in &self.v6_at {
            if v6 > at {
                break;
            }
            at += 1;
        }
        Some(at)
    }
}

#[derive(Default)]
struct Dict {
    entries: Vec<String>,
    index: HashMap<String, u32>,
}

impl Dict {
    /// 0 for none, else the 1-based index of the entry.
    fn code(&mut self, value: Option<&str>) -> u32 {
        let Some(value) = value else { return 0 };
        if let Some(&i) = self.index.get(value) {
            return i;
        }
        self.entries.push(value.to_owned());
        let i = self.entries.len() as u32;
        self.index.insert(value.to_owned(), i);
        i
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, obs: &Observation) {
        let org = self.orgs.code(obs.org.as_deref());
        let country = self.countries.code(obs.country.as_deref());
        match obs.ip {
            IpAddr::V4(v4) => self
                .v4
                .push((u32::from(v4), obs.unix_seconds, org, country)),
            IpAddr::V6(v6) => {
                self.v6_at.push(self.v4.len() + self.v6.len());
                self.v6.push((v6.octets(), obs.unix_seconds, org, country))
            }
        }
    }

    /// The order the rows were pushed in, for the server's row numbers.
    pub fn order(&self) -> RowOrder {
        RowOrder {
            v4: self.v4.len(),
            v6_at: self.v6_at.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request for `namespace`, identified by (collector, sequence).
    pub fn build(&self, namespace: &str, collector: &str, sequence: u64) -> pb::IngestRequest {
        let rows = self.len();
        let mut req = pb::IngestRequest {
            namespace: namespace.to_owned(),
            collector_id: collector.to_owned(),
            sequence,
            ipv4: Vec::with_capacity(self.v4.len()),
            ipv6: Vec::with_capacity(self.v6.len() * 16),
            unix_seconds: Vec::with_capacity(rows),
            org_dict: self.orgs.entries.clone(),
            org_index: Vec::with_capacity(rows),
            country_dict: self.countries.entries.clone(),
            country_index: Vec::with_capacity(rows),
        };
        for &(ip, t, o, c) in &self.v4 {
            req.ipv4.push(ip);
            req.unix_seconds.push(t);
            req.org_index.push(o);
            req.country_index.push(c);
        }
        for (ip, t, o, c) in &self.v6 {
            req.ipv6.extend_from_slice(ip);
            req.unix_seconds.push(*t);
            req.org_index.push(*o);
            req.country_index.push(*c);
        }
        if req.org_dict.is_empty() {
            req.org_index.clear();
        }
        if req.country_dict.is_empty() {
            req.country_index.clear();
        }
        req
    }
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The errors of `error`'s source chain, outermost first.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// Why a connection could not be made, as a sentence.
fn connect_reason(target: &Target, error: &tonic::transport::Error) -> String {
    let io = chain(error).find_map(|e| e.downcast_ref::<std::io::Error>());
    if let Some(io) = io {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                return format!(
                    "nothing is listening there (connection refused); is `sketchd serve` \
                     running on {}?",
                    target.authority
                )
            }
            std::io::ErrorKind::InvalidData if target.tls => {
                return format!(
                    "the server's TLS certificate was refused ({}); pass the CA that signed \
                     it with --ca-cert FILE, and --tls-domain NAME if it is issued to another name",
                    io.get_ref()
                        .map_or_else(|| io.to_string(), |inner| inner.to_string())
                )
            }
            _ => {}
        }
    }
    transport_reason(target, error)
}

/// A transport failure as a sentence: its most specific cause, without
/// the `Debug` forms the transport stack puts in its own messages.
fn transport_reason(target: &Target, error: &(dyn std::error::Error + 'static)) -> String {
    let texts: Vec<String> = chain(error).map(|e| e.to_string()).collect();
    if texts.iter().any(|t| t.starts_with("dns error")) {
        let host = target
            .authority
            .rsplit_once(':')
            .map_or(target.authority.as_str(), |(host, _)| host);
        return format!("the host {host} does not resolve; check the name");
    }
    if texts.iter().any(|t| t.contains("timed out")) {
        return format!(
            "no answer within {} s; check the address {} (and any firewall in between)",
            CONNECT_TIMEOUT.as_secs(),
            target.authority
        );
    }
    if let Some(io) = chain(error).find_map(|e| e.downcast_ref::<std::io::Error>()) {
        return io.to_string();
    }
    texts
        .into_iter()
        .rev()
        .find(|t| !t.is_empty() && !t.contains("Error(") && !t.contains("{ "))
        .unwrap_or_else(|| "the transport failed".into())
}

/// Whether the connection was closed before an answer, or the answer was
/// no HTTP/2: what a TLS server does to a client that speaks plain HTTP/2
/// to it (it closes, or its TLS alert reads as a malformed frame; closed
/// before the HTTP/2 handshake ended, the connection "was not ready").
fn not_plain_http2(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error).any(|e| {
        let text = e.to_string();
        text.contains("connection closed")
            || text.contains("connection was not ready")
            || text.contains("connection reset")
            || text.contains("frame with invalid size")
            || text.contains("connection error detected")
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::BrokenPipe
                )
            })
    })
}

/// The server's answer to a count.
#[derive(Clone, Copy, Debug)]
pub struct CountReply {
    pub estimate: Estimate,
    pub covered: DayWindow,
}

impl ClientTls {
    fn config(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_cert_pem {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(cert, key)),
            (None, None) => {}
            _ => {
                return Err("a client certificate needs its key, and a key its certificate".into())
            }
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}

/// Adds the bearer token (if any) to every call. `Debug` is redacted.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(<redacted>)"
        } else {
            "BearerToken(None)"
        })
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel the generated clients of a [`Client`] use.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// A connection to one server.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    token: BearerToken,
    target: Arc<Target>,
}

/// Where a client connects, for messages.
#[derive(Debug)]
struct Target {
    /// The URL with its scheme.
    url: String,
    /// `host:port`.
    authority: String,
    tls: bool,
}

impl Client {
    /// Connects in plain text without a token.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with a token and/or TLS.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let (endpoint, token, target) = Client::endpoint(url, &options)?;
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            url: target.url.clone(),
            reason: connect_reason(&target, &e),
        })?;
        Ok(Client {
            channel,
            token,
            target: Arc::new(target),
        })
    }

    /// A client that connects on first use and reconnects as needed (for
    /// long-lived callers such as replication).
    pub fn lazy_with(url: &str, options: &ClientOptions) -> Result<Client, ClientError> {
        let (endpoint, token, target) = Client::endpoint(url, options)?;
        Ok(Client {
            channel: endpoint.connect_lazy(),
            token,
            target: Arc::new(target),
        })
    }

    /// The URL this client connects to (with its scheme).
    pub fn url(&self) -> &str {
        &self.target.url
    }

    fn endpoint(
        url: &str,
        options: &ClientOptions,
    ) -> Result<(Endpoint, BearerToken, Target), ClientError> {
        let tls = options.tls.is_some();
        let url = match url.split_once("://") {
            Some(_) => url.to_owned(),
            None if tls => format!("https://{url}"),
            None => format!("http://{url}"),
        };
        let err = |reason: String| ClientError::Connect {
            url: url.clone(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").expect("a scheme");
        let authority = rest.split('/').next().unwrap_or(rest).to_owned();
        match scheme {
            "http" | "https" => {}
            other => {
                return Err(err(format!(
                    "the scheme {other:?} is not http or https; give the server as \
                     http://HOST:PORT (or HOST:PORT)"
                )))
            }
        }
        if scheme == "https" && !tls {
            return Err(err(
                "an https:// server needs the CA certificate that signed its certificate: \
                 pass --ca-cert FILE (or use http:// for a server without TLS)"
                    .into(),
            ));
        }
        let token = match &options.token {
            Some(token) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {}", token.trim()).parse().map_err(|_| {
                        err("the token has characters that cannot travel in a header: \
                             a token is visible ASCII (check --token-file or SKETCHD_TOKEN)"
                            .into())
                    })?;
                value.set_sensitive(true);
                BearerToken(Some(value))
            }
            None => BearerToken(None),
        };
        // TLS options make an http:// URL https://.
        let endpoint_url = match url.strip_prefix("http://") {
            Some(rest) if tls => format!("https://{rest}"),
            _ => url.clone(),
        };
        let mut endpoint = Endpoint::from_shared(endpoint_url)
            .map_err(|e| err(format!("{e}: give the server as http://HOST:PORT")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &options.tls {
            endpoint = endpoint
                .tls_config(tls.config().map_err(err)?)
                .map_err(|e| err(format!("the TLS options do not work: {e}")))?;
        }
        let target = Target {
            url,
            authority,
            tls,
        };
        Ok((endpoint, token, target))
    }

    fn authed(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    /// The error of a failed call: the server's answer as it is; a broken
    /// connection (tonic gives such a status the transport error as its
    /// source) as [`ClientError::Broken`], with its cause as a sentence.
    fn failed(&self, status: tonic::Status) -> ClientError {
        let Some(source) = status.source() else {
            return ClientError::Status(status);
        };
        let reason = if !self.target.tls && not_plain_http2(source) {
            "the server closed it or answered something other than plain HTTP/2; if it \
             serves TLS, use https:// and --ca-cert FILE"
                .to_owned()
        } else {
            transport_reason(&self.target, source)
        };
        ClientError::Broken {
            url: self.target.url.clone(),
            reason,
        }
    }

    pub fn ingest_client(&self) -> pb::ingest_client::IngestClient<AuthChannel> {
        pb::ingest_client::IngestClient::new(self.authed()).max_encoding_message_size(usize::MAX)
    }

    pub fn query_client(&self) -> pb::query_client::QueryClient<AuthChannel> {
        pb::query_client::QueryClient::new(self.authed())
    }

    pub fn admin_client(&self) -> pb::admin_client::AdminClient<AuthChannel> {
        pb::admin_client::AdminClient::new(self.authed())
    }

    pub async fn ingest(
        &self,
        request: pb::IngestRequest,
    ) -> Result<pb::IngestResponse, ClientError> {
        Ok(self
            .ingest_client()
            .ingest(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }

    pub async fn count(
        &self,
        namespace: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
    ) -> Result<CountReply, ClientError> {
        let request = pb::CountRequest {
            namespace: namespace.to_owned(),
            metric: metric_pb(metric),
            scope: Some(scope_pb(scope)),
            from: window.from.to_string(),
            to: window.to.to_string(),
            confidence: 0.0,
        };
        let reply = self
            .query_client()
            .count(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        Ok(CountReply {
            estimate: estimate(reply.estimate)?,
            covered: window_of(&reply.covered_from, &reply.covered_to)?,
        })
    }

    pub async fn observations(
        &self,
        namespace: &str,
        scope: &Scope,
        window: DayWindow,
    ) -> Result<u64, ClientError> {
        let request = pb::ObservationsRequest {
            namespace: namespace.to_owned(),
            scope: Some(scope_pb(scope)),
            from: window.from.to_string(),
            to: window.to.to_string(),
        };
        Ok(self
            .query_client()
            .observations(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner()
            .observations)
    }
}

impl Client {
    pub async fn group(
        &self,
        namespace: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        window: DayWindow,
        limit: u32,
    ) -> Result<Vec<GroupRow>, ClientError> {
        let request = pb::GroupByRequest {
            namespace: namespace.to_owned(),
            metric: metric_pb(metric),
            by: group_pb(by),
            within: Some(scope_pb(within)),
            from: window.from.to_string(),
            to: window.to.to_string(),
            limit,
            confidence: 0.0,
        };
        let mut stream = self
            .query_client()
            .group_by(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let mut rows = Vec::new();
        while let Some(row) = stream.message().await.map_err(|s| self.failed(s))? {
            rows.push(GroupRow {
                org: label_of(&row.org_name, &row.org_country),
                group: row.group,
                estimate: estimate(row.estimate)?,
            });
        }
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn compare(
        &self,
        namespace: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        a: DayWindow,
        b: DayWindow,
        limit: u32,
    ) -> Result<Vec<CompareRow>, ClientError> {
        let request = pb::CompareRequest {
            namespace: namespace.to_owned(),
            metric: metric_pb(metric),
            by: group_pb(by),
            within: Some(scope_pb(within)),
            a_from: a.from.to_string(),
            a_to: a.to.to_string(),
            b_from: b.from.to_string(),
            b_to: b.to.to_string(),
            limit,
            confidence: 0.0,
        };
        let mut stream = self
            .query_client()
            .compare(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let mut rows = Vec::new();
        while let Some(row) = stream.message().await.map_err(|s| self.failed(s))? {
            rows.push(CompareRow {
                org: label_of(&row.org_name, &row.org_country),
                group: row.group,
                a: estimate(row.a)?,
                b: estimate(row.b)?,
                change_pct: row.change_pct.map(|e| estimate(Some(e))).transpose()?,
            });
        }
        Ok(rows)
    }

    pub async fn retention(
        &self,
        namespace: &str,
        scope: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Result<Retention, ClientError> {
        let request = pb::RetentionRequest {
            namespace: namespace.to_owned(),
            scope: Some(scope_pb(scope)),
            a_from: a.from.to_string(),
            a_to: a.to.to_string(),
            b_from: b.from.to_string(),
            b_to: b.to.to_string(),
        };
        let r = self
            .query_client()
            .retention(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        Ok(Retention {
            in_a: r.in_a,
            in_both: r.in_both,
        })
    }

    pub async fn overlap(
        &self,
        namespace: &str,
        scope: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Result<Overlap, ClientError> {
        let request = pb::OverlapRequest {
            namespace: namespace.to_owned(),
            scope: Some(scope_pb(scope)),
            a_from: a.from.to_string(),
            a_to: a.to.to_string(),
            b_from: b.from.to_string(),
            b_to: b.to.to_string(),
            confidence: 0.0,
        };
        let r = self
            .query_client()
            .overlap(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        Ok(Overlap {
            a: estimate(r.a)?,
            b: estimate(r.b)?,
            both: estimate(r.both)?,
            either: estimate(r.either)?,
        })
    }

    /// `step` is `day`, `week`, `month` or `Nd`.
    pub async fn series(
        &self,
        namespace: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
        step: &str,
    ) -> Result<Vec<(DayWindow, Estimate)>, ClientError> {
        let request = pb::SeriesRequest {
            namespace: namespace.to_owned(),
            metric: metric_pb(metric),
            scope: Some(scope_pb(scope)),
            from: window.from.to_string(),
            to: window.to.to_string(),
            step: step.to_owned(),
            confidence: 0.0,
        };
        let r = self
            .query_client()
            .series(request)
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        r.points
            .into_iter()
            .map(|p| Ok((window_of(&p.from, &p.to)?, estimate(p.estimate)?)))
            .collect()
    }
}

/// Replication: a node's push state and the regions merged into it.
impl Client {
    pub fn replication_client(&self) -> pb::replication_client::ReplicationClient<AuthChannel> {
        pb::replication_client::ReplicationClient::new(self.authed())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    pub async fn list_namespaces(&self) -> Result<Vec<pb::NamespaceInfo>, ClientError> {
        Ok(self
            .admin_client()
            .list_namespaces(pb::ListNamespacesRequest {})
            .await
            .map_err(|s| self.failed(s))?
            .into_inner()
            .namespaces)
    }

    pub async fn get_namespace(&self, name: &str) -> Result<pb::NamespaceInfo, ClientError> {
        Ok(self
            .admin_client()
            .get_namespace(pb::GetNamespaceRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }

    /// Creates a namespace (0 in a policy field: the server's default).
    pub async fn create_namespace(
        &self,
        name: &str,
        policy: pb::NamespacePolicy,
    ) -> Result<pb::NamespaceInfo, ClientError> {
        Ok(self
            .admin_client()
            .create_namespace(pb::CreateNamespaceRequest {
                name: name.to_owned(),
                policy: Some(policy),
            })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }

    /// Deletes a namespace and everything stored in it.
    pub async fn delete_namespace(
        &self,
        name: &str,
    ) -> Result<pb::DeleteNamespaceResponse, ClientError> {
        Ok(self
            .admin_client()
            .delete_namespace(pb::DeleteNamespaceRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }

    pub async fn replication_status(&self) -> Result<pb::ReplicationStatus, ClientError> {
        Ok(self
            .replication_client()
            .status(pb::ReplicationStatusRequest {})
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }

    /// Asks a regional node to checkpoint and push everything now; returns
    /// once its upstream acknowledged it.
    pub async fn sync(&self) -> Result<pb::SyncResponse, ClientError> {
        Ok(self
            .replication_client()
            .sync(pb::SyncRequest {})
            .await
            .map_err(|s| self.failed(s))?
            .into_inner())
    }
}

fn estimate(e: Option<pb::Estimate>) -> Result<Estimate, ClientError> {
    let e = e.ok_or_else(|| ClientError::BadAnswer("missing estimate".into()))?;
    Ok(Estimate {
        value: e.estimate,
        lower: e.lower,
        upper: e.upper,
        confidence: e.confidence,
        exact: e.exact,
    })
}

/// An org's label from a row's two string fields (`None` when both are
/// empty: not an org row, or an org the registry does not know).
fn label_of(name: &str, country: &str) -> Option<OrgLabel> {
    (!name.is_empty() || !country.is_empty()).then(|| OrgLabel {
        name: name.to_owned(),
        country: (!country.is_empty()).then(|| country.to_owned()),
    })
}

fn window_of(from: &str, to: &str) -> Result<DayWindow, ClientError> {
    let day = |s: &str| Day::parse(s).map_err(ClientError::BadAnswer);
    Ok(DayWindow {
        from: day(from)?,
        to: day(to)?,
    })
}

fn metric_pb(metric: Metric) -> i32 {
    match metric {
        Metric::Ips => pb::Metric::Ips as i32,
        Metric::Orgs => pb::Metric::Orgs as i32,
    }
}

fn group_pb(by: GroupBy) -> i32 {
    match by {
        GroupBy::Country => pb::GroupKind::Country as i32,
        GroupBy::Org => pb::GroupKind::Org as i32,
        GroupBy::Sector => pb::GroupKind::Sector as i32,
    }
}

pub fn scope_pb(scope: &Scope) -> pb::Scope {
    match scope {
        Scope::Global => pb::Scope::default(),
        Scope::Country(cc) => pb::Scope {
            country: String::from_utf8_lossy(cc).into_owned(),
            ..Default::default()
        },
        Scope::Org(org) => pb::Scope {
            org: org.clone(),
            ..Default::default()
        },
        Scope::Sector(sector) => pb::Scope {
            sector: sector.clone(),
            ..Default::default()
        },
        Scope::CountrySector(cc, sector) => pb::Scope {
            country: String::from_utf8_lossy(cc).into_owned(),
            sector: sector.clone(),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_rows_map_back_to_the_push_order() {
        let mut b = BatchBuilder::new();
        for ip in ["10.0.0.1", "::1", "10.0.0.2", "::2", "::3", "10.0.0.3"] {
            b.push(&Observation {
                ip: ip.parse().unwrap(),
                unix_seconds: 0,
                org: None,
                country: None,
            });
        }
        // The server's rows: 10.0.0.1, .2, .3, then ::1, ::2, ::3.
        let order = b.order();
        let pushed: Vec<_> = (0..7).map(|row| order.pushed(row)).collect();
        assert_eq!(
            pushed,
            [Some(0), Some(2), Some(5), Some(1), Some(3), Some(4), None]
        );
    }

    #[test]
    fn a_server_without_a_scheme_is_http_or_https_with_tls() {
        let target = |url: &str, tls: bool| {
            let options = ClientOptions {
                token: None,
                tls: tls.then(ClientTls::default),
            };
            Client::endpoint(url, &options).map(|(_, _, t)| (t.url, t.authority))
        };
        assert_eq!(
            target("127.0.0.1:50051", false).unwrap(),
            ("http://127.0.0.1:50051".into(), "127.0.0.1:50051".into())
        );
        assert_eq!(
            target("db.example:443", true).unwrap().0,
            "https://db.example:443"
        );
        let err = |url: &str, tls: bool| target(url, tls).unwrap_err().to_string();
        assert!(err("https://h:1", false).contains("pass --ca-cert FILE"));
        assert!(err("grpc://h:1", false).contains("is not http or https"));
        let token = ClientOptions {
            token: Some("bad\ntoken".into()),
            tls: None,
        };
        assert!(Client::endpoint("h:1", &token)
            .unwrap_err()
            .to_string()
            .contains("cannot travel in a header"));
    }
}
