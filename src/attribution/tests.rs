//! Tests of the attribution module on real data.
//!
//! Sample tests use the checked-in excerpt in `tests/data/ipmeta/` (CC BY 4.0; RouteViews,
//! DB-IP, NRO). Full-table tests read `$SKETCHD_IPMETA_DIR` or `../shared/data/ipmeta` relative
//! to the crate and print a "skipped" line and return when the tables are absent.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

macro_rules! sample {
    ($name:literal) => {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ipmeta/",
            $name
        ))
    };
}

fn sample_files() -> TableFiles {
    TableFiles {
        asn_v4: Some(sample!("asn-ipv4-sample.csv")),
        asn_v6: Some(sample!("asn-ipv6-sample.csv")),
        country_v4: Some(sample!("asn-country-ipv4-sample.csv")),
        country_v6: Some(sample!("asn-country-ipv6-sample.csv")),
        orgs: None,
        networks: None,
    }
}

fn sample_attributor() -> &'static Attributor {
    static A: OnceLock<Attributor> = OnceLock::new();
    A.get_or_init(|| Attributor::load(&sample_files()).expect("load sample tables"))
}

fn v4(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

fn v6(s: &str) -> u128 {
    u128::from(s.parse::<Ipv6Addr>().unwrap())
}

/// (org id, country) of an attribution, as strings.
fn describe(a: &Attributor, at: Attribution) -> (Option<String>, Option<String>) {
    (
        at.org.map(|o| a.org(o).id.clone()),
        at.country.map(|c| country_str(&c).to_string()),
    )
}

fn check(a: &Attributor, ip: &str, org: Option<&str>, country: Option<&str>) {
    let addr: IpAddr = ip.parse().unwrap();
    let got = describe(a, a.lookup(addr));
    let want = (org.map(str::to_string), country.map(str::to_string));
    assert_eq!(got, want, "lookup({ip})");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sketchd-attribution-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Naive reference: every prefix of a range file, scanned linearly (longest, then later row).

struct Naive<A> {
    /// (first, last, prefix len, row number, value)
    prefixes: Vec<(A, A, u8, usize, String)>,
    /// (first, last, value) of each row, in file order.
    rows: Vec<(A, A, String)>,
}

impl<A: Addr> Naive<A> {
    fn from_csv(path: &Path, value_col: usize) -> Naive<A> {
        let bytes = std::fs::read(path).unwrap();
        let input: Box<dyn std::io::Read> = if is_gzip(path) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(input);
        let mut prefixes = Vec::new();
        let mut rows = Vec::new();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.unwrap();
            let s = A::parse_addr(&rec[0]).unwrap();
            let e = A::parse_addr(&rec[1]).unwrap();
            let v = rec[value_col].to_string();
            A::for_each_cidr(s, e, |p, len| {
                let host = u128::MAX
                    .checked_shr(128 - A::BITS + u32::from(len))
                    .unwrap_or(0);
                let last = A::from_u128(p.to_u128() | host);
                prefixes.push((p, last, len, i, v.clone()));
            });
            rows.push((s, e, v));
        }
        Naive { prefixes, rows }
    }

    fn lookup(&self, ip: A) -> Option<&str> {
        self.prefixes
            .iter()
            .filter(|p| p.0 <= ip && ip <= p.1)
            .max_by_key(|p| (p.2, p.3))
            .map(|p| p.4.as_str())
    }

    /// Random addresses: a third uniform, the rest inside or at the edges of random rows.
    fn random_addrs(&self, rng: &mut StdRng, n: usize) -> Vec<A> {
        (0..n)
            .map(|_| {
                let pick = rng.gen_range(0..6);
                if pick < 2 || self.rows.is_empty() {
                    return A::from_u128(rng.gen::<u128>());
                }
                let (s, e, _) = &self.rows[rng.gen_range(0..self.rows.len())];
                let (s, e) = (s.to_u128(), e.to_u128());
                let x = match pick {
                    2 => s.wrapping_sub(1),
                    3 => e.wrapping_add(1),
                    4 => s,
                    _ => s + rng.gen_range(0..=(e - s)),
                };
                A::from_u128(x)
            })
            .collect()
    }
}

fn asn_id(v: Option<&str>) -> Option<String> {
    v.map(|n| format!("AS{n}"))
}

/// Cross-check `a` against naive scans of the ASN and country files for `n` random addresses.
fn cross_check<A: Addr>(
    a: &Attributor,
    asn: &Naive<A>,
    country: &Naive<A>,
    n: usize,
    seed: u64,
    lookup: impl Fn(&Attributor, A) -> Attribution,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut addrs = asn.random_addrs(&mut rng, n);
    addrs.extend(country.random_addrs(&mut rng, n / 4));
    let mut hits = 0;
    for ip in addrs {
        let got = describe(a, lookup(a, ip));
        let want = (
            asn_id(asn.lookup(ip)),
            country.lookup(ip).map(str::to_string),
        );
        hits += usize::from(want.0.is_some());
        assert_eq!(got, want, "address {}", ip.display());
    }
    assert!(hits > n / 3, "too few addresses hit a range ({hits})");
}

// ---------------------------------------------------------------------------------------------
// Sample tables: spot checks.

#[test]
fn sample_cloudflare_1111_is_as13335_au() {
    let a = sample_attributor();
    check(a, "1.1.1.1", Some("AS13335"), Some("AU"));
    check(a, "1.0.0.1", Some("AS13335"), Some("AU"));
    let org = a.org(a.lookup_v4(v4("1.1.1.1")).org.unwrap());
    assert_eq!(org.name, "Cloudflare, Inc."); // quoted field with a comma
    assert_eq!(org.country, Some(*b"AU")); // country of its first range 1.0.0.0
    assert!(org.sectors.is_empty());
}

#[test]
fn sample_google_8888_is_as15169_us() {
    let a = sample_attributor();
    check(a, "8.8.8.8", Some("AS15169"), Some("US"));
    check(a, "8.8.4.4", Some("AS15169"), Some("US"));
    let g = a.org_by_id("AS15169").unwrap();
    assert_eq!(a.org(g).name, "Google LLC");
    assert_eq!(a.org(g).country_str(), Some("US"));
    // 8.8.5.0 is between Google's 8.8.4.0/24 and 8.8.8.0/24 rows and no sample row covers it.
    check(a, "8.8.5.1", None, Some("US"));
}

#[test]
fn sample_hetzner_and_telecom_italia() {
    let a = sample_attributor();
    // Rows: 5.9.0.0,5.9.255.255,24940,Hetzner Online GmbH / country 5.9.0.0,5.10.15.255,DE
    check(a, "5.9.0.0", Some("AS24940"), Some("DE"));
    check(a, "5.9.128.77", Some("AS24940"), Some("DE"));
    check(a, "5.9.255.255", Some("AS24940"), Some("DE"));
    check(a, "2a01:4f8:1:2::3", Some("AS24940"), Some("DE"));
    // Rows: 2.112.0.0,2.119.255.255,3269,Telecom Italia S.p.A. / 2.112.0.0,2.119.255.255,IT
    check(a, "2.112.0.0", Some("AS3269"), Some("IT"));
    check(a, "2.117.3.4", Some("AS3269"), Some("IT"));
    check(a, "2.119.255.255", Some("AS3269"), Some("IT"));
    let h = a.org(a.org_by_id("AS24940").unwrap());
    assert_eq!(
        (h.name.as_str(), h.country_str()),
        ("Hetzner Online GmbH", Some("DE"))
    );
    let ti = a.org(a.org_by_id("AS3269").unwrap());
    assert_eq!(
        (ti.name.as_str(), ti.country_str()),
        ("Telecom Italia S.p.A.", Some("IT"))
    );
}

#[test]
fn sample_ipv6_spot_checks() {
    let a = sample_attributor();
    check(a, "2606:4700:4700::1111", Some("AS13335"), Some("US"));
    check(a, "2606:4700:4700::1001", Some("AS13335"), Some("US"));
    // Outside the Cloudflare /48 but inside the country row 2606:4700::/32.
    check(a, "2606:4700:4701::1", None, Some("US"));
    check(a, "2001:4860:4860::8888", Some("AS15169"), Some("US"));
    // Google rows: 2001:4860::-2001:4860:4804:ffff:.., then 2001:4860:4806:: -- 4805 is a gap.
    check(
        a,
        "2001:4860:4804:ffff:ffff:ffff:ffff:ffff",
        Some("AS15169"),
        Some("US"),
    );
    check(a, "2001:4860:4805::1", None, Some("US"));
    check(a, "2001:4860:4806::", Some("AS15169"), Some("US"));
    let cf = a.lookup_v6(v6("2606:4700:4700::1111"));
    assert_eq!(cf, a.lookup("2606:4700:4700::1111".parse().unwrap()));
    assert_eq!(a.org(cf.org.unwrap()).name, "Cloudflare, Inc.");
    check(a, "2001:db8::1", None, None);
    check(a, "::", None, None);
    check(a, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None, None);
}

#[test]
fn ipv4_mapped_ipv6_uses_ipv4_tables() {
    let a = sample_attributor();
    for s in [
        "1.1.1.1",
        "8.8.8.8",
        "5.9.1.1",
        "215.0.0.1",
        "10.0.0.1",
        "0.0.0.0",
    ] {
        let ip4 = s.parse::<Ipv4Addr>().unwrap();
        let mapped = ip4.to_ipv6_mapped();
        assert_eq!(
            a.lookup_v6(u128::from(mapped)),
            a.lookup_v4(u32::from(ip4)),
            "{s}"
        );
        assert_eq!(
            a.lookup(IpAddr::V6(mapped)),
            a.lookup(IpAddr::V4(ip4)),
            "{s}"
        );
    }
    check(a, "::ffff:8.8.8.8", Some("AS15169"), Some("US"));
    // IPv4-compatible (deprecated) and NAT64 forms are NOT mapped.
    check(a, "::8.8.8.8", None, None);
    check(a, "64:ff9b::8.8.8.8", None, None);
}

#[test]
fn overlap_as749_as721_later_row_wins_equal_prefix() {
    let a = sample_attributor();
    // Rows 1578: 214.95.0.0-215.0.255.255 AS749; 1579: 215.0.0.0-215.1.3.255 AS721.
    // Both split to 215.0.0.0/16; the later row (AS721) wins it.
    check(a, "215.0.0.1", Some("AS721"), Some("US"));
    check(a, "215.0.255.255", Some("AS721"), Some("US"));
    check(a, "215.1.0.1", Some("AS721"), Some("US"));
    check(a, "215.1.3.255", Some("AS721"), Some("US"));
    check(a, "214.95.0.1", Some("AS749"), Some("US"));
    check(a, "214.255.255.255", Some("AS749"), Some("US"));
    check(a, "214.94.255.255", None, Some("US"));
    // In the sample nothing covers 215.1.4.0 (the full table has AS27066 there).
    check(a, "215.1.4.0", None, Some("US"));
    assert_eq!(a.stats().asn_v4.shadowed, 1);
    assert_eq!(
        a.org(a.org_by_id("AS749").unwrap()).name,
        "United States Department of Defense (DoD)"
    );
}

#[test]
fn sample_stats_match_python_split() {
    let s = sample_attributor().stats();
    // Row counts from the README; prefix counts from Python's summarize_address_range.
    assert_eq!((s.asn_v4.rows, s.asn_v4.prefixes), (1635, 2817));
    assert_eq!((s.asn_v6.rows, s.asn_v6.prefixes), (410, 857));
    assert_eq!((s.country_v4.rows, s.country_v4.prefixes), (935, 1859));
    assert_eq!((s.country_v6.rows, s.country_v6.prefixes), (84, 87));
    assert_eq!(
        (
            s.asn_v6.shadowed,
            s.country_v4.shadowed,
            s.country_v6.shadowed
        ),
        (0, 0, 0)
    );
    assert_eq!(s.orgs, 20); // 17 sampled ASNs + 13335 + 749 + 721
    assert_eq!(sample_attributor().orgs_len(), 20);
    assert!(s.lookup_intervals_v4 > 1000 && s.heap_bytes > 0, "{s:?}");
}

#[test]
fn every_sample_row_edges_resolve_to_the_row() {
    let a = sample_attributor();
    fn run<A: Addr>(a: &Attributor, path: &Path, lookup: impl Fn(&Attributor, A) -> Attribution) {
        let naive = Naive::<A>::from_csv(path, 2);
        let covering = |ip: u128| -> Vec<&str> {
            naive
                .rows
                .iter()
                .filter(|r| r.0.to_u128() <= ip && ip <= r.1.to_u128())
                .map(|r| r.2.as_str())
                .collect()
        };
        let org_at = |ip: u128| describe(a, lookup(a, A::from_u128(ip))).0;
        let mut checked = 0;
        for (s, e, asn) in &naive.rows {
            if asn == "749" || asn == "721" {
                continue; // the overlapping pair has its own test
            }
            let (s, e) = (s.to_u128(), e.to_u128());
            assert_eq!(
                org_at(s),
                Some(format!("AS{asn}")),
                "first of row {}",
                A::from_u128(s).display()
            );
            assert_eq!(
                org_at(e),
                Some(format!("AS{asn}")),
                "last of row {}",
                A::from_u128(e).display()
            );
            for outside in [
                s.checked_sub(1),
                e.checked_add(1).filter(|&x| x <= A::MAX.to_u128()),
            ]
            .into_iter()
            .flatten()
            {
                let cov = covering(outside);
                let want = match cov.as_slice() {
                    [] => None,
                    [one] => Some(format!("AS{one}")),
                    _ => continue,
                };
                assert_eq!(
                    org_at(outside),
                    want,
                    "just outside row at {}",
                    A::from_u128(outside).display()
                );
            }
            checked += 1;
        }
        assert!(checked > 400, "{checked}");
    }
    run::<u32>(a, &sample!("asn-ipv4-sample.csv"), |a, ip| a.lookup_v4(ip));
    run::<u128>(a, &sample!("asn-ipv6-sample.csv"), |a, ip| a.lookup_v6(ip));
}

#[test]
fn sample_random_addresses_match_naive_scan() {
    let a = sample_attributor();
    let asn4 = Naive::<u32>::from_csv(&sample!("asn-ipv4-sample.csv"), 2);
    let cc4 = Naive::<u32>::from_csv(&sample!("asn-country-ipv4-sample.csv"), 2);
    cross_check(a, &asn4, &cc4, 4000, 1, |a, ip| a.lookup_v4(ip));
    let asn6 = Naive::<u128>::from_csv(&sample!("asn-ipv6-sample.csv"), 2);
    let cc6 = Naive::<u128>::from_csv(&sample!("asn-country-ipv6-sample.csv"), 2);
    cross_check(a, &asn6, &cc6, 3000, 2, |a, ip| a.lookup_v6(ip));
}

// ---------------------------------------------------------------------------------------------
// Custom networks and orgs file.

#[test]
fn custom_networks_win_over_asn_table_regardless_of_prefix_length() {
    let dir = TempDir::new("nets");
    let nets = dir.write(
        "networks.csv",
        "cidr,org,country\n\
         1.0.0.0/8,acme,GB\n\
         1.1.0.0/16,ministry\n\
         8.8.8.0/25,acme\n\
         2001:4860:4860::/48,acme,FR\n\
         ::ffff:5.9.0.0/120,mapped-corp\n",
    );
    let mut files = sample_files();
    files.networks = Some(nets);
    let a = Attributor::load(&files).unwrap();
    // The /8 custom network beats Cloudflare's /24 ASN rows; its country column overrides.
    check(&a, "1.0.0.1", Some("acme"), Some("GB"));
    // Longest prefix among custom networks: the /16 wins over the /8. No country column →
    // the country table's (AU), not the org's.
    check(&a, "1.1.1.1", Some("ministry"), Some("AU"));
    // Past the nested /16, the enclosing /8 applies again.
    check(&a, "1.2.3.4", Some("acme"), Some("GB"));
    check(&a, "1.0.255.255", Some("acme"), Some("GB"));
    // Custom /25 wins over Google's /24; outside it the ASN table answers.
    check(&a, "8.8.8.8", Some("acme"), Some("US"));
    check(&a, "8.8.8.200", Some("AS15169"), Some("US"));
    check(&a, "2001:4860:4860::8888", Some("acme"), Some("FR"));
    check(&a, "2001:4860:4861::1", Some("AS15169"), Some("US"));
    // A mapped-IPv6 custom network applies to the IPv4 address.
    check(&a, "5.9.0.1", Some("mapped-corp"), Some("DE"));
    check(&a, "5.9.1.1", Some("AS24940"), Some("DE"));
    let acme = a.org(a.org_by_id("acme").unwrap());
    assert_eq!(
        (acme.name.as_str(), acme.country_str()),
        ("acme", Some("GB"))
    );
    let s = a.stats();
    assert_eq!((s.networks_v4.rows, s.networks_v6.rows), (4, 1));
    assert_eq!(s.orgs, 23);
    assert_ne!(a.version(), sample_attributor().version());
}

#[test]
fn orgs_file_adds_orgs_and_overrides_fields() {
    let dir = TempDir::new("orgs");
    let orgs = dir.write(
        "orgs.csv",
        "org,name,country,sectors\n\
         AS15169,,,Technology; Cloud;technology;\n\
         AS13335,\"Cloudflare, Inc. (edge)\",US,cdn\n\
         ministry,Ministry of Defence,GB,government;defence\n",
    );
    let nets = dir.write("networks.csv", "cidr,org\n1.1.1.0/24,ministry\n");
    let mut files = sample_files();
    files.orgs = Some(orgs.clone());
    let a = Attributor::load(&files).unwrap();
    let g = a.org(a.org_by_id("AS15169").unwrap());
    assert_eq!(g.name, "Google LLC"); // empty name keeps the table's
    assert_eq!(g.country_str(), Some("US")); // empty country keeps the derived one
    assert_eq!(g.sectors, vec!["technology", "cloud"]);
    let cf = a.org(a.org_by_id("AS13335").unwrap());
    assert_eq!(cf.name, "Cloudflare, Inc. (edge)");
    assert_eq!(cf.country_str(), Some("US"));
    assert_eq!(cf.sectors, vec!["cdn"]);
    // Attribution.country stays the country table's, not the org's.
    check(&a, "1.1.1.1", Some("AS13335"), Some("AU"));
    let m = a.org_by_id("ministry").unwrap();
    assert_eq!(a.org(m).sectors, vec!["government", "defence"]);
    assert_eq!(a.org(m).country_str(), Some("GB"));
    assert_eq!(a.stats().orgs_file_rows, 3);
    assert_eq!(a.orgs_len(), 21);
    assert_eq!(a.org_by_id("as15169"), None, "ids are case-sensitive");

    // With a networks file, the orgs file names the network's org.
    files.networks = Some(nets);
    let b = Attributor::load(&files).unwrap();
    let at = b.lookup_v4(v4("1.1.1.1"));
    assert_eq!(b.org(at.org.unwrap()).name, "Ministry of Defence");
    assert_eq!(at.country, Some(*b"AU"));
}

// ---------------------------------------------------------------------------------------------
// Malformed input: every kind names the file and the right line.

fn assert_malformed<T: fmt::Debug>(
    r: Result<T, AttributionError>,
    path: &Path,
    line: u64,
    needle: &str,
) {
    match r {
        Err(AttributionError::Malformed {
            path: p,
            line: l,
            reason,
        }) => {
            assert_eq!(p, path);
            assert_eq!(l, line, "line of {reason:?}");
            assert!(
                reason.contains(needle),
                "reason {reason:?} should contain {needle:?}"
            );
            let shown = AttributionError::Malformed {
                path: p,
                line: l,
                reason,
            }
            .to_string();
            assert!(
                shown.contains(&format!("{}:{line}:", path.display())),
                "{shown}"
            );
        }
        other => panic!("expected Malformed at line {line}, got {other:?}"),
    }
}

const GOOD_V4: &str = "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n\
                       8.8.8.0,8.8.8.255,15169,Google LLC\n";

#[test]
fn malformed_asn_rows_report_file_and_line() {
    let dir = TempDir::new("bad-asn");
    let cases: &[(&str, &str, &str)] = &[
        (
            "bad address",
            "1.2.3,1.2.3.255,1,X\n",
            "bad IPv4 address \"1.2.3\"",
        ),
        (
            "bad end",
            "1.2.3.0,1.2.3.256,1,X\n",
            "end: bad IPv4 address",
        ),
        (
            "end before start",
            "1.2.3.255,1.2.3.0,1,X\n",
            "end address 1.2.3.0 is before start",
        ),
        ("family", "2001:db8::,2001:db8::ff,1,X\n", "family mismatch"),
        (
            "mixed family",
            "1.2.3.0,2001:db8::ff,1,X\n",
            "end: address family mismatch",
        ),
        ("asn text", "1.2.3.0,1.2.3.255,AS1,X\n", "bad ASN \"AS1\""),
        ("asn negative", "1.2.3.0,1.2.3.255,-1,X\n", "bad ASN \"-1\""),
        (
            "asn too large",
            "1.2.3.0,1.2.3.255,4294967296,X\n",
            "larger than",
        ),
        ("asn empty", "1.2.3.0,1.2.3.255,,X\n", "bad ASN \"\""),
        (
            "missing column",
            "1.2.3.0,1.2.3.255,1\n",
            "missing column 4 (name)",
        ),
        (
            "extra column",
            "1.2.3.0,1.2.3.255,1,Foo, Inc.\n",
            "too many columns",
        ),
    ];
    for (i, (what, row, needle)) in cases.iter().enumerate() {
        let p = dir.write(&format!("asn{i}.csv"), &format!("{GOOD_V4}{row}{GOOD_V4}"));
        let files = TableFiles {
            asn_v4: Some(p.clone()),
            ..TableFiles::default()
        };
        eprintln!("case: {what}");
        assert_malformed(Attributor::load(&files), &p, 3, needle);
    }
    // IPv4 rows in the IPv6 table.
    let p = dir.write(
        "v6.csv",
        "2001:db8::,2001:db8::ff,1,X\n1.0.0.0,1.0.0.255,1,X\n",
    );
    let files = TableFiles {
        asn_v6: Some(p.clone()),
        ..TableFiles::default()
    };
    assert_malformed(
        Attributor::load(&files),
        &p,
        2,
        "expected an IPv6 address, found IPv4",
    );
}

#[test]
fn malformed_line_numbers_count_quoted_newlines() {
    let dir = TempDir::new("bad-lines");
    // Record 2 spans lines 2-3 (a quoted newline); the bad record starts on line 4.
    let p = dir.write(
        "asn.csv",
        "1.0.0.0,1.0.0.255,1,A\n1.0.1.0,1.0.1.255,2,\"two\nlines\"\n1.0.2.0,1.0.2.255,x,C\n",
    );
    let files = TableFiles {
        asn_v4: Some(p.clone()),
        ..TableFiles::default()
    };
    assert_malformed(Attributor::load(&files), &p, 4, "bad ASN");
    // Invalid UTF-8 is an error too, not a skip.
    let p2 = dir.0.join("utf8.csv");
    std::fs::write(
        &p2,
        b"1.0.0.0,1.0.0.255,1,A\n1.0.1.0,1.0.1.255,2,\xff\xfe\n",
    )
    .unwrap();
    let files = TableFiles {
        asn_v4: Some(p2.clone()),
        ..TableFiles::default()
    };
    assert_malformed(Attributor::load(&files), &p2, 2, "invalid UTF-8");
}

#[test]
fn malformed_country_rows() {
    let dir = TempDir::new("bad-cc");
    let good = "1.0.0.0,1.0.0.255,AU\n";
    for (row, needle) in [
        ("1.0.1.0,1.0.1.255,au\n", "bad country code \"au\""),
        ("1.0.1.0,1.0.1.255,AUS\n", "bad country code \"AUS\""),
        ("1.0.1.0,1.0.1.255,A1\n", "bad country code \"A1\""),
        ("1.0.1.0,1.0.1.255,\n", "bad country code \"\""),
        ("1.0.1.0,1.0.1.255,ÄU\n", "bad country code"),
        ("1.0.1.0,1.0.1.255\n", "missing column 3 (country)"),
    ] {
        let p = dir.write("cc.csv", &format!("{good}{good}{row}"));
        let files = TableFiles {
            country_v4: Some(p.clone()),
            ..TableFiles::default()
        };
        assert_malformed(Attributor::load(&files), &p, 3, needle);
    }
}

#[test]
fn malformed_networks_and_orgs_files() {
    let dir = TempDir::new("bad-ops");
    for (body, line, needle) in [
        ("cidr,org\n10.0.0.0/33,a\n", 2, "bad CIDR \"10.0.0.0/33\""),
        (
            "cidr,org\n10.0.0.0/8,a\n10.0.0.1/8,b\n",
            3,
            "host bits are set",
        ),
        ("10.0.0.0,a\n", 1, "bad CIDR \"10.0.0.0\""),
        ("cidr,org\nexample.com/8,a\n", 2, "bad CIDR"),
        ("cidr,org\n10.0.0.0/8\n", 2, "missing column 2 (org)"),
        ("cidr,org\n10.0.0.0/8,,GB\n", 2, "empty org id"),
        (
            "cidr,org,country\n10.0.0.0/8,a,UK1\n",
            2,
            "bad country code",
        ),
        (
            "cidr,org,country\n10.0.0.0/8,a,GB,x\n",
            2,
            "too many columns",
        ),
    ] {
        let p = dir.write("networks.csv", body);
        let files = TableFiles {
            networks: Some(p.clone()),
            ..TableFiles::default()
        };
        assert_malformed(Attributor::load(&files), &p, line, needle);
    }
    for (body, line, needle) in [
        (
            "name,country\nAcme,GB\n",
            1,
            "the header row names no org column",
        ),
        ("acme,Acme,GB,\n", 1, "the header row names no org column"),
        (
            "org,name,country,sectors\nacme,Acme,gb,\n",
            2,
            "bad country code \"gb\"",
        ),
        (
            "org,name,country,sectors\nacme,Acme,GB\n",
            2,
            "missing column 4 (sectors)",
        ),
        ("org,name,country,sectors\n,Acme,GB,x\n", 2, "empty org id"),
        (
            "org,name,country,sectors\nacme,A,,\nbeta,B,,\nacme,C,,\n",
            4,
            "already defined on line 2",
        ),
    ] {
        let p = dir.write("orgs.csv", body);
        let files = TableFiles {
            orgs: Some(p.clone()),
            ..TableFiles::default()
        };
        assert_malformed(Attributor::load(&files), &p, line, needle);
    }
}

#[test]
fn missing_file_is_io_error() {
    let p = PathBuf::from("/nonexistent/sketchd/asn-ipv4.csv");
    let files = TableFiles {
        asn_v4: Some(p.clone()),
        ..TableFiles::default()
    };
    match Attributor::load(&files) {
        Err(AttributionError::Io { path, .. }) => assert_eq!(path, p),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Gzip, versions, from_dir, generic building blocks.

#[test]
fn gzip_tables_load_like_plain_ones() {
    let dir = TempDir::new("gz");
    let mut files = TableFiles::default();
    for (src, slot) in [
        (sample!("asn-ipv4-sample.csv"), &mut files.asn_v4),
        (
            sample!("asn-country-ipv4-sample.csv"),
            &mut files.country_v4,
        ),
        (sample!("asn-ipv6-sample.csv"), &mut files.asn_v6),
    ] {
        let dst = dir
            .0
            .join(format!("{}.gz", src.file_name().unwrap().to_str().unwrap()));
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&dst).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(&std::fs::read(&src).unwrap()).unwrap();
        enc.finish().unwrap();
        *slot = Some(dst);
    }
    let gz_v4 = files.asn_v4.clone().unwrap();
    let gz = Attributor::load(&files).unwrap();
    let plain = sample_attributor();
    assert_eq!(gz.stats().asn_v4, plain.stats().asn_v4);
    assert_eq!(gz.stats().asn_v6, plain.stats().asn_v6);
    for ip in [
        "1.1.1.1",
        "8.8.8.8",
        "215.0.0.1",
        "5.9.1.1",
        "2606:4700:4700::1111",
    ] {
        let (g, p) = (
            gz.lookup(ip.parse().unwrap()),
            plain.lookup(ip.parse().unwrap()),
        );
        assert_eq!(describe(&gz, g).0, describe(plain, p).0, "{ip}");
    }
    check(&gz, "1.1.1.1", Some("AS13335"), Some("AU"));
    // Trailing bytes after the gzip stream are an error (so the content id covers the file).
    let mut bytes = std::fs::read(&gz_v4).unwrap();
    bytes.extend_from_slice(b"junk");
    let trailing = dir.0.join("trailing.csv.gz");
    std::fs::write(&trailing, bytes).unwrap();
    let r = Attributor::load(&TableFiles {
        asn_v4: Some(trailing),
        ..TableFiles::default()
    });
    assert!(r.is_err(), "{r:?}");
    // A corrupt gzip stream is an error, not an empty table.
    let bad = dir.write("broken.csv.gz", "definitely not gzip");
    let files = TableFiles {
        asn_v4: Some(bad),
        ..TableFiles::default()
    };
    assert!(Attributor::load(&files).is_err());
}

#[test]
fn version_is_a_stable_content_id() {
    let a = Attributor::load(&sample_files()).unwrap();
    let b = Attributor::load(&sample_files()).unwrap();
    assert_eq!(a.version(), b.version());
    assert!(
        a.version().starts_with("t-") && a.version().len() == 18,
        "{}",
        a.version()
    );
    // Same file in another role → different id.
    let swapped = Attributor::load(&TableFiles {
        asn_v4: Some(sample!("asn-ipv4-sample.csv")),
        ..TableFiles::default()
    })
    .unwrap();
    let dir = TempDir::new("ver");
    let copy = dir.write(
        "asn-ipv4.csv",
        &std::fs::read_to_string(sample!("asn-ipv4-sample.csv")).unwrap(),
    );
    let copied = Attributor::load(&TableFiles {
        asn_v4: Some(copy),
        ..TableFiles::default()
    })
    .unwrap();
    assert_eq!(swapped.version(), copied.version(), "content, not path");
    assert_ne!(swapped.version(), a.version());
    assert_eq!(Attributor::empty().version(), "t-empty");
    assert_eq!(
        Attributor::load(&TableFiles::default()).unwrap().version(),
        "t-empty"
    );
}

#[test]
fn empty_attributor_attributes_nothing() {
    let e = Attributor::empty();
    for ip in [
        "1.1.1.1",
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "2606:4700:4700::1111",
    ] {
        assert_eq!(e.lookup(ip.parse().unwrap()), Attribution::default());
    }
    assert_eq!(e.orgs_len(), 0);
    assert_eq!(e.org_by_id("AS13335"), None);
    assert_eq!(e.stats().orgs, 0);
    // Only a country table: countries without orgs.
    let c = Attributor::load(&TableFiles {
        country_v4: Some(sample!("asn-country-ipv4-sample.csv")),
        ..TableFiles::default()
    })
    .unwrap();
    check(&c, "1.1.1.1", None, Some("AU"));
}

#[test]
fn from_dir_picks_sample_and_full_names() {
    let d = TableFiles::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ipmeta"));
    assert_eq!(d, sample_files());
    let dir = TempDir::new("fromdir");
    let full = dir.write("asn-ipv4.csv.gz", "");
    dir.write("asn-ipv4-sample.csv", "");
    let nets = dir.write("networks.csv", "");
    let orgs = dir.write("orgs.csv", "");
    let f = TableFiles::from_dir(&dir.0);
    assert_eq!(f.asn_v4, Some(full));
    assert_eq!((f.networks, f.orgs), (Some(nets), Some(orgs)));
    assert_eq!((f.asn_v6, f.country_v4, f.country_v6), (None, None, None));
}

#[test]
fn attributor_is_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Attributor>();
    assert_eq!(std::mem::size_of::<Packed>(), 4);
    // Packing round-trips every country and the extreme org indices.
    for org in [None, Some(0), Some(1), Some(MAX_ORGS as u32 - 1)] {
        for cc in [None, Some(*b"AA"), Some(*b"ZZ"), Some(*b"DE")] {
            let at = Packed::new(org, cc).unpack();
            assert_eq!((at.org, at.country), (org.map(OrgIdx), cc));
        }
    }
}

#[test]
fn prefix_table_longest_and_equal_prefix_rules() {
    let mut b = PrefixTableBuilder::<u32>::new();
    b.insert(0, 0, 1); // default route
    b.insert(v4("10.0.0.0"), 8, 2);
    b.insert(v4("10.1.0.0"), 16, 3);
    b.insert(v4("10.1.2.0"), 24, 4);
    b.insert(v4("10.1.0.0"), 16, 5); // same prefix, later → wins over 3
    b.insert(v4("255.255.255.255"), 32, 6);
    b.insert(v4("10.1.2.3"), 24, 7); // host bits cleared → 10.1.2.0/24, later → wins over 4
    assert_eq!(b.insert_range(v4("192.168.0.1"), v4("192.168.0.4"), 8), 3); // .1/32 .2/31 .4/32
    assert_eq!(b.insert_range(v4("1.0.0.1"), v4("1.0.0.0"), 9), 0);
    let t = b.build();
    assert_eq!((t.prefixes(), t.shadowed()), (10, 2));
    let l = |s: &str| t.lookup(v4(s));
    assert_eq!(l("0.0.0.0"), Some(1));
    assert_eq!(l("9.255.255.255"), Some(1));
    assert_eq!(l("10.0.0.0"), Some(2));
    assert_eq!(l("10.1.0.0"), Some(5));
    assert_eq!(l("10.1.2.255"), Some(7));
    assert_eq!(l("10.1.3.0"), Some(5));
    assert_eq!(l("10.2.0.0"), Some(2));
    assert_eq!(l("11.0.0.0"), Some(1));
    assert_eq!(l("192.168.0.0"), Some(1));
    assert_eq!(l("192.168.0.3"), Some(8));
    assert_eq!(l("192.168.0.5"), Some(1));
    assert_eq!(l("255.255.255.254"), Some(1));
    assert_eq!(l("255.255.255.255"), Some(6));
    // Runs are merged: no two neighbours share a value.
    let m = t.intervals();
    assert!(m.values().windows(2).all(|w| w[0] != w[1]));
    assert_eq!(m.runs().last().unwrap(), (u32::MAX, u32::MAX, 6));
    // An empty table maps everything to NO_VALUE.
    let e = PrefixTableBuilder::<u128>::new().build();
    assert_eq!(
        (e.lookup(0), e.lookup(u128::MAX), e.intervals().len()),
        (None, None, 1)
    );
}

/// Synthetic nesting (the real tables barely nest): random prefixes around a few anchors, many
/// nested and some duplicated, against a naive longest-prefix scan.
fn random_nested_prefixes_match_naive<A: Addr>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let anchors: Vec<u128> = (0..4)
        .map(|_| rng.gen::<u128>() & A::MAX.to_u128())
        .collect();
    let mut b = PrefixTableBuilder::<A>::new();
    let mut naive: Vec<(u128, u128, u8, u32)> = Vec::new(); // first, last, len, value (= seq)
    for v in 0..400u32 {
        let len = rng.gen_range(0..=A::BITS) as u8;
        let host = u128::MAX
            .checked_shr(128 - A::BITS + u32::from(len))
            .unwrap_or(0);
        let anchor = anchors[rng.gen_range(0..anchors.len())];
        // Half exactly on an anchor (nested chains), half with one of the last four network bits
        // flipped (siblings and cousins).
        let shift = A::BITS - u32::from(len);
        let jitter = if rng.gen_bool(0.5) || shift >= 128 {
            0
        } else {
            (rng.gen::<u128>() & 0xF) << shift
        };
        let first = (anchor ^ jitter) & !host & A::MAX.to_u128();
        b.insert(A::from_u128(first), len, v);
        naive.push((first, first | host, len, v));
    }
    for bits in [0, 8, 18] {
        let t = b.clone().build_with_index_bits(bits);
        for _ in 0..3000 {
            let (f, l, _, _) = naive[rng.gen_range(0..naive.len())];
            let ip = match rng.gen_range(0..5) {
                0 => f,
                1 => l,
                2 => f.wrapping_sub(1) & A::MAX.to_u128(),
                3 => l.wrapping_add(1) & A::MAX.to_u128(),
                _ => rng.gen::<u128>() & A::MAX.to_u128(),
            };
            let want = naive
                .iter()
                .filter(|p| p.0 <= ip && ip <= p.1)
                .max_by_key(|p| (p.2, p.3))
                .map(|p| p.3);
            assert_eq!(
                t.lookup(A::from_u128(ip)),
                want,
                "seed {seed} bits {bits} ip {ip:#x}"
            );
        }
    }
}

#[test]
fn random_nested_prefixes_match_naive_scan() {
    for seed in 0..4 {
        random_nested_prefixes_match_naive::<u32>(seed);
        random_nested_prefixes_match_naive::<u128>(seed + 100);
    }
}

#[test]
fn index_sizes_and_unindexed_search_agree() {
    let mut rng = StdRng::seed_from_u64(7);
    let naive = Naive::<u128>::from_csv(&sample!("asn-ipv6-sample.csv"), 2);
    let addrs = naive.random_addrs(&mut rng, 3000);
    for bits in [0, 1, 4, 8, 16, 20] {
        let mut b = PrefixTableBuilder::<u128>::new();
        for (i, (s, e, _)) in naive.rows.iter().enumerate() {
            b.insert_range(*s, *e, i as u32);
        }
        let t = b.build_with_index_bits(bits);
        for &ip in &addrs {
            let m = t.intervals();
            assert_eq!(
                m.get(ip),
                m.get_unindexed(ip),
                "bits {bits} ip {}",
                ip.display()
            );
        }
    }
    // u32 with every index size, including ones finer than the data.
    let mut b = PrefixTableBuilder::<u32>::new();
    b.insert(v4("128.0.0.0"), 1, 1);
    b.insert(v4("128.0.0.7"), 32, 2);
    for bits in [0, 3, 16, 24] {
        let t = b.clone().build_with_index_bits(bits);
        for ip in [
            0,
            1,
            v4("128.0.0.6"),
            v4("128.0.0.7"),
            v4("128.0.0.8"),
            u32::MAX,
        ] {
            assert_eq!(
                t.intervals().get(ip),
                t.intervals().get_unindexed(ip),
                "{bits}"
            );
        }
        assert_eq!(t.lookup(v4("128.0.0.7")), Some(2));
        assert_eq!(t.lookup(v4("127.255.255.255")), None);
    }
}

#[test]
fn generic_loaders_expose_rows() {
    let mut rows = Vec::new();
    let f = load_range_csv::<u32>(
        &sample!("asn-ipv4-sample.csv"),
        &ASN_COLUMNS,
        |s, e, row| {
            rows.push((
                s,
                e,
                row.get(2).to_string(),
                row.get(3).to_string(),
                row.line(),
            ));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(f.rows, 1635);
    assert_eq!(
        rows[0],
        (
            v4("1.0.0.0"),
            v4("1.0.0.255"),
            "13335".into(),
            "Cloudflare, Inc.".into(),
            1
        )
    );
    // Escaped quotes and non-ASCII survive a real CSV parse.
    let dir = TempDir::new("gen");
    let p = dir.write(
        "r.csv",
        "2.26.200.0,2.26.215.255,201907,\"LLC \"\"SPUTNIK\"\"\"\n5.0.0.0,5.0.0.255,1,Tüv Süd\n",
    );
    let mut names = Vec::new();
    load_range_csv::<u32>(&p, &ASN_COLUMNS, |_, _, row| {
        names.push(row.get(3).to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(names, ["LLC \"SPUTNIK\"", "Tüv Süd"]);
    // CIDR loader: optional header, mixed families, optional trailing column.
    let p = dir.write(
        "n.csv",
        "CIDR,org,country\n10.0.0.0/8,a\n2001:db8::/32,b,DE\n",
    );
    let mut nets = Vec::new();
    let f = load_cidr_csv(&p, &NETWORK_COLUMNS, 2, |net, row| {
        nets.push((
            net.to_string(),
            row.get(1).to_string(),
            row.get(2).to_string(),
            row.line(),
        ));
        Ok(())
    })
    .unwrap();
    assert_eq!(f.rows, 2);
    assert_eq!(nets[0], ("10.0.0.0/8".into(), "a".into(), "".into(), 2));
    assert_eq!(
        nets[1],
        ("2001:db8::/32".into(), "b".into(), "DE".into(), 3)
    );
    let p = dir.write("noheader.csv", "10.0.0.0/8,a\n");
    assert_eq!(
        load_cidr_csv(&p, &NETWORK_COLUMNS, 2, |_, _| Ok(()))
            .unwrap()
            .rows,
        1
    );
    // A callback error becomes Malformed at that line.
    let r = load_cidr_csv(&p, &NETWORK_COLUMNS, 2, |_, _| Err("nope".to_string()));
    assert_malformed(r, &p, 1, "nope");
}

// ---------------------------------------------------------------------------------------------
// Full tables (skipped when absent).

fn full_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SKETCHD_IPMETA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ipmeta"),
    };
    let names = [
        "asn-ipv4.csv.gz",
        "asn-ipv6.csv.gz",
        "asn-country-ipv4.csv.gz",
        "asn-country-ipv6.csv.gz",
    ];
    names.iter().all(|n| dir.join(n).is_file()).then_some(dir)
}

fn full_attributor() -> Option<&'static Attributor> {
    static A: OnceLock<Option<Attributor>> = OnceLock::new();
    A.get_or_init(|| {
        let dir = full_dir()?;
        let files = TableFiles::from_dir(&dir);
        assert!(files.asn_v4.as_ref().unwrap().ends_with("asn-ipv4.csv.gz"));
        Some(Attributor::load(&files).expect("load full tables"))
    })
    .as_ref()
}

macro_rules! full_or_skip {
    ($name:literal) => {
        match full_attributor() {
            Some(a) => a,
            None => {
                eprintln!(
                    "skipped {}: full ipmeta tables not found (set SKETCHD_IPMETA_DIR)",
                    $name
                );
                return;
            }
        }
    };
}

#[test]
fn full_tables_counts_match_readme() {
    let a = full_or_skip!("full_tables_counts_match_readme");
    let s = a.stats();
    assert_eq!(
        (s.asn_v4.rows, s.asn_v4.prefixes, s.asn_v4.shadowed),
        (411_961, 564_580, 1)
    );
    assert_eq!(
        (s.asn_v6.rows, s.asn_v6.prefixes, s.asn_v6.shadowed),
        (103_197, 167_903, 0)
    );
    assert_eq!(
        (s.country_v4.rows, s.country_v4.prefixes),
        (141_822, 177_131)
    );
    assert_eq!((s.country_v6.rows, s.country_v6.prefixes), (68_368, 68_839));
    assert_eq!((s.country_v4.shadowed, s.country_v6.shadowed), (0, 0));
    // 84,159 ASNs in IPv4, 52,521 in IPv6, 45,615 in both.
    assert_eq!(s.orgs, 84_159 + 52_521 - 45_615);
    eprintln!("full table stats: {s:?}");
    // The IPv6 index spans 2000::/4 (first allocated start 2001:200::, last run start 2c1x::).
    let (base, shift, buckets) = a.v6.index_layout();
    assert_eq!(
        (base, shift, buckets),
        (v6("2000::"), 128 - 4 - 18, 1 << 18)
    );
    assert_eq!(a.v4.index_layout(), (0, 32 - 18, 1 << 18));
}

#[test]
fn full_tables_spot_checks() {
    let a = full_or_skip!("full_tables_spot_checks");
    check(a, "1.1.1.1", Some("AS13335"), Some("AU"));
    check(a, "8.8.8.8", Some("AS15169"), Some("US"));
    check(a, "5.9.128.77", Some("AS24940"), Some("DE"));
    check(a, "2.117.3.4", Some("AS3269"), Some("IT"));
    check(a, "2606:4700:4700::1111", Some("AS13335"), Some("US"));
    check(a, "2001:4860:4860::8888", Some("AS15169"), Some("US"));
    check(a, "::ffff:1.1.1.1", Some("AS13335"), Some("AU"));
    check(a, "215.0.0.1", Some("AS721"), Some("US"));
    check(a, "215.1.0.1", Some("AS721"), Some("US"));
    check(a, "214.95.0.1", Some("AS749"), Some("US"));
    // Next row of the full table: 215.1.4.0,215.1.4.255,27066,DoD Network Information Center.
    check(a, "215.1.4.0", Some("AS27066"), Some("US"));
    check(a, "10.0.0.1", None, None);
    check(a, "127.0.0.1", None, None);
    assert_eq!(
        a.org(a.org_by_id("AS4294967294").unwrap()).name,
        "AS4294967294"
    );
}

#[test]
fn full_tables_random_addresses_match_naive_scan() {
    let a = full_or_skip!("full_tables_random_addresses_match_naive_scan");
    let dir = full_dir().unwrap();
    let asn4 = Naive::<u32>::from_csv(&dir.join("asn-ipv4.csv.gz"), 2);
    let cc4 = Naive::<u32>::from_csv(&dir.join("asn-country-ipv4.csv.gz"), 2);
    assert_eq!(asn4.prefixes.len(), 564_580);
    cross_check(a, &asn4, &cc4, 300, 11, |a, ip| a.lookup_v4(ip));
    drop((asn4, cc4));
    let asn6 = Naive::<u128>::from_csv(&dir.join("asn-ipv6.csv.gz"), 2);
    let cc6 = Naive::<u128>::from_csv(&dir.join("asn-country-ipv6.csv.gz"), 2);
    cross_check(a, &asn6, &cc6, 300, 12, |a, ip| a.lookup_v6(ip));
}

/// An orgs file is read by its header: `org` or `org_id` and any of
/// `name`, `country`, `sector`/`sectors` in any order, other columns
/// ignored (the peers' world file among them).
#[test]
fn orgs_files_are_read_by_their_header() {
    let dir = TempDir::new("orgs-header");
    for body in [
        "org_id,country,sector,pool_ips,survives,end_day\n7,US,government,10,0,181\n8,DE,,3,1,244\n",
        "Sectors,Country,Name,ORG\ngovernment,US,Dept,7\n,DE,,8\n",
    ] {
        let p = dir.write("orgs.csv", body);
        let files = TableFiles {
            orgs: Some(p),
            ..TableFiles::default()
        };
        let a = Attributor::load(&files).unwrap();
        let seven = a.org(a.org_by_id("7").unwrap());
        assert_eq!(seven.country_str(), Some("US"));
        assert_eq!(seven.sectors, ["government"]);
        let eight = a.org(a.org_by_id("8").unwrap());
        assert_eq!(eight.country_str(), Some("DE"));
        assert!(eight.sectors.is_empty());
    }
}
