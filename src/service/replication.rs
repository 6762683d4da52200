//! The Replication service: the upstream side of pushes and digests, and
//! the regional side's status and sync.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::auth::{self, authorize, authorize_everywhere, authorize_somewhere, Role};
use crate::catalog::{fingerprint_hex, Namespace};
use crate::config::NamespacePolicy;
use crate::engine::Engine;
use crate::error::{quoted, Error};
use crate::pb;
use crate::push::Pusher;
use crate::replication::{self, MergeBatch};

#[derive(Clone)]
pub struct ReplicationService {
    engine: Arc<Engine>,
    pusher: Option<Arc<Pusher>>,
}

impl ReplicationService {
    pub fn new(engine: Arc<Engine>, pusher: Option<Arc<Pusher>>) -> Self {
        ReplicationService { engine, pusher }
    }
}

/// The namespace a region pushes into: created with the region's policy
/// when new; refused when its precision or hash seed differs.
async fn target_namespace(engine: &Engine, chunk: &pb::PushChunk) -> Result<Arc<Namespace>, Error> {
    let ns = match engine.catalog().get(&chunk.namespace) {
        Some(ns) => ns,
        None => {
            let policy = match &chunk.policy {
                Some(p) => NamespacePolicy {
                    precision: u8::try_from(p.precision).map_err(|_| {
                        Error::invalid(
                            "policy.precision",
                            format!("{} is out of range", p.precision),
                        )
                    })?,
                    max_age_days: p.max_age_days,
                    max_future_skew_seconds: p.max_future_skew_seconds,
                    retention_days: p.retention_days.unwrap_or(
                        engine
                            .catalog()
                            .default_policy_for(&chunk.namespace)
                            .retention_days,
                    ),
                },
                None => engine.catalog().default_policy_for(&chunk.namespace),
            };
            engine.create_namespace(&chunk.namespace, policy).await?
        }
    };
    let ours = fingerprint_hex(ns.seed);
    if chunk.seed_fingerprint != ours {
        return Err(Error::Incompatible(format!(
            "namespace {:?}: region {:?} hashes with seed fingerprint {} but this server with {}; \
             configure the same hash seed on both",
            ns.name,
            chunk.region,
            quoted(&chunk.seed_fingerprint),
            ours
        )));
    }
    if let Some(p) = &chunk.policy {
        if p.precision != u32::from(ns.policy.precision) {
            return Err(Error::Incompatible(format!(
                "namespace {:?}: region {:?} has precision {} but this server {}",
                ns.name, chunk.region, p.precision, ns.policy.precision
            )));
        }
    }
    Ok(ns)
}

/// Validates a whole chunk, then logs and merges it.
async fn merge_chunk(engine: &Arc<Engine>, chunk: pb::PushChunk) -> Result<pb::PushAck, Error> {
    replication::validate_region("region", &chunk.region)?;
    let ns = target_namespace(engine, &chunk).await?;
    let mut records = Vec::with_capacity(chunk.records.len());
    for (i, r) in chunk.records.into_iter().enumerate() {
        replication::validate_record(&ns, i, &r.key, &r.value)?;
        records.push((r.key, r.value));
    }
    let merge = MergeBatch {
        ns: ns.id,
        region: chunk.region,
        revision: chunk.revision,
        merged_at: engine.clock().now_unix_seconds(),
        records,
    };
    let merged = engine.merge(ns, merge).await?;
    Ok(pb::PushAck {
        revision: chunk.revision,
        chunk: chunk.chunk,
        records: merged,
    })
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type PushStream = ReceiverStream<Result<pb::PushAck, Status>>;

    async fn push(
        &self,
        request: Request<Streaming<pb::PushChunk>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let caller = authorize_somewhere(&request, Role::Peer)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                let chunk = match inbound.message().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "push stream ended with an error");
                        break;
                    }
                };
                let result = if caller.may(Role::Peer, &chunk.namespace) {
                    merge_chunk(&engine, chunk).await.map_err(status)
                } else {
                    tracing::warn!(caller = caller.name(), namespace = %chunk.namespace, "push refused");
                    Err(Status::permission_denied(format!(
                        "{:?} may not push into namespace {} (needs role peer)",
                        caller.name(),
                        quoted(&chunk.namespace)
                    )))
                };
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        authorize(&request, &request.get_ref().namespace, Role::Peer)?;
        let r = request.into_inner();
        replication::validate_region("region", &r.region).map_err(status)?;
        if !r.buckets.is_power_of_two() || r.buckets > 65_536 {
            return Err(status(Error::invalid(
                "buckets",
                format!("{} is not a power of two up to 65536", r.buckets),
            )));
        }
        let Some(ns) = self.engine.catalog().get(&r.namespace) else {
            return Ok(Response::new(pb::DigestResponse::default()));
        };
        // What was merged lately sits in the memtable: move it to sled.
        self.engine.checkpoint().await.map_err(status)?;
        let engine = self.engine.clone();
        let digests = tokio::task::spawn_blocking(move || -> Result<Vec<u64>, Error> {
            let mut pairs = Vec::new();
            for item in engine.store().origin_records(ns.id, &r.region) {
                let (k, origin) = item?;
                pairs.push((k, origin.hash));
            }
            Ok(replication::digests(pairs.into_iter(), r.buckets))
        })
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(status)?;
        Ok(Response::new(pb::DigestResponse { digests }))
    }

    async fn status(
        &self,
        request: Request<pb::ReplicationStatusRequest>,
    ) -> Result<Response<pb::ReplicationStatus>, Status> {
        // Readers and peers may see where data came from.
        let caller = auth::caller(&request)?;
        if !(caller.may_somewhere(Role::Reader) || caller.may_somewhere(Role::Peer)) {
            authorize_somewhere(&request, Role::Reader)?;
        }
        let engine = self.engine.clone();
        let (revision, (acked, acked_at), pending) =
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                let store = engine.store();
                Ok((
                    store.checkpoint_lsn()?,
                    store.upstream_acked()?,
                    store.pending_changes() as u64,
                ))
            })
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(status)?;
        let regions = self
            .engine
            .regions()
            .into_iter()
            .map(|(region, m)| pb::RegionStatus {
                region,
                revision: m.revision,
                merged_at_unix: m.merged_at,
                records: m.records,
            })
            .collect();
        let cluster = self.engine.cluster_node().map(|n| pb::ClusterStatus {
            node: n.node_name().to_owned(),
            log: n.log().describe(),
            applied_position: n.applied_position(),
            staleness_ms: n.staleness().map_or(-1, |d| d.as_millis() as i64),
            max_staleness_ms: n.max_staleness().as_millis() as i64,
            failed: n.failed().unwrap_or_default(),
        });
        let mut out = pb::ReplicationStatus {
            revision,
            regions,
            cluster,
            ..Default::default()
        };
        if let Some(pusher) = &self.pusher {
            out.region = pusher.config().region.clone();
            out.upstream = pusher.config().upstream.clone();
            out.acked_revision = acked;
            out.acked_at_unix = acked_at;
            out.pending_records = pending;
            out.last_error = pusher.state().last_error;
        }
        Ok(Response::new(out))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        authorize_everywhere(&request, Role::Admin)?;
        let Some(pusher) = &self.pusher else {
            return Err(Status::failed_precondition(
                "this server has no upstream (serve --region NAME --upstream URL)",
            ));
        };
        let pushed = pusher.sync(&self.engine).await.map_err(status)?;
        Ok(Response::new(pb::SyncResponse {
            acked_revision: pushed.revision,
            records_pushed: pushed.records,
        }))
    }
}
