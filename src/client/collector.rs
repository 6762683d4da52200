//! A collector: observations in, durable acknowledged batches out, across
//! server restarts and overload.
//!
//! [`Collector::push`] adds observations to a columnar [`BatchBuilder`];
//! every `batch_rows` rows (or after `max_batch_delay` for slow streams, or
//! at the end of an input) the batch is numbered and queued for a sender
//! task, which keeps one batch in flight while the caller builds the next.
//! [`Collector::finish`] waits for the last acknowledgement and returns a
//! [`Summary`]; a collector dropped without it abandons its partial batch
//! (a re-run of the input sends everything again; only what never landed
//! counts).
//!
//! # Exactly once
//!
//! The server applies a batch once per `(namespace, collector id,
//! sequence)` and answers `duplicate` for a repeat. So a failed attempt is
//! retried with the *same* request, and the sequence of a batch is a pure
//! function of what the batch is:
//!
//! * by default, an xxh3 hash of the batch's columns and of the position of
//!   its first row in its input (rows since [`Collector::begin_input`]).
//!   Re-running the same input with the same `batch_rows` after a crash of
//!   the collector (or of anything else) re-sends identical batches, which
//!   the server recognises: nothing is counted twice, and no `--state` file
//!   can go stale or be lost. The position makes two identical batches at
//!   different places of one input distinct (both are counted, as the
//!   exact observation counters require).
//! * with [`Sequences::From`], `n, n + 1, …` (the caller owns the scheme).
//!
//! Batch boundaries come from `batch_rows` and input ends, so they are
//! reproducible. A time-based flush (`max_batch_delay`) cuts a batch where
//! the stream happened to pause: re-running such a stream is deduplicated
//! only up to the first boundary that moved. Use it for live streams, not
//! for files that may be replayed.
//!
//! # Retries
//!
//! Transport failures (no server, connection reset, server restarting),
//! `UNAVAILABLE`, `DEADLINE_EXCEEDED` (including the per-attempt timeout),
//! `ABORTED`, `CANCELLED`, `UNKNOWN` and `RESOURCE_EXHAUSTED` *with* the
//! server's `retry-after-ms` hint (its ingest queue is full) are retried
//! after an exponential backoff with jitter ([`RetryPolicy`]), never sooner
//! than the hint, reconnecting after transport failures, for at most
//! `max_elapsed` per batch. Everything else (`INVALID_ARGUMENT`,
//! `RESOURCE_EXHAUSTED` without a hint, i.e. a batch over the row limit,
//! `NOT_FOUND`, …) stops the collector with the server's message.
//!
//! Retrying for long makes sense only for a server that exists: until the
//! server has answered once (acknowledged or refused a batch), connection
//! failures are retried for `wait_for_server` only (by default not at all),
//! so a wrong address or a server that is not running fails within seconds
//! ([`CollectorError::Unreachable`]) rather than after `max_elapsed`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::Xxh3;

use super::formats::{FormatError, Input};
use super::{BatchBuilder, Client, ClientError, Observation, RowOrder};
use crate::pb;

/// How batches are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequences {
    /// A hash of the batch's content and input position (the default).
    ContentHash,
    /// `n, n + 1, …` in the order batches are cut; `n` is at least 1.
    From(u64),
}

/// Exponential backoff with jitter: the n-th retry (0-based) waits a
/// uniformly random time in `[d/2, d]` with `d = min(initial · 2^n,
/// max_delay)`, and at least the server's `retry-after-ms` hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_delay: Duration,
    /// Give up on a batch when it has been failing for this long.
    pub max_elapsed: Duration,
    /// Until the server has answered once, give up on connection failures
    /// after this long (zero: at the first).
    pub wait_for_server: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(600),
            wait_for_server: Duration::ZERO,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `retry` (0-based); `jitter` is in `[0, 1)`.
    pub fn delay(&self, retry: u32, hint: Option<Duration>, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(30));
        let full = self.initial.saturating_mul(factor).min(self.max_delay);
        let jittered = full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        jittered.max(hint.unwrap_or(Duration::ZERO))
    }
}

/// What to do about a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Retry; `reconnect` when the connection itself failed; `hint` is the
    /// server's `retry-after-ms`.
    Retry {
        reconnect: bool,
        hint: Option<Duration>,
    },
    /// Permanent: stop with the server's message.
    Fail,
}

/// Sorts an attempt's error into retry or fail (see the module doc).
pub fn classify(error: &ClientError) -> Disposition {
    use tonic::Code;
    let status = match error {
        ClientError::Connect { .. } | ClientError::Broken { .. } => {
            return Disposition::Retry {
                reconnect: true,
                hint: None,
            }
        }
        ClientError::BadAnswer(_) => return Disposition::Fail,
        ClientError::Status(status) => status,
    };
    let hint = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    match status.code() {
        // A server that did not answer within the attempt's time may hang:
        // a new connection (to the next server, when several are given).
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Disposition::Retry {
                reconnect: true,
                hint,
            }
        }
        Code::Aborted => Disposition::Retry {
            reconnect: false,
            hint,
        },
        Code::ResourceExhausted if hint.is_some() => Disposition::Retry {
            reconnect: false,
            hint,
        },
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => Disposition::Fail,
    }
}

/// Whether `error` is an answer of the server's (not a connection that
/// failed, nor the collector's own attempt timeout).
fn answered(error: &ClientError) -> bool {
    matches!(error, ClientError::Status(s) if s.code() != tonic::Code::DeadlineExceeded)
}

/// Makes a connection; called again after transport failures.
pub type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send>> + Send + Sync,
>;

/// What a collector sends and how.
#[derive(Clone, Debug)]
pub struct CollectorOptions {
    pub namespace: String,
    /// Sent with every batch; with the sequence it identifies the batch.
    pub collector_id: String,
    pub batch_rows: usize,
    /// Send a partial batch once its first row is this old (slow streams).
    pub max_batch_delay: Option<Duration>,
    pub sequences: Sequences,
    pub retry: RetryPolicy,
    /// One attempt that takes longer counts as `DEADLINE_EXCEEDED`.
    pub attempt_timeout: Duration,
}

impl CollectorOptions {
    pub fn new(namespace: &str, collector_id: &str) -> Self {
        CollectorOptions {
            namespace: namespace.to_owned(),
            collector_id: collector_id.to_owned(),
            batch_rows: 50_000,
            max_batch_delay: None,
            sequences: Sequences::ContentHash,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    Options(String),
    #[error("{batch} was refused: {reason}")]
    Refused {
        batch: String,
        #[source]
        reason: ClientError,
    },
    #[error("gave up on {batch} after {retries} retries over {elapsed:.1?}: {last}")]
    GaveUp {
        batch: String,
        retries: u32,
        elapsed: Duration,
        #[source]
        last: ClientError,
    },
    /// The server could not be reached before it ever answered (see the
    /// module doc).
    #[error("{last}")]
    Unreachable {
        #[source]
        last: ClientError,
    },
    #[error("{batch}: {answer}")]
    BadAnswer { batch: String, answer: String },
    #[error("the sender task failed: {0}")]
    Sender(String),
    /// The server refused one row; `observation` is its 1-based number in
    /// `input`, `reason` the server's message without its batch row number.
    #[error("{input}: observation {observation}: {reason}")]
    RowRefused {
        input: String,
        observation: u64,
        reason: String,
    },
}

/// The error of a batch the server refused: for one row, that row's place
/// in its input.
fn refused(batch: &Batch, error: ClientError) -> CollectorError {
    let row = match &error {
        ClientError::Status(status) => status
            .metadata()
            .get(crate::wire::ROW_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok()),
        _ => None,
    };
    let place = row.and_then(|row| Some((row, batch.order.pushed(row)?)));
    match (place, &error) {
        (Some((row, pushed)), ClientError::Status(status)) => {
            let message = status.message();
            let prefix = format!("row {row}: ");
            CollectorError::RowRefused {
                input: batch.input.clone(),
                observation: batch.first_row + pushed as u64 + 1,
                reason: message.strip_prefix(&prefix).unwrap_or(message).to_owned(),
            }
        }
        _ => CollectorError::Refused {
            batch: batch.label.clone(),
            reason: error,
        },
    }
}

/// Counters, updated as batches are acknowledged (read them for progress).
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows pushed so far.
    pub rows_read: AtomicU64,
    /// Rows of acknowledged batches (new or duplicate).
    pub rows_sent: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub duplicate_rows: AtomicU64,
    pub attributed: AtomicU64,
    pub unattributed: AtomicU64,
    pub retries: AtomicU64,
}

/// The outcome of a collector run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Rows acknowledged by the server (new and duplicate).
    pub rows: u64,
    /// Rows counted by this run (not duplicates).
    pub rows_new: u64,
    pub batches: u64,
    /// Batches the server had applied before (a re-run, or a retry whose
    /// first attempt had landed).
    pub duplicate_batches: u64,
    pub duplicate_rows: u64,
    /// Rows whose org or country the server filled in.
    pub attributed: u64,
    /// Rows counted under the unattributed org and/or country ZZ.
    pub unattributed: u64,
    pub retries: u64,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
}

impl Summary {
    fn from_progress(p: &Progress, elapsed: Duration) -> Summary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rows = get(&p.rows_sent);
        let secs = elapsed.as_secs_f64();
        Summary {
            rows,
            rows_new: rows - get(&p.duplicate_rows),
            batches: get(&p.batches),
            duplicate_batches: get(&p.duplicate_batches),
            duplicate_rows: get(&p.duplicate_rows),
            attributed: get(&p.attributed),
            unattributed: get(&p.unattributed),
            retries: get(&p.retries),
            elapsed_seconds: secs,
            rows_per_second: if secs > 0.0 { rows as f64 / secs } else { 0.0 },
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows in {} batches ({} new, {} duplicate rows in {} duplicate batches), \
             attributed {}, unattributed {}, {} retries, {:.0} rows/s, {:.2} s",
            self.rows,
            self.batches,
            self.rows_new,
            self.duplicate_rows,
            self.duplicate_batches,
            self.attributed,
            self.unattributed,
            self.retries,
            self.rows_per_second,
            self.elapsed_seconds
        )
    }
}

/// A numbered batch on its way.
struct Batch {
    request: pb::IngestRequest,
    /// For messages: "batch 3 (sequence …, rows 100001–150000 of x.csv)".
    label: String,
    rows: u64,
    /// The input's name, the position of the batch's first row in it, and
    /// the order its rows were pushed in: a row the server refuses is
    /// reported as the input's observation.
    input: String,
    first_row: u64,
    order: RowOrder,
}

/// Observations in, acknowledged batches out; see the module doc.
pub struct Collector {
    options: Arc<CollectorOptions>,
    builder: BatchBuilder,
    /// The current input's name and rows pushed from it so far.
    input: String,
    input_rows: u64,
    /// When the current batch got its first row.
    batch_opened: Option<Instant>,
    batches_cut: u64,
    next_sequence: Option<u64>,
    queue: Option<mpsc::Sender<Batch>>,
    sender: Option<JoinHandle<Result<(), CollectorError>>>,
    progress: Arc<Progress>,
    started: Instant,
}

impl Collector {
    /// A collector sending through `client` (whose channel reconnects by
    /// itself after transport failures).
    pub fn new(client: Client, options: CollectorOptions) -> Result<Collector, CollectorError> {
        Self::with_connector(
            Arc::new(move || {
                let client = client.clone();
                Box::pin(async move { Ok(client) })
            }),
            options,
        )
    }

    /// A collector that connects to `url` when it first sends (so it may
    /// start before the server) and again after transport failures.
    pub fn connecting(url: &str, options: CollectorOptions) -> Result<Collector, CollectorError> {
        Self::connecting_with(url, crate::client::ClientOptions::default(), options)
    }

    /// [`Collector::connecting`] with a bearer token and/or TLS. `urls` may
    /// name several servers (nodes of one cluster), separated by commas:
    /// each new connection, after a failed attempt, goes to the next one.
    pub fn connecting_with(
        urls: &str,
        client: crate::client::ClientOptions,
        options: CollectorOptions,
    ) -> Result<Collector, CollectorError> {
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(CollectorError::Options("no server URL given".into()));
        }
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let servers = urls.len();
        Self::start(
            Arc::new(move || {
                let i = next.fetch_add(1, Ordering::Relaxed) % urls.len();
                let url = urls[i].clone();
                let client = client.clone();
                Box::pin(async move { Client::connect_with(&url, client).await })
            }),
            servers,
            options,
        )
    }

    /// A collector that makes its connections with `connect`. Must be
    /// called inside a tokio runtime (it spawns the sender task).
    pub fn with_connector(
        connect: Connector,
        options: CollectorOptions,
    ) -> Result<Collector, CollectorError> {
        Self::start(connect, 1, options)
    }

    /// [`Collector::with_connector`] over `servers` servers that `connect`
    /// goes through in turn: before any answered, the collector gives up
    /// on connection failures only once each failed.
    fn start(
        connect: Connector,
        servers: usize,
        options: CollectorOptions,
    ) -> Result<Collector, CollectorError> {
        if options.batch_rows == 0 {
            return Err(CollectorError::Options(
                "batch rows must be at least 1".into(),
            ));
        }
        if options.max_batch_delay == Some(Duration::ZERO) {
            return Err(CollectorError::Options(
                "the batch delay must be positive".into(),
            ));
        }
        if options.sequences == Sequences::From(0) {
            return Err(CollectorError::Options(
                "sequences start at 1: the server refuses sequence 0".into(),
            ));
        }
        let options = Arc::new(options);
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel(1);
        let sender =
            tokio::spawn(Sender::new(connect, servers, options.clone(), progress.clone()).run(rx));
        Ok(Collector {
            next_sequence: match options.sequences {
                Sequences::ContentHash => None,
                Sequences::From(n) => Some(n),
            },
            options,
            builder: BatchBuilder::new(),
            input: "input".into(),
            input_rows: 0,
            batch_opened: None,
            batches_cut: 0,
            queue: Some(tx),
            sender: Some(sender),
            progress,
            started: Instant::now(),
        })
    }

    /// Live counters, for a progress display.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn options(&self) -> &CollectorOptions {
        &self.options
    }

    /// Starts a new input: sends what is pending and counts row positions
    /// (which go into content-hash sequences) from 0 again.
    pub async fn begin_input(&mut self, name: &str) -> Result<(), CollectorError> {
        self.flush().await?;
        name.clone_into(&mut self.input);
        self.input_rows = 0;
        Ok(())
    }

    /// Adds one observation; sends a batch when it is full. Waits only when
    /// a batch is in flight and another is already queued.
    pub async fn push(&mut self, obs: &Observation) -> Result<(), CollectorError> {
        if self.builder.is_empty() {
            self.batch_opened = Some(Instant::now());
        }
        self.builder.push(obs);
        self.input_rows += 1;
        self.progress.rows_read.fetch_add(1, Ordering::Relaxed);
        if self.builder.len() >= self.options.batch_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// When the pending partial batch is due under `max_batch_delay`.
    pub fn flush_due(&self) -> Option<Instant> {
        Some(self.batch_opened? + self.options.max_batch_delay?)
    }

    /// Queues the pending rows as a batch, if any.
    pub async fn flush(&mut self) -> Result<(), CollectorError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let builder = std::mem::take(&mut self.builder);
        self.batch_opened = None;
        let rows = builder.len() as u64;
        let first_row = self.input_rows - rows;
        let order = builder.order();
        let mut request = builder.build(&self.options.namespace, &self.options.collector_id, 0);
        request.sequence = match &mut self.next_sequence {
            Some(n) => {
                let sequence = *n;
                // After u64::MAX comes 1: 0 is refused.
                *n = n.wrapping_add(1).max(1);
                sequence
            }
            None => content_sequence(&request, first_row),
        };
        self.batches_cut += 1;
        let batch = Batch {
            label: format!(
                "batch {} (sequence {}, rows {}-{} of {})",
                self.batches_cut,
                request.sequence,
                first_row + 1,
                first_row + rows,
                self.input
            ),
            request,
            rows,
            input: self.input.clone(),
            first_row,
            order,
        };
        let queue = self.queue.as_ref().expect("queue open until finish");
        if queue.send(batch).await.is_err() {
            return Err(self.sender_error().await);
        }
        Ok(())
    }

    /// Reads `input` to its end on a separate thread and pushes every
    /// observation; with `max_batch_delay`, a pause in the stream sends
    /// the partial batch. Returns the rows read.
    pub async fn send_input(&mut self, input: Input) -> Result<u64, CollectorError> {
        self.begin_input(&input.name).await?;
        // Per row on slow streams (so a pause is seen), in chunks otherwise.
        let chunk = if self.options.max_batch_delay.is_some() {
            1
        } else {
            4096
        };
        let (tx, mut rx) = mpsc::channel::<Result<Vec<Observation>, FormatError>>(16);
        let mut observations = input.observations;
        std::thread::Builder::new()
            .name("sketchd-reader".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(chunk);
                for item in observations.by_ref() {
                    match item {
                        Ok(obs) => {
                            buf.push(obs);
                            if buf.len() >= chunk {
                                let full = std::mem::replace(&mut buf, Vec::with_capacity(chunk));
                                if tx.blocking_send(Ok(full)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Ok(std::mem::take(&mut buf)));
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
                let _ = tx.blocking_send(Ok(buf));
            })
            .map_err(|e| CollectorError::Sender(format!("cannot start a reader thread: {e}")))?;
        let mut rows = 0u64;
        loop {
            let next = match self.flush_due() {
                Some(due) => tokio::select! {
                    next = rx.recv() => next,
                    () = tokio::time::sleep_until(due.into()) => {
                        self.flush().await?;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match next {
                None => break,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(chunk)) => {
                    rows += chunk.len() as u64;
                    for obs in &chunk {
                        self.push(obs).await?;
                    }
                }
            }
        }
        self.flush().await?;
        Ok(rows)
    }

    /// Sends what is pending, waits for every acknowledgement, and sums up.
    pub async fn finish(mut self) -> Result<Summary, CollectorError> {
        self.flush().await?;
        drop(self.queue.take());
        let sender = self.sender.take().expect("sender until finish");
        match sender.await {
            Ok(result) => result?,
            Err(e) => return Err(CollectorError::Sender(e.to_string())),
        }
        Ok(Summary::from_progress(
            &self.progress,
            self.started.elapsed(),
        ))
    }

    /// The error that made the sender task stop.
    async fn sender_error(&mut self) -> CollectorError {
        self.queue = None;
        match self.sender.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => CollectorError::Sender("stopped early".into()),
                Err(e) => CollectorError::Sender(e.to_string()),
            },
            None => CollectorError::Sender("already stopped".into()),
        }
    }
}

/// The content-hash sequence of a batch whose first row is `first_row` of
/// its input: xxh3 over the position and every column, length-prefixed;
/// never 0, which the server refuses.
pub fn content_sequence(request: &pb::IngestRequest, first_row: u64) -> u64 {
    let mut h = Xxh3::new();
    h.update(b"sketchd batch v1");
    h.update(&first_row.to_le_bytes());
    let mut column = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let words: Vec<u8> = request.ipv4.iter().flat_map(|w| w.to_le_bytes()).collect();
    column(&words);
    column(&request.ipv6);
    let times: Vec<u8> = request
        .unix_seconds
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    column(&times);
    for (dict, index) in [
        (&request.org_dict, &request.org_index),
        (&request.country_dict, &request.country_index),
    ] {
        column(&(dict.len() as u64).to_le_bytes());
        for entry in dict {
            column(entry.as_bytes());
        }
        let codes: Vec<u8> = index.iter().flat_map(|c| c.to_le_bytes()).collect();
        column(&codes);
    }
    h.digest().max(1)
}

/// The task that sends queued batches, one at a time, with retries.
struct Sender {
    connect: Connector,
    client: Option<Client>,
    options: Arc<CollectorOptions>,
    progress: Arc<Progress>,
    /// splitmix64 state for jitter.
    jitter: u64,
    /// Whether the server has answered an attempt (acknowledged or refused
    /// it) yet.
    answered: bool,
    /// Servers `connect` goes through in turn.
    servers: usize,
    /// Failed attempts before any server answered.
    unanswered: usize,
}

impl Sender {
    fn new(
        connect: Connector,
        servers: usize,
        options: Arc<CollectorOptions>,
        progress: Arc<Progress>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Sender {
            connect,
            client: None,
            options,
            progress,
            jitter: seed,
            answered: false,
            servers: servers.max(1),
            unanswered: 0,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        self.jitter = self.jitter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Batch>) -> Result<(), CollectorError> {
        while let Some(batch) = queue.recv().await {
            let reply = self.send(&batch).await?;
            let p = &self.progress;
            if reply.duplicate {
                p.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                p.duplicate_rows.fetch_add(batch.rows, Ordering::Relaxed);
            } else if reply.rows_accepted != batch.rows {
                return Err(CollectorError::BadAnswer {
                    batch: batch.label,
                    answer: format!("{} of {} rows accepted", reply.rows_accepted, batch.rows),
                });
            }
            p.rows_sent.fetch_add(batch.rows, Ordering::Relaxed);
            p.batches.fetch_add(1, Ordering::Relaxed);
            p.attributed
                .fetch_add(reply.rows_attributed, Ordering::Relaxed);
            p.unattributed
                .fetch_add(reply.rows_unattributed, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One batch, retried until acknowledged, refused, or out of time.
    async fn send(&mut self, batch: &Batch) -> Result<pb::IngestResponse, CollectorError> {
        let mut failing_since: Option<Instant> = None;
        let mut retries = 0u32;
        loop {
            let error = match self.attempt(batch).await {
                Ok(reply) => {
                    self.answered = true;
                    return Ok(reply);
                }
                Err(e) => e,
            };
            if answered(&error) {
                self.answered = true;
            }
            let Disposition::Retry { reconnect, hint } = classify(&error) else {
                return Err(refused(batch, error));
            };
            if reconnect {
                self.client = None;
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            let jitter = self.next_jitter();
            let delay = self.options.retry.delay(retries, hint, jitter);
            if !self.answered {
                self.unanswered += 1;
            }
            if !self.answered
                && self.unanswered >= self.servers
                && since.elapsed() + delay > self.options.retry.wait_for_server
            {
                return Err(CollectorError::Unreachable { last: error });
            }
            if since.elapsed() + delay > self.options.retry.max_elapsed {
                return Err(CollectorError::GaveUp {
                    batch: batch.label.clone(),
                    retries,
                    elapsed: since.elapsed(),
                    last: error,
                });
            }
            tracing::warn!(
                batch = %batch.label,
                retry = retries + 1,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying"
            );
            self.progress.retries.fetch_add(1, Ordering::Relaxed);
            retries += 1;
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&mut self, batch: &Batch) -> Result<pb::IngestResponse, ClientError> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = (self.connect)().await?;
                self.client = Some(c.clone());
                c
            }
        };
        match tokio::time::timeout(
            self.options.attempt_timeout,
            client.ingest(batch.request.clone()),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
                format!("no answer within {:?}", self.options.attempt_timeout),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_honours_the_hint() {
        let p = RetryPolicy::default();
        let ms = |d: Duration| d.as_millis() as u64;
        // Without jitter (1.0 = full delay) the delay doubles from 100 ms.
        assert_eq!(ms(p.delay(0, None, 1.0)), 100);
        assert_eq!(ms(p.delay(1, None, 1.0)), 200);
        assert_eq!(ms(p.delay(3, None, 1.0)), 800);
        // ... up to the cap, also for absurd retry counts.
        assert_eq!(p.delay(7, None, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay(1000, None, 1.0), Duration::from_secs(10));
        // Jitter spreads it over [d/2, d].
        assert_eq!(ms(p.delay(2, None, 0.0)), 200);
        assert_eq!(ms(p.delay(2, None, 0.5)), 300);
        // The server's retry-after-ms is a floor.
        assert_eq!(ms(p.delay(0, Some(Duration::from_millis(250)), 0.0)), 250);
        assert_eq!(ms(p.delay(4, Some(Duration::from_millis(100)), 1.0)), 1600);
    }

    #[test]
    fn classifies_errors() {
        let status = |code| ClientError::Status(tonic::Status::new(code, "x"));
        let retry = |reconnect, hint| Disposition::Retry { reconnect, hint };
        assert_eq!(
            classify(&status(tonic::Code::Unavailable)),
            retry(true, None)
        );
        assert_eq!(
            classify(&status(tonic::Code::DeadlineExceeded)),
            retry(true, None)
        );
        assert_eq!(
            classify(&ClientError::Connect {
                url: "u".into(),
                reason: "refused".into()
            }),
            retry(true, None)
        );
        // Overloaded (with the hint) is retried; over the row limit is not.
        let mut overloaded = tonic::Status::resource_exhausted("queue full");
        overloaded
            .metadata_mut()
            .insert("retry-after-ms", "100".parse().unwrap());
        assert_eq!(
            classify(&ClientError::Status(overloaded)),
            retry(false, Some(Duration::from_millis(100)))
        );
        assert_eq!(
            classify(&status(tonic::Code::ResourceExhausted)),
            Disposition::Fail
        );
        assert_eq!(
            classify(&status(tonic::Code::InvalidArgument)),
            Disposition::Fail
        );
    }

    #[test]
    fn content_sequences_depend_on_content_and_position() {
        let obs = |ip: &str| Observation {
            ip: ip.parse().unwrap(),
            unix_seconds: 1_775_001_600,
            org: None,
            country: Some("DE".into()),
        };
        let build = |ips: &[&str]| {
            let mut b = BatchBuilder::new();
            for ip in ips {
                b.push(&obs(ip));
            }
            b.build("ns", "c", 0)
        };
        let a = build(&["10.0.0.1", "10.0.0.2"]);
        let same = build(&["10.0.0.1", "10.0.0.2"]);
        let other = build(&["10.0.0.1", "10.0.0.3"]);
        assert_eq!(content_sequence(&a, 0), content_sequence(&same, 0));
        assert_ne!(content_sequence(&a, 0), content_sequence(&other, 0));
        assert_ne!(content_sequence(&a, 0), content_sequence(&a, 2));
    }
}
