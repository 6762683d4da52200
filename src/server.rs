//! Serving: binds the gRPC services to a listener until a shutdown signal.
//!
//! [`run`] takes a bound listener and any shutdown future, so tests drive
//! the real server on `127.0.0.1:0`. On shutdown it stops accepting, lets
//! in-flight requests finish, then checkpoints and flushes the engine.
//!
//! Ingest, Query and Admin are wrapped in the [`Authenticate`] interceptor
//! (a new guarded service gets it the same way, with [`guarded`]); health
//! and reflection (v1 and v1alpha) stay open. TLS, when configured, covers
//! all of them. Every method answers a request that does not parse with
//! `INVALID_ARGUMENT` (see `wire`).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::auth::Authenticate;
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pb;
use crate::push::Pusher;
use crate::service::{AdminService, IngestService, QueryService, ReplicationService};
use crate::wire::DecodeErrorsAreInvalid;

/// Serves `engine` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let max = config.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::ingest_server::IngestServer<IngestService>>()
        .await;
    health
        .set_serving::<pb::query_server::QueryServer<QueryService>>()
        .await;
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    health
        .set_serving::<pb::replication_server::ReplicationServer<ReplicationService>>()
        .await;
    let pusher = match &config.replication {
        Some(r) => Some(Arc::new(Pusher::new(r.clone())?)),
        None => None,
    };
    let (stop_pusher, stopped) = tokio::sync::watch::channel(false);
    if let Some(pusher) = &pusher {
        tracing::info!(region = %pusher.config().region, upstream = %pusher.config().upstream, "replicating to an upstream");
        tokio::spawn(pusher.clone().run(Arc::downgrade(&engine), stopped));
    }
    // Reflection v1, and v1alpha for the clients that know only it
    // (grpcurl 1.8, Python's grpcio-reflection).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let auth = Authenticate::new(config.tokens.clone());
    let ingest = guarded(
        pb::ingest_server::IngestServer::new(IngestService::new(engine.clone()))
            .max_decoding_message_size(max),
        &auth,
    );
    let query = guarded(
        pb::query_server::QueryServer::new(QueryService::new(engine.clone()))
            .max_decoding_message_size(max),
        &auth,
    );
    let admin = guarded(
        pb::admin_server::AdminServer::new(AdminService::new(engine.clone()))
            .max_decoding_message_size(max),
        &auth,
    );
    let replication = guarded(
        pb::replication_server::ReplicationServer::new(ReplicationService::new(
            engine.clone(),
            pusher,
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        &auth,
    );

    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener", e))?;
    config.check_exposure(addr)?;
    log_access(config, addr);
    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
    }
    tracing::info!(%addr, tls = config.tls.is_some(), "serving gRPC");
    // Streamed answers (GroupBy, Compare) would otherwise wait for the
    // client's delayed ACK, about 40 ms, between frames.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let served = server
        .add_service(DecodeErrorsAreInvalid(health_service))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DecodeErrorsAreInvalid(ingest))
        .add_service(DecodeErrorsAreInvalid(query))
        .add_service(DecodeErrorsAreInvalid(admin))
        .add_service(DecodeErrorsAreInvalid(replication))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = stop_pusher.send(true);
    tracing::info!("stopped accepting; checkpointing");
    let engine_for_shutdown = engine.clone();
    let stopped = tokio::task::spawn_blocking(move || engine_for_shutdown.shutdown())
        .await
        .map_err(|e| Error::Unavailable(format!("shutdown task failed: {e}")))?;
    // Connection tasks may still hold service clones for a moment; wait for
    // them so that sled is closed (and its lock released) when we return.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&engine) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    if Arc::strong_count(&engine) > 1 {
        tracing::warn!(
            "the engine is still referenced after shutdown; sled closes when it is released"
        );
    }
    drop(engine);
    stopped.map_err(|e| {
        Error::Unavailable(format!(
            "stopping failed: {e}; everything acknowledged is in the write-ahead log and is \
             applied at the next start"
        ))
    })?;
    served.map_err(|e| Error::Unavailable(format!("transport: {e}")))
}

/// Wraps a generated gRPC server in the authentication interceptor; its
/// handlers must then call `auth::authorize` (they fail closed otherwise).
pub fn guarded<S>(service: S, auth: &Authenticate) -> InterceptedService<S, Authenticate> {
    InterceptedService::new(service, auth.clone())
}

/// Says at start who may call the server.
fn log_access(config: &ServerConfig, addr: std::net::SocketAddr) {
    let mtls = config
        .tls
        .as_ref()
        .is_some_and(|t| t.requires_client_certificates());
    if !config.authenticates() {
        if addr.ip().is_loopback() {
            tracing::info!(%addr, "no authentication configured: listening on loopback only");
        } else {
            tracing::warn!(
                %addr,
                "no authentication configured and listening on a non-loopback address \
                 (allow_insecure_remote): anyone who can reach it may ingest, query and administer"
            );
        }
        return;
    }
    tracing::info!(
        tokens = config.tokens.len(),
        tls = config.tls.is_some(),
        client_certificates = mtls,
        "authentication enabled"
    );
    if !config.tokens.is_empty() && config.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "bearer tokens are configured without [tls]: they cross the network in clear text"
        );
    }
    if config.tokens.is_empty() {
        tracing::info!("client certificates only: every authenticated client may do everything");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
