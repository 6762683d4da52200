//! sketchd: a probabilistic sketch aggregation server.
//!
//! Collectors send batches of observations (IP, time, maybe org and
//! country) over gRPC; sketchd folds them into HyperLogLog sketches per UTC
//! day and per global / country / org, keeps them in sled, and answers
//! distinct-IP and distinct-organisation counts over any window with error
//! bounds.
//!
//! # Layout
//!
//! Dependencies point down only:
//!
//! ```text
//! server, service        gRPC adapter, limits, status codes
//! auth                   TLS, bearer tokens, roles per namespace
//! push                   a region's pusher: its changed records to an
//!                        upstream, anti-entropy
//! query                  counts over a running server's engine
//! engine                 shared state of a running server; a cluster
//!                        node follows the cluster's shared log
//! ingest                 batch validation / group commit
//! replication            the records regions push: checks, log payload,
//!                        merge into the memtable, digests
//! catalog, store         namespaces; sled, write-ahead log, memtable
//! cluster                the shared log a cluster's nodes apply (NATS
//!                        JetStream), snapshots, node positions
//! attribution            prefix tables and the org registry
//! sketch, time           HLL sketches and envelopes; days and windows
//! metrics                counters and histograms the engine and ingest
//!                        record; the /metrics endpoint, which reads the
//!                        engine through the `Scrape` trait
//! config, error          validated configuration; the one error type and
//!                        the sketch and attribution errors it wraps
//! access, names,         the plain data config holds: roles, grants,
//! sketch_params          tokens, TLS material, client options, sketch
//!                        precisions and hash seeds; name checks
//!
//! client                 typed gRPC client, the collector (batching,
//!                        exactly-once sequences, retries), input readers
//! report                 the study in one call (text, JSON, charts) from a
//!                        server over gRPC or this process's engine
//! web                    the report page and its JSON endpoints over HTTP
//! ```
//!
//! `pb` holds the generated protobuf types; they are used only by
//! `service`, `server` and `client`. `wire` is the codec their services
//! and clients use.
//!
//! `tests/layering.rs` checks this over the `use` lines: no import circles
//! between these modules, nothing above imported by the bottom layer, no
//! source file over 1,000 lines outside tests. Its allow-lists name the
//! imports and files that do not follow yet. `auth` and `client` re-export
//! the `access` types, `catalog` and `replication` the `names` checks,
//! `sketch` the `sketch_params`.

pub mod access;
pub mod attribution;
pub mod auth;
pub mod catalog;
pub mod client;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod names;
pub mod push;
pub mod query;
pub mod replication;
pub mod report;
pub mod server;
pub mod service;
pub mod sketch;
pub mod sketch_params;
pub mod store;
pub mod time;
pub mod web;
pub mod wire;

/// Generated protobuf and gRPC types of `sketchd.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sketchd.v1");
    include!(concat!(env!("OUT_DIR"), "/client/sketchd.v1.rs"));

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sketchd_descriptor");
}
