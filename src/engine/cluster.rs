//! A cluster node: the engine fed from the cluster's shared log.
//!
//! **Writes.** A node that takes a batch validates and attributes it as a
//! single server does, appends the prepared batch to the shared log
//! ([`crate::cluster::SharedLog`]) and answers only once the log holds it
//! durably on a majority of its replicas *and* this node has applied the
//! log up to it (or, if that takes longer than [`APPLY_WAIT`], once it is
//! durable: the answer is then built from the batch itself). Namespace
//! creation and merges from regions take the same path. Nothing is
//! acknowledged that the log did not acknowledge, so a node that cannot
//! reach the log (partitioned, paused, its NATS connection lost) refuses
//! batches with UNAVAILABLE and collectors fail over to another node.
//!
//! **Applying.** Every node reads the log from the position after the last
//! one it holds, in order, and hands each entry to its commit thread, which
//! logs it in the node's own write-ahead log framed with its position
//! ([`frame`]) and applies it. The batch id check `(namespace, collector,
//! sequence)` is the single server's, applied in the log's order, so every
//! node skips the same duplicates; the log's own deduplication (message id
//! per batch) only saves work. Every node thus holds, at each position, the
//! state one server would hold after the same records: the same sketch
//! bytes, exact counters and org presence. Checkpoints record the position
//! in the same sled batch as the state (`mcluster_position`), so after a
//! crash a node replays its own log and reads the shared log after it.
//!
//! **Reads.** A node answers from its own state. Every [`PROBE_INTERVAL`]
//! it asks the log for its last position; once it has applied up to a
//! probed position, every batch acknowledged before that probe is in its
//! answers. A node refuses reads (UNAVAILABLE, "ask another node") while
//! its last such catch-up is older than `max_staleness` (default 5 s): an
//! answer misses at most the batches acknowledged in the last
//! `max_staleness`. A node paused or cut off from the log stops answering
//! within that bound, and answers again once it caught up.
//!
//! **Catch-up and trimming.** One node (the first by name among those that
//! reported a position in the last minute) takes a snapshot every
//! `snapshot_interval`: a checkpoint, then the store's records
//! (`store::snapshot`, the mechanism behind `sketchd backup`), stored in
//! the log's blob store with its position. It then trims the log before
//! the lowest position of the snapshot and of every node that reported
//! recently. A node that starts with an empty data directory, or whose
//! position is below the log's first entry, loads the snapshot first
//! ([`prepare_data_dir`]) and then reads the log after it. A node that
//! finds a gap while reading stops applying and refuses everything until it
//! is restarted, which loads the snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;

use super::Engine;
use crate::cluster::record::{self, Record};
use crate::cluster::{SharedLog, SnapshotInfo};
use crate::config::{ClusterConfig, NamespacePolicy};
use crate::error::{Error, Result};
use crate::ingest::codec;
use crate::ingest::commit::{Applied, Work};
use crate::replication;
use crate::store::Store;

/// How long a write waits for this node to apply it after the log
/// acknowledged it.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How often a node asks the log how far it reaches.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How often a node reports its position to the registry.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Outcomes of applied entries kept for the writers waiting on them.
const OUTCOMES_KEPT: usize = 65_536;
/// First byte of a write-ahead log record that holds a cluster log entry:
/// `0xC1 | position u64 LE | payload`.
const FRAME: u8 = 0xC1;

/// A record of the node's own write-ahead log for the entry at `position`.
pub fn frame(position: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(FRAME);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The position and payload of a framed record; `None` for a record of a
/// single server.
pub fn unframe(record: &[u8]) -> Option<(u64, &[u8])> {
    if record.first() != Some(&FRAME) || record.len() < 9 {
        return None;
    }
    let position = u64::from_le_bytes(record[1..9].try_into().expect("8 bytes"));
    Some((position, &record[9..]))
}

/// What applying an entry came to.
#[derive(Clone, Debug)]
enum Outcome {
    Applied(Applied),
    /// A namespace record for a name that exists with another policy.
    Exists,
    /// A batch refused when applied: its id was applied before with other
    /// rows (every node refuses it alike).
    Reused {
        collector: String,
        sequence: u64,
    },
    Failed(String),
}

/// An entry handed to the commit thread, or already done.
enum Step {
    Done(Outcome),
    Waiting(oneshot::Receiver<Result<Applied>>),
}

/// The state of this node in the cluster (see the module doc).
pub struct Node {
    log: Arc<dyn SharedLog>,
    config: ClusterConfig,
    /// Every entry up to this position is applied here.
    applied: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Outcome>>,
    started: Instant,
    /// 1 + milliseconds after `started` as of which every entry the log
    /// held was applied here; 0: not yet.
    caught_up: AtomicU64,
    /// Why this node stopped applying the log, if it did.
    failed: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
}

impl Node {
    /// This node's name in the cluster.
    pub fn node_name(&self) -> &str {
        &self.config.node
    }

    pub fn log(&self) -> &Arc<dyn SharedLog> {
        &self.log
    }

    /// Every entry up to this position is applied here.
    pub fn applied_position(&self) -> u64 {
        *self.applied.borrow()
    }

    /// How long ago this node last held everything the log held, if ever.
    pub fn staleness(&self) -> Option<Duration> {
        let caught = self.caught_up.load(Ordering::SeqCst);
        (caught > 0).then(|| {
            let now = self.started.elapsed().as_millis() as u64;
            Duration::from_millis(now.saturating_sub(caught - 1))
        })
    }

    /// The configured bound on stale reads.
    pub fn max_staleness(&self) -> Duration {
        self.config.max_staleness
    }

    /// Why this node stopped applying the log, if it did.
    pub fn failed(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    fn fail(&self, why: String) {
        tracing::error!(reason = %why, "this cluster node stopped applying the log");
        self.failed.lock().get_or_insert(why);
    }

    fn failure(&self) -> Option<Error> {
        self.failed.lock().as_ref().map(|why| {
            Error::Unavailable(format!(
                "this cluster node stopped applying the log ({why}); restart it, and send to another node meanwhile"
            ))
        })
    }

    /// Refuses writes once this node stopped applying the log.
    pub fn check_writable(&self) -> Result<()> {
        self.failure().map_or(Ok(()), Err)
    }

    /// Refuses reads when this node may miss more than the batches
    /// acknowledged in the last `max_staleness`.
    pub fn check_readable(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let limit = self.config.max_staleness;
        match self.staleness() {
            None => Err(Error::Unavailable(
                "this cluster node is still catching up with the cluster's log; ask another node"
                    .into(),
            )),
            Some(age) if age > limit => Err(Error::Unavailable(format!(
                "this cluster node last caught up with the cluster's log {} ms ago, more than \
                 max_staleness_ms = {}; ask another node",
                age.as_millis(),
                limit.as_millis()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Appends a prepared batch (`payload`, the write-ahead log form) and
    /// waits for it; `fallback` is the answer if this node does not apply
    /// it within [`APPLY_WAIT`].
    pub async fn append_batch(
        &self,
        namespace: &str,
        id: String,
        payload: Vec<u8>,
        fallback: Applied,
    ) -> Result<Applied> {
        let record = record::encode(&Record::Batch {
            namespace: namespace.to_owned(),
            payload,
        });
        let appended = self.log.append(id, record.into()).await?;
        let outcome = self.wait_applied(appended.position).await;
        if appended.duplicate {
            return Ok(Applied {
                duplicate: true,
                rows: 0,
                attributed: 0,
                unattributed: 0,
            });
        }
        match outcome {
            Some(Outcome::Applied(applied)) => Ok(applied),
            Some(Outcome::Reused {
                collector,
                sequence,
            }) => Err(Error::SequenceReused {
                collector,
                sequence,
            }),
            Some(Outcome::Failed(why)) => Err(Error::Unavailable(why)),
            Some(Outcome::Exists) | None => Ok(fallback),
        }
    }

    /// Appends a namespace's creation and waits until it is applied here.
    pub async fn append_namespace(
        &self,
        name: &str,
        policy: NamespacePolicy,
        seed_fingerprint: String,
    ) -> Result<()> {
        let record = record::encode(&Record::Namespace {
            name: name.to_owned(),
            policy,
            seed_fingerprint,
        });
        let id = format!("n/{name}/{:016x}", xxhash_rust::xxh3::xxh3_64(&record));
        let appended = self.log.append(id, record.into()).await?;
        match self.wait_applied(appended.position).await {
            Some(Outcome::Failed(why)) => Err(Error::Unavailable(why)),
            _ => Ok(()),
        }
    }

    /// Appends records merged from a region and waits for them; returns
    /// how many were merged.
    pub async fn append_merge(&self, namespace: &str, payload: Vec<u8>, rows: u64) -> Result<u64> {
        let id = format!(
            "m/{namespace}/{:016x}",
            xxhash_rust::xxh3::xxh3_64(&payload)
        );
        let record = record::encode(&Record::Merge {
            namespace: namespace.to_owned(),
            payload,
        });
        let appended = self.log.append(id, record.into()).await?;
        match self.wait_applied(appended.position).await {
            Some(Outcome::Failed(why)) => Err(Error::Unavailable(why)),
            _ => Ok(rows),
        }
    }

    /// Waits until this node applied `position`; its outcome if it is
    /// still known.
    async fn wait_applied(&self, position: u64) -> Option<Outcome> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => self.outcomes.lock().get(&position).cloned(),
            _ => None,
        }
    }

    fn record(&self, position: u64, outcome: Outcome) {
        {
            let mut outcomes = self.outcomes.lock();
            outcomes.insert(position, outcome);
            while outcomes.len() > OUTCOMES_KEPT {
                outcomes.pop_first();
            }
        }
        self.applied.send_replace(position);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Stops the node's tasks.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Engine {
    /// Decodes the entry and applies it: namespaces here, batches and
    /// merges through the commit thread (returning before they are done).
    async fn apply_entry(&self, position: u64, payload: &[u8]) -> Result<Step> {
        match record::decode(payload)? {
            Record::Namespace {
                name,
                policy,
                seed_fingerprint,
            } => {
                let mine = self.catalog.seed_fingerprint(&name);
                if mine != seed_fingerprint {
                    return Err(Error::Incompatible(format!(
                        "namespace {name:?} was created in the cluster with hash seed fingerprint \
                         {seed_fingerprint}, but this node hashes it with fingerprint {mine} (from \
                         {}); start every node with the same seed",
                        self.catalog.seed_source(&name)
                    )));
                }
                Ok(Step::Done(match self.catalog.create(&name, policy) {
                    Ok(_) => Outcome::Applied(Applied {
                        duplicate: false,
                        rows: 0,
                        attributed: 0,
                        unattributed: 0,
                    }),
                    Err(Error::NamespaceExists(_)) => Outcome::Exists,
                    Err(e) => return Err(e),
                }))
            }
            Record::Batch { namespace, payload } => {
                let work = |p: &[u8]| codec::decode(p).map(Work::Batch);
                self.enqueue(position, &namespace, payload, work).await
            }
            Record::Merge { namespace, payload } => {
                let work = |p: &[u8]| replication::decode(p).map(Work::Merge);
                self.enqueue(position, &namespace, payload, work).await
            }
        }
    }

    /// Hands a batch or merge entry to the commit thread, with this node's
    /// id of its namespace, framed with its position for the node's log.
    async fn enqueue(
        &self,
        position: u64,
        namespace: &str,
        mut payload: Vec<u8>,
        work: impl FnOnce(&[u8]) -> Result<Work>,
    ) -> Result<Step> {
        let ns = self.catalog.get(namespace).ok_or_else(|| {
            Error::Corrupt(format!(
                "cluster log entry {position} names namespace {namespace:?}, which no earlier entry created"
            ))
        })?;
        set_namespace_id(&mut payload, ns.id)?;
        let work = work(&payload)?;
        let logged = frame(position, &payload);
        let rx = self
            .commit
            .enqueue_entry(ns, work, logged, position)
            .await?;
        Ok(Step::Waiting(rx))
    }
}

/// Batch and merge payloads both start `version u8 | namespace id u32 LE`.
fn set_namespace_id(payload: &mut [u8], id: u32) -> Result<()> {
    payload
        .get_mut(1..5)
        .ok_or_else(|| Error::Corrupt("cluster log entry: payload too short".into()))?
        .copy_from_slice(&id.to_le_bytes());
    Ok(())
}

/// Makes the data directory ready to follow the log: when it holds nothing,
/// or less than the log still has (its position is below the log's first
/// entry), it is replaced by the latest snapshot. Call before
/// [`Engine::open`].
pub async fn prepare_data_dir(data_dir: &Path, log: &dyn SharedLog) -> Result<()> {
    let sled_dir = data_dir.join("sled");
    let held = if sled_dir.exists() {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(u64, bool)> {
            let store = Store::open_with_cache(&dir, 0, 1 << 20)?;
            let empty = store.namespace_records()?.is_empty();
            Ok((store.cluster_position()?, empty))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("opening the data directory: {e}")))??
    } else {
        (0, true)
    };
    let (position, empty) = held;
    let bounds = log.bounds().await?;
    let behind = position + 1 < bounds.first;
    if !behind && !empty {
        tracing::info!(
            position,
            log_first = bounds.first,
            log_last = bounds.last,
            "following the cluster log from this node's position"
        );
        return Ok(());
    }
    let file = data_dir.with_extension("snapshot-download");
    let fetched = log.fetch_snapshot(file.clone()).await?;
    let Some(info) = fetched else {
        if behind {
            return Err(Error::Unavailable(format!(
                "this node holds the cluster log up to position {position}, the log now starts at \
                 {} and there is no snapshot to start from",
                bounds.first
            )));
        }
        tracing::info!("no snapshot yet: reading the cluster log from its start");
        return Ok(());
    };
    if info.position + 1 < bounds.first {
        let _ = std::fs::remove_file(&file);
        return Err(Error::Unavailable(format!(
            "the cluster's snapshot reaches position {} but the log starts at {}; wait for the next snapshot",
            info.position, bounds.first
        )));
    }
    if data_dir.exists() {
        tracing::warn!(
            data = %data_dir.display(),
            position,
            log_first = bounds.first,
            "replacing this node's data with the cluster's snapshot"
        );
        std::fs::remove_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    }
    let dir = data_dir.to_owned();
    let source = file.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&source).map_err(|e| Error::io(&source, e))?;
        crate::store::snapshot::restore(input, &dir)
    })
    .await
    .map_err(|e| Error::Unavailable(format!("restoring the snapshot: {e}")))??;
    let _ = std::fs::remove_file(&file);
    tracing::info!(
        position = summary.cluster_position,
        records = summary.records,
        from = %info.node,
        "loaded the cluster's snapshot"
    );
    Ok(())
}

/// Starts following the log: the reader that applies entries, the probe
/// that tracks freshness and reports this node's position, and the
/// snapshots.
pub fn start(engine: &Arc<Engine>, log: Arc<dyn SharedLog>, config: ClusterConfig) -> Arc<Node> {
    let (applied, _) = watch::channel(engine.opened_at_position);
    let (stop, _) = watch::channel(false);
    let node = Arc::new(Node {
        log,
        config,
        applied,
        outcomes: Mutex::new(BTreeMap::new()),
        started: Instant::now(),
        caught_up: AtomicU64::new(0),
        failed: Mutex::new(None),
        stop,
    });
    if engine.cluster.set(node.clone()).is_err() {
        tracing::error!("the engine already follows a cluster log");
    }
    let (done_tx, done_rx) = mpsc::channel(4096);
    tokio::spawn(complete(node.clone(), done_rx));
    tokio::spawn(read(Arc::downgrade(engine), node.clone(), done_tx));
    tokio::spawn(probe(node.clone()));
    tokio::spawn(snapshots(
        Arc::downgrade(engine),
        node.clone(),
        engine.store.dir().to_owned(),
    ));
    node
}

/// Reads the log from this node's position and hands entries on, in order.
async fn read(engine: Weak<Engine>, node: Arc<Node>, done: mpsc::Sender<(u64, Step)>) {
    let mut stop = node.stop.subscribe();
    let mut position = node.applied_position();
    tracing::info!(node = %node.node_name(), from = position + 1, log = %node.log.describe(), "reading the cluster log");
    'read: loop {
        let mut entries = tokio::select! {
            r = node.log.read_from(position + 1) => match r {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        loop {
            let next = tokio::select! {
                e = entries.next() => e,
                _ = stop.changed() => return,
            };
            let entry = match next {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the cluster log failed; reading again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'read;
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'read;
                }
            };
            if entry.position <= position {
                continue;
            }
            if entry.position != position + 1 {
                node.fail(format!(
                    "it applied the cluster log up to position {position}, but the next entry it \
                     could read is {}: the entries between were trimmed",
                    entry.position
                ));
                return;
            }
            let Some(e) = engine.upgrade() else { return };
            let step = e.apply_entry(entry.position, &entry.payload).await;
            drop(e);
            let step = match step {
                Ok(step) => step,
                Err(err) => {
                    node.fail(format!(
                        "applying cluster log entry {} failed: {err}",
                        entry.position
                    ));
                    return;
                }
            };
            if done.send((entry.position, step)).await.is_err() {
                return;
            }
            position = entry.position;
        }
    }
}

/// Waits for each handed-on entry in order and publishes its outcome.
async fn complete(node: Arc<Node>, mut done: mpsc::Receiver<(u64, Step)>) {
    while let Some((position, step)) = done.recv().await {
        let outcome = match step {
            Step::Done(outcome) => outcome,
            Step::Waiting(rx) => match rx.await {
                Ok(Ok(applied)) => Outcome::Applied(applied),
                Ok(Err(Error::SequenceReused {
                    collector,
                    sequence,
                })) => Outcome::Reused {
                    collector,
                    sequence,
                },
                Ok(Err(e)) => {
                    node.fail(format!("applying cluster log entry {position} failed: {e}"));
                    Outcome::Failed(e.to_string())
                }
                Err(_) => return,
            },
        };
        node.record(position, outcome);
    }
}

/// Tracks how fresh this node is and reports its position.
async fn probe(node: Arc<Node>) {
    let mut stop = node.stop.subscribe();
    let mut probes: VecDeque<(u64, u64)> = VecDeque::new();
    let mut reported = Instant::now() - REPORT_INTERVAL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let at = node.now_ms();
        match tokio::time::timeout(Duration::from_secs(2), node.log.bounds()).await {
            Ok(Ok(bounds)) => probes.push_back((at, bounds.last)),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot reach the cluster log"),
            Err(_) => tracing::debug!("the cluster log did not answer"),
        }
        let applied = node.applied_position();
        while let Some(&(t, last)) = probes.front() {
            if applied < last {
                break;
            }
            node.caught_up.fetch_max(t + 1, Ordering::SeqCst);
            probes.pop_front();
        }
        while probes.len() > 1024 {
            probes.pop_front();
        }
        if reported.elapsed() >= REPORT_INTERVAL && node.failed.lock().is_none() {
            reported = Instant::now();
            if let Err(e) = node
                .log
                .report_position(node.node_name().to_owned(), applied)
                .await
            {
                tracing::debug!(error = %e, "cannot report this node's position");
            }
        }
    }
}

/// Takes a snapshot every `snapshot_interval` when this node is the one
/// that takes them.
async fn snapshots(engine: Weak<Engine>, node: Arc<Node>, dir: PathBuf) {
    let mut stop = node.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(node.config.snapshot_interval) => {}
            _ = stop.changed() => return,
        }
        match snapshot_and_trim(&engine, &node, &dir).await {
            Ok(Some((info, trimmed))) => tracing::info!(
                position = info.position,
                bytes = info.bytes,
                trimmed_before = trimmed,
                "stored a cluster snapshot"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "taking a cluster snapshot failed"),
        }
    }
}

/// If this node takes the snapshots (the first by name among the nodes
/// that reported recently), stores one and trims the log before the lowest
/// position held by it and by every such node. Returns the snapshot and the
/// trim position.
pub async fn snapshot_and_trim(
    engine: &Weak<Engine>,
    node: &Node,
    dir: &Path,
) -> Result<Option<(SnapshotInfo, u64)>> {
    if node.failed.lock().is_some() {
        return Ok(None);
    }
    let positions = node.log.positions().await?;
    if positions
        .iter()
        .map(|(name, _)| name.as_str())
        .min()
        .is_some_and(|first| first != node.node_name())
    {
        return Ok(None);
    }
    let Some(e) = engine.upgrade() else {
        return Ok(None);
    };
    let path = dir.join("cluster-snapshot.tmp");
    let summary = e.snapshot_to(path.clone()).await;
    drop(e);
    let summary = summary?;
    let info = SnapshotInfo {
        position: summary.cluster_position,
        node: node.node_name().to_owned(),
        bytes: summary.bytes,
    };
    let stored = node.log.put_snapshot(info.clone(), path.clone()).await;
    let _ = std::fs::remove_file(&path);
    stored?;
    let floor = positions
        .iter()
        .map(|(_, p)| *p)
        .chain([info.position])
        .min()
        .unwrap_or(0);
    if floor > 0 {
        node.log.trim_before(floor + 1).await?;
    }
    Ok(Some((info, floor + 1)))
}
