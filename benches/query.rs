//! Benchmarks of the organisation queries on an engine shaped like scale 1.
//!
//! The world: 22,000 orgs in 200 countries, about 60,000 (org, country)
//! pairs (an org's home country is skewed towards the first countries, as
//! real ones are), each pair active over a random run of the 214 days and
//! seen on about one day in eight of it (~600k rows, one per (org,
//! country, day) seen). It is ingested through `Engine::ingest`, the engine
//! is shut down (which checkpoints and builds every rollup block) and
//! opened again, so queries read sled and the decoded-sketch cache as a
//! server does after ingest. Building it takes a few seconds.
//!
//! * `orgs/retention_country`: `query::retention` within the largest
//!   country and within a mid-sized one, A = the first 150 days, B = the
//!   rest (the load generator's `org_retention`);
//! * `orgs/retention_global`: the same over every country;
//! * `orgs/group_by_country`: distinct orgs per country over the whole
//!   period (`org_country_window`);
//! * `orgs/count_global`, `orgs/count_country`: distinct orgs globally and
//!   in the largest country over the whole period; `orgs/count_global_month`
//!   globally over 30 days (`org_global_window`);
//! * `orgs/ips_by_org_in_country`: IPs of each org seen in a mid-sized
//!   country over the last 30 days (finds the country's orgs first).
//!
//! Run: `cargo bench --bench query -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use sketchd::attribution::Attributor;
use sketchd::config::ServerConfig;
use sketchd::engine::Engine;
use sketchd::ingest::ObservationBatch;
use sketchd::query::{self, GroupBy, GroupSpec, Metric, Scope};
use sketchd::time::{Clock, Day, DayWindow, ManualClock};

const NS: &str = "bench";
const ORGS: u32 = 22_000;
const DAYS: u32 = 214;
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200;
const DAY: i64 = 86_400;
const NOW: i64 = T0 + (DAYS as i64 + 1) * DAY;
const BATCH_ROWS: usize = 100_000;

/// Assigned ISO 3166-1 codes, the first 200 of which are used.
const COUNTRIES: &str = "US DE GB FR NL JP BR IN RU CA AU IT ES PL SE CH KR CN ID MX AR TR UA \
    ZA SG HK TW BE AT CZ DK FI NO IE PT RO HU GR BG RS HR SK SI LT LV EE IL AE SA EG NG KE MA \
    TN DZ GH CI SN CM UG TZ ET ZM ZW MZ AO NA BW MU MG RW BI MW LS SZ GA CG CD CF TD NE ML BF \
    BJ TG SL LR GN GW GM MR CV ST KM SC DJ SO ER SD SS LY TH VN MY PH PK BD LK NP MM KH LA MN \
    KZ UZ KG TJ TM AZ GE AM BY MD AL MK BA ME IS LU MT CY MC LI AD SM VA FO GL GI JE GG IM NZ \
    FJ PG SB VU NC PF WS TO KI TV NR PW FM MH CL PE CO VE EC BO PY UY GY SR GF CR PA NI HN SV \
    GT BZ CU DO HT JM TT BB BS AG DM LC VC GD KN PR VI VG AI MS KY BM TC AW CW SX BQ MQ GP RE \
    YT PM BL MF QA KW BH OM YE JO LB SY IQ IR AF";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A country index skewed towards the first countries.
    fn country(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * n as f64) as usize
    }
}

/// Rows of the world, one per (org, country, day) seen, in batches.
fn world(countries: &[&str]) -> (Vec<ObservationBatch>, usize) {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut rows: Vec<(u32, u32, u16, u32)> = Vec::new(); // (ip, unix day offset, country, org)
    let mut pairs = 0;
    for org in 0..ORGS {
        let n = 1 + rng.below(4) as usize + usize::from(rng.below(4) == 0);
        let mut mine: Vec<usize> = Vec::with_capacity(n);
        while mine.len() < n {
            let c = rng.country(countries.len());
            if !mine.contains(&c) {
                mine.push(c);
            }
        }
        for (slot, &c) in mine.iter().enumerate() {
            pairs += 1;
            let start = rng.below(u64::from(DAYS)) as u32;
            let len = 1 + rng.below(u64::from(DAYS - start)) as u32;
            for day in start..start + len {
                if day == start || rng.below(8) == 0 {
                    let ip = ((org + 1) << 8) | slot as u32;
                    rows.push((ip, day, c as u16, org));
                }
            }
        }
    }
    // Shuffle so batches mix days, countries and orgs.
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let batches = rows
        .chunks(BATCH_ROWS)
        .enumerate()
        .map(|(i, chunk)| ObservationBatch {
            namespace: NS.into(),
            collector: "bench".into(),
            sequence: i as u64 + 1,
            ipv4: chunk.iter().map(|r| r.0).collect(),
            ipv6: Vec::new(),
            unix_seconds: chunk
                .iter()
                .map(|r| T0 + i64::from(r.1) * DAY + 3_600)
                .collect(),
            org_dict: (0..ORGS).map(|o| format!("AS{}", 100_000 + o)).collect(),
            // Dictionary references are 1-based (0: not given).
            org_index: chunk.iter().map(|r| r.3 + 1).collect(),
            country_dict: countries.iter().map(|c| (*c).to_owned()).collect(),
            country_index: chunk.iter().map(|r| u32::from(r.2) + 1).collect(),
        })
        .collect();
    (batches, pairs)
}

fn open(config: &ServerConfig) -> Engine {
    // sled releases the lock of a database closed moments ago from its
    // background threads: retry briefly.
    for _ in 0..500 {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
        match Engine::open_with_clock(config, Attributor::empty(), clock) {
            Ok(engine) => return engine,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("engine opens: {e}"),
        }
    }
    panic!("engine did not open");
}

fn bench_orgs(c: &mut Criterion) {
    let countries: Vec<&str> = COUNTRIES.split_whitespace().take(200).collect();
    assert_eq!(countries.len(), 200);
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        ..ServerConfig::default()
    };
    let started = std::time::Instant::now();
    let (batches, pairs) = world(&countries);
    let rows: usize = batches.iter().map(|b| b.ipv4.len()).sum();
    {
        let engine = open(&config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for batch in batches {
            rt.block_on(engine.ingest(batch)).unwrap();
        }
        engine.shutdown().unwrap();
    }
    let engine = open(&config);
    eprintln!(
        "world: {ORGS} orgs, {pairs} (org, country) pairs, {rows} rows; built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let day = |d: u32| Day((T0 / DAY) as u32 + d);
    let window = |from: u32, to: u32| DayWindow::new(day(from), day(to)).unwrap();
    let (whole, a, b) = (window(0, DAYS), window(0, 150), window(150, DAYS));
    let country = |name: &str| Scope::Country(name.as_bytes().try_into().unwrap());
    let (large, mid) = (country(countries[0]), country(countries[40]));

    let mut g = c.benchmark_group("orgs");
    g.sample_size(30);
    for (name, scope) in [("largest", &large), ("mid", &mid)] {
        g.bench_function(format!("retention_country/{name}"), |bench| {
            bench.iter(|| query::retention(&engine, NS, black_box(scope), a, b).unwrap())
        });
    }
    g.bench_function("retention_global", |bench| {
        bench.iter(|| query::retention(&engine, NS, &Scope::Global, a, b).unwrap())
    });
    let spec = |metric, by, within| GroupSpec {
        metric,
        by,
        within,
        confidence: query::DEFAULT_CONFIDENCE,
        limit: 0,
    };
    let by_country = spec(Metric::Orgs, GroupBy::Country, Scope::Global);
    g.bench_function("group_by_country", |bench| {
        bench.iter(|| query::group(&engine, NS, black_box(&by_country), whole).unwrap())
    });
    // A month, as the load generator's `org_global_window` asks.
    let month = window(60, 90);
    for (name, scope, window) in [
        ("count_global", &Scope::Global, whole),
        ("count_global_month", &Scope::Global, month),
        ("count_country", &large, whole),
    ] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                query::count(
                    &engine,
                    NS,
                    Metric::Orgs,
                    black_box(scope),
                    window,
                    query::DEFAULT_CONFIDENCE,
                )
                .unwrap()
            })
        });
    }
    let by_org = spec(Metric::Ips, GroupBy::Org, mid.clone());
    let last_month = window(DAYS - 30, DAYS);
    g.bench_function("ips_by_org_in_country", |bench| {
        bench.iter(|| query::group(&engine, NS, black_box(&by_org), last_month).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_orgs);
criterion_main!(benches);
