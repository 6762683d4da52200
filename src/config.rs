//! Server configuration: a raw TOML form and the validated [`ServerConfig`].
//!
//! Two stages, as in ripgrep: [`RawConfig`] is what the file (and the command
//! line) say; [`RawConfig::validate`] turns it into a [`ServerConfig`] whose
//! every field is in range, before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{
    ClientOptions, ClientTls, Grant, Namespaces, Role, Secret, TlsConfig, TokenTable,
};
use crate::error::{Error, Result};
use crate::names::validate_region;
use crate::sketch_params::{HashSeed, DEFAULT_PRECISION, MAX_PRECISION, MIN_PRECISION};

/// Default free space kept on the data directory's file system.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 32 * 1024 * 1024;

/// `max_age_days` that accepts any past day (late data for any day is
/// welcome unless a namespace says otherwise).
pub const MAX_AGE_ANY: u32 = u32::MAX;

/// Batches waiting for the log at most, by default; beyond, callers get
/// `Overloaded` (RESOURCE_EXHAUSTED with a retry-after hint).
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;

/// Default bound of the store's decoded-sketch cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Default size of sled's page cache. At scale 1, 32 MiB peaked at 460-470
/// MiB RSS and 16 MiB at 439-467, at the same ingest rate; 8 MiB saved
/// nothing more (docs/performance-history.md).
pub const DEFAULT_SLED_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The sketch and validation policy of a namespace, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// HyperLogLog precision (4..=18).
    pub precision: u8,
    /// Oldest accepted observation, in days before now; [`MAX_AGE_ANY`]
    /// (the default) accepts any past day.
    pub max_age_days: u32,
    /// How far in the future an observation may lie, in seconds.
    pub max_future_skew_seconds: u32,
    /// Days kept, today (UTC) included; older days are removed in the
    /// background and rows for them refused. 0: every day is kept.
    pub retention_days: u32,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy {
            precision: DEFAULT_PRECISION,
            max_age_days: MAX_AGE_ANY,
            max_future_skew_seconds: 3600,
            retention_days: 0,
        }
    }
}

impl NamespacePolicy {
    /// Checks the ranges; `field` prefixes the names in errors.
    pub fn validate(&self, field: &str) -> Result<()> {
        if !(MIN_PRECISION..=MAX_PRECISION).contains(&self.precision) {
            return Err(Error::invalid(
                format!("{field}.precision"),
                format!(
                    "{} is outside {MIN_PRECISION}..={MAX_PRECISION}",
                    self.precision
                ),
            ));
        }
        if self.max_age_days == 0 {
            return Err(Error::invalid(
                format!("{field}.max_age_days"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub auto_create_namespaces: Option<bool>,
    pub max_rows_per_batch: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub checkpoint_interval_ms: Option<u64>,
    pub checkpoint_max_dirty_sketches: Option<usize>,
    /// Batches waiting for the write-ahead log at most; beyond, ingest
    /// answers RESOURCE_EXHAUSTED with a retry-after hint.
    pub ingest_queue_depth: Option<usize>,
    pub rollup_interval_ms: Option<u64>,
    /// How often namespaces' retention is applied (removing expired days).
    pub retention_interval_ms: Option<u64>,
    pub rollup_max_stale_blocks: Option<usize>,
    pub sketch_cache_bytes: Option<usize>,
    pub sled_cache_bytes: Option<usize>,
    pub memtable_max_bytes: Option<usize>,
    pub min_free_disk_bytes: Option<u64>,
    pub default_policy: Option<RawPolicy>,
    pub tables: Option<TableFiles>,
    pub replication: Option<RawReplication>,
    /// `[cluster]`: run as a node of a cluster on NATS JetStream.
    pub cluster: Option<RawCluster>,
    /// Listen on a non-loopback address although no authentication is
    /// configured.
    pub allow_insecure_remote: Option<bool>,
    pub tls: Option<RawTls>,
    pub auth: Option<RawAuth>,
    /// The hash seed secret of every namespace without its own.
    pub default_seed: Option<RawSeed>,
    /// Per-namespace settings: `[namespaces.NAME]`.
    pub namespaces: Option<BTreeMap<String, RawNamespace>>,
}

/// `[tables]`: the attribution table files to load. `Default` = nothing.
/// Plain paths: `attribution` loads them (`Attributor::load`) and picks
/// them from a directory (`TableFiles::from_dir`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableFiles {
    /// IPv4 → ASN/org ranges (`start,end,asn,name`).
    pub asn_v4: Option<PathBuf>,
    /// IPv6 → ASN/org ranges.
    pub asn_v6: Option<PathBuf>,
    /// IPv4 → country ranges (`start,end,CC`).
    pub country_v4: Option<PathBuf>,
    /// IPv6 → country ranges.
    pub country_v6: Option<PathBuf>,
    /// Operator orgs file (`org,name,country,sectors`, header required).
    pub orgs: Option<PathBuf>,
    /// Operator custom networks (`cidr,org[,country]`, header optional).
    pub networks: Option<PathBuf>,
}

/// `[replication]`: push this server's state to an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub region: Option<String>,
    pub upstream: Option<String>,
    pub push_interval_ms: Option<u64>,
    pub anti_entropy_interval_s: Option<u64>,
    /// The bearer token (role `peer`) sent to the upstream.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// TLS to the upstream: its CA, and a client certificate if it asks.
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub tls_domain: Option<String>,
}

/// `[cluster]`: one node of a cluster whose log is a NATS JetStream stream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// NATS server URLs (`nats://host:port`), any number of the cluster's.
    pub nats: Option<Vec<String>>,
    /// This node's name, unique in the cluster.
    pub node: Option<String>,
    /// Replicas of the stream, the snapshot store and the node registry.
    pub replicas: Option<usize>,
    /// Name of the cluster: the stream is `SKETCHD_<name>`.
    pub name: Option<String>,
    /// NATS credentials file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// CA certificate (PEM) of the NATS servers' TLS.
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Queries are refused when this node may be further behind the log.
    pub max_staleness_ms: Option<u64>,
    /// How often a snapshot is stored for nodes that catch up.
    pub snapshot_interval_s: Option<u64>,
}

/// `[tls]`: PEM files read at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

/// One `[[auth.tokens]]` entry: exactly one of `token_file`, `token_env`
/// and `token` (discouraged: the secret then sits in the config file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token: Option<Secret>,
    pub role: Role,
    pub namespaces: Vec<String>,
    /// Shown in logs instead of the token.
    pub name: Option<String>,
}

/// A hash seed secret: exactly one of `seed_file` and `seed_env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeed {
    pub seed_file: Option<PathBuf>,
    pub seed_env: Option<String>,
}

/// `[namespaces.NAME]`: a seed secret of its own (optional), and policy
/// fields that override `[default_policy]` when the namespace is created
/// (on first use, or by CreateNamespace for the fields it leaves at 0).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub seed_file: Option<PathBuf>,
    pub seed_env: Option<String>,
    pub precision: Option<u8>,
    pub max_age_days: Option<u32>,
    pub max_future_skew_seconds: Option<u32>,
    pub retention_days: Option<u32>,
}

impl RawNamespace {
    fn policy(&self) -> RawPolicy {
        RawPolicy {
            precision: self.precision,
            max_age_days: self.max_age_days,
            max_future_skew_seconds: self.max_future_skew_seconds,
            retention_days: self.retention_days,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub precision: Option<u8>,
    pub max_age_days: Option<u32>,
    pub max_future_skew_seconds: Option<u32>,
    pub retention_days: Option<u32>,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks every field and fills in the defaults.
    pub fn validate(self) -> Result<ServerConfig> {
        let defaults = ServerConfig::default();
        let listen = match self.listen {
            Some(text) => text
                .parse()
                .map_err(|e| Error::Config(format!("listen {text:?}: {e}")))?,
            None => defaults.listen,
        };
        let raw_policy = self.default_policy.unwrap_or_default();
        let default_policy = raw_policy.over(defaults.default_policy);
        default_policy
            .validate("default_policy")
            .map_err(|e| Error::Config(e.to_string()))?;
        let raw_namespaces = self.namespaces.unwrap_or_default();
        let mut namespace_policies = BTreeMap::new();
        for (name, raw) in &raw_namespaces {
            let raw = raw.policy();
            if raw.is_empty() {
                continue;
            }
            let policy = raw.over(default_policy);
            policy
                .validate(&format!("namespaces.{name}"))
                .map_err(|e| Error::Config(e.to_string()))?;
            namespace_policies.insert(name.clone(), policy);
        }
        let max_rows_per_batch = self
            .max_rows_per_batch
            .unwrap_or(defaults.max_rows_per_batch);
        if max_rows_per_batch == 0 {
            return Err(Error::Config(
                "max_rows_per_batch must be at least 1".into(),
            ));
        }
        let max_message_bytes = self.max_message_bytes.unwrap_or(defaults.max_message_bytes);
        if max_message_bytes < 1024 {
            return Err(Error::Config(
                "max_message_bytes must be at least 1024".into(),
            ));
        }
        let tables = self.tables.unwrap_or_default();
        let replication = match self.replication {
            None => None,
            Some(raw) => {
                let (Some(region), Some(upstream)) = (raw.region, raw.upstream) else {
                    return Err(Error::Config(
                        "[replication] needs both region and upstream".into(),
                    ));
                };
                let mut r = ReplicationConfig::new(region, upstream)?;
                if let Some(ms) = raw.push_interval_ms {
                    r.push_interval = Duration::from_millis(ms.max(10));
                }
                if let Some(s) = raw.anti_entropy_interval_s {
                    r.anti_entropy_interval = Duration::from_secs(s.max(1));
                }
                if raw.token_file.is_some() || raw.token_env.is_some() {
                    let token = read_secret(
                        "replication token",
                        raw.token_file.as_deref(),
                        raw.token_env.as_deref(),
                    )?;
                    r.client.token = Some(
                        String::from_utf8(token)
                            .map_err(|_| Error::Config("replication token: not UTF-8".into()))?,
                    );
                }
                if raw.ca_cert.is_some() || raw.client_cert.is_some() || raw.tls_domain.is_some() {
                    let read = |path: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
                        path.as_deref()
                            .map(|p| {
                                std::fs::read(p).map_err(|e| {
                                    Error::Config(format!(
                                        "replication: cannot read {}: {e}",
                                        p.display()
                                    ))
                                })
                            })
                            .transpose()
                    };
                    r.client.tls = Some(ClientTls {
                        ca_cert_pem: read(&raw.ca_cert)?,
                        client_cert_pem: read(&raw.client_cert)?,
                        client_key_pem: read(&raw.client_key)?,
                        domain: raw.tls_domain,
                    });
                }
                Some(r)
            }
        };
        let cluster = self.cluster.map(ClusterConfig::from_raw).transpose()?;
        let tls = self.tls.map(read_tls).transpose()?;
        let tokens = read_tokens(self.auth.unwrap_or_default())?;
        let seeds = read_seeds(self.default_seed, raw_namespaces)?;
        let config = ServerConfig {
            replication,
            cluster,
            listen,
            data_dir: self.data_dir.unwrap_or(defaults.data_dir),
            auto_create_namespaces: self
                .auto_create_namespaces
                .unwrap_or(defaults.auto_create_namespaces),
            max_rows_per_batch,
            max_message_bytes,
            checkpoint_interval: self
                .checkpoint_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.checkpoint_interval),
            checkpoint_max_dirty_sketches: self
                .checkpoint_max_dirty_sketches
                .unwrap_or(defaults.checkpoint_max_dirty_sketches),
            ingest_queue_depth: self
                .ingest_queue_depth
                .unwrap_or(defaults.ingest_queue_depth)
                .max(1),
            rollup_interval: self
                .rollup_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.rollup_interval),
            rollup_max_stale_blocks: self
                .rollup_max_stale_blocks
                .unwrap_or(defaults.rollup_max_stale_blocks),
            retention_interval: self
                .retention_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.retention_interval),
            sketch_cache_bytes: self
                .sketch_cache_bytes
                .unwrap_or(defaults.sketch_cache_bytes),
            sled_cache_bytes: self.sled_cache_bytes.unwrap_or(defaults.sled_cache_bytes),
            min_free_disk_bytes: self
                .min_free_disk_bytes
                .unwrap_or(defaults.min_free_disk_bytes),
            memtable_max_bytes: self
                .memtable_max_bytes
                .unwrap_or(defaults.memtable_max_bytes)
                .max(1024 * 1024),
            default_policy,
            tables,
            tls,
            tokens,
            allow_insecure_remote: self.allow_insecure_remote.unwrap_or(false),
            seeds,
            namespace_policies,
        };
        config.check_exposure(config.listen)?;
        Ok(config)
    }
}

/// Reads a secret from a file or an environment variable; one trailing
/// line break is not part of it. Errors name the file or the variable,
/// never the value.
fn read_secret(what: &str, file: Option<&Path>, env: Option<&str>) -> Result<Vec<u8>> {
    let mut bytes = match (file, env) {
        (Some(path), None) => std::fs::read(path)
            .map_err(|e| Error::Config(format!("{what}: cannot read {}: {e}", path.display())))?,
        (None, Some(var)) => std::env::var_os(var)
            .ok_or_else(|| Error::Config(format!("{what}: environment variable {var} is not set")))?
            .into_encoded_bytes(),
        _ => {
            return Err(Error::Config(format!(
                "{what}: give exactly one of a file and an environment variable"
            )))
        }
    };
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(Error::Config(format!("{what}: the secret is empty")));
    }
    Ok(bytes)
}

fn read_tls(raw: RawTls) -> Result<TlsConfig> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| Error::Config(format!("tls: cannot read {}: {e}", path.display())))
    };
    let tls = TlsConfig {
        cert_pem: read(&raw.cert)?,
        key_pem: read(&raw.key)?,
        client_ca_pem: raw.client_ca.as_deref().map(read).transpose()?,
    };
    // Builds the rustls configuration once now, so that a bad certificate
    // or key stops the start with a clear message.
    tonic::transport::Server::builder()
        .tls_config(tls.server_config())
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    Ok(tls)
}

fn read_tokens(raw: RawAuth) -> Result<TokenTable> {
    let mut table = TokenTable::new();
    for (i, entry) in raw.tokens.into_iter().enumerate() {
        let name = entry.name.unwrap_or_else(|| format!("token-{}", i + 1));
        let what = format!("auth.tokens[{i}] ({name})");
        let secret = match (&entry.token, &entry.token_file, &entry.token_env) {
            (Some(token), None, None) => token.clone(),
            (None, file, env) => {
                let bytes = read_secret(&what, file.as_deref(), env.as_deref())?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::Config(format!("{what}: the token is not UTF-8")))?;
                Secret::new(text.trim())
            }
            _ => {
                return Err(Error::Config(format!(
                    "{what}: give exactly one of token_file, token_env and token"
                )))
            }
        };
        let namespaces = Namespaces::parse(&entry.namespaces)
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
        let grant = Grant {
            role: entry.role,
            namespaces,
        };
        table
            .add(&name, &secret, grant)
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    }
    Ok(table)
}

/// Shortest hash seed secret accepted, in bytes.
pub const MIN_SEED_SECRET_LEN: usize = 16;

fn read_seed(what: &str, raw: &RawSeed) -> Result<HashSeed> {
    let secret = read_secret(what, raw.seed_file.as_deref(), raw.seed_env.as_deref())?;
    if secret.len() < MIN_SEED_SECRET_LEN {
        return Err(Error::Config(format!(
            "{what}: the seed secret is shorter than {MIN_SEED_SECRET_LEN} bytes"
        )));
    }
    Ok(HashSeed::from_secret(&secret))
}

fn read_seeds(
    default: Option<RawSeed>,
    namespaces: BTreeMap<String, RawNamespace>,
) -> Result<NamespaceSeeds> {
    let mut seeds = NamespaceSeeds::default();
    if let Some(raw) = default {
        seeds.default = read_seed("default_seed", &raw)?;
    }
    for (name, raw) in namespaces {
        crate::names::validate_name("namespaces", &name)
            .map_err(|e| Error::Config(e.to_string()))?;
        if raw.seed_file.is_none() && raw.seed_env.is_none() {
            continue;
        }
        let raw = RawSeed {
            seed_file: raw.seed_file,
            seed_env: raw.seed_env,
        };
        let seed = read_seed(&format!("namespaces.{name}"), &raw)?;
        seeds.by_namespace.insert(name, seed);
    }
    Ok(seeds)
}

impl RawPolicy {
    fn is_empty(&self) -> bool {
        self.precision.is_none()
            && self.max_age_days.is_none()
            && self.max_future_skew_seconds.is_none()
            && self.retention_days.is_none()
    }

    /// `base` with the fields this one sets.
    fn over(&self, base: NamespacePolicy) -> NamespacePolicy {
        NamespacePolicy {
            precision: self.precision.unwrap_or(base.precision),
            max_age_days: self.max_age_days.unwrap_or(base.max_age_days),
            max_future_skew_seconds: self
                .max_future_skew_seconds
                .unwrap_or(base.max_future_skew_seconds),
            retention_days: self.retention_days.unwrap_or(base.retention_days),
        }
    }
}

/// The hash seed of each namespace: its own if configured, else the
/// default. Only derived seeds are kept (their `Debug` shows fingerprints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSeeds {
    pub default: HashSeed,
    pub by_namespace: BTreeMap<String, HashSeed>,
}

impl NamespaceSeeds {
    pub fn seed_for(&self, namespace: &str) -> HashSeed {
        self.by_namespace
            .get(namespace)
            .copied()
            .unwrap_or(self.default)
    }

    /// Where the seed of `namespace` comes from, for error messages.
    pub fn source_of(&self, namespace: &str) -> String {
        if self.by_namespace.contains_key(namespace) {
            format!("[namespaces.{namespace}]")
        } else if self.default != HashSeed::DEFAULT {
            "[default_seed]".into()
        } else {
            "the built-in default seed (no [default_seed] or [namespaces.NAME] seed configured)"
                .into()
        }
    }
}

/// Which address family a range table holds, read from its first row
/// (plain or gzip CSV): `true` for IPv6.
pub fn table_is_ipv6(path: &Path) -> Result<bool> {
    use std::io::{BufRead, BufReader, Read};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut line = String::new();
    let mut lines = BufReader::new(reader);
    loop {
        line.clear();
        if lines.read_line(&mut line).map_err(|e| Error::io(path, e))? == 0 {
            return Err(Error::Config(format!(
                "{}: the table is empty",
                path.display()
            )));
        }
        if !line.trim().is_empty() {
            let first = line.split(',').next().unwrap_or("");
            return Ok(first.contains(':'));
        }
    }
}

/// The validated server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Create a namespace with `default_policy` when a batch names an
    /// unknown one.
    pub auto_create_namespaces: bool,
    pub max_rows_per_batch: usize,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// How often dirty sketches are checkpointed to sled.
    pub checkpoint_interval: Duration,
    /// Checkpoint early once this many sketches are dirty.
    pub checkpoint_max_dirty_sketches: usize,
    /// Batches waiting for the write-ahead log at most (backpressure).
    pub ingest_queue_depth: usize,
    /// How often, at most, stale rollup blocks are rebuilt while batches
    /// keep coming (they are also rebuilt when the server is idle and at
    /// shutdown).
    pub rollup_interval: Duration,
    /// How often the days namespaces' retention no longer keeps are looked
    /// for and removed (also at start).
    pub retention_interval: Duration,
    /// Rebuild stale rollup blocks early once this many are stale.
    pub rollup_max_stale_blocks: usize,
    /// Bound of the cache of decoded rollup sketches (0: none).
    pub sketch_cache_bytes: usize,
    /// sled's page cache.
    pub sled_cache_bytes: usize,
    /// Bound of the sketches held by the active memtable and the one being
    /// checkpointed, together: a checkpoint starts early at half of it, and
    /// ingest waits for a running checkpoint when both reach it.
    pub memtable_max_bytes: usize,
    /// Free space kept on the data directory's file system: below it (plus
    /// room to checkpoint the memtables) ingest is refused until space is
    /// freed, so that a checkpoint never meets a full disk.
    pub min_free_disk_bytes: u64,
    pub default_policy: NamespacePolicy,
    /// Attribution tables loaded at start.
    pub tables: TableFiles,
    /// Where to push this server's state, if anywhere.
    pub replication: Option<ReplicationConfig>,
    /// The cluster this server is a node of, if any.
    pub cluster: Option<ClusterConfig>,
    /// Serve TLS (and require client certificates when it has a client CA).
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and their roles; empty: no token authentication.
    pub tokens: TokenTable,
    /// Allow a non-loopback listen address without authentication.
    pub allow_insecure_remote: bool,
    /// Hash seeds per namespace.
    pub seeds: NamespaceSeeds,
    /// `[namespaces.NAME]` policies (`[default_policy]` with their fields).
    pub namespace_policies: BTreeMap<String, NamespacePolicy>,
}

impl ServerConfig {
    /// Whether callers are authenticated: by bearer tokens or by client
    /// certificates.
    pub fn authenticates(&self) -> bool {
        !self.tokens.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(TlsConfig::requires_client_certificates)
    }

    /// Refuses a non-loopback `listen` address when nothing authenticates
    /// callers, unless `allow_insecure_remote` says otherwise.
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<()> {
        if self.authenticates() || listen.ip().is_loopback() || self.allow_insecure_remote {
            return Ok(());
        }
        Err(Error::Config(format!(
            "listen address {listen} is not a loopback address and no authentication is \
             configured ([[auth.tokens]] or tls.client_ca): refusing to start. Configure \
             authentication, listen on 127.0.0.1, or set allow_insecure_remote = true \
             (--allow-insecure-remote) to serve anyone who can reach it"
        )))
    }
}

/// A cluster node's settings (see `cluster`).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Replicas of the stream, the snapshot store and the node registry.
    pub replicas: usize,
    /// The cluster's name: the stream is `SKETCHD_<name>`.
    pub name: String,
    pub credentials_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Reads are refused when this node may be further behind the log.
    pub max_staleness: Duration,
    /// How often a snapshot is stored for nodes that catch up.
    pub snapshot_interval: Duration,
}

impl ClusterConfig {
    /// The settings for `nats` (URLs separated by commas) and `node`, with
    /// defaults for the rest.
    pub fn new(nats: &str, node: &str) -> Result<ClusterConfig> {
        let nats: Vec<String> = nats
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let config = ClusterConfig {
            nats,
            node: node.to_owned(),
            replicas: 3,
            name: "main".into(),
            credentials_file: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            max_staleness: Duration::from_secs(5),
            snapshot_interval: Duration::from_secs(600),
        };
        config.check()?;
        Ok(config)
    }

    fn from_raw(raw: RawCluster) -> Result<ClusterConfig> {
        let (Some(nats), Some(node)) = (raw.nats, raw.node) else {
            return Err(Error::Config(
                "[cluster] needs nats = [\"nats://host:port\", ...] and node = \"name\"".into(),
            ));
        };
        let mut config = ClusterConfig::new(&nats.join(","), &node)?;
        if let Some(r) = raw.replicas {
            config.replicas = r;
        }
        if let Some(name) = raw.name {
            config.name = name;
        }
        config.credentials_file = raw.credentials_file;
        config.ca_cert = raw.ca_cert;
        config.client_cert = raw.client_cert;
        config.client_key = raw.client_key;
        if let Some(ms) = raw.max_staleness_ms {
            config.max_staleness = Duration::from_millis(ms.max(100));
        }
        if let Some(s) = raw.snapshot_interval_s {
            config.snapshot_interval = Duration::from_secs(s.max(1));
        }
        config.check()?;
        Ok(config)
    }

    /// Checks every field; errors say what to write instead.
    pub fn check(&self) -> Result<()> {
        if self.nats.is_empty() {
            return Err(Error::Config(
                "cluster: no NATS server given; write --cluster nats://HOST:PORT[,nats://HOST:PORT...]"
                    .into(),
            ));
        }
        for url in &self.nats {
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "cluster: {url:?} is not a NATS URL; write nats://HOST:PORT (or tls://HOST:PORT)"
                    ))
                })?;
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                Error::Config(format!(
                    "cluster: {url:?} has no port; write nats://HOST:PORT (NATS listens on 4222 by default)"
                ))
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(Error::Config(format!(
                    "cluster: {url:?} is not HOST:PORT with a port number"
                )));
            }
        }
        for (what, value) in [("node", &self.node), ("name", &self.name)] {
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(Error::Config(format!(
                    "cluster: {what} {value:?} must be 1 to 64 letters, digits, '-' or '_'"
                )));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::Config(format!(
                "cluster: replicas = {} is outside 1..=5 (JetStream's limit); use 3 to survive one lost machine",
                self.replicas
            )));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(Error::Config(
                "cluster: client_cert and client_key go together".into(),
            ));
        }
        Ok(())
    }
}

/// A regional server's replication settings.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// This server's region name; the upstream accounts records by it.
    pub region: String,
    /// The upstream's gRPC URL.
    pub upstream: String,
    /// How often changes are pushed.
    pub push_interval: Duration,
    /// How often digests are compared to repair lost pushes.
    pub anti_entropy_interval: Duration,
    /// Token and TLS for the connection to the upstream.
    pub client: ClientOptions,
}

impl ReplicationConfig {
    pub fn new(region: String, upstream: String) -> Result<ReplicationConfig> {
        validate_region("region", &region).map_err(|e| Error::Config(e.to_string()))?;
        if !(upstream.starts_with("http://") || upstream.starts_with("https://")) {
            return Err(Error::Config(format!(
                "upstream {upstream:?}: expected an http:// or https:// URL"
            )));
        }
        Ok(ReplicationConfig {
            region,
            upstream,
            push_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(600),
            client: ClientOptions::default(),
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./data"),
            auto_create_namespaces: true,
            max_rows_per_batch: 1_000_000,
            max_message_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_max_dirty_sketches: 100_000,
            ingest_queue_depth: DEFAULT_QUEUE_DEPTH,
            rollup_interval: Duration::from_secs(20),
            retention_interval: Duration::from_secs(600),
            rollup_max_stale_blocks: 150_000,
            sketch_cache_bytes: DEFAULT_CACHE_BYTES,
            sled_cache_bytes: DEFAULT_SLED_CACHE_BYTES,
            memtable_max_bytes: 128 * 1024 * 1024,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            default_policy: NamespacePolicy::default(),
            tables: TableFiles::default(),
            replication: None,
            cluster: None,
            tls: None,
            tokens: TokenTable::new(),
            allow_insecure_remote: false,
            seeds: NamespaceSeeds::default(),
            namespace_policies: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let raw: RawConfig = toml::from_str(
            "listen = \"127.0.0.1:6000\"\nmax_rows_per_batch = 10\n[default_policy]\nprecision = 12\n",
        )
        .unwrap();
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.listen.port(), 6000);
        assert_eq!(cfg.max_rows_per_batch, 10);
        assert_eq!(cfg.default_policy.precision, 12);
        assert_eq!(
            cfg.default_policy.max_age_days,
            NamespacePolicy::default().max_age_days
        );
    }

    #[test]
    fn table_files_come_from_the_tables_section() {
        let raw: RawConfig =
            toml::from_str("[tables]\nasn_v4 = \"asn-ipv4.csv.gz\"\norgs = \"orgs.csv\"\n")
                .unwrap();
        let cfg = raw.validate().unwrap();
        assert_eq!(
            cfg.tables.asn_v4.as_deref(),
            Some(Path::new("asn-ipv4.csv.gz"))
        );
        assert_eq!(cfg.tables.orgs.as_deref(), Some(Path::new("orgs.csv")));
        assert_eq!(cfg.tables.networks, None);
        assert!(toml::from_str::<RawConfig>("[tables]\nasn = \"x\"\n").is_err());
    }

    #[test]
    fn rejects_bad_values() {
        for text in [
            "listen = \"nowhere\"",
            "max_rows_per_batch = 0",
            "[default_policy]\nprecision = 19",
            "unknown_key = 1",
        ] {
            let result = toml::from_str::<RawConfig>(text)
                .map_err(|e| Error::Config(e.to_string()))
                .and_then(RawConfig::validate);
            assert!(result.is_err(), "{text} was accepted");
        }
    }

    fn parse(text: &str) -> Result<ServerConfig> {
        toml::from_str::<RawConfig>(text)
            .map_err(|e| Error::Config(e.to_string()))
            .and_then(RawConfig::validate)
    }

    #[test]
    fn tokens_from_file_env_and_literal_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("collector.token");
        std::fs::write(&file, "file-token-abcdefghijkl\n").unwrap();
        // A variable only this test sets.
        std::env::set_var("SKETCHD_TEST_TOKEN_CONFIG", "env-token-abcdefghijkl");
        let text = format!(
            r#"
[[auth.tokens]]
token_file = {file:?}
role = "collector"
namespaces = ["ips", "ips-test"]
name = "collector-eu"
[[auth.tokens]]
token_env = "SKETCHD_TEST_TOKEN_CONFIG"
role = "reader"
namespaces = ["*"]
[[auth.tokens]]
token = "literal-token-abcdefghijkl"
role = "admin"
namespaces = ["*"]
name = "root"
"#
        );
        let raw: RawConfig = toml::from_str(&text).unwrap();
        let raw_debug = format!("{raw:?}");
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.tokens.len(), 3);
        let eu = cfg.tokens.resolve("file-token-abcdefghijkl").unwrap();
        assert_eq!(eu.name, "collector-eu");
        assert!(eu.may(Role::Collector, "ips-test"));
        assert_eq!(
            cfg.tokens.resolve("env-token-abcdefghijkl").unwrap().name,
            "token-2"
        );
        assert!(cfg
            .tokens
            .resolve("literal-token-abcdefghijkl")
            .unwrap()
            .may_everywhere(Role::Admin));
        let debug = format!("{raw_debug} {cfg:?}");
        for secret in ["file-token", "env-token", "literal-token"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("collector-eu"));
    }

    #[test]
    fn bad_token_entries_are_refused() {
        for text in [
            // no source
            "[[auth.tokens]]\nrole = \"reader\"\nnamespaces = [\"*\"]",
            // two sources
            "[[auth.tokens]]\ntoken = \"abcdefghijklmnopq\"\ntoken_env = \"X\"\nrole = \"reader\"\nnamespaces = [\"*\"]",
            // unknown role
            "[[auth.tokens]]\ntoken = \"abcdefghijklmnopq\"\nrole = \"root\"\nnamespaces = [\"*\"]",
            // no namespaces
            "[[auth.tokens]]\ntoken = \"abcdefghijklmnopq\"\nrole = \"reader\"\nnamespaces = []",
            // too short
            "[[auth.tokens]]\ntoken = \"short\"\nrole = \"reader\"\nnamespaces = [\"*\"]",
            // unset variable
            "[[auth.tokens]]\ntoken_env = \"SKETCHD_TEST_UNSET_VARIABLE\"\nrole = \"reader\"\nnamespaces = [\"*\"]",
            "[auth]\ntoken = \"x\"",
        ] {
            assert!(parse(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn remote_listen_needs_auth_or_the_override() {
        let err = parse("listen = \"0.0.0.0:50051\"").unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(err.contains("allow_insecure_remote"), "{err}");
        parse("listen = \"0.0.0.0:50051\"\nallow_insecure_remote = true").unwrap();
        parse("listen = \"[::1]:50051\"").unwrap();
        parse(
            "listen = \"0.0.0.0:50051\"\n[[auth.tokens]]\ntoken = \"abcdefghijklmnopq\"\nrole = \"reader\"\nnamespaces = [\"*\"]",
        )
        .unwrap();
    }

    #[test]
    fn namespace_tables_override_the_default_policy_field_by_field() {
        let cfg = parse(
            "[default_policy]\nprecision = 12\nretention_days = 400\n\
             [namespaces.short]\nretention_days = 7\n",
        )
        .unwrap();
        let short = cfg.namespace_policies["short"];
        assert_eq!((short.precision, short.retention_days), (12, 7));
        assert_eq!(cfg.default_policy.retention_days, 400);
        assert!(cfg.seeds.by_namespace.is_empty());
        let err = parse("[namespaces.short]\nretention = 7\n").unwrap_err();
        assert!(err.to_string().contains("retention"), "{err}");
        let err = parse("[namespaces.short]\nprecision = 30\n").unwrap_err();
        assert!(
            err.to_string().contains("namespaces.short.precision"),
            "{err}"
        );
    }

    #[test]
    fn seeds_come_from_files_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let ips = dir.path().join("ips.seed");
        let default = dir.path().join("default.seed");
        std::fs::write(&ips, "ips-seed-secret-0123456789\n").unwrap();
        std::fs::write(&default, "default-seed-secret-0123456789").unwrap();
        let text = format!(
            "[default_seed]\nseed_file = {default:?}\n[namespaces.ips]\nseed_file = {ips:?}\n"
        );
        let cfg = parse(&text).unwrap();
        let ips_seed = HashSeed::from_secret(b"ips-seed-secret-0123456789");
        assert_eq!(cfg.seeds.seed_for("ips"), ips_seed);
        assert_eq!(
            cfg.seeds.seed_for("other"),
            HashSeed::from_secret(b"default-seed-secret-0123456789")
        );
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("seed-secret"), "{debug}");

        std::fs::write(&ips, "short").unwrap();
        assert!(parse(&text).is_err());
        assert!(parse("[namespaces.ips]\nseed_env = \"SKETCHD_TEST_UNSET_SEED\"").is_err());
        assert!(parse("[namespaces.\"bad name\"]\nseed_file = \"x\"").is_err());
        assert!(parse("[namespaces.ips]\nprecsion = 12").is_err());
    }

    #[test]
    fn tls_files_are_read_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("s.pem"), dir.path().join("s.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let text =
            format!("[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\nclient_ca = {cert_path:?}\n");
        let cfg = parse(&text).unwrap();
        let tls = cfg.tls.as_ref().unwrap();
        assert!(tls.requires_client_certificates());
        assert!(cfg.authenticates());
        assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));

        std::fs::write(&key_path, "not a key").unwrap();
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("tls"), "{err}");
        let missing = format!("[tls]\ncert = \"/nonexistent.pem\"\nkey = {key_path:?}\n");
        assert!(parse(&missing)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent.pem"));
    }
}
