//! The regional side of replication: pushes changed records to the
//! upstream and repairs differences by anti-entropy. Above the engine (it
//! reads a running server's store and catalog); the records it sends and
//! their digests are `crate::replication`'s.
//!
//! A push covers the revision `R` the store holds when it starts (its
//! checkpointed log position). It streams the current value of every record
//! in the change log, in chunks of at most [`CHUNK_BYTES`]; the upstream
//! acknowledges each chunk once it is durable. When every chunk is
//! acknowledged, the change-log entries it sent are removed (unless a later
//! checkpoint renewed them) and `R` is recorded as acknowledged. A push cut
//! short by an error or a crash on either side leaves the change log as it
//! was, and the next push sends the same records again: merging is
//! idempotent, so nothing is counted twice.

use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::catalog::fingerprint_hex;
use crate::client::{AuthChannel, Client};
use crate::config::ReplicationConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::replication_client::ReplicationClient;
use crate::replication::{bucket_of, digests, record_hash};

/// Bytes of record values per chunk, about.
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;
/// Records per chunk at most.
pub const CHUNK_RECORDS: usize = 8_192;
/// Key buckets compared by anti-entropy.
pub const DIGEST_BUCKETS: u32 = 256;

/// What the status RPC reports of the pusher.
#[derive(Clone, Debug, Default)]
pub struct PushState {
    pub last_error: String,
    pub last_anti_entropy: Option<Instant>,
}

/// Pushes one server's state to its upstream.
pub struct Pusher {
    config: ReplicationConfig,
    upstream: Client,
    state: Mutex<PushState>,
    /// One push (or sync) at a time.
    running: tokio::sync::Mutex<()>,
}

/// The outcome of one push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub revision: u64,
    pub records: u64,
}

impl Pusher {
    pub fn new(config: ReplicationConfig) -> Result<Pusher> {
        let upstream = Client::lazy_with(&config.upstream, &config.client)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Pusher {
            config,
            upstream,
            state: Mutex::new(PushState::default()),
            running: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    pub fn state(&self) -> PushState {
        self.state.lock().clone()
    }

    fn client(&self) -> ReplicationClient<AuthChannel> {
        self.upstream.replication_client()
    }

    /// Pushes until shutdown: every push interval, and anti-entropy at the
    /// first successful contact and every anti-entropy interval after.
    pub async fn run(
        self: Arc<Self>,
        engine: Weak<Engine>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.push_interval) => {}
                _ = stop.changed() => return,
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let due = self
                .state
                .lock()
                .last_anti_entropy
                .is_none_or(|t| t.elapsed() >= self.config.anti_entropy_interval);
            let result = if due {
                self.sync_inner(&engine, false).await
            } else {
                self.push(&engine).await
            };
            if let Err(e) = result {
                tracing::warn!(upstream = %self.config.upstream, error = %e, "replication push failed; will retry");
            }
        }
    }

    /// Checkpoints, pushes, compares digests and pushes what differed.
    pub async fn sync(&self, engine: &Arc<Engine>) -> Result<Pushed> {
        self.sync_inner(engine, true).await
    }

    async fn sync_inner(&self, engine: &Arc<Engine>, checkpoint: bool) -> Result<Pushed> {
        if checkpoint {
            engine.checkpoint().await?;
        }
        // One lock over both pushes, so that the background loop cannot
        // take the repaired records in between.
        let _one = self.running.lock().await;
        let result = async {
            let first = self.push_locked(engine).await?;
            let marked = self.anti_entropy(engine).await?;
            if marked == 0 {
                return Ok(first);
            }
            let second = self.push_locked(engine).await?;
            Ok(Pushed {
                revision: second.revision,
                records: first.records + second.records,
            })
        }
        .await;
        self.note(result)
    }

    fn note<T>(&self, result: Result<T>) -> Result<T> {
        let mut state = self.state.lock();
        match &result {
            Ok(_) => state.last_error.clear(),
            Err(e) => state.last_error = e.to_string(),
        }
        result
    }

    /// Pushes every record of the change log once.
    pub async fn push(&self, engine: &Arc<Engine>) -> Result<Pushed> {
        let _one = self.running.lock().await;
        let result = self.push_locked(engine).await;
        self.note(result)
    }

    async fn push_locked(&self, engine: &Arc<Engine>) -> Result<Pushed> {
        let revision = engine.revision()?;
        let (tx, rx) = mpsc::channel::<pb::PushChunk>(2);
        let producer = {
            let engine = engine.clone();
            let region = self.config.region.clone();
            tokio::task::spawn_blocking(move || produce(&engine, &region, revision, tx))
        };
        let mut client = self.client();
        let outcome = async {
            let response = client.push(ReceiverStream::new(rx)).await?;
            let mut acks = response.into_inner();
            let mut acked = 0u32;
            while let Some(ack) = acks.message().await? {
                acked = acked.max(ack.chunk + 1);
            }
            Ok::<u32, tonic::Status>(acked)
        }
        .await;
        let produced = producer
            .await
            .map_err(|e| Error::Unavailable(format!("push task failed: {e}")))?;
        let acked = outcome.map_err(|s| upstream_error(&self.config.upstream, s))?;
        let Produced {
            pushed,
            records,
            chunks,
        } = produced?;
        if acked != chunks {
            return Err(Error::Unavailable(format!(
                "the upstream acknowledged {acked} of {chunks} chunks"
            )));
        }
        let at = engine.clock().now_unix_seconds();
        let store = engine.store().clone();
        tokio::task::spawn_blocking(move || store.clear_changes(&pushed, revision, at))
            .await
            .map_err(|e| Error::Unavailable(format!("push task failed: {e}")))??;
        if records > 0 {
            tracing::debug!(revision, records, chunks, "pushed to the upstream");
        }
        Ok(Pushed { revision, records })
    }

    /// Compares per-bucket digests with the upstream's for every namespace
    /// and notes the records of differing buckets as changed. Returns how
    /// many records were noted.
    async fn anti_entropy(&self, engine: &Arc<Engine>) -> Result<usize> {
        let mut client = self.client();
        let mut marked = 0;
        for ns in engine.catalog().list() {
            let local = {
                let engine = engine.clone();
                let id = ns.id;
                tokio::task::spawn_blocking(move || -> Result<Vec<u64>> {
                    let mut pairs = Vec::new();
                    for item in engine.store().records(id) {
                        let (k, v) = item?;
                        let h = record_hash(&k, &v);
                        pairs.push((k, h));
                    }
                    Ok(digests(pairs.into_iter(), DIGEST_BUCKETS))
                })
                .await
                .map_err(|e| Error::Unavailable(format!("digest task failed: {e}")))??
            };
            let remote = client
                .digest(pb::DigestRequest {
                    region: self.config.region.clone(),
                    namespace: ns.name.clone(),
                    buckets: DIGEST_BUCKETS,
                })
                .await
                .map_err(|s| upstream_error(&self.config.upstream, s))?
                .into_inner()
                .digests;
            let differing: Vec<bool> = (0..DIGEST_BUCKETS as usize)
                .map(|b| local[b] != remote.get(b).copied().unwrap_or(0))
                .collect();
            if !differing.contains(&true) {
                continue;
            }
            let engine = engine.clone();
            let id = ns.id;
            marked += tokio::task::spawn_blocking(move || -> Result<usize> {
                let store = engine.store();
                let mut records = Vec::new();
                for item in store.records(id) {
                    let (k, _) = item?;
                    if differing[bucket_of(&k, DIGEST_BUCKETS)] {
                        records.push(k);
                    }
                }
                store.mark_changed(id, &records, store.checkpoint_lsn()?)?;
                Ok(records.len())
            })
            .await
            .map_err(|e| Error::Unavailable(format!("digest task failed: {e}")))??;
        }
        self.state.lock().last_anti_entropy = Some(Instant::now());
        if marked > 0 {
            tracing::info!(
                records = marked,
                "anti-entropy found records the upstream lacks; pushing them again"
            );
        }
        Ok(marked)
    }
}

fn upstream_error(upstream: &str, status: tonic::Status) -> Error {
    let what = format!(
        "upstream {upstream}: {}: {}",
        status.code(),
        status.message()
    );
    match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => Error::Incompatible(what),
        _ => Error::Unavailable(what),
    }
}

struct Produced {
    pushed: Vec<(u32, Vec<u8>, u64)>,
    records: u64,
    chunks: u32,
}

/// Reads the change log and the current values, and sends them in chunks.
/// Holds one chunk back so that the final one can say `last`.
fn produce(
    engine: &Engine,
    region: &str,
    revision: u64,
    tx: mpsc::Sender<pb::PushChunk>,
) -> Result<Produced> {
    let store = engine.store();
    let mut pushed = Vec::new();
    let mut records = 0u64;
    let mut chunks = 0u32;
    let mut held: Option<pb::PushChunk> = None;
    let mut current: Option<pb::PushChunk> = None;
    let mut bytes = 0usize;
    let closed = || Error::Unavailable("the push stream closed".into());
    let emit = |chunk: pb::PushChunk, held: &mut Option<pb::PushChunk>| -> Result<()> {
        if let Some(prev) = held.replace(chunk) {
            tx.blocking_send(prev).map_err(|_| closed())?;
        }
        Ok(())
    };
    for change in store.changes() {
        let (ns_id, record, rev) = change?;
        let Some(ns) = engine.catalog().by_id(ns_id) else {
            continue;
        };
        let value = store.record_value(ns_id, &record)?;
        pushed.push((ns_id, record.clone(), rev));
        let Some(value) = value else { continue };
        let fits = current.as_ref().is_some_and(|c| {
            c.namespace == ns.name
                && c.records.len() < CHUNK_RECORDS
                && bytes + value.len() <= CHUNK_BYTES
        });
        if !fits {
            if let Some(full) = current.take() {
                emit(full, &mut held)?;
            }
            current = Some(pb::PushChunk {
                region: region.to_owned(),
                revision,
                chunk: chunks,
                last: false,
                namespace: ns.name.clone(),
                policy: Some(pb::NamespacePolicy {
                    precision: u32::from(ns.policy.precision),
                    max_age_days: ns.policy.max_age_days,
                    max_future_skew_seconds: ns.policy.max_future_skew_seconds,
                    retention_days: Some(ns.policy.retention_days),
                }),
                seed_fingerprint: fingerprint_hex(ns.seed),
                records: Vec::new(),
            });
            chunks += 1;
            bytes = 0;
        }
        bytes += value.len() + record.len();
        records += 1;
        if let Some(c) = current.as_mut() {
            c.records.push(pb::ReplicatedRecord { key: record, value });
        }
    }
    if let Some(full) = current.take() {
        emit(full, &mut held)?;
    }
    if let Some(mut last) = held.take() {
        last.last = true;
        tx.blocking_send(last).map_err(|_| closed())?;
    }
    Ok(Produced {
        pushed,
        records,
        chunks,
    })
}
