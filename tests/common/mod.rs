//! Starts the real server on 127.0.0.1:0 with a temp data dir, in-process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sketchd::attribution::Attributor;
use sketchd::client::Client;
use sketchd::config::ServerConfig;
use sketchd::engine::Engine;
use sketchd::time::{Clock, ManualClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// 2026-11-27T00:00:00Z: "now" for tests, after the study's April–November.
pub const NOW: i64 = 1_795_737_600;
/// 2026-04-01T00:00:00Z.
pub const APRIL_1: i64 = 1_775_001_600;
pub const DAY: i64 = 86_400;

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub client: Client,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<sketchd::error::Result<()>>>,
}

pub fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        data_dir: data_dir.to_owned(),
        ..ServerConfig::default()
    }
}

pub async fn start(data_dir: &Path) -> TestServer {
    start_with(config(data_dir), Attributor::empty()).await
}

pub async fn start_with(config: ServerConfig, tables: Attributor) -> TestServer {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::open_with_clock(&config, tables, clock))
            .await
            .unwrap()
            .expect("engine opens")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let data_dir = config.data_dir.clone();
    let handle = tokio::spawn(async move {
        sketchd::server::run(listener, Arc::new(engine), &config, async {
            let _ = rx.await;
        })
        .await
    });
    let url = format!("http://{addr}");
    let client = Client::connect(&url).await.expect("client connects");
    TestServer {
        addr,
        url,
        client,
        data_dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestServer {
    /// Graceful stop: in-flight requests finish, then checkpoint and flush.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            drop(self.client);
            handle.await.unwrap().expect("server stops cleanly");
        }
    }
}

/// A deterministic pseudo-random sequence (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
