//! Server configuration: a raw TOML form and the validated [`ServerConfig`].
//!
//! Two stages, as in ripgrep: [`RawConfig`] is what the file (and the command
//! line) say; [`RawConfig::validate`] turns it into a [`ServerConfig`] whose
//! every field is in range, before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::attribution::TableFiles;
use crate::error::{Error, Result};
use crate::sketch::{MAX_PRECISION, MIN_PRECISION};

/// The sketch and validation policy of a namespace, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// HyperLogLog precision (4..=18).
    pub precision: u8,
    /// Oldest accepted observation, in days before now.
    pub max_age_days: u32,
    /// How far in the future an observation may lie, in seconds.
    pub max_future_skew_seconds: u32,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy {
            precision: crate::sketch::DEFAULT_PRECISION,
            max_age_days: 3 * 366,
            max_future_skew_seconds: 3600,
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
    pub rollup_interval_ms: Option<u64>,
    pub rollup_max_stale_blocks: Option<usize>,
    pub sketch_cache_bytes: Option<usize>,
    pub default_policy: Option<RawPolicy>,
    pub tables: Option<TableFiles>,
    pub replication: Option<RawReplication>,
}

/// `[replication]`: push this server's state to an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub region: Option<String>,
    pub upstream: Option<String>,
    pub push_interval_ms: Option<u64>,
    pub anti_entropy_interval_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub precision: Option<u8>,
    pub max_age_days: Option<u32>,
    pub max_future_skew_seconds: Option<u32>,
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
        let default_policy = NamespacePolicy {
            precision: raw_policy
                .precision
                .unwrap_or(defaults.default_policy.precision),
            max_age_days: raw_policy
                .max_age_days
                .unwrap_or(defaults.default_policy.max_age_days),
            max_future_skew_seconds: raw_policy
                .max_future_skew_seconds
                .unwrap_or(defaults.default_policy.max_future_skew_seconds),
        };
        default_policy
            .validate("default_policy")
            .map_err(|e| Error::Config(e.to_string()))?;
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
                Some(r)
            }
        };
        Ok(ServerConfig {
            replication,
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
            rollup_interval: self
                .rollup_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.rollup_interval),
            rollup_max_stale_blocks: self
                .rollup_max_stale_blocks
                .unwrap_or(defaults.rollup_max_stale_blocks),
            sketch_cache_bytes: self
                .sketch_cache_bytes
                .unwrap_or(defaults.sketch_cache_bytes),
            default_policy,
            tables,
        })
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
    /// How often, at most, stale rollup blocks are rebuilt while batches
    /// keep coming (they are also rebuilt when the server is idle and at
    /// shutdown).
    pub rollup_interval: Duration,
    /// Rebuild stale rollup blocks early once this many are stale.
    pub rollup_max_stale_blocks: usize,
    /// Bound of the cache of decoded rollup sketches (0: none).
    pub sketch_cache_bytes: usize,
    pub default_policy: NamespacePolicy,
    /// Attribution tables loaded at start.
    pub tables: TableFiles,
    /// Where to push this server's state, if anywhere.
    pub replication: Option<ReplicationConfig>,
}

/// A regional server's replication settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// This server's region name; the upstream accounts records by it.
    pub region: String,
    /// The upstream's gRPC URL.
    pub upstream: String,
    /// How often changes are pushed.
    pub push_interval: Duration,
    /// How often digests are compared to repair lost pushes.
    pub anti_entropy_interval: Duration,
}

impl ReplicationConfig {
    pub fn new(region: String, upstream: String) -> Result<ReplicationConfig> {
        crate::replication::validate_region("region", &region)
            .map_err(|e| Error::Config(e.to_string()))?;
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
            checkpoint_interval: Duration::from_secs(2),
            checkpoint_max_dirty_sketches: 100_000,
            rollup_interval: Duration::from_secs(20),
            rollup_max_stale_blocks: 150_000,
            sketch_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            default_policy: NamespacePolicy::default(),
            tables: TableFiles::default(),
            replication: None,
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
}
