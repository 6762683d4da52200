//! Benchmarks of `sketchd::attribution` on the FULL ip-location-db tables.
//!
//! Tables are read from `$SKETCHD_IPMETA_DIR`, else `../shared/data/ipmeta` relative to the
//! crate; without them every benchmark prints a "skipped" line and does nothing.
//!
//! Groups:
//! * `attribution_v4` / `attribution_v6`: `Attributor::lookup_v4/_v6` throughput over 1 Mi
//!   random addresses (`Throughput::Elements`), plus alternative search structures built over the
//!   same compiled interval starts, for comparison (they return the interval position only):
//!   plain `partition_point`, a hand-written branch-free binary search over the whole array,
//!   Eytzinger layout with prefetch, and the first-level index (`IntervalMap::position`) with
//!   12/16/18/20 bits (the `Attributor` uses 18 for both families).
//! * `attribution_load`: `Attributor::load` of all four gzip tables.
//!
//! Before the groups run, the resident memory of one loaded `Attributor` (VmRSS delta and peak
//! VmHWM from /proc/self/status) and its heap accounting are printed.
//!
//! Run: `cargo bench --bench attribution -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sketchd::attribution::{Attributor, IntervalMap, TableFiles};

const N: usize = 1 << 20;

fn tables_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SKETCHD_IPMETA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ipmeta"),
    };
    dir.join("asn-ipv4.csv.gz").is_file().then_some(dir)
}

fn full_files() -> Option<TableFiles> {
    let Some(dir) = tables_dir() else {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            eprintln!(
                "skipped attribution benches: full ipmeta tables not found (set SKETCHD_IPMETA_DIR)"
            )
        });
        return None;
    };
    let f = TableFiles::from_dir(dir);
    Some(TableFiles {
        orgs: None,
        networks: None,
        ..f
    })
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn loaded() -> Option<&'static Attributor> {
    static A: std::sync::OnceLock<Option<Attributor>> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let files = full_files()?;
        let rss0 = status_kib("VmRSS:");
        let t = Instant::now();
        let a = Attributor::load(&files).expect("load full tables");
        let took = t.elapsed();
        let (rss1, hwm) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
        let s = a.stats();
        eprintln!("attribution: first load {took:.2?}; version {}", a.version());
        eprintln!(
            "attribution: heap accounting {:.1} MiB (lookup intervals v4 {}, v6 {}; orgs {})",
            s.heap_bytes as f64 / 1048576.0,
            s.lookup_intervals_v4,
            s.lookup_intervals_v6,
            s.orgs
        );
        if let (Some(r0), Some(r1), Some(h)) = (rss0, rss1, hwm) {
            eprintln!(
                "attribution: VmRSS before {:.1} MiB, after {:.1} MiB (delta {:.1} MiB), peak VmHWM {:.1} MiB",
                r0 as f64 / 1024.0,
                r1 as f64 / 1024.0,
                (r1 as f64 - r0 as f64) / 1024.0,
                h as f64 / 1024.0
            );
        }
        Some(a)
    })
    .as_ref()
}

// --- Alternative search structures over the same sorted starts (position only) ---------------

/// Branch-free binary search over the whole array: index of the last start <= x.
#[inline]
fn branchless<T: Ord + Copy>(s: &[T], x: T) -> usize {
    let mut base = 0usize;
    let mut len = s.len();
    while len > 1 {
        let half = len / 2;
        if s[base + half] <= x {
            base += half;
        }
        len -= half;
    }
    base
}

/// Eytzinger (BFS) layout with a prefetch 4 levels ahead (16 keys of u32 = one cache line).
struct Eytzinger<T> {
    t: Vec<T>,
    /// Sorted position of Eytzinger slot k (slot 0 unused).
    rank: Vec<u32>,
}

impl<T: Ord + Copy + Default> Eytzinger<T> {
    fn new(sorted: &[T]) -> Self {
        let n = sorted.len();
        let mut t = vec![T::default(); n + 1];
        let mut rank = vec![0u32; n + 1];
        fn fill<T: Copy>(s: &[T], t: &mut [T], r: &mut [u32], i: &mut usize, k: usize) {
            if k < t.len() {
                fill(s, t, r, i, 2 * k);
                t[k] = s[*i];
                r[k] = *i as u32;
                *i += 1;
                fill(s, t, r, i, 2 * k + 1);
            }
        }
        let mut i = 0;
        fill(sorted, &mut t, &mut rank, &mut i, 1);
        Eytzinger { t, rank }
    }

    /// Index of the last sorted element <= x (the first element is the minimum, 0).
    #[inline]
    fn position(&self, x: T) -> usize {
        let n = self.t.len() - 1;
        let mut k = 1usize;
        while k <= n {
            #[cfg(target_arch = "x86_64")]
            #[allow(unused_unsafe)]
            // SAFETY: prefetch is a hint; an out-of-range address is never dereferenced.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.t.as_ptr().wrapping_add(16 * k) as *const i8);
            }
            k = 2 * k + usize::from(self.t[k] <= x);
        }
        // k's path: strip the trailing "went right" bits plus one to get the first element > x.
        k >>= k.trailing_ones() + 1;
        if k == 0 {
            n - 1
        } else {
            self.rank[k] as usize - 1
        }
    }
}

fn positions_map<T: sketchd::attribution::Addr>(starts: &[T], bits: u32) -> IntervalMap<T, u32> {
    IntervalMap::from_runs(starts.iter().enumerate().map(|(i, &s)| (s, i as u32)), bits)
}

fn bench_v4(c: &mut Criterion) {
    let Some(a) = loaded() else { return };
    let mut rng = StdRng::seed_from_u64(42);
    let uniform: Vec<u32> = (0..N).map(|_| rng.gen()).collect();
    // One address inside a uniformly chosen interval: weights dense regions of the table.
    let starts = a.v4_starts();
    let per_interval: Vec<u32> = (0..N)
        .map(|_| {
            let i = rng.gen_range(0..starts.len());
            let end = starts.get(i + 1).map_or(u32::MAX, |&n| n - 1);
            rng.gen_range(starts[i]..=end)
        })
        .collect();

    let mut g = c.benchmark_group("attribution_v4");
    g.throughput(Throughput::Elements(N as u64));
    for (dist, addrs) in [("uniform", &uniform), ("per_interval", &per_interval)] {
        g.bench_with_input(
            BenchmarkId::new("attributor_lookup_v4", dist),
            addrs,
            |b, addrs| {
                b.iter(|| {
                    let mut orgs = 0u32;
                    for &ip in addrs.iter() {
                        let at = a.lookup_v4(black_box(ip));
                        orgs = orgs.wrapping_add(at.org.map_or(0, |o| o.0));
                    }
                    orgs
                })
            },
        );
    }
    // Alternatives (position only) on uniform addresses.
    g.bench_function("alt_partition_point", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &ip in uniform.iter() {
                acc = acc.wrapping_add(starts.partition_point(|&s| s <= black_box(ip)) - 1);
            }
            acc
        })
    });
    g.bench_function("alt_branchless_full", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &ip in uniform.iter() {
                acc = acc.wrapping_add(branchless(starts, black_box(ip)));
            }
            acc
        })
    });
    let ey = Eytzinger::new(starts);
    g.bench_function("alt_eytzinger_prefetch", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &ip in uniform.iter() {
                acc = acc.wrapping_add(ey.position(black_box(ip)));
            }
            acc
        })
    });
    for bits in [12, 16, 18, 20] {
        let m = positions_map(starts, bits);
        g.bench_with_input(BenchmarkId::new("alt_index_bits", bits), &m, |b, m| {
            b.iter(|| {
                let mut acc = 0usize;
                for &ip in uniform.iter() {
                    acc = acc.wrapping_add(m.position(black_box(ip)));
                }
                acc
            })
        });
    }
    // Sanity: all alternatives agree.
    let m = positions_map(starts, 16);
    for &ip in uniform.iter().take(10_000) {
        let p = m.position(ip);
        assert_eq!(p, starts.partition_point(|&s| s <= ip) - 1);
        assert_eq!(p, branchless(starts, ip));
        assert_eq!(p, ey.position(ip));
    }
    g.finish();
}

fn bench_v6(c: &mut Criterion) {
    let Some(a) = loaded() else { return };
    let mut rng = StdRng::seed_from_u64(43);
    let starts = a.v6_starts();
    // Uniform u128 would almost never hit 2000::/3; use an address inside a random interval
    // (half of them) or a uniform address in 2000::/3.
    let addrs: Vec<u128> = (0..N)
        .map(|_| {
            if rng.gen_bool(0.5) {
                let i = rng.gen_range(0..starts.len());
                let end = starts.get(i + 1).map_or(u128::MAX, |&n| n - 1);
                rng.gen_range(starts[i]..=end)
            } else {
                (1u128 << 125) | (rng.gen::<u128>() >> 3)
            }
        })
        .collect();
    let mut g = c.benchmark_group("attribution_v6");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("attributor_lookup_v6", |b| {
        b.iter(|| {
            let mut orgs = 0u32;
            for &ip in addrs.iter() {
                let at = a.lookup_v6(black_box(ip));
                orgs = orgs.wrapping_add(at.org.map_or(0, |o| o.0));
                orgs = orgs.wrapping_add(at.country.map_or(0, |c| u32::from(c[1])));
            }
            orgs
        })
    });
    g.bench_function("alt_partition_point", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &ip in addrs.iter() {
                acc = acc.wrapping_add(starts.partition_point(|&s| s <= black_box(ip)) - 1);
            }
            acc
        })
    });
    let ey = Eytzinger::new(starts);
    g.bench_function("alt_eytzinger_prefetch", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &ip in addrs.iter() {
                acc = acc.wrapping_add(ey.position(black_box(ip)));
            }
            acc
        })
    });
    for bits in [16, 18, 20] {
        let m = positions_map(starts, bits);
        g.bench_with_input(BenchmarkId::new("alt_index_bits", bits), &m, |b, m| {
            b.iter(|| {
                let mut acc = 0usize;
                for &ip in addrs.iter() {
                    acc = acc.wrapping_add(m.position(black_box(ip)));
                }
                acc
            })
        });
        for &ip in addrs.iter().take(10_000) {
            assert_eq!(m.position(ip), ey.position(ip));
        }
    }
    g.finish();
}

fn bench_load(c: &mut Criterion) {
    let Some(files) = full_files() else { return };
    let _ = loaded(); // print memory figures once
    let mut g = c.benchmark_group("attribution_load");
    g.sample_size(10);
    g.bench_function("load_full_gz_tables", |b| {
        b.iter(|| Attributor::load(black_box(&files)).expect("load"))
    });
    g.finish();
}

criterion_group!(benches, bench_v4, bench_v6, bench_load);
criterion_main!(benches);
