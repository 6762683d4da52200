//! [`SharedLog`] on NATS JetStream.
//!
//! One stream `SKETCHD_<cluster>` (subject `sketchd.<cluster>.log`, file
//! storage, `replicas` copies) holds the records; JetStream acknowledges a
//! publish once the stream's Raft group has it on a majority, and drops a
//! second publish with the same `Nats-Msg-Id` within its two-minute
//! window. Readers use ordered consumers (ephemeral, no acks, recreated by
//! the client after a gap or a leader change). Snapshots go to the object
//! store `sketchd_<cluster>_snapshots` (object `latest`, its position in
//! the metadata); node positions to the key-value bucket
//! `sketchd_<cluster>_nodes`, whose entries expire after
//! [`POSITION_TTL`].
//!
//! The servers must run with `jetstream { sync_interval: always }`: by
//! default JetStream writes to disk every two minutes, and acknowledged
//! messages can be lost when a majority of its machines fail at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, object_store, stream, Context};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use super::{Appended, Bounds, BoxFuture, Entries, Entry, SharedLog, SnapshotInfo};
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

/// How long a node's reported position counts (a node silent for longer
/// no longer holds back trimming; it reloads a snapshot when it returns).
pub const POSITION_TTL: Duration = Duration::from_secs(60);
/// How long an append keeps trying (a stream leader election takes a few
/// seconds) before the batch is refused as unavailable.
const APPEND_DEADLINE: Duration = Duration::from_secs(10);
/// How long the cluster may take to accept the stream at start (a new
/// JetStream cluster elects its meta leader first).
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const SNAPSHOT_OBJECT: &str = "latest";

pub struct JetStreamLog {
    js: Context,
    stream_name: String,
    subject: String,
    snapshots: object_store::ObjectStore,
    nodes: jetstream::kv::Store,
    servers: String,
    /// The largest message the NATS servers take (their `max_payload`).
    max_payload: usize,
}

impl JetStreamLog {
    /// Connects to the NATS servers of `config` and creates (or opens) the
    /// stream, the snapshot store and the node registry. Errors say what to
    /// check.
    pub async fn connect(config: &ClusterConfig) -> Result<JetStreamLog> {
        let servers = config.nats.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("sketchd-{}", config.node))
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(5));
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::Config(format!(
                    "cluster: cannot read the NATS credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &config.ca_cert {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.nats.iter().any(|u| u.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let client = options.connect(config.nats.as_slice()).await.map_err(|e| {
            Error::Config(format!(
                "cluster: cannot connect to NATS at {servers}: {e}. Is nats-server running there \
                 with JetStream enabled? (scripts/nats-cluster.sh starts a local one)"
            ))
        })?;
        let max_payload = client.server_info().max_payload;
        let mut js = jetstream::new(client);
        // An acknowledgement lost to a leader change is asked again after this.
        js.set_timeout(Duration::from_secs(3));
        let stream_name = format!("SKETCHD_{}", config.name);
        let subject = format!("sketchd.{}.log", config.name);
        let replicas = config.replicas;
        let started = Instant::now();
        let setup = |what: &'static str| {
            move |e: String| {
                Error::Config(format!(
                    "cluster: NATS at {servers} did not accept the {what}: {e}. JetStream must be \
                     enabled and at least {replicas} servers must be up for replicas = {replicas}",
                    servers = config.nats.join(",")
                ))
            }
        };
        let stream_config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let created = retry_until(started, || async {
            js.get_or_create_stream(stream_config.clone())
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(setup("stream"))?;
        let held = created.cached_info().config.num_replicas;
        if held != replicas {
            tracing::warn!(
                stream = %stream_name,
                held,
                configured = replicas,
                "the stream exists with another number of replicas; keeping it"
            );
        }
        let snapshots = retry_until(started, || async {
            match js
                .get_object_store(format!("sketchd_{}_snapshots", config.name))
                .await
            {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_object_store(object_store::Config {
                        bucket: format!("sketchd_{}_snapshots", config.name),
                        storage: stream::StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await
        .map_err(setup("snapshot store"))?;
        let nodes = retry_until(started, || async {
            match js
                .get_key_value(format!("sketchd_{}_nodes", config.name))
                .await
            {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_key_value(jetstream::kv::Config {
                        bucket: format!("sketchd_{}_nodes", config.name),
                        history: 1,
                        max_age: POSITION_TTL,
                        storage: stream::StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await
        .map_err(setup("node registry"))?;
        Ok(JetStreamLog {
            js,
            stream_name,
            subject,
            snapshots,
            nodes,
            servers,
            max_payload,
        })
    }

    async fn stream(&self) -> Result<stream::Stream> {
        self.js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| unavailable(&format!("the stream {}", self.stream_name), e))
    }
}

/// Retries `f` until it succeeds or [`SETUP_DEADLINE`] has passed since
/// `started` (a new JetStream cluster takes a few seconds to elect its
/// leaders), except when JetStream is not enabled at all.
async fn retry_until<T, F, Fut>(started: Instant, mut f: F) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let mut said = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() >= SETUP_DEADLINE => return Err(e),
            // Waiting does not help a server without JetStream.
            Err(e) if e.to_lowercase().contains("not enabled") => return Err(e),
            Err(e) => {
                if said.elapsed() >= Duration::from_secs(5) {
                    said = Instant::now();
                    tracing::warn!(
                        error = %e,
                        waited_s = started.elapsed().as_secs(),
                        limit_s = SETUP_DEADLINE.as_secs(),
                        "waiting for NATS JetStream (is JetStream enabled, and are enough servers up?)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what} is unavailable: {e}"))
}

impl SharedLog for JetStreamLog {
    fn append(&self, id: String, payload: Bytes) -> BoxFuture<'_, Result<Appended>> {
        Box::pin(async move {
            // Room for the message id and JetStream's headers.
            let limit = self.max_payload.saturating_sub(1024);
            if payload.len() > limit {
                return Err(Error::LimitExceeded(format!(
                    "the batch takes {} bytes in the cluster log, more than the {} bytes the \
                     NATS servers accept (max_payload); send smaller batches (sketchd ingest \
                     --batch-rows) or raise max_payload in the NATS servers' configuration",
                    payload.len(),
                    limit
                )));
            }
            let started = Instant::now();
            let mut delay = Duration::from_millis(50);
            loop {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&id);
                let error = match self.js.send_publish(self.subject.clone(), publish).await {
                    Ok(ack) => match ack.await {
                        Ok(ack) => {
                            return Ok(Appended {
                                position: ack.sequence,
                                duplicate: ack.duplicate,
                            })
                        }
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                if started.elapsed() + delay > APPEND_DEADLINE {
                    return Err(Error::Unavailable(format!(
                        "the cluster log did not take the batch within {} s ({error}); retry \
                         (the same batch is counted once)",
                        APPEND_DEADLINE.as_secs()
                    )));
                }
                tracing::debug!(error = %error, "append to the cluster log failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        })
    }

    fn read_from(&self, position: u64) -> BoxFuture<'_, Result<Entries>> {
        Box::pin(async move {
            let stream = self.stream().await?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: position.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("a reader of the cluster log", e))?;
            let messages = consumer
                .messages()
                .await
                .map_err(|e| unavailable("a reader of the cluster log", e))?;
            let entries = messages.map(|m| {
                let m = m.map_err(|e| unavailable("the cluster log", e))?;
                let position = m
                    .info()
                    .map_err(|e| Error::Corrupt(format!("cluster log message: {e}")))?
                    .stream_sequence;
                Ok(Entry {
                    position,
                    payload: m.payload.clone(),
                })
            });
            Ok(Box::pin(entries) as Entries)
        })
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds>> {
        Box::pin(async move {
            let info = self
                .stream()
                .await?
                .get_info()
                .await
                .map_err(|e| unavailable("the cluster log", e))?;
            Ok(Bounds {
                first: info.state.first_sequence,
                last: info.state.last_sequence,
            })
        })
    }

    fn trim_before(&self, position: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.stream()
                .await?
                .purge()
                .sequence(position)
                .await
                .map_err(|e| unavailable("trimming the cluster log", e))?;
            Ok(())
        })
    }

    fn put_snapshot(&self, info: SnapshotInfo, path: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| Error::io(&path, e))?;
            let meta = object_store::ObjectMetadata {
                name: SNAPSHOT_OBJECT.into(),
                chunk_size: Some(1 << 20),
                metadata: HashMap::from([
                    ("position".to_owned(), info.position.to_string()),
                    ("node".to_owned(), info.node.clone()),
                ]),
                ..Default::default()
            };
            self.snapshots
                .put(meta, &mut file)
                .await
                .map_err(|e| unavailable("the snapshot store", e))?;
            Ok(())
        })
    }

    fn fetch_snapshot(&self, path: PathBuf) -> BoxFuture<'_, Result<Option<SnapshotInfo>>> {
        Box::pin(async move {
            let mut object = match self.snapshots.get(SNAPSHOT_OBJECT).await {
                Ok(o) => o,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(unavailable("the snapshot store", e)),
            };
            let meta = &object.info().metadata;
            let position = meta
                .get("position")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Corrupt("the stored snapshot has no position".into()))?;
            let node = meta.get("node").cloned().unwrap_or_default();
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::io(&path, e))?;
            let bytes = tokio::io::copy(&mut object, &mut file)
                .await
                .map_err(|e| unavailable("reading the snapshot", e))?;
            file.flush().await.map_err(|e| Error::io(&path, e))?;
            file.sync_all().await.map_err(|e| Error::io(&path, e))?;
            Ok(Some(SnapshotInfo {
                position,
                node,
                bytes,
            }))
        })
    }

    fn report_position(&self, node: String, position: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.nodes
                .put(node, Bytes::from(position.to_string()))
                .await
                .map_err(|e| unavailable("the node registry", e))?;
            Ok(())
        })
    }

    fn positions(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>>> {
        Box::pin(async move {
            let mut keys = self
                .nodes
                .keys()
                .await
                .map_err(|e| unavailable("the node registry", e))?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                names.push(key.map_err(|e| unavailable("the node registry", e))?);
            }
            let mut out = Vec::new();
            for name in names {
                let value = self
                    .nodes
                    .get(name.clone())
                    .await
                    .map_err(|e| unavailable("the node registry", e))?;
                if let Some(p) = value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()) {
                    out.push((name, p));
                }
            }
            Ok(out)
        })
    }

    fn describe(&self) -> String {
        format!("stream {} at {}", self.stream_name, self.servers)
    }
}
