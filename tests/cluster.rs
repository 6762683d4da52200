//! Cluster mode against real processes: a 3-server NATS JetStream cluster
//! started and stopped by pid by `scripts/nats-cluster.sh` (which installs
//! the pinned nats-server into `.tools/` on first use), and sketchd nodes
//! as child processes of the real binary. Every answer is compared with a
//! single server that ingested the same rows.
//!
//! The tests run one at a time (each starts 3 NATS servers and 3 nodes on
//! a 2-core machine). Where nats-server cannot be installed (no python3)
//! they skip, saying why, unless `CI` is set: there they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::NOW;
use sketchd::client::{Client, Collector, CollectorOptions, Observation, RetryPolicy, Sequences};
use sketchd::pb;

const NS: &str = "study";
const STREAM: &str = "SKETCHD_main";

/// The cluster tests take the machine one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(test: impl std::future::Future<Output = ()>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sends a signal to a child process this test started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Three nats-server processes on loopback ports.
struct Nats {
    dir: tempfile::TempDir,
    urls: String,
}

impl Nats {
    /// Starts the cluster; `None` when nats-server cannot be installed here
    /// (and `CI` is not set).
    fn start() -> Option<Nats> {
        let install = Command::new(repo().join("scripts/nats-server.sh"))
            .stderr(Stdio::inherit())
            .output();
        let installed = matches!(&install, Ok(out) if out.status.success());
        if !installed {
            let why = match install {
                Ok(out) => format!("scripts/nats-server.sh exited with {}", out.status),
                Err(e) => format!("cannot run scripts/nats-server.sh: {e}"),
            };
            if std::env::var_os("CI").is_some() {
                panic!("the cluster tests need nats-server: {why}");
            }
            eprintln!("skipping the cluster test: nats-server cannot be installed here ({why})");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<String> = (0..6).map(|_| free_port().to_string()).collect();
        let out = Command::new(repo().join("scripts/nats-cluster.sh"))
            .arg("start")
            .arg(dir.path())
            .args(&ports)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/nats-cluster.sh start failed");
        let urls = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Some(Nats { dir, urls })
    }

    fn pid(&self, server: &str) -> u32 {
        std::fs::read_to_string(self.dir.path().join(format!("{server}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The server that leads the stream's Raft group.
    async fn stream_leader(&self) -> String {
        let client = async_nats::connect(self.urls.split(',').collect::<Vec<_>>())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        info.cluster
            .and_then(|c| c.leader)
            .expect("the stream has a leader")
    }

    /// The first position the stream still holds.
    async fn stream_first(&self) -> u64 {
        let client = async_nats::connect(self.urls.split(',').collect::<Vec<_>>())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        info.state.first_sequence
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/nats-cluster.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A `sketchd serve --cluster` child process.
struct Node {
    name: String,
    port: u16,
    data: PathBuf,
    config: PathBuf,
    nats: String,
    child: Option<Child>,
}

impl Node {
    fn new(root: &Path, name: &str, nats: &str, toml: &str) -> Node {
        let config = root.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let mut node = Node {
            name: name.to_owned(),
            port: free_port(),
            data: root.join(name),
            config,
            nats: nats.to_owned(),
            child: None,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(["--cluster", &self.nats, "--node", &self.name])
            .env("SKETCHD_LOG", "warn,sketchd::engine::cluster=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sketchd starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("sketchd listening on "),
            "{}: unexpected first line {line:?}",
            self.name
        );
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the clean stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let status = child.wait().unwrap();
            assert!(status.success(), "{} stopped with {status}", self.name);
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.url()).await.unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes on `nats`, with `toml` as their configuration file.
fn nodes(root: &Path, nats: &Nats, toml: &str) -> Vec<Node> {
    ["a", "b", "c"]
        .iter()
        .map(|name| Node::new(root, name, &nats.urls, toml))
        .collect()
}

fn rows(collector: u64, batch: u64, n: usize) -> Vec<Observation> {
    common::study_rows(collector, batch, n, NOW)
}

/// What collectors had acknowledged, as they go.
#[derive(Default)]
struct Acked {
    rows: AtomicU64,
}

/// The longest time without a new acknowledgement until `sending` ends.
async fn longest_pause(acked: &Acked, sending: &tokio::task::JoinHandle<u64>) -> Duration {
    let (mut last, mut seen, mut longest) = (Instant::now(), 0, Duration::ZERO);
    while !sending.is_finished() {
        let now = acked.rows.load(Ordering::Relaxed);
        if now != seen {
            longest = longest.max(last.elapsed());
            last = Instant::now();
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    longest
}

/// Sends `batches` batches of `per_batch` rows from each of `collectors`
/// collectors (ids `first_collector..`), each through `urls` rotated by its
/// index so that they start on different nodes; returns the rows
/// acknowledged. Every batch is retried (on the next node) until
/// acknowledged.
async fn send(
    urls: Vec<String>,
    first_collector: u64,
    collectors: u64,
    batches: u64,
    per_batch: usize,
    acked: Arc<Acked>,
) -> u64 {
    let mut tasks = Vec::new();
    for c in first_collector..first_collector + collectors {
        let mut list = urls.to_vec();
        list.rotate_left(c as usize % urls.len());
        let list = list.join(",");
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let options = CollectorOptions {
                batch_rows: per_batch,
                sequences: Sequences::From(1),
                attempt_timeout: Duration::from_secs(3),
                retry: RetryPolicy {
                    initial: Duration::from_millis(50),
                    max_delay: Duration::from_millis(500),
                    max_elapsed: Duration::from_secs(120),
                    wait_for_server: Duration::from_secs(120),
                },
                ..CollectorOptions::new(NS, &format!("collector-{c}"))
            };
            let mut collector =
                Collector::connecting_with(&list, Default::default(), options).expect("collector");
            let progress = collector.progress();
            let mut seen = 0;
            for b in 0..batches {
                for obs in rows(c, b, per_batch) {
                    collector.push(&obs).await.expect("batch acknowledged");
                }
                let now = progress.rows_sent.load(Ordering::Relaxed);
                acked.rows.fetch_add(now - seen, Ordering::Relaxed);
                seen = now;
            }
            let summary = collector.finish().await.expect("every batch acknowledged");
            acked.rows.fetch_add(summary.rows - seen, Ordering::Relaxed);
            summary.rows
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// The same batches into a single server, for reference.
async fn send_reference(client: &Client, collectors: std::ops::Range<u64>, batches: u64, n: usize) {
    for c in collectors {
        let options = CollectorOptions {
            batch_rows: n,
            sequences: Sequences::From(1),
            ..CollectorOptions::new(NS, &format!("collector-{c}"))
        };
        let mut collector = Collector::new(client.clone(), options).unwrap();
        for b in 0..batches {
            for obs in rows(c, b, n) {
                collector.push(&obs).await.unwrap();
            }
        }
        collector.finish().await.unwrap();
    }
}

/// All observations a node counts; `Err` while it refuses reads.
async fn observations(url: &str) -> Result<u64, tonic::Status> {
    let client = Client::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .query_client()
        .observations(pb::ObservationsRequest {
            namespace: NS.into(),
            scope: Some(pb::Scope::default()),
            from: "2000-01-01".into(),
            to: "2100-01-01".into(),
        })
        .await
        .map(|r| r.into_inner().observations)
}

/// Waits until the node at `url` answers with `rows` observations.
async fn until_caught_up(url: &str, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = observations(url).await;
        if got.as_ref().ok() == Some(&rows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not reach {rows} observations: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node answers every query as the reference does.
async fn assert_answers_like(nodes: &[&Node], reference: &Client) {
    let expected = common::answers(NS, reference, NOW).await;
    assert!(expected.len() > 40);
    for node in nodes {
        let got = common::answers(NS, &node.client().await, NOW).await;
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e, "node {}", node.name);
        }
        assert_eq!(got.len(), expected.len(), "node {}", node.name);
    }
}

/// Every node in `nodes` catches up with `total` rows and then answers as
/// a single server that ingested `sends` (collectors, batches, rows each).
async fn assert_like_single_server(
    nodes: &[&Node],
    total: u64,
    sends: &[(std::ops::Range<u64>, u64, usize)],
) {
    for node in nodes {
        until_caught_up(&node.url(), total).await;
    }
    let ref_dir = tempfile::tempdir().unwrap();
    let reference = common::start(ref_dir.path()).await;
    for (collectors, batches, rows) in sends {
        send_reference(&reference.client, collectors.clone(), *batches, *rows).await;
    }
    assert_answers_like(nodes, &reference.client).await;
    reference.stop().await;
}

const TOML: &str = "[cluster]\nmax_staleness_ms = 1000\n";

/// SIGKILL one node while four collectors send to the cluster: the others
/// keep taking batches, the exact count equals the acknowledged rows and
/// every answer equals a single server's over the same rows, on the
/// survivors and on the killed node once restarted (whose stored records
/// then equal the reference's byte for byte).
#[test]
fn a_killed_node_loses_nothing_and_every_node_answers_as_one_server() {
    run(async {
        let Some(nats) = Nats::start() else { return };
        let root = tempfile::tempdir().unwrap();
        let mut nodes = nodes(root.path(), &nats, TOML);
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        let acked = Arc::new(Acked::default());
        let sending = tokio::spawn(send(urls.clone(), 0, 4, 30, 300, acked.clone()));
        while acked.rows.load(Ordering::Relaxed) < 4 * 300 * 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nodes[1].kill();
        let at_kill = acked.rows.load(Ordering::Relaxed);
        let longest = longest_pause(&acked, &sending).await;
        eprintln!(
            "node b killed; longest pause between acknowledgements {} ms",
            longest.as_millis()
        );
        let total = sending.await.unwrap();
        assert_eq!(total, 4 * 30 * 300);
        assert!(at_kill < total, "the kill happened while collectors sent");

        let ref_dir = tempfile::tempdir().unwrap();
        let reference = common::start(ref_dir.path()).await;
        send_reference(&reference.client, 0..4, 30, 300).await;

        for node in [&nodes[0], &nodes[2]] {
            until_caught_up(&node.url(), total).await;
        }
        nodes[1].start();
        until_caught_up(&nodes[1].url(), total).await;
        let status = nodes[1].client().await.replication_status().await.unwrap();
        let cluster = status.cluster.expect("a cluster node says so");
        assert_eq!(cluster.node, "b");
        assert!(cluster.applied_position >= 4 * 30, "{cluster:?}");
        assert!((0..=1000).contains(&cluster.staleness_ms), "{cluster:?}");
        assert_answers_like(&[&nodes[0], &nodes[1], &nodes[2]], &reference.client).await;

        nodes[1].stop();
        let ref_data = reference.data_dir.clone();
        reference.stop().await;
        let single = common::records(&ref_data);
        let node = common::records(&nodes[1].data);
        assert!(single.keys().any(|k| k[0] == b's') && single.keys().any(|k| k[0] == b'c'));
        assert!(
            node == single,
            "the restarted node's records differ from the single server's"
        );
    });
}

/// A node whose data directory is deleted comes back from the cluster's
/// snapshot and the log after it (the log having been trimmed below what
/// it needs), and answers byte for byte as the others.
#[test]
fn a_node_with_an_empty_data_directory_catches_up_from_the_snapshot() {
    run(async {
        let Some(nats) = Nats::start() else { return };
        let root = tempfile::tempdir().unwrap();
        let toml = format!("{TOML}snapshot_interval_s = 1\n");
        let mut nodes = nodes(root.path(), &nats, &toml);
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        let first = send(urls.clone(), 0, 2, 10, 400, Arc::default()).await;
        for node in &nodes {
            until_caught_up(&node.url(), first).await;
        }
        // Snapshots every second trim the log once every node is past it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while nats.stream_first().await <= 2 {
            assert!(Instant::now() < deadline, "the log was never trimmed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        nodes[2].stop();
        std::fs::remove_dir_all(&nodes[2].data).unwrap();
        let second = send(urls[..2].to_vec(), 2, 2, 10, 400, Arc::default()).await;
        nodes[2].start();
        let total = first + second;
        let all = [&nodes[0], &nodes[1], &nodes[2]];
        assert_like_single_server(&all, total, &[(0..4, 10, 400)]).await;
    });
}

/// SIGKILL the nats-server leading the stream while collectors send:
/// ingest pauses while JetStream elects another leader, and nothing
/// acknowledged is lost or counted twice.
#[test]
fn killing_the_stream_leader_pauses_ingest_briefly_and_loses_nothing() {
    run(async {
        let Some(nats) = Nats::start() else { return };
        let root = tempfile::tempdir().unwrap();
        let nodes = nodes(root.path(), &nats, TOML);
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        let acked = Arc::new(Acked::default());
        let sending = tokio::spawn(send(urls.clone(), 0, 4, 30, 300, acked.clone()));
        while acked.rows.load(Ordering::Relaxed) < 4 * 300 * 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leader = nats.stream_leader().await;
        signal(nats.pid(&leader), libc::SIGKILL);
        let killed = Instant::now();
        let longest = longest_pause(&acked, &sending).await;
        let total = sending.await.unwrap();
        eprintln!(
            "stream leader {leader} killed; longest pause between acknowledgements {} ms; \
             all sent {} ms after the kill",
            longest.as_millis(),
            killed.elapsed().as_millis()
        );
        assert!(
            longest < Duration::from_secs(30),
            "ingest stopped for {longest:?} after the stream leader died"
        );
        assert_eq!(total, 4 * 30 * 300);
        let all = [&nodes[0], &nodes[1], &nodes[2]];
        assert_like_single_server(&all, total, &[(0..4, 30, 300)]).await;
    });
}

/// SIGSTOP a node for longer than its staleness bound while collectors
/// send: they fail over, nothing it could not make durable is
/// acknowledged, and once resumed it refuses reads until it caught up,
/// never answering with less than what was acknowledged before the bound.
#[test]
fn a_paused_node_fails_over_and_never_answers_staler_than_its_bound() {
    run(async {
        let Some(nats) = Nats::start() else { return };
        let root = tempfile::tempdir().unwrap();
        let nodes = nodes(root.path(), &nats, TOML);
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        let before = send(urls.clone(), 0, 3, 2, 300, Arc::default()).await;
        until_caught_up(&nodes[1].url(), before).await;

        signal(nodes[1].pid(), libc::SIGSTOP);
        let paused = Instant::now();
        // Every collector starts on the paused node.
        let on_b: Vec<String> = vec![urls[1].clone(), urls[2].clone(), urls[0].clone()];
        let during = send(on_b, 3, 3, 6, 300, Arc::default()).await;
        let total = before + during;
        let acked_at = Instant::now();
        // Resume once the pause is four times the 1 s bound and the last
        // acknowledgement is older than the bound.
        while paused.elapsed() < Duration::from_secs(4)
            || acked_at.elapsed() < Duration::from_millis(1500)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(nodes[1].pid(), libc::SIGCONT);
        let (mut refused, mut answered) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match observations(&nodes[1].url()).await {
                Ok(n) => {
                    assert_eq!(n, total, "a resumed node answered with a stale count");
                    answered += 1;
                    if answered >= 5 {
                        break;
                    }
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    refused += 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the resumed node never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("the resumed node refused {refused} reads before it caught up");
        let all = [&nodes[0], &nodes[1], &nodes[2]];
        assert_like_single_server(&all, total, &[(0..3, 2, 300), (3..6, 6, 300)]).await;
    });
}

/// A regional server pushes into a cluster (to one node): every node of
/// the cluster merges the region's records and answers as a single server
/// that ingested the region's rows.
#[test]
fn a_region_pushes_into_a_cluster_and_every_node_merges_it() {
    run(async {
        let Some(nats) = Nats::start() else { return };
        let root = tempfile::tempdir().unwrap();
        let nodes = nodes(root.path(), &nats, TOML);
        let region_dir = tempfile::tempdir().unwrap();
        let mut replication =
            sketchd::config::ReplicationConfig::new("eu".into(), nodes[0].url()).unwrap();
        replication.push_interval = Duration::from_millis(150);
        let region = common::start_with(sketchd::config::ServerConfig {
            replication: Some(replication),
            ..common::config(region_dir.path())
        })
        .await;
        send_reference(&region.client, 0..3, 6, 300).await;
        region
            .client
            .sync()
            .await
            .expect("the region's push is acknowledged");
        // A batch id reused with other rows is refused by every node alike,
        // and the nodes go on.
        let batch = |seed: u64| {
            let mut b = sketchd::client::BatchBuilder::new();
            for obs in rows(9, seed, 10) {
                b.push(&obs);
            }
            b.build(NS, "collector-reused", 1)
        };
        let first = nodes[2].client().await.ingest(batch(9)).await.unwrap();
        assert!(!first.duplicate);
        let refused = nodes[1].client().await.ingest(batch(10)).await.unwrap_err();
        assert!(
            matches!(&refused, sketchd::client::ClientError::Status(s)
                if s.code() == tonic::Code::AlreadyExists),
            "{refused}"
        );
        let total = 3 * 6 * 300 + 10;
        for node in &nodes {
            until_caught_up(&node.url(), total).await;
        }
        let ref_dir = tempfile::tempdir().unwrap();
        let reference = common::start(ref_dir.path()).await;
        send_reference(&reference.client, 0..3, 6, 300).await;
        reference.client.ingest(batch(9)).await.unwrap();
        assert_answers_like(&[&nodes[0], &nodes[1], &nodes[2]], &reference.client).await;
        // Deleting a namespace is refused on a cluster node, saying why,
        // and deletes nothing.
        let refused = nodes[1]
            .client()
            .await
            .delete_namespace(NS)
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("every node would have to delete it at the same position"),
            "{refused}"
        );
        assert_answers_like(&[&nodes[0], &nodes[1], &nodes[2]], &reference.client).await;
        region.stop().await;
        reference.stop().await;
    });
}
