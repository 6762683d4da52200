//! The namespace catalog.
//!
//! A namespace is one stream of observations with a policy fixed at
//! creation (precision, age and skew limits) and a hash seed: its own
//! configured secret, the configured default, or `HashSeed::DEFAULT`. Only
//! the seed's fingerprint is stored; opening a namespace with a seed of
//! another fingerprint is refused. Namespaces get
//! a small numeric id used in storage keys and log records; ids are never
//! reused, not even after a deletion. The catalog is persisted (and flushed)
//! before a namespace is first used, so a log record never names an unknown
//! id; a deleted namespace leaves a tombstone with its id, so that log
//! records and leftover sled records of it are known to be garbage.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::{NamespacePolicy, NamespaceSeeds};
use crate::error::{quoted, Error, Result};
use crate::sketch::HashSeed;
use crate::store::keys::NamespaceId;
use crate::store::Store;
use crate::time::Day;

pub use crate::names::{validate_name, MAX_NAME_LEN};

#[derive(Debug)]
pub struct Namespace {
    pub id: NamespaceId,
    pub name: String,
    pub policy: NamespacePolicy,
    pub seed: HashSeed,
}

impl Namespace {
    /// The first day its retention keeps at `now` (`retention_days` days,
    /// today included), or `None` when it keeps every day.
    pub fn retained_from(&self, now: i64) -> Option<Day> {
        let keep = self.policy.retention_days;
        if keep == 0 {
            return None;
        }
        let today = Day::from_unix_seconds(now).unwrap_or(Day(0));
        Some(Day((today.0 + 1).saturating_sub(keep)))
    }

    /// Refuses `days` (row by row) when one is before what the retention
    /// keeps at `now`: such a day was, or is being, removed.
    pub fn check_retained(&self, days: &[u32], now: i64) -> Result<()> {
        let Some(from) = self.retained_from(now) else {
            return Ok(());
        };
        match days.iter().position(|&d| d < from.0) {
            None => Ok(()),
            Some(row) => Err(Error::row(
                row,
                "unix_seconds",
                format!(
                    "its day {} is no longer kept by namespace {}: its policy retention_days = \
                     {} keeps {from} and later, and removes earlier days; send such rows to a \
                     namespace created with a larger retention_days (0 keeps every day)",
                    Day(days[row]),
                    quoted(&self.name),
                    self.policy.retention_days
                ),
            )),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    id: NamespaceId,
    precision: u8,
    max_age_days: u32,
    max_future_skew_seconds: u32,
    seed_fingerprint: String,
    /// Absent in records written before retention existed: keep every day.
    #[serde(default)]
    retention_days: u32,
}

pub struct Catalog {
    store: Store,
    default_policy: NamespacePolicy,
    /// `[namespaces.NAME]` policies, for namespaces created later.
    policies: std::collections::BTreeMap<String, NamespacePolicy>,
    auto_create: bool,
    /// The configured seed of each namespace, for the ones created later.
    seeds: NamespaceSeeds,
    /// Guards creation too, so two creators cannot take the same id.
    by_name: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Ids of deleted namespaces.
    deleted: RwLock<std::collections::BTreeSet<NamespaceId>>,
}

impl Catalog {
    pub fn open(
        store: Store,
        default_policy: NamespacePolicy,
        policies: std::collections::BTreeMap<String, NamespacePolicy>,
        auto_create: bool,
        seeds: NamespaceSeeds,
    ) -> Result<Catalog> {
        let mut by_name = HashMap::new();
        for (name, bytes) in store.namespace_records()? {
            let record: Record = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("namespace {name:?}: {e}")))?;
            let seed = seeds.seed_for(&name);
            if record.seed_fingerprint != fingerprint_hex(seed) {
                return Err(Error::Incompatible(format!(
                    "namespace {name:?} was created with hash seed fingerprint {} but this server \
                     is configured to hash it with fingerprint {} (from {}); start with the seed \
                     secret it was created with",
                    record.seed_fingerprint,
                    fingerprint_hex(seed),
                    seeds.source_of(&name)
                )));
            }
            let policy = NamespacePolicy {
                precision: record.precision,
                max_age_days: record.max_age_days,
                max_future_skew_seconds: record.max_future_skew_seconds,
                retention_days: record.retention_days,
            };
            policy
                .validate(&name)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            by_name.insert(
                name.clone(),
                Arc::new(Namespace {
                    id: record.id,
                    name,
                    policy,
                    seed,
                }),
            );
        }
        let deleted = store.deleted_namespace_ids()?.into_iter().collect();
        Ok(Catalog {
            store,
            default_policy,
            policies,
            auto_create,
            seeds,
            by_name: RwLock::new(by_name),
            deleted: RwLock::new(deleted),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.by_name.read().get(name).cloned()
    }

    /// Looks a namespace up by name, naming `field` in the error.
    pub fn require(&self, field: &str, name: &str) -> Result<Arc<Namespace>> {
        validate_name(field, name)?;
        self.get(name)
            .ok_or_else(|| Error::NamespaceNotFound(name.to_owned()))
    }

    pub fn by_id(&self, id: NamespaceId) -> Option<Arc<Namespace>> {
        self.by_name.read().values().find(|ns| ns.id == id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Namespace>> {
        let mut all: Vec<_> = self.by_name.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The namespace a batch goes to: `Ok(ns)` when it exists, or
    /// `Err(new)` with the namespace that creating it with the default
    /// policy would make (id 0, nothing stored), so that the batch can be
    /// checked before anything is created. Refused when the configuration
    /// does not create namespaces on first use.
    pub fn for_ingest(&self, name: &str) -> Result<std::result::Result<Arc<Namespace>, Namespace>> {
        validate_name("namespace", name)?;
        if let Some(ns) = self.get(name) {
            return Ok(Ok(ns));
        }
        if !self.auto_create {
            return Err(Error::NamespaceAutoCreateDisabled(name.to_owned()));
        }
        Ok(Err(Namespace {
            id: 0,
            name: name.to_owned(),
            policy: self.default_policy_for(name),
            seed: self.seeds.seed_for(name),
        }))
    }

    /// The fingerprint (hex) of the seed this server hashes `name` with.
    pub fn seed_fingerprint(&self, name: &str) -> String {
        fingerprint_hex(self.seeds.seed_for(name))
    }

    /// Where the seed of `name` comes from, for messages.
    pub fn seed_source(&self, name: &str) -> String {
        self.seeds.source_of(name)
    }

    /// Creates a namespace; creating it again with the same policy returns
    /// the existing one.
    pub fn create(&self, name: &str, policy: NamespacePolicy) -> Result<Arc<Namespace>> {
        validate_name("name", name)?;
        policy.validate("policy")?;
        let mut by_name = self.by_name.write();
        if let Some(ns) = by_name.get(name) {
            return if ns.policy == policy {
                Ok(ns.clone())
            } else {
                Err(Error::NamespaceExists(name.to_owned()))
            };
        }
        let id = by_name
            .values()
            .map(|ns| ns.id)
            .chain(self.deleted.read().last().copied())
            .max()
            .map_or(1, |last| last + 1);
        let seed = self.seeds.seed_for(name);
        let record = Record {
            id,
            precision: policy.precision,
            max_age_days: policy.max_age_days,
            max_future_skew_seconds: policy.max_future_skew_seconds,
            seed_fingerprint: fingerprint_hex(seed),
            retention_days: policy.retention_days,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.store.put_namespace_record(name, &bytes)?;
        let ns = Arc::new(Namespace {
            id,
            name: name.to_owned(),
            policy,
            seed,
        });
        by_name.insert(name.to_owned(), ns.clone());
        tracing::info!(
            namespace = name,
            id,
            precision = policy.precision,
            "created namespace"
        );
        Ok(ns)
    }

    /// Deletes `name` from the catalog: its id is recorded as deleted
    /// (durably, before this returns) and its name is free. The caller
    /// removes its records.
    pub fn delete(&self, name: &str) -> Result<Arc<Namespace>> {
        let mut by_name = self.by_name.write();
        let ns = match by_name.get(name) {
            Some(ns) => ns.clone(),
            None => {
                validate_name("name", name)?;
                return Err(Error::NamespaceNotFound(name.to_owned()));
            }
        };
        self.store.put_namespace_tombstone(name, ns.id)?;
        self.deleted.write().insert(ns.id);
        by_name.remove(name);
        tracing::info!(namespace = name, id = ns.id, "deleted namespace");
        Ok(ns)
    }

    /// Whether `id` names a deleted namespace.
    pub fn is_deleted(&self, id: NamespaceId) -> bool {
        self.deleted.read().contains(&id)
    }

    pub fn default_policy(&self) -> NamespacePolicy {
        self.default_policy
    }

    /// The policy a new namespace `name` gets where nothing else is said:
    /// its `[namespaces.NAME]` policy, else `[default_policy]`.
    pub fn default_policy_for(&self, name: &str) -> NamespacePolicy {
        self.policies
            .get(name)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

pub fn fingerprint_hex(seed: HashSeed) -> String {
    format!("{:016x}", seed.fingerprint())
}
