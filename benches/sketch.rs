//! Benchmarks of the `sketch` module.
//!
//! `cargo bench --bench sketch -- --warm-up-time 1 --measurement-time 3`
//!
//! The yardstick is `baseline/xxh3_register_max`: a bare loop of xxh3 over the
//! 16-byte canonical IPv4 form plus a register max on a `[u8; 16384]`. Dense
//! inserts should be close to it; repeated inserts into an exact sketch (the
//! dedupe path) should stay under 20 ns.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use sketchd::sketch::{
    exact_limit, hash_ipv4, HashSeed, PassThroughBuildHasher, Sketch, DEFAULT_PRECISION,
};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const P: u8 = DEFAULT_PRECISION;
const SEED: HashSeed = HashSeed::new(0x5eed);
/// Elements per iteration of the per-element benches.
const N: u32 = 100_000;
/// First address of the synthetic IPv4 workload (10.0.0.0).
const BASE_IP: u32 = 0x0a00_0000;

fn ips(n: u32) -> Vec<u32> {
    // A stride that is coprime to 2^32 spreads the addresses without repeats.
    (0..n)
        .map(|i| BASE_IP.wrapping_add(i.wrapping_mul(2_654_435_761)))
        .collect()
}

fn hashes(n: u32) -> Vec<u64> {
    ips(n).into_iter().map(|ip| hash_ipv4(SEED, ip)).collect()
}

fn sketch_of(hashes: &[u64]) -> Sketch {
    let mut s = Sketch::new(P, SEED).unwrap();
    for &h in hashes {
        s.insert_hash(h);
    }
    s
}

fn dense_sketch(n: u32, salt: u64) -> Sketch {
    let hs: Vec<u64> = hashes(n).into_iter().map(|h| h ^ salt).collect();
    let s = sketch_of(&hs);
    assert!(!s.is_exact());
    s
}

fn insert_benches(c: &mut Criterion) {
    let ips = ips(N);

    let mut g = c.benchmark_group("insert_exact");
    // A fresh exact sketch filled with a small distinct set (includes the
    // set's growth), pre-hashed.
    let small = hashes(exact_limit(P) as u32);
    g.throughput(Throughput::Elements(small.len() as u64));
    g.bench_function("distinct_1024_prehashed", |b| {
        b.iter(|| {
            let mut s = Sketch::new(P, SEED).unwrap();
            for &h in &small {
                s.insert_hash(h);
            }
            black_box(s)
        })
    });
    // The dedupe path: 500 addresses already present, inserted again and
    // again.
    let present: Vec<u32> = ips[..500].to_vec();
    let present_hashes: Vec<u64> = present.iter().map(|&ip| hash_ipv4(SEED, ip)).collect();
    let mut seen = sketch_of(&present_hashes);
    let repeated: Vec<u32> = (0..N as usize).map(|i| present[(i * 7) % 500]).collect();
    let repeated_hashes: Vec<u64> = repeated.iter().map(|&ip| hash_ipv4(SEED, ip)).collect();
    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("repeated_prehashed", |b| {
        b.iter(|| {
            let mut changed = false;
            for &h in &repeated_hashes {
                changed |= seen.insert_hash(h);
            }
            black_box(changed)
        })
    });
    g.bench_function("repeated_ipv4_with_hash", |b| {
        b.iter(|| {
            let mut changed = false;
            for &ip in &repeated {
                changed |= seen.insert_hash(hash_ipv4(SEED, ip));
            }
            black_box(changed)
        })
    });
    assert!(seen.is_exact());
    g.finish();

    let mut g = c.benchmark_group("insert_dense");
    g.throughput(Throughput::Elements(u64::from(N)));
    let mut dense = dense_sketch(50_000, 0x1234);
    g.bench_function("ipv4_with_hash", |b| {
        b.iter(|| {
            for &ip in &ips {
                dense.insert_hash(hash_ipv4(SEED, ip));
            }
        })
    });
    let prehashed = hashes(N);
    g.bench_function("prehashed", |b| {
        b.iter(|| {
            for &h in &prehashed {
                dense.insert_hash(h);
            }
        })
    });
    // The crate's own dense insert (pass-through hasher), hashing included.
    let mut hll: HyperLogLogPlus<u64, PassThroughBuildHasher> =
        HyperLogLogPlus::new(P, PassThroughBuildHasher).unwrap();
    for h in hashes(60_000) {
        hll.insert(&(h ^ 0x9999)); // enough distinct hashes to leave sparse mode
    }
    g.bench_function("crate_hyperloglogplus_ipv4_with_hash", |b| {
        b.iter(|| {
            for &ip in &ips {
                hll.insert(&hash_ipv4(SEED, ip));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("hash_ipv4", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &ip in &ips {
                acc ^= hash_ipv4(SEED, black_box(ip));
            }
            black_box(acc)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(u64::from(N)));
    let mut regs = [0u8; 1 << 14];
    g.bench_function("xxh3_register_max", |b| {
        b.iter(|| {
            for &ip in &ips {
                let o = ip.to_be_bytes();
                let form = [
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
                ];
                let h = xxh3_64_with_seed(&form, 0x5eed);
                let index = (h >> (64 - 14)) as usize;
                let rank = (((h << 14) | (1 << 13)).leading_zeros() + 1) as u8;
                regs[index] = regs[index].max(rank);
            }
            black_box(&regs);
        })
    });
    g.finish();
}

fn merge_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    let exact = sketch_of(&hashes(1000));
    assert!(exact.is_exact());
    let mut acc = dense_sketch(200_000, 0);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("exact_1000_into_dense", |b| {
        b.iter(|| acc.merge(black_box(&exact)).unwrap())
    });
    let other = dense_sketch(200_000, 0xabcdef);
    g.throughput(Throughput::Elements(1 << P));
    g.bench_function("dense_into_dense", |b| {
        b.iter(|| acc.merge(black_box(&other)).unwrap())
    });
    g.throughput(Throughput::Elements(1 << P));
    g.bench_function("dense_into_exact_converts", |b| {
        b.iter_batched_ref(
            || exact.clone(),
            |e| e.merge(black_box(&other)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn estimate_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("estimate");
    for (name, n) in [
        ("dense_lc_5k", 5_000u32),
        ("dense_bias_40k", 40_000),
        ("dense_hll_1m", 1_000_000),
    ] {
        let fresh = dense_sketch(n, 0x77); // never estimated: empty cache
        g.bench_function(format!("{name}_uncached"), |b| {
            b.iter_batched_ref(
                || fresh.clone(),
                |s| black_box(s.estimate()),
                BatchSize::SmallInput,
            )
        });
        let cached = fresh.clone();
        cached.estimate();
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| black_box(cached.estimate()))
        });
    }
    let exact = sketch_of(&hashes(1000));
    g.bench_function("exact", |b| b.iter(|| black_box(exact.estimate())));
    g.finish();
}

fn envelope_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let exact = sketch_of(&hashes(1000));
    let dense = dense_sketch(100_000, 0);
    // Below half load (most dense sketches of a store).
    let light = dense_sketch(3_000, 1);
    let half = dense_sketch(9_000, 2);
    for (name, s) in [
        ("exact_1000", &exact),
        ("dense_p14", &dense),
        ("dense_p14_3k", &light),
        ("dense_p14_9k", &half),
    ] {
        let bytes = s.encode();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| black_box(s.encode()))
        });
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| black_box(Sketch::decode(black_box(&bytes)).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    insert_benches,
    merge_benches,
    estimate_benches,
    envelope_benches
);
criterion_main!(benches);
