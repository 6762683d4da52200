//! The engine: everything a running server shares.
//!
//! [`Engine::open`] opens sled, loads the catalog, replays the log into the
//! memtable and starts the commit thread. The gRPC services hold an
//! `Arc<Engine>`; ingest and query functions take `&Engine`.
//! [`Engine::shutdown`] stops taking batches, checkpoints and flushes.
//!
//! On a cluster node ([`cluster`]) the engine is the same, but what it
//! would append to its log goes to the cluster's shared log first, and its
//! commit thread is fed from there, in the log's order, by the node's
//! reader; its own write-ahead log then records each entry with its
//! position in the cluster's log.

pub mod cluster;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::attribution::{Attributor, TableFiles};
use crate::catalog::{Catalog, Namespace};
use crate::config::{NamespacePolicy, ServerConfig};
use crate::error::{Error, Result};
use crate::ingest::commit::{Applied, CheckpointPolicy, GroupCommit, Shared, Work};
use crate::ingest::dedupe::AppliedBatches;
use crate::ingest::{self, codec, BatchLimits, ObservationBatch};
use crate::metrics::{Gauges, Metrics, Scrape};
use crate::replication::{self, MergeBatch};
use crate::store::memtable::MemState;
use crate::store::snapshot::SnapshotSummary;
use crate::store::space::DiskSpace;
use crate::store::wal::Wal;
use crate::store::Store;
use crate::time::{Clock, SystemClock};

pub struct Engine {
    pub(crate) store: Store,
    pub(crate) catalog: Arc<Catalog>,
    /// Deltas not yet in sled; see `store::memtable`.
    pub(crate) mem: Arc<RwLock<MemState>>,
    /// Readers of exact counters hold this for read; a checkpoint holds it
    /// for write while it moves frozen counters into sled.
    pub(crate) checkpoint_gate: Arc<RwLock<()>>,
    commit: GroupCommit,
    /// The loaded attribution tables; replaced whole on reload.
    tables: RwLock<Arc<Attributor>>,
    /// Where the tables come from, for reloads.
    table_files: TableFiles,
    /// One reload at a time.
    reloading: parking_lot::Mutex<()>,
    clock: Arc<dyn Clock>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    /// The last position of the cluster's log held at open (sled plus the
    /// replayed log); 0 when not a cluster node or nothing was applied.
    opened_at_position: u64,
    /// Set once, when this server runs as a cluster node.
    cluster: OnceLock<Arc<cluster::Node>>,
}

impl Engine {
    /// Opens the data directory with the system clock.
    pub fn open(config: &ServerConfig, tables: Attributor) -> Result<Engine> {
        Engine::open_with_clock(config, tables, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        config: &ServerConfig,
        tables: Attributor,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        let store = Store::open_with_cache(
            &config.data_dir,
            config.sketch_cache_bytes,
            config.sled_cache_bytes,
        )?;
        let catalog = Arc::new(Catalog::open(
            store.clone(),
            config.default_policy,
            config.namespace_policies.clone(),
            config.auto_create_namespaces,
            config.seeds.clone(),
        )?);
        if config.replication.is_some() {
            store.enable_changelog();
        }
        for id in store.namespace_ids_with_records()? {
            if catalog.is_deleted(id) {
                let removed = store.remove_namespace_records(id)?;
                store.flush()?;
                tracing::info!(
                    id,
                    records = removed,
                    "removed what was left of a deleted namespace"
                );
            }
        }
        let checkpoint_lsn = store.checkpoint_lsn()?;
        let (wal, records) = Wal::open(&store.wal_dir(), checkpoint_lsn)?;
        let mut applied: AppliedBatches = store.applied_batches()?.into_iter().collect();
        let mut mem = MemState {
            index: store.load_index()?,
            ..MemState::default()
        };
        let now = clock.now_unix_seconds();
        let replayed = records.len();
        let mut position = store.cluster_position()?;
        let opened_at_position = records
            .last()
            .and_then(|r| cluster::unframe(&r.payload))
            .map_or(position, |(p, _)| p.max(position));
        for record in records {
            let unknown = |id| {
                Error::Corrupt(format!(
                    "log record {} names unknown namespace id {id}",
                    record.lsn
                ))
            };
            let payload = match cluster::unframe(&record.payload) {
                Some((p, inner)) => {
                    position = position.max(p);
                    mem.active.log_position = position;
                    inner
                }
                None => &record.payload[..],
            };
            if payload.first() == Some(&replication::LOG_VERSION) {
                let merge = replication::decode(payload)?;
                if catalog.is_deleted(merge.ns) {
                    continue;
                }
                let ns = catalog.by_id(merge.ns).ok_or_else(|| unknown(merge.ns))?;
                replication::apply_merge(&mut mem, &store, &ns, &merge)?;
                continue;
            }
            let batch = codec::decode(payload)?;
            if catalog.is_deleted(batch.ns) {
                continue;
            }
            let ns = catalog.by_id(batch.ns).ok_or_else(|| unknown(batch.ns))?;
            ingest::apply(&mut mem, &ns, &batch, now)?;
            applied.insert(batch.id());
        }
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                after_lsn = checkpoint_lsn,
                "replayed the write-ahead log"
            );
        }
        let mem = Arc::new(RwLock::new(mem));
        let checkpoint_gate = Arc::new(RwLock::new(()));
        let metrics = Arc::new(Metrics::default());
        let commit = GroupCommit::start(
            wal,
            Shared {
                store: store.clone(),
                mem: mem.clone(),
                gate: checkpoint_gate.clone(),
                metrics: metrics.clone(),
                space: DiskSpace::new(&config.data_dir, config.min_free_disk_bytes),
                catalog: catalog.clone(),
            },
            applied,
            CheckpointPolicy {
                interval: config.checkpoint_interval,
                max_dirty_sketches: config.checkpoint_max_dirty_sketches,
                max_memtable_bytes: config.memtable_max_bytes,
                rollup_interval: config.rollup_interval,
                rollup_max_stale_blocks: config.rollup_max_stale_blocks,
                retention_interval: config.retention_interval,
            },
            clock.clone(),
            config.ingest_queue_depth,
        )?;
        Ok(Engine {
            store,
            catalog,
            mem,
            checkpoint_gate,
            commit,
            tables: RwLock::new(Arc::new(tables)),
            table_files: config.tables.clone(),
            reloading: parking_lot::Mutex::new(()),
            clock,
            limits: BatchLimits {
                max_rows: config.max_rows_per_batch,
            },
            metrics,
            opened_at_position,
            cluster: OnceLock::new(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn tables(&self) -> Arc<Attributor> {
        self.tables.read().clone()
    }

    /// Swaps in new attribution tables; batches being prepared keep the
    /// tables they started with.
    pub fn replace_tables(&self, tables: Attributor) {
        *self.tables.write() = Arc::new(tables);
    }

    /// Loads the configured table files again and swaps them in. Blocks
    /// while loading (ingest goes on with the old tables); a failed load
    /// keeps the old tables.
    pub fn reload_tables(&self) -> Result<Arc<Attributor>> {
        let _one = self.reloading.lock();
        let started = std::time::Instant::now();
        let tables = Attributor::load(&self.table_files)?;
        let old = self.tables().version().to_owned();
        self.replace_tables(tables);
        let new = self.tables();
        tracing::info!(
            old_version = %old,
            new_version = %new.version(),
            orgs = new.orgs_len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "attribution tables reloaded"
        );
        Ok(new)
    }

    /// Validates, attributes, logs and applies one batch. Returns once the
    /// batch is durable. CPU-heavy: call it from a blocking-capable context
    /// or accept that it runs on the caller's task.
    pub async fn ingest(&self, batch: ObservationBatch) -> Result<Applied> {
        let started = std::time::Instant::now();
        let rows = (batch.ipv4.len() + batch.ipv6.len() / 16) as u64;
        let result = self.ingest_inner(batch).await;
        let m = &self.metrics;
        match &result {
            Ok(applied) => {
                m.batch_ack.observe(started.elapsed());
                m.batches.fetch_add(1, Ordering::Relaxed);
                m.rows_ingested.fetch_add(applied.rows, Ordering::Relaxed);
                m.duplicate_batches
                    .fetch_add(u64::from(applied.duplicate), Ordering::Relaxed);
            }
            Err(_) => {
                m.rejected_batches.fetch_add(1, Ordering::Relaxed);
                m.rows_rejected.fetch_add(rows, Ordering::Relaxed);
            }
        }
        result
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sizes for the metrics endpoint. Briefly takes the memtable read lock.
    pub fn gauges(&self) -> Gauges {
        let (memtable_sketches, memtable_bytes, memtable_rows) = {
            let mem = self.mem.read();
            mem.tables().fold((0, 0, 0), |(n, b, r), t| {
                (n + t.sketches.len(), b + t.sketch_bytes, r + t.rows)
            })
        };
        let (cache_entries, cache_bytes) = self.store.cache_usage();
        Gauges {
            memtable_sketches,
            memtable_bytes,
            memtable_rows,
            cache_entries,
            cache_bytes,
            stale_rollup_blocks: self.store.stale_rollups(),
            disk_bytes: self.store.size_on_disk().unwrap_or(0),
            disk_free_bytes: crate::store::space::free_bytes(self.store.dir()).unwrap_or(0),
        }
    }

    async fn ingest_inner(&self, batch: ObservationBatch) -> Result<Applied> {
        let node = self.cluster.get();
        if let Some(node) = node {
            node.check_writable()?;
        }
        let tables = self.tables();
        let now = self.clock.now_unix_seconds();
        // A batch for a namespace that does not exist yet is checked
        // against the namespace it would create first: a refused batch
        // creates nothing.
        let (ns, prepared) = match self.catalog.for_ingest(&batch.namespace)? {
            Ok(ns) => {
                let prepared = ingest::prepare(batch, &ns, self.limits, now, &tables)?;
                (ns, prepared)
            }
            Err(new) => {
                let again = batch.clone();
                ingest::prepare(batch, &new, self.limits, now, &tables)?;
                let ns = self.create_namespace(&new.name, new.policy).await?;
                let prepared = ingest::prepare(again, &ns, self.limits, now, &tables)?;
                (ns, prepared)
            }
        };
        let payload = codec::encode(&prepared);
        match node {
            Some(node) => {
                let fallback = Applied {
                    duplicate: false,
                    rows: prepared.rows() as u64,
                    attributed: prepared.attributed,
                    unattributed: prepared.unattributed,
                };
                let id = format!(
                    "b/{}/{}/{}/{:016x}",
                    ns.name,
                    prepared.collector,
                    prepared.sequence,
                    prepared.digest.unwrap_or_default()
                );
                node.append_batch(&ns.name, id, payload, fallback).await
            }
            None => self.commit.submit(ns, Work::Batch(prepared), payload).await,
        }
    }

    /// Creates a namespace (on every node of a cluster: through its log).
    /// Creating it again with the same policy returns the existing one.
    pub async fn create_namespace(
        &self,
        name: &str,
        policy: NamespacePolicy,
    ) -> Result<Arc<Namespace>> {
        match self.cluster.get() {
            None => self.catalog.create(name, policy),
            Some(node) => {
                crate::catalog::validate_name("name", name)?;
                policy.validate("policy")?;
                if policy.retention_days != 0 {
                    return Err(Error::Refused(
                        "policy.retention_days is not supported on a cluster node yet: give 0 \
                         (keep every day), and no retention_days under [default_policy]"
                            .into(),
                    ));
                }
                if let Some(ns) = self.catalog.get(name) {
                    return if ns.policy == policy {
                        Ok(ns)
                    } else {
                        Err(Error::NamespaceExists(name.to_owned()))
                    };
                }
                node.check_writable()?;
                node.append_namespace(name, policy, self.catalog.seed_fingerprint(name))
                    .await?;
                let ns = self.catalog.get(name).ok_or_else(|| {
                    Error::Unavailable(format!(
                        "namespace {name:?} is in the cluster's log but not applied on this node yet; retry"
                    ))
                })?;
                if ns.policy == policy {
                    Ok(ns)
                } else {
                    Err(Error::NamespaceExists(name.to_owned()))
                }
            }
        }
    }

    /// Deletes a namespace: the catalog forgets it at once (its name is free
    /// and its batches are refused), then its records are removed from
    /// sled. Returns the number of records removed. On a server that pushes
    /// to an upstream, the upstream keeps what it was pushed; on an
    /// upstream, a region that pushes the namespace again creates it anew.
    pub async fn delete_namespace(&self, name: &str) -> Result<u64> {
        if self.cluster.get().is_some() {
            return Err(Error::Refused(
                "deleting a namespace is not supported on a cluster node yet: every node would \
                 have to delete it at the same position of the cluster's log"
                    .into(),
            ));
        }
        let ns = self.catalog.delete(name)?;
        self.commit.drop_namespace(ns).await
    }

    /// Logs and merges a chunk of records from a region; returns once it is
    /// durable. The caller validated every record against `ns`.
    pub async fn merge(&self, ns: Arc<Namespace>, merge: MergeBatch) -> Result<u64> {
        let payload = replication::encode(&merge);
        if let Some(node) = self.cluster.get() {
            node.check_writable()?;
            let rows = merge.records.len() as u64;
            return node.append_merge(&ns.name, payload, rows).await;
        }
        let applied = self.commit.submit(ns, Work::Merge(merge), payload).await?;
        Ok(applied.rows)
    }

    /// Checkpoints and writes a snapshot of the whole store to `path` (see
    /// `store::snapshot`); ingest goes on meanwhile.
    pub async fn snapshot_to(&self, path: PathBuf) -> Result<SnapshotSummary> {
        self.commit.snapshot(path).await
    }

    /// Refuses reads on a cluster node that may be further behind the
    /// cluster's log than its configured bound (see `engine::cluster`).
    pub fn check_readable(&self) -> Result<()> {
        match self.cluster.get() {
            Some(node) => node.check_readable(),
            None => Ok(()),
        }
    }

    /// The cluster node this server runs as, if any.
    pub fn cluster_node(&self) -> Option<&Arc<cluster::Node>> {
        self.cluster.get()
    }

    /// The current revision: the log position sled holds.
    pub fn revision(&self) -> Result<u64> {
        self.store.checkpoint_lsn()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Regions merged into this server, with their provenance.
    pub fn regions(&self) -> Vec<(String, crate::store::memtable::RegionMark)> {
        let mem = self.mem.read();
        mem.index
            .regions
            .iter()
            .map(|(r, m)| (r.clone(), *m))
            .collect()
    }

    /// Checkpoints everything applied so far and flushes sled.
    pub async fn checkpoint(&self) -> Result<()> {
        self.commit.checkpoint().await
    }

    /// Stops taking batches, checkpoints and flushes. Blocks.
    /// Fails when the final checkpoint or sled's flush did: what was
    /// acknowledged is then in the write-ahead log only, for the next start.
    pub fn shutdown(&self) -> Result<()> {
        if let Some(node) = self.cluster.get() {
            node.stop();
        }
        let stopped = self.commit.shutdown();
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "flushing sled at shutdown failed");
        }
        stopped.and(flushed)
    }
}

/// The metrics endpoint reads the engine through this.
impl Scrape for Engine {
    fn metrics(&self) -> &Metrics {
        Engine::metrics(self)
    }

    fn gauges(&self) -> Gauges {
        Engine::gauges(self)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
