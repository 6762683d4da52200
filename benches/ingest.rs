//! Benchmarks of the ingest and query hot paths, in process.
//!
//! * `ingest/decode_protobuf`: prost decoding of a 100k-row columnar batch;
//!   `encode_protobuf` its encoding by prost, `encode_protobuf_fast` by a
//!   client's codec (`wire::encode_ingest_request`);
//! * `ingest/prepare`: validation and attribution of that batch, without
//!   tables, with the checked-in sample tables, and with the full tables
//!   (../shared/data/ipmeta or `$SKETCHD_IPMETA_DIR`; skipped if absent),
//!   so the cost of attribution shows next to the baseline;
//! * `ingest/encode_log` / `decode_log`: the write-ahead log payload;
//! * `ingest/apply`: folding the prepared batch into a fresh memtable, and
//!   into one that already holds the day (the steady state);
//! * `query/merge_window`: a 30-day window of one dense series read from
//!   sled rollups (12 blocks: 6 days, 6 blocks of 4 days) versus day by
//!   day (30 sketches), each merged and estimated; `flat_30d`: the same
//!   window of a flat series (100 IPs a day, no blocks: a point read a day);
//! * `rollups/rebuild`: the rollup pass after a checkpoint of 256 new days
//!   of one dense series (fresh store; sled writes, not flushed).
//!
//! Run: `cargo bench --bench ingest -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use sketchd::attribution::{Attributor, TableFiles};
use sketchd::catalog::Namespace;
use sketchd::client::{BatchBuilder, Observation};
use sketchd::config::NamespacePolicy;
use sketchd::ingest::{apply, codec, prepare, BatchLimits, ObservationBatch};
use sketchd::pb;
use sketchd::sketch::{HashSeed, Sketch};
use sketchd::store::keys::{Family, SketchKey};
use sketchd::store::memtable::{MemState, Memtable};
use sketchd::store::Store;
use sketchd::time::{Day, DayWindow};

const ROWS: usize = 100_000;
/// 2024-06-01, inside the policy's age limit relative to NOW.
const T0: i64 = 1_717_200_000;
const NOW: i64 = T0 + 30 * 86_400;

fn namespace() -> Namespace {
    Namespace {
        id: 1,
        name: "bench".into(),
        policy: NamespacePolicy::default(),
        seed: HashSeed::DEFAULT,
    }
}

/// A batch like a collector's in the peers' world: one day, 45k distinct
/// IPs seen about 2.2 times each, IPs belonging to 5,000 orgs in six
/// countries; org and country given for half of the rows (the other half
/// is attributed when tables are loaded, or counted as unattributed).
fn request() -> pb::IngestRequest {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut b = BatchBuilder::new();
    for i in 0..ROWS {
        let r = next();
        let ip_no = (r >> 20) % 45_000;
        let ip = (ip_no as u32).wrapping_mul(2_654_435_761);
        let org = ip_no % 5_000;
        let given = i % 2 == 0;
        b.push(&Observation {
            ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(ip)),
            unix_seconds: T0 + (r % 86_400) as i64,
            org: given.then(|| format!("AS{}", 64_000 + org)),
            country: given
                .then(|| ["US", "DE", "GB", "IT", "FR", "JP"][(org % 6) as usize].to_owned()),
        });
    }
    b.build("bench", "collector", 1)
}

fn batch(req: &pb::IngestRequest) -> ObservationBatch {
    ObservationBatch {
        namespace: req.namespace.clone(),
        collector: req.collector_id.clone(),
        sequence: req.sequence,
        ipv4: req.ipv4.clone(),
        ipv6: req.ipv6.clone(),
        unix_seconds: req.unix_seconds.clone(),
        org_dict: req.org_dict.clone(),
        org_index: req.org_index.clone(),
        country_dict: req.country_dict.clone(),
        country_index: req.country_index.clone(),
    }
}

fn table_sets() -> Vec<(&'static str, Attributor)> {
    let mut sets = vec![("no_tables", Attributor::empty())];
    let sample =
        TableFiles::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ipmeta"));
    sets.push((
        "sample_tables",
        Attributor::load(&sample).expect("sample tables load"),
    ));
    let full: PathBuf = std::env::var_os("SKETCHD_IPMETA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ipmeta"));
    if full.join("asn-ipv4.csv.gz").is_file() {
        sets.push((
            "full_tables",
            Attributor::load(&TableFiles::from_dir(full)).expect("full tables load"),
        ));
    } else {
        eprintln!("full ipmeta tables not found: ingest/prepare/full_tables skipped");
    }
    sets
}

fn bench_ingest(c: &mut Criterion) {
    let req = request();
    let bytes = req.encode_to_vec();
    let ns = namespace();
    let limits = BatchLimits { max_rows: ROWS };
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(20);
    g.bench_function("decode_protobuf", |b| {
        b.iter(|| pb::IngestRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
    g.bench_function("encode_protobuf", |b| {
        b.iter(|| black_box(&req).encode_to_vec())
    });
    g.bench_function("encode_protobuf_fast", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            sketchd::wire::encode_ingest_request(black_box(&req), &mut out);
            out
        })
    });
    let sets = table_sets();
    for (name, tables) in &sets {
        g.bench_function(format!("prepare/{name}"), |b| {
            b.iter_batched(
                || batch(&req),
                |batch| prepare(batch, &ns, limits, NOW, tables).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    let prepared = prepare(batch(&req), &ns, limits, NOW, &sets.last().unwrap().1).unwrap();
    let payload = codec::encode(&prepared);
    g.bench_function("encode_log", |b| {
        b.iter(|| codec::encode(black_box(&prepared)))
    });
    g.bench_function("decode_log", |b| {
        b.iter(|| codec::decode(black_box(&payload)).unwrap())
    });
    g.bench_function("apply/fresh", |b| {
        b.iter_batched(
            MemState::default,
            |mut state| {
                apply(&mut state, &ns, &prepared, NOW).unwrap();
                state
            },
            BatchSize::LargeInput,
        )
    });
    let mut warm = MemState::default();
    apply(&mut warm, &ns, &prepared, NOW).unwrap();
    g.bench_function("apply/warm", |b| {
        b.iter(|| apply(&mut warm, &ns, black_box(&prepared), NOW).unwrap())
    });
    g.finish();
}

/// `days` days of one series from day 19,900, 20k distinct IPs a day
/// (dense at p=14).
fn dense_days(days: u32) -> Memtable {
    days_of(42, days, 20_000)
}

/// `days` days of series `dim` from day 19,900, `per_day` distinct IPs a day.
fn days_of(dim: u64, days: u32, per_day: usize) -> Memtable {
    let mut mem = Memtable::default();
    let mut h = dim;
    for day in 0..days {
        let mut sketch = Sketch::new(14, HashSeed::DEFAULT).unwrap();
        for _ in 0..per_day {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sketch.insert_hash(h ^ (h >> 29));
        }
        mem.sketches.insert(
            SketchKey::day(1, Family::IpsCountry, dim, Day(19_900 + day)),
            sketch,
        );
        // As ingest does: the extent covers every day with a sketch.
        mem.widen_extent(1, Day(19_900 + day), Day(19_900 + day + 1));
    }
    mem
}

/// The rollup pass after a checkpoint of 256 new dense days of one series
/// (every block above them stale), on a fresh store.
fn bench_rollups(c: &mut Criterion) {
    let mem = dense_days(256);
    let mut g = c.benchmark_group("rollups");
    g.sample_size(10);
    g.bench_function("rebuild/256_dense_days", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap();
                store.write_checkpoint_merges(&mem).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                store.rebuild_rollups().unwrap();
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_query(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Series 42 is dense (rolled up); series 7, 100 IPs a day, is flat.
    for (lsn, mem) in [(1, dense_days(64)), (2, days_of(7, 64, 100))] {
        store.write_checkpoint_merges(&mem).unwrap();
        store
            .apply_checkpoint(store.prepare_checkpoint(&mem, lsn).unwrap())
            .unwrap();
    }
    store.rebuild_rollups().unwrap();
    let window = DayWindow::new(Day(19_905), Day(19_935)).unwrap();
    let mut g = c.benchmark_group("query");
    for (name, dim) in [
        ("merge_window/rollups_30d", 42),
        ("merge_window/flat_30d", 7),
    ] {
        // The window holds 30 days of data: a read that found nothing
        // would be measured as fast.
        let mut acc = Sketch::new(14, HashSeed::DEFAULT).unwrap();
        store
            .merge_window(&mut acc, 1, Family::IpsCountry, dim, window)
            .unwrap();
        assert!(
            acc.estimate().value > 2_000.0,
            "{name}: {:?}",
            acc.estimate()
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = Sketch::new(14, HashSeed::DEFAULT).unwrap();
                store
                    .merge_window(&mut acc, 1, Family::IpsCountry, dim, window)
                    .unwrap();
                acc.estimate()
            })
        });
    }
    g.bench_function("merge_window/days_30d", |b| {
        b.iter(|| {
            let mut acc = Sketch::new(14, HashSeed::DEFAULT).unwrap();
            for day in window.days() {
                if let Some(s) = store
                    .block_sketch(&SketchKey::day(1, Family::IpsCountry, 42, day))
                    .unwrap()
                {
                    acc.merge(&s).unwrap();
                }
            }
            acc.estimate()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_ingest, bench_query, bench_rollups);
criterion_main!(benches);
