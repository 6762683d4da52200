//! Group commit: the one thread that logs and applies batches.
//!
//! Callers prepare and encode batches in parallel, then hand them to this
//! thread through a bounded queue. The thread takes every batch waiting,
//! drops the ones whose id was applied before (and refuses those that reuse
//! an id with other rows, see `dedupe`), appends the rest to the log,
//! syncs once for all of them, applies them to the memtable in log order and
//! only then replies. So an acknowledgement always means "durable", and many
//! batches share one `fdatasync`.
//!
//! Before logging a group it checks the data directory's free space
//! (`store::space`): below the floor, the group is refused with
//! `DiskFull` and nothing is logged; a log write that fails for want of
//! space is rolled back and refused the same way. Neither stops the
//! thread: ingest resumes as soon as the space is back. Any other log
//! failure, and any failed checkpoint, stops acknowledgements for good
//! (sled refuses every write after a failed one until it is opened again),
//! with the reason logged once; the log keeps everything for the next start.
//!
//! A namespace is deleted on this thread too ([`GroupCommit::drop_namespace`]):
//! after the batches queued before it, everything applied is checkpointed,
//! later batches of the deleted id are refused, and its records are removed
//! from sled on the checkpoint thread's slot while ingest goes on.
//!
//! The same thread starts checkpoints: it seals the log segment, freezes the
//! memtable at the last log position and hands it to a checkpoint thread,
//! which merges it into sled, makes it visible atomically, flushes, and
//! deletes the sealed segments. One checkpoint runs at a time.
//!
//! Checkpoints write day sketches and mark the rollup blocks above them
//! stale; the checkpoint thread rebuilds stale blocks after a checkpoint at
//! most every `rollup_interval` — sooner when `rollup_max_stale_blocks` are
//! stale or when no batch arrived since the last checkpoint — and always at
//! shutdown, so that after a clean stop every rollup block is up to date.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::oneshot;

use super::dedupe::AppliedBatches;
use super::{apply, PreparedBatch};
use crate::catalog::{Catalog, Namespace};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::replication::{self, MergeBatch};
use crate::store::keys::{BatchId, NamespaceId};
use crate::store::memtable::{MemState, Memtable};
use crate::store::snapshot::SnapshotSummary;
use crate::store::space::{self, DiskSpace};
use crate::store::wal::Wal;
use crate::store::Store;
use crate::time::{Clock, Day};

pub use crate::config::DEFAULT_QUEUE_DEPTH;
/// Batches logged under one sync at most.
const GROUP_MAX: usize = 256;

/// What the caller learns about its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub duplicate: bool,
    pub rows: u64,
    pub attributed: u64,
    pub unattributed: u64,
}

/// When to checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub interval: Duration,
    pub max_dirty_sketches: usize,
    /// Checkpoint once the memtable's sketches hold this many bytes.
    pub max_memtable_bytes: usize,
    /// Stale rollup blocks are rebuilt at most this often while batches
    /// keep coming...
    pub rollup_interval: Duration,
    /// ...unless this many are stale.
    pub rollup_max_stale_blocks: usize,
    /// How often namespaces' retention is applied (and once at start).
    pub retention_interval: Duration,
}

/// What a log record carries.
pub enum Work {
    /// An ingested batch.
    Batch(PreparedBatch),
    /// Records merged from a region (see `replication`).
    Merge(MergeBatch),
}

impl Work {
    /// The batch id, for ingested batches (merges are idempotent).
    fn id(&self) -> Option<BatchId> {
        match self {
            Work::Batch(b) => Some(b.id()),
            Work::Merge(_) => None,
        }
    }
}

/// One batch on its way to the log.
struct Job {
    ns: Arc<Namespace>,
    batch: Work,
    /// The encoded batch, as logged.
    payload: Vec<u8>,
    /// On a cluster node: the batch's position in the cluster's log.
    position: Option<u64>,
    reply: oneshot::Sender<Result<Applied>>,
}

enum Msg {
    Batch(Box<Job>),
    /// Checkpoint everything applied so far and wait for it.
    Checkpoint(oneshot::Sender<Result<()>>),
    /// Checkpoint everything applied so far, then write a snapshot of sled
    /// to the file while no checkpoint writes sled.
    Snapshot(PathBuf, oneshot::Sender<Result<SnapshotSummary>>),
    /// Delete a namespace's records; answers how many were removed.
    Drop(Arc<Namespace>, oneshot::Sender<Result<u64>>),
}

/// What the commit and checkpoint threads share with the rest of the engine.
pub struct Shared {
    pub store: Store,
    pub mem: Arc<RwLock<MemState>>,
    /// Taken for write while a checkpoint moves counters into sled.
    pub gate: Arc<RwLock<()>>,
    pub metrics: Arc<Metrics>,
    /// The free-space floor of the data directory.
    pub space: DiskSpace,
    /// The namespaces, for their retention.
    pub catalog: Arc<Catalog>,
}

/// Handle to the commit thread. Dropping it checkpoints and stops the thread.
pub struct GroupCommit {
    tx: Mutex<Option<SyncSender<Msg>>>,
    queue_depth: usize,
    thread: Mutex<Option<JoinHandle<Result<()>>>>,
}

impl GroupCommit {
    /// Starts the thread. `applied` holds every batch id already in sled or
    /// in the replayed log.
    pub fn start(
        wal: Wal,
        shared: Shared,
        applied: AppliedBatches,
        policy: CheckpointPolicy,
        clock: Arc<dyn Clock>,
        queue_depth: usize,
    ) -> Result<GroupCommit> {
        let queue_depth = queue_depth.max(1);
        let (tx, rx) = mpsc::sync_channel(queue_depth);
        let Shared {
            store,
            mem,
            gate,
            metrics,
            space,
            catalog,
        } = shared;
        let writer = Writer {
            wal,
            store,
            mem,
            gate,
            metrics,
            space,
            full_log: Throttle::default(),
            dropped: FxHashSet::default(),
            catalog,
            retention_checked: None,
            retained_from: FxHashMap::default(),
            applied,
            policy,
            clock,
            last_checkpoint: Instant::now(),
            last_rollup: Instant::now(),
            in_flight: None,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name("sketchd-commit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("commit thread", e))?;
        Ok(GroupCommit {
            tx: Mutex::new(Some(tx)),
            queue_depth,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let guard = self.tx.lock();
        let tx = guard
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the server is shutting down".into()))?;
        tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => Error::Overloaded(format!(
                "{} batches are waiting to be logged; retry shortly",
                self.queue_depth
            )),
            TrySendError::Disconnected(_) => Error::Unavailable("the commit thread stopped".into()),
        })
    }

    /// Logs and applies a batch; returns once it is durable.
    pub async fn submit(
        &self,
        ns: Arc<Namespace>,
        batch: Work,
        payload: Vec<u8>,
    ) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Batch(Box::new(Job {
            ns,
            batch,
            payload,
            position: None,
            reply,
        })))?;
        rx.await
            .map_err(|_| Error::Unavailable("the commit thread stopped".into()))?
    }

    /// Queues an entry of the cluster's log at `position` (waiting while
    /// the queue is full, never refusing it); the receiver gets the result
    /// once it is logged and applied. Entries are applied in the order
    /// they are queued.
    pub async fn enqueue_entry(
        &self,
        ns: Arc<Namespace>,
        batch: Work,
        payload: Vec<u8>,
        position: u64,
    ) -> Result<oneshot::Receiver<Result<Applied>>> {
        let (reply, rx) = oneshot::channel();
        self.send_waiting(Msg::Batch(Box::new(Job {
            ns,
            batch,
            payload,
            position: Some(position),
            reply,
        })))
        .await?;
        Ok(rx)
    }

    /// Queues `msg`, waiting while the queue is full instead of refusing.
    async fn send_waiting(&self, mut msg: Msg) -> Result<()> {
        loop {
            let sent = {
                let guard = self.tx.lock();
                let tx = guard
                    .as_ref()
                    .ok_or_else(|| Error::Unavailable("the server is shutting down".into()))?;
                tx.try_send(msg)
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Error::Unavailable("the commit thread stopped".into()))
                }
            }
        }
    }

    /// Checkpoints everything applied so far and writes a snapshot of the
    /// store to `path` (see `store::snapshot`). Ingest goes on meanwhile;
    /// the next checkpoint waits for the snapshot.
    pub async fn snapshot(&self, path: PathBuf) -> Result<SnapshotSummary> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Snapshot(path, reply))?;
        rx.await
            .map_err(|_| Error::Unavailable("the commit thread stopped".into()))?
    }

    /// Deletes the records of `ns`, which the catalog no longer names:
    /// after the batches queued before, checkpoints, refuses later batches
    /// of its id and removes its records from sled. Returns how many.
    pub async fn drop_namespace(&self, ns: Arc<Namespace>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        // Wait for room rather than refuse: the catalog already forgot it.
        self.send_waiting(Msg::Drop(ns, reply)).await?;
        rx.await
            .map_err(|_| Error::Unavailable("the commit thread stopped".into()))?
    }

    /// Checkpoints everything applied so far into sled and flushes.
    pub async fn checkpoint(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Checkpoint(reply))?;
        rx.await
            .map_err(|_| Error::Unavailable("the commit thread stopped".into()))?
    }

    /// Stops taking batches, lets the queued ones finish, checkpoints and
    /// waits for the thread. Fails when the final checkpoint did (the log
    /// still holds everything for the next start).
    pub fn shutdown(&self) -> Result<()> {
        drop(self.tx.lock().take());
        match self.thread.lock().take() {
            Some(thread) => thread
                .join()
                .map_err(|_| Error::Unavailable("the commit thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "stopping the commit thread");
        }
    }
}

/// At most one log line per second for a repeated condition, with the
/// number of times it happened since the last line.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// Counts one occurrence; returns how many happened since the last
    /// line (this one included) when a line is due.
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

struct Writer {
    wal: Wal,
    store: Store,
    mem: Arc<RwLock<MemState>>,
    /// Taken for write while a checkpoint moves counters into sled; see
    /// `Engine::checkpoint_gate`.
    gate: Arc<RwLock<()>>,
    metrics: Arc<Metrics>,
    space: DiskSpace,
    /// Refusals for want of space, for the log.
    full_log: Throttle,
    /// Namespaces deleted since start: their batches are refused.
    dropped: FxHashSet<NamespaceId>,
    catalog: Arc<Catalog>,
    /// When retention was last applied (`None`: not yet).
    retention_checked: Option<Instant>,
    /// Per namespace with retention: the first day kept by the last pass.
    retained_from: FxHashMap<NamespaceId, Day>,
    applied: AppliedBatches,
    policy: CheckpointPolicy,
    clock: Arc<dyn Clock>,
    last_checkpoint: Instant,
    last_rollup: Instant,
    in_flight: Option<JoinHandle<Result<()>>>,
    /// Set when the log failed: nothing more is acknowledged.
    failed: Option<String>,
}

struct Pending {
    ns: Arc<Namespace>,
    batch: Work,
    reply: oneshot::Sender<Result<Applied>>,
    duplicate: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) -> Result<()> {
        loop {
            let wait = self
                .policy
                .interval
                .saturating_sub(self.last_checkpoint.elapsed())
                .max(Duration::from_millis(1));
            let first = match rx.recv_timeout(wait) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due(false);
                    self.expire_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(msg) => group.push(msg),
                    Err(_) => break,
                }
            }
            let mut checkpoint_waiters = Vec::new();
            let mut snapshots = Vec::new();
            let mut batches = Vec::new();
            for msg in group {
                match msg {
                    Msg::Batch(job) => batches.push(*job),
                    Msg::Checkpoint(reply) => checkpoint_waiters.push(reply),
                    Msg::Snapshot(path, reply) => snapshots.push((path, reply)),
                    Msg::Drop(ns, reply) => {
                        // In queue order: the batches before it first.
                        self.commit(std::mem::take(&mut batches));
                        self.drop_namespace(ns, reply);
                    }
                }
            }
            self.commit(batches);
            for (path, reply) in snapshots {
                self.snapshot(path, reply);
            }
            self.expire_if_due();
            if checkpoint_waiters.is_empty() {
                self.checkpoint_if_due(false);
            } else {
                let result = self.checkpoint(true);
                for reply in checkpoint_waiters {
                    let _ = reply.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| Error::Unavailable(e.to_string())),
                    );
                }
            }
        }
        let result = self.checkpoint_with(true, true, true);
        if let Err(e) = &result {
            tracing::error!(error = %e, "final checkpoint failed; the log still holds the data");
        }
        result
    }

    /// Applies namespaces' retention when due (every `retention_interval`,
    /// and first at start): for each namespace whose first kept day moved
    /// since the last pass (every one, at start), checkpoints
    /// everything applied, forgets the removed days' org presence in memory
    /// and removes their records from sled on the checkpoint thread's slot.
    /// Batches of those days are refused from the moment the day turns
    /// (`Namespace::check_retained`), so nothing brings them back.
    fn expire_if_due(&mut self) {
        if self.failed.is_some()
            || self
                .retention_checked
                .is_some_and(|t| t.elapsed() < self.policy.retention_interval)
        {
            return;
        }
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.retention_checked = Some(Instant::now());
        let now = self.clock.now_unix_seconds();
        let mut due: Vec<(Arc<Namespace>, Day)> = Vec::new();
        for ns in self.catalog.list() {
            let Some(from) = ns.retained_from(now) else {
                continue;
            };
            if self.retained_from.get(&ns.id) != Some(&from) {
                due.push((ns, from));
            }
        }
        if due.is_empty() {
            return;
        }
        if let Err(e) = self.checkpoint(true) {
            tracing::error!(error = %e, "checkpoint before applying retention failed");
            return;
        }
        {
            let mut mem = self.mem.write();
            for (ns, from) in &due {
                if let Some(presence) = mem.index.presence.get_mut(&ns.id) {
                    presence.remove_days_before(*from);
                }
            }
        }
        for (ns, from) in &due {
            self.retained_from.insert(ns.id, *from);
        }
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("sketchd-retention".into())
            .spawn(move || {
                for (ns, from) in due {
                    let started = Instant::now();
                    let removed = store.remove_days_before(ns.id, from)?;
                    store.flush()?;
                    if removed > 0 {
                        tracing::info!(
                            namespace = %ns.name,
                            kept_from = %from,
                            records = removed,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "removed the days retention no longer keeps"
                        );
                    }
                }
                Ok(())
            });
        match spawned {
            Ok(handle) => self.in_flight = Some(handle),
            Err(e) => tracing::error!(error = %e, "cannot start the retention thread"),
        }
    }

    /// See [`GroupCommit::drop_namespace`].
    fn drop_namespace(&mut self, ns: Arc<Namespace>, reply: oneshot::Sender<Result<u64>>) {
        self.dropped.insert(ns.id);
        if let Err(e) = self.checkpoint(true) {
            let _ = reply.send(Err(e));
            return;
        }
        let store = self.store.clone();
        let mem = self.mem.clone();
        let spawned = std::thread::Builder::new()
            .name("sketchd-delete".into())
            .spawn(move || {
                let started = Instant::now();
                let result = store.remove_namespace_records(ns.id).and_then(|removed| {
                    store.flush()?;
                    Ok(removed)
                });
                if result.is_ok() {
                    mem.write().index.remove_namespace(ns.id);
                }
                tracing::info!(
                    namespace = %ns.name,
                    id = ns.id,
                    records = result.as_ref().ok().copied(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "removed the records of a deleted namespace"
                );
                let _ = reply.send(result);
                Ok(())
            });
        match spawned {
            Ok(handle) => self.in_flight = Some(handle),
            Err(e) => tracing::error!(error = %e, "cannot start the delete thread"),
        }
    }

    fn commit(&mut self, batches: Vec<Job>) {
        if batches.is_empty() {
            return;
        }
        if let Some(why) = &self.failed {
            for job in batches {
                let _ = job.reply.send(Err(Error::Unavailable(why.clone())));
            }
            return;
        }
        let mut batches = batches;
        if !self.dropped.is_empty() {
            let gone;
            (gone, batches) = batches
                .into_iter()
                .partition(|job| self.dropped.contains(&job.ns.id));
            for job in gone {
                let _ = job
                    .reply
                    .send(Err(Error::NamespaceNotFound(job.ns.name.clone())));
            }
        }
        // A cluster node applies entries of the cluster's log whatever its
        // disk: refusing them would leave a gap; a write that then fails
        // stops the node like any log failure.
        if batches.iter().all(|job| job.position.is_none()) {
            let incoming: usize = batches.iter().map(|job| job.payload.len()).sum();
            let held = {
                let mem = self.mem.read();
                mem.active.sketch_bytes + mem.frozen.as_ref().map_or(0, |f| f.sketch_bytes)
            };
            if let Some(detail) = self.space.shortfall(incoming as u64, held as u64) {
                self.refuse_for_space(batches.into_iter().map(|job| job.reply), &detail);
                return;
            }
        }
        let logged = Instant::now();
        let mut pending = Vec::with_capacity(batches.len());
        let mut error = None;
        let mut position = None;
        let mut logged_ids = Vec::new();
        for Job {
            ns,
            batch,
            payload,
            position: at,
            reply,
        } in batches
        {
            position = at.max(position);
            if let (Work::Batch(b), None) = (&batch, at) {
                // Prepared before the day turned, the retention may have
                // moved on since: its days would come back after removal.
                if let Err(e) = ns.check_retained(&b.days, self.clock.now_unix_seconds()) {
                    let _ = reply.send(Err(e));
                    continue;
                }
            }
            let id = batch.id();
            let duplicate = match id
                .as_ref()
                .map_or(Ok(false), |id| self.applied.contains(id))
            {
                Ok(duplicate) => duplicate,
                Err(reused) => {
                    let _ = reply.send(Err(reused));
                    continue;
                }
            };
            if !duplicate && error.is_none() {
                match self.wal.append(&payload) {
                    Ok(_) => {
                        if let Some(id) = id {
                            logged_ids.push(id.clone());
                            self.applied.insert(id);
                        }
                    }
                    Err(e) => error = Some(e),
                }
            }
            pending.push(Pending {
                ns,
                batch,
                reply,
                duplicate,
            });
        }
        if error.is_none() {
            error = self.wal.sync().err();
            self.metrics.wal_sync.observe(logged.elapsed());
        }
        if let Some(e) = error {
            if space::error_is_full(&e) && self.wal.rollback().is_ok() {
                for id in &logged_ids {
                    self.applied.remove(id);
                }
                let detail = format!("a write failed: {e}");
                self.refuse_for_space(pending.into_iter().map(|p| p.reply), &detail);
                return;
            }
            let why = format!("the write-ahead log failed: {e}");
            tracing::error!(error = %e, "write-ahead log failed; refusing further batches");
            self.failed = Some(why.clone());
            for p in pending {
                let _ = p.reply.send(Err(Error::Unavailable(why.clone())));
            }
            return;
        }
        let now = self.clock.now_unix_seconds();
        let mut results = Vec::with_capacity(pending.len());
        {
            let mut mem = self.mem.write();
            if let Some(p) = position {
                mem.active.log_position = mem.active.log_position.max(p);
            }
            for p in &pending {
                let result = if p.duplicate {
                    Ok(Applied {
                        duplicate: true,
                        rows: 0,
                        attributed: 0,
                        unattributed: 0,
                    })
                } else {
                    match &p.batch {
                        Work::Batch(batch) => {
                            apply(&mut mem, &p.ns, batch, now).map(|()| Applied {
                                duplicate: false,
                                rows: batch.rows() as u64,
                                attributed: batch.attributed,
                                unattributed: batch.unattributed,
                            })
                        }
                        Work::Merge(merge) => {
                            replication::apply_merge(&mut mem, &self.store, &p.ns, merge).map(
                                |()| Applied {
                                    duplicate: false,
                                    rows: merge.records.len() as u64,
                                    attributed: 0,
                                    unattributed: 0,
                                },
                            )
                        }
                    }
                };
                results.push(result);
            }
        }
        for (p, result) in pending.into_iter().zip(results) {
            let _ = p.reply.send(result);
        }
    }

    /// Refuses batches for want of space (`detail` says why), logging at
    /// most once a second.
    fn refuse_for_space(
        &mut self,
        replies: impl Iterator<Item = oneshot::Sender<Result<Applied>>>,
        detail: &str,
    ) {
        let mut refused = 0;
        for reply in replies {
            let _ = reply.send(Err(self.space.full(detail)));
            refused += 1;
        }
        self.metrics
            .disk_full_batches
            .fetch_add(refused, Ordering::Relaxed);
        if let Some(times) = self.full_log.due() {
            tracing::warn!(refused_groups = times, "{}", self.space.full(detail));
        }
    }

    /// Checkpoints everything applied so far and starts writing a snapshot
    /// to `path` on the checkpoint thread's slot: the next checkpoint waits
    /// for it, so sled does not change while it is read.
    fn snapshot(&mut self, path: PathBuf, reply: oneshot::Sender<Result<SnapshotSummary>>) {
        if let Err(e) = self.checkpoint(true) {
            let _ = reply.send(Err(e));
            return;
        }
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("sketchd-snapshot".into())
            .spawn(move || {
                let result = std::fs::File::create(&path)
                    .map_err(|e| Error::io(&path, e))
                    .and_then(|file| {
                        let summary = store.export_snapshot(&file)?;
                        file.sync_all().map_err(|e| Error::io(&path, e))?;
                        Ok(summary)
                    });
                let _ = reply.send(result);
                Ok(())
            });
        match spawned {
            Ok(handle) => self.in_flight = Some(handle),
            Err(e) => tracing::error!(error = %e, "cannot start the snapshot thread"),
        }
    }

    /// Checkpoints when the interval passed or the memtables are full.
    /// `max_memtable_bytes` bounds the active and the frozen memtable
    /// together: at half the budget the active one is frozen if no
    /// checkpoint is running; when both together reach it, ingest waits for
    /// the running checkpoint. That pause of the acknowledgements is the
    /// backpressure that bounds memory.
    fn checkpoint_if_due(&mut self, force: bool) {
        let (dirty, bytes, frozen_bytes) = {
            let mem = self.mem.read();
            let frozen = mem.frozen.as_ref().map_or(0, |f| f.sketch_bytes);
            (mem.active.sketches.len(), mem.active.sketch_bytes, frozen)
        };
        let budget = self.policy.max_memtable_bytes;
        let full = dirty >= self.policy.max_dirty_sketches || bytes + frozen_bytes >= budget;
        let half = bytes >= budget / 2;
        if self.failed.is_some() {
            // Said once when it failed; nothing will change until a restart.
            return;
        }
        if force || full || half || self.last_checkpoint.elapsed() >= self.policy.interval {
            if let Err(e) = self.checkpoint_with(full, false, false) {
                tracing::error!(error = %e, "checkpoint failed; refusing further batches until the server is restarted");
            }
        }
    }

    /// Starts a checkpoint of everything applied so far. With `wait`, waits
    /// for it (and any earlier one) to finish; without, skips when one is
    /// still running.
    fn checkpoint(&mut self, wait: bool) -> Result<()> {
        self.checkpoint_with(wait, wait, false)
    }

    /// With `all_rollups`, also rebuilds every stale rollup block.
    fn checkpoint_with(
        &mut self,
        wait_previous: bool,
        wait_new: bool,
        all_rollups: bool,
    ) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Unavailable(why.clone()));
        }
        let result = self.try_checkpoint(wait_previous, wait_new, all_rollups);
        if let Err(e) = &result {
            // A later checkpoint would record a log position past the
            // records this one failed to store (and sled refuses every
            // write after a failed one): stop acknowledging instead. The
            // log keeps everything for the next start.
            self.failed = Some(if space::error_is_full(e) {
                format!(
                    "a checkpoint failed because the data directory {} is full ({e}); everything \
                     acknowledged is in the write-ahead log: free space, then restart the server \
                     (min_free_disk_bytes keeps more space in reserve)",
                    self.store.dir().display()
                )
            } else {
                format!("a checkpoint failed: {e}; restart the server (everything acknowledged is in the write-ahead log)")
            });
        }
        result
    }

    fn try_checkpoint(
        &mut self,
        wait_previous: bool,
        wait_new: bool,
        all_rollups: bool,
    ) -> Result<()> {
        self.last_checkpoint = Instant::now();
        if let Some(handle) = self.in_flight.take() {
            if wait_previous || handle.is_finished() {
                join_checkpoint(handle)?;
            } else {
                self.in_flight = Some(handle);
                return Ok(());
            }
        }
        let idle = self.mem.read().active.is_empty();
        let stale = self.store.stale_rollups();
        let rollups = all_rollups
            || (stale > 0
                && (idle
                    || stale >= self.policy.rollup_max_stale_blocks
                    || self.last_rollup.elapsed() >= self.policy.rollup_interval));
        if idle && (!rollups || stale == 0) {
            return Ok(());
        }
        if rollups {
            self.last_rollup = Instant::now();
        }
        let started_at = Instant::now();
        let store = self.store.clone();
        let mem = self.mem.clone();
        let gate = self.gate.clone();
        let metrics = self.metrics.clone();
        let frozen = if idle {
            None
        } else {
            let sealed = self.wal.rotate()?;
            let lsn = self.wal.last_lsn();
            let mut mem = self.mem.write();
            let frozen = Arc::new(std::mem::take(&mut mem.active));
            mem.frozen = Some(frozen.clone());
            Some((frozen, lsn, sealed))
        };
        let handle = std::thread::Builder::new()
            .name("sketchd-checkpoint".into())
            .spawn(move || {
                if let Some((frozen, lsn, sealed)) = frozen {
                    let result = run_checkpoint(&store, &mem, &gate, &frozen, lsn, sealed);
                    metrics.checkpoint.observe(started_at.elapsed());
                    result?;
                }
                if rollups {
                    run_rollups(&store, &metrics)?;
                }
                Ok(())
            })
            .map_err(|e| Error::io("checkpoint thread", e))?;
        if wait_new {
            join_checkpoint(handle)
        } else {
            self.in_flight = Some(handle);
            Ok(())
        }
    }
}

fn join_checkpoint(handle: JoinHandle<Result<()>>) -> Result<()> {
    handle
        .join()
        .map_err(|_| Error::Unavailable("the checkpoint thread panicked".into()))?
}

/// Rebuilds every stale rollup block and flushes; counts the pass and its
/// blocks in `metrics`.
fn run_rollups(store: &Store, metrics: &Metrics) -> Result<()> {
    let started = Instant::now();
    let blocks = store.rebuild_rollups()?;
    store.flush()?;
    metrics.rollup.observe(started.elapsed());
    metrics
        .rollup_blocks
        .fetch_add(blocks as u64, Ordering::Relaxed);
    tracing::debug!(
        blocks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rollups rebuilt"
    );
    Ok(())
}

fn run_checkpoint(
    store: &Store,
    mem: &RwLock<MemState>,
    gate: &RwLock<()>,
    frozen: &Memtable,
    lsn: u64,
    sealed: Vec<PathBuf>,
) -> Result<()> {
    let started = Instant::now();
    store.write_checkpoint_merges(frozen)?;
    let batch = store.prepare_checkpoint(frozen, lsn)?;
    {
        // Counter readers hold the gate for read, so they see the frozen
        // counters either in the memtable or in sled, never both. Ingest
        // does not take the gate: the memtable lock is held only for the
        // swap, not for sled's write.
        let _gate = gate.write();
        store.apply_checkpoint(batch)?;
        mem.write().frozen = None;
    }
    store.flush()?;
    for path in sealed {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a checkpointed log segment");
        }
    }
    tracing::debug!(
        lsn,
        sketches = frozen.sketches.len(),
        rows = frozen.rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint done"
    );
    Ok(())
}
