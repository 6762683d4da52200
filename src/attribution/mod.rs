//! IP attribution: address → (organisation, country).
//!
//! This module owns loading the IP→ASN/organisation and IP→country tables (ip-location-db
//! `asn` / `asn-country` CSVs, plain or gzip), the operator's own orgs and custom networks files,
//! and answering lookups on the hot path. The result is an [`Attributor`]: immutable after
//! [`Attributor::load`], `Send + Sync`, meant to be shared in an `Arc` and swapped as a whole
//! when tables change ([`Attributor::version`] is a content id of the loaded files).
//!
//! # Semantics
//!
//! * **Ranges → prefixes.** Range rows (`start,end,...`, inclusive) are split into CIDR blocks with
//!   `ipnet`. Within one table the longest prefix containing an address wins. **Equal prefixes:
//!   the row that appears LATER in the file wins.** The only real case (README "known defect"):
//!   `214.95.0.0-215.0.255.255 AS749` and `215.0.0.0-215.1.3.255 AS721` both yield
//!   `215.0.0.0/16`; AS721 (the later and narrower row) wins it, so `215.0.0.1` and `215.1.0.1`
//!   are AS721 and `214.95.0.1` stays AS749.
//! * **Custom networks** (`cidr,org[,country]`) are a separate table consulted first: a matching
//!   custom network wins over the ASN table regardless of prefix length; among themselves the
//!   longest prefix wins (equal prefixes: later row). An org id not defined elsewhere is created
//!   with name = id and the row's country.
//! * **Attribution.country** comes from the country table at the address. Exception: a matching
//!   custom network that has a country column overrides it. It is never filled in from the
//!   organisation's country: that is a property of the org (see [`OrgInfo::country`]), not of
//!   the address, and mixing the two would make "country" mean different things per row.
//! * **Org country** for `AS<n>` orgs: the country table's entry at the start address of the
//!   org's first row in `asn-ipv4` (file order); if that misses, of its first row in `asn-ipv6`.
//!   The orgs file overrides it.
//! * **Org name** for `AS<n>` orgs: the name on the org's first row (IPv4 table first). In the
//!   2026-06-17 data every ASN has exactly one name across both tables.
//! * **IPv4-mapped IPv6** (`::ffff:a.b.c.d`) is looked up in the IPv4 tables; IPv6 table rows or
//!   custom networks inside `::ffff:0:0/96` are therefore unreachable (custom networks given as
//!   mapped IPv6 with length >= 96 are converted to IPv4 at load).
//! * Malformed rows fail the load with [`AttributionError::Malformed`] naming file and line.
//!
//! # Lookup structure
//!
//! All tables of one family are compiled at load time into ONE [`IntervalMap`]: sorted
//! non-overlapping intervals whose 4-byte value is the final (org, country) pair, with the custom
//! networks, longest-prefix and equal-prefix rules already applied. A query is a first-level index
//! probe (2^18 buckets over the occupied address span: all of IPv4; `2000::/4` for the 2026-06
//! IPv6 data) plus a `partition_point` binary search in the bucket's short slice, then one load of
//! the value. See `prefix.rs` for the invariants and `benches/attribution.rs` for the measured
//! alternatives.

mod load;
mod prefix;
mod registry;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

pub use crate::error::AttributionError;
pub use load::{
    check_columns, for_each_record, is_gzip, load_cidr_csv, load_range_csv, parse_asn, parse_cidr,
    parse_country, CsvRow, LoadedFile,
};
pub use prefix::{
    combine, net_as, Addr, IntervalMap, PrefixTable, PrefixTableBuilder, DEFAULT_INDEX_BITS,
    NO_VALUE,
};
pub use registry::{country_str, parse_sectors, OrgIdx, OrgInfo};

use registry::{map_heap_bytes, OrgRegistry};

/// First-level index bits of the compiled IPv4 lookup map (2^18 buckets of /14, 1 MiB). Measured
/// against 12, 16 and 20 bits on the full table; see `benches/attribution.rs`.
pub const V4_INDEX_BITS: u32 = 18;
/// First-level index bits of the compiled IPv6 lookup map. The buckets span the common prefix of
/// the table's first and last interval start (`2000::/4` for the 2026-06 data, so 2^18 buckets
/// of /22, 1 MiB).
pub const V6_INDEX_BITS: u32 = 18;

/// Column names of the ASN range tables.
pub const ASN_COLUMNS: [&str; 4] = ["start", "end", "asn", "name"];
/// Column names of the country range tables.
pub const COUNTRY_COLUMNS: [&str; 3] = ["start", "end", "country"];
/// Column names of the custom networks file (`country` optional).
pub const NETWORK_COLUMNS: [&str; 3] = ["cidr", "org", "country"];

// Which files to load: plain data of the configuration (the `[tables]`
// section), picked here from a directory.
pub use crate::config::TableFiles;

impl TableFiles {
    /// Pick the files present in `dir`, trying for each role, in order: the full name gzipped,
    /// plain, then the `-sample` name gzipped, plain. Roles: `asn-ipv4`, `asn-ipv6`,
    /// `asn-country-ipv4`, `asn-country-ipv6`, `orgs`, `networks` (e.g. `asn-ipv4.csv.gz`,
    /// `asn-ipv4-sample.csv`, `orgs.csv`). Missing roles stay `None`.
    pub fn from_dir(dir: impl AsRef<Path>) -> TableFiles {
        let dir = dir.as_ref();
        let pick = |stem: &str| {
            [
                format!("{stem}.csv.gz"),
                format!("{stem}.csv"),
                format!("{stem}-sample.csv.gz"),
                format!("{stem}-sample.csv"),
            ]
            .into_iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
        };
        TableFiles {
            asn_v4: pick("asn-ipv4"),
            asn_v6: pick("asn-ipv6"),
            country_v4: pick("asn-country-ipv4"),
            country_v6: pick("asn-country-ipv6"),
            orgs: pick("orgs"),
            networks: pick("networks"),
        }
    }
}

/// The result of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attribution {
    /// The organisation (custom network, else longest ASN prefix), if any.
    pub org: Option<OrgIdx>,
    /// The country-table country at the address (or a matching custom network's country). NOT
    /// filled in from the org's country.
    pub country: Option<[u8; 2]>,
}

/// Counts for one loaded table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStat {
    /// Data rows read.
    pub rows: u64,
    /// CIDR prefixes after splitting ranges.
    pub prefixes: usize,
    /// Prefixes dropped because a later row had the same prefix.
    pub shadowed: usize,
    /// Intervals of this table alone after longest-prefix resolution.
    pub intervals: usize,
}

/// Sizes of a loaded [`Attributor`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// `asn_v4` table.
    pub asn_v4: TableStat,
    /// `asn_v6` table.
    pub asn_v6: TableStat,
    /// `country_v4` table.
    pub country_v4: TableStat,
    /// `country_v6` table.
    pub country_v6: TableStat,
    /// IPv4 rows of the custom networks file.
    pub networks_v4: TableStat,
    /// IPv6 rows of the custom networks file.
    pub networks_v6: TableStat,
    /// Data rows of the orgs file.
    pub orgs_file_rows: u64,
    /// Organisations in the registry.
    pub orgs: usize,
    /// Intervals of the compiled IPv4 lookup map (all tables combined).
    pub lookup_intervals_v4: usize,
    /// Intervals of the compiled IPv6 lookup map.
    pub lookup_intervals_v6: usize,
    /// Heap bytes held by the `Attributor` (lookup maps, index, orgs, id map; approximate for the
    /// hash map).
    pub heap_bytes: usize,
}

/// Compiled value of the lookup maps, 4 bytes: bits 31..10 hold `org index + 1` (0 = no org),
/// bits 9..5 and 4..0 the two country letters as 1..=26 (0 = no country). Keeping the value
/// array at 4 bytes per interval measurably speeds up lookups over an 8-byte (org, country)
/// struct (see the bench notes); it caps the registry at [`MAX_ORGS`] organisations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed(u32);

/// Most organisations an [`Attributor`] can hold (22 bits of the packed lookup value).
pub const MAX_ORGS: usize = (1 << 22) - 1;

impl Packed {
    const NONE: Packed = Packed(0);

    fn new(org: Option<u32>, cc: Option<[u8; 2]>) -> Packed {
        let org = org.map_or(0, |o| {
            assert!((o as usize) < MAX_ORGS, "org index beyond MAX_ORGS");
            o + 1
        });
        let cc = cc.map_or(0, |[a, b]| {
            debug_assert!(a.is_ascii_uppercase() && b.is_ascii_uppercase());
            (u32::from(a - b'A' + 1) << 5) | u32::from(b - b'A' + 1)
        });
        Packed((org << 10) | cc)
    }

    #[inline(always)]
    fn unpack(self) -> Attribution {
        let org = self.0 >> 10;
        let cc = self.0 & 0x3ff;
        // Branch-free: an unpredictable branch here costs more than the decode.
        Attribution {
            org: (org != 0).then_some(OrgIdx(org.wrapping_sub(1))),
            country: (cc != 0).then_some([b'@' + (cc >> 5) as u8, b'@' + (cc & 31) as u8]),
        }
    }
}

/// Country code ↔ table value.
fn cc_value(cc: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(cc))
}

fn value_cc(v: u32) -> Option<[u8; 2]> {
    (v != NO_VALUE).then(|| (v as u16).to_be_bytes())
}

/// IP → (org, country) attribution tables. Immutable after load; see the module docs.
pub struct Attributor {
    version: String,
    orgs: Vec<OrgInfo>,
    by_id: HashMap<String, OrgIdx>,
    v4: IntervalMap<u32, Packed>,
    v6: IntervalMap<u128, Packed>,
    stats: TableStats,
}

impl fmt::Debug for Attributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attributor")
            .field("version", &self.version)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Attributor {
    /// An attributor that attributes nothing (every lookup is `Attribution::default()`).
    /// Its version is `"t-empty"`, as is that of loading an all-`None` [`TableFiles`].
    pub fn empty() -> Attributor {
        let mut a = Attributor {
            version: "t-empty".to_string(),
            orgs: Vec::new(),
            by_id: HashMap::new(),
            v4: IntervalMap::constant(Packed::NONE),
            v6: IntervalMap::constant(Packed::NONE),
            stats: TableStats::default(),
        };
        a.finish_stats();
        a
    }

    /// Load the given files. Any unreadable file or malformed row fails the whole load.
    pub fn load(files: &TableFiles) -> Result<Attributor, AttributionError> {
        let mut reg = OrgRegistry::default();
        let mut stats = TableStats::default();
        let mut roles: Vec<(&str, u64)> = Vec::new();

        // 1. ASN tables → prefixes with org values; remember each org's first range start.
        let mut first_v4: Vec<Option<u32>> = Vec::new();
        let mut first_v6: Vec<Option<u128>> = Vec::new();
        let asn_v4 = match &files.asn_v4 {
            Some(p) => Some(load_asn(p, &mut reg, &mut first_v4, &mut stats.asn_v4)?),
            None => None,
        };
        let asn_v6 = match &files.asn_v6 {
            Some(p) => Some(load_asn(p, &mut reg, &mut first_v6, &mut stats.asn_v6)?),
            None => None,
        };
        let country_v4 = match &files.country_v4 {
            Some(p) => Some(load_country::<u32>(p, &mut stats.country_v4)?),
            None => None,
        };
        let country_v6 = match &files.country_v6 {
            Some(p) => Some(load_country::<u128>(p, &mut stats.country_v6)?),
            None => None,
        };
        let tables = [
            ("asn_v4", asn_v4.as_ref().map(|t| t.1)),
            ("asn_v6", asn_v6.as_ref().map(|t| t.1)),
            ("country_v4", country_v4.as_ref().map(|t| t.1)),
            ("country_v6", country_v6.as_ref().map(|t| t.1)),
        ];
        roles.extend(tables.iter().filter_map(|&(r, d)| Some((r, d?))));

        // 2. AS org countries: country at the first range start (IPv4 first, then IPv6).
        for (i, org) in reg.orgs.iter_mut().enumerate() {
            let from_v4 = first_v4
                .get(i)
                .copied()
                .flatten()
                .zip(country_v4.as_ref())
                .and_then(|(ip, (t, _))| t.lookup(ip));
            let cc = from_v4.or_else(|| {
                first_v6
                    .get(i)
                    .copied()
                    .flatten()
                    .zip(country_v6.as_ref())
                    .and_then(|(ip, (t, _))| t.lookup(ip))
            });
            org.country = cc.and_then(value_cc);
        }
        drop((first_v4, first_v6));

        // 3. Custom networks (may create orgs).
        let mut nets: Vec<(OrgIdx, Option<[u8; 2]>)> = Vec::new();
        let mut nets_v4 = PrefixTableBuilder::<u32>::new();
        let mut nets_v6 = PrefixTableBuilder::<u128>::new();
        if let Some(p) = &files.networks {
            let loaded = load_cidr_csv(p, &NETWORK_COLUMNS, 2, |net, row| {
                let id = row.get(1);
                if id.is_empty() {
                    return Err("empty org id".to_string());
                }
                let cc = match row.get(2) {
                    "" => None,
                    c => Some(parse_country(c)?),
                };
                let org = reg.intern_id(id, cc)?;
                let v = u32::try_from(nets.len())
                    .ok()
                    .filter(|&v| v != NO_VALUE)
                    .ok_or("too many custom networks")?;
                nets.push((org, cc));
                match net {
                    IpNet::V4(n) => {
                        stats.networks_v4.rows += 1;
                        nets_v4.insert(u32::from(n.network()), n.prefix_len(), v);
                    }
                    IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                        Some(v4) if n.prefix_len() >= 96 => {
                            stats.networks_v4.rows += 1;
                            nets_v4.insert(u32::from(v4), n.prefix_len() - 96, v);
                        }
                        _ => {
                            stats.networks_v6.rows += 1;
                            nets_v6.insert(u128::from(n.network()), n.prefix_len(), v);
                        }
                    },
                }
                Ok(())
            })?;
            roles.push(("networks", loaded.digest));
        }
        let nets_v4 = finish_table(nets_v4, &mut stats.networks_v4);
        let nets_v6 = finish_table(nets_v6, &mut stats.networks_v6);

        // 4. Orgs file overrides last.
        if let Some(p) = &files.orgs {
            let loaded = reg.apply_orgs_file(p)?;
            stats.orgs_file_rows = loaded.rows;
            roles.push(("orgs", loaded.digest));
        }

        // 5. Compile one lookup map per family.
        let resolve = |vals: &[u32]| -> Packed {
            let (net, asn, country) = (vals[0], vals[1], vals[2]);
            let table_cc = value_cc(country);
            if net != NO_VALUE {
                let (org, cc) = nets[net as usize];
                Packed::new(Some(org.0), cc.or(table_cc))
            } else {
                Packed::new((asn != NO_VALUE).then_some(asn), table_cc)
            }
        };
        let empty4 = PrefixTable::<u32>::default();
        let empty6 = PrefixTable::<u128>::default();
        let v4 = combine(
            &[
                nets_v4.intervals(),
                asn_v4.as_ref().map_or(&empty4, |t| &t.0).intervals(),
                country_v4.as_ref().map_or(&empty4, |t| &t.0).intervals(),
            ],
            V4_INDEX_BITS,
            resolve,
        );
        let v6 = combine(
            &[
                nets_v6.intervals(),
                asn_v6.as_ref().map_or(&empty6, |t| &t.0).intervals(),
                country_v6.as_ref().map_or(&empty6, |t| &t.0).intervals(),
            ],
            V6_INDEX_BITS,
            resolve,
        );

        let version = if roles.is_empty() {
            "t-empty".to_string()
        } else {
            let mut h = Xxh3::new();
            h.update(b"sketchd-attribution-v1\0");
            for (role, digest) in &roles {
                h.update(role.as_bytes());
                h.update(b"\0");
                h.update(&digest.to_le_bytes());
            }
            format!("t-{:016x}", h.digest())
        };
        let (orgs, by_id) = reg.freeze();
        let mut a = Attributor {
            version,
            orgs,
            by_id,
            v4,
            v6,
            stats,
        };
        a.finish_stats();
        Ok(a)
    }

    fn finish_stats(&mut self) {
        self.stats.orgs = self.orgs.len();
        self.stats.lookup_intervals_v4 = self.v4.len();
        self.stats.lookup_intervals_v6 = self.v6.len();
        self.stats.heap_bytes = self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.version.capacity()
            + self.orgs.capacity() * std::mem::size_of::<OrgInfo>()
            + self.orgs.iter().map(OrgInfo::heap_bytes).sum::<usize>()
            + map_heap_bytes(&self.by_id)
            + self.by_id.keys().map(String::capacity).sum::<usize>();
    }

    /// Content id of the loaded files: `"t-"` + 16 hex digits of xxh3-64 over each loaded
    /// file's role and the xxh3-64 of its raw bytes. Same files in the same roles → same id.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Attribute an IPv4 address (host byte order integer, `u32::from(Ipv4Addr)`).
    #[inline(always)]
    pub fn lookup_v4(&self, ip: u32) -> Attribution {
        self.v4.get(ip).unpack()
    }

    /// Attribute an IPv6 address (`u128::from(Ipv6Addr)`). IPv4-mapped addresses
    /// (`::ffff:a.b.c.d`) go to the IPv4 tables.
    #[inline]
    pub fn lookup_v6(&self, ip: u128) -> Attribution {
        if ip >> 32 == 0xffff {
            return self.lookup_v4(ip as u32);
        }
        self.v6.get(ip).unpack()
    }

    /// Attribute an address of either family.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Attribution {
        match ip {
            IpAddr::V4(a) => self.lookup_v4(u32::from(a)),
            IpAddr::V6(a) => self.lookup_v6(u128::from(a)),
        }
    }

    /// The organisation `idx`.
    ///
    /// # Panics
    /// If `idx` did not come from this `Attributor` (out of range).
    pub fn org(&self, idx: OrgIdx) -> &OrgInfo {
        &self.orgs[idx.0 as usize]
    }

    /// Find an organisation by id (`"AS13335"`, or an operator key). Case-sensitive.
    pub fn org_by_id(&self, id: &str) -> Option<OrgIdx> {
        self.by_id.get(id).copied()
    }

    /// Number of organisations; valid indices are `OrgIdx(0..orgs_len)`.
    pub fn orgs_len(&self) -> usize {
        self.orgs.len()
    }

    /// Row, prefix and interval counts, org count and heap bytes.
    pub fn stats(&self) -> TableStats {
        self.stats.clone()
    }

    /// The compiled IPv4 map's interval starts (for benchmarks comparing search strategies).
    pub fn v4_starts(&self) -> &[u32] {
        self.v4.starts()
    }

    /// The compiled IPv6 map's interval starts.
    pub fn v6_starts(&self) -> &[u128] {
        self.v6.starts()
    }
}

fn finish_table<A: Addr>(b: PrefixTableBuilder<A>, stat: &mut TableStat) -> PrefixTable<A> {
    let t = b.build();
    stat.prefixes = t.prefixes();
    stat.shadowed = t.shadowed();
    stat.intervals = t.intervals().len();
    t
}

fn load_asn<A: Addr>(
    path: &Path,
    reg: &mut OrgRegistry,
    first: &mut Vec<Option<A>>,
    stat: &mut TableStat,
) -> Result<(PrefixTable<A>, u64), AttributionError> {
    let mut b = PrefixTableBuilder::<A>::new();
    let loaded = load_range_csv::<A>(path, &ASN_COLUMNS, |start, end, row| {
        let asn = parse_asn(row.get(2))?;
        let org = reg.intern_asn(asn, row.get(3))?;
        let i = org.0 as usize;
        if first.len() <= i {
            first.resize(i + 1, None);
        }
        first[i].get_or_insert(start);
        b.insert_range(start, end, org.0);
        Ok(())
    })?;
    stat.rows = loaded.rows;
    Ok((finish_table(b, stat), loaded.digest))
}

fn load_country<A: Addr>(
    path: &Path,
    stat: &mut TableStat,
) -> Result<(PrefixTable<A>, u64), AttributionError> {
    let mut b = PrefixTableBuilder::<A>::new();
    let loaded = load_range_csv::<A>(path, &COUNTRY_COLUMNS, |start, end, row| {
        let cc = parse_country(row.get(2))?;
        b.insert_range(start, end, cc_value(cc));
        Ok(())
    })?;
    stat.rows = loaded.rows;
    Ok((finish_table(b, stat), loaded.digest))
}
