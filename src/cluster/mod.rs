//! The cluster's shared log: what every node of a cluster applies, in one
//! order.
//!
//! A cluster node logs nothing of its own making first: every record that a
//! single server would append to its write-ahead log (a namespace's
//! creation, an ingested batch, a chunk merged from a region) is appended to
//! a [`SharedLog`], which acknowledges once a majority of its replicas hold
//! it. Every node reads the log from its own position and applies each
//! record through its commit thread, exactly as a single server replays its
//! own log, so all nodes hold the same state at the same position (see
//! `engine::cluster`). The log also keeps the snapshots that a joining node
//! starts from and the position each node has reached, which bound how far
//! the log may be trimmed.
//!
//! [`nats::JetStreamLog`] is the implementation on NATS JetStream. The
//! trait is all the engine knows of it, so another log (Kafka, say) needs
//! only these operations: ordered append with an idempotency id, read from
//! a position, first and last position, trim, a blob store and a small
//! key-value registry.

pub mod nats;
pub mod record;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use tokio_stream::Stream;

use crate::error::Result;

/// A boxed future, so that the trait can be used as `dyn SharedLog`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The entries of the log from some position on, in order.
pub type Entries = Pin<Box<dyn Stream<Item = Result<Entry>> + Send>>;

/// What an append learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The entry's position (of the first append, for a duplicate).
    pub position: u64,
    /// The log already held an entry with this id.
    pub duplicate: bool,
}

/// One entry of the log.
#[derive(Clone, Debug)]
pub struct Entry {
    pub position: u64,
    pub payload: Bytes,
}

/// The positions the log holds: `first..=last` (`first > last`: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub first: u64,
    pub last: u64,
}

/// A snapshot in the log's blob store: a data directory's state at a log
/// position (see `store::snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Every entry up to this position is in the snapshot.
    pub position: u64,
    /// The node that took it.
    pub node: String,
    pub bytes: u64,
}

/// The operations a cluster needs of its log (see the module doc).
pub trait SharedLog: Send + Sync + 'static {
    /// Appends `payload`; a second append with the same `id` within the
    /// log's deduplication window is not stored again. Returns once the
    /// entry is durable on a majority of the log's replicas.
    fn append(&self, id: String, payload: Bytes) -> BoxFuture<'_, Result<Appended>>;
    /// Every entry from `position` on, in order, then new ones as they come.
    fn read_from(&self, position: u64) -> BoxFuture<'_, Result<Entries>>;
    fn bounds(&self) -> BoxFuture<'_, Result<Bounds>>;
    /// Removes every entry before `position`.
    fn trim_before(&self, position: u64) -> BoxFuture<'_, Result<()>>;
    /// Stores the snapshot file at `path` as the cluster's latest.
    fn put_snapshot(&self, info: SnapshotInfo, path: PathBuf) -> BoxFuture<'_, Result<()>>;
    /// Writes the latest snapshot to `path`, if there is one.
    fn fetch_snapshot(&self, path: PathBuf) -> BoxFuture<'_, Result<Option<SnapshotInfo>>>;
    /// Records that `node` has applied every entry up to `position`; the
    /// record expires unless renewed.
    fn report_position(&self, node: String, position: u64) -> BoxFuture<'_, Result<()>>;
    /// The positions of the nodes that reported recently.
    fn positions(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>>>;
    /// Where the log is, for messages.
    fn describe(&self) -> String;
}
