//! Ingest: validate a batch, attribute what it lacks, log it, apply it.
//!
//! The path of a batch: [`prepare`] checks every column and row against the
//! namespace policy and fills in missing org/country from the attribution
//! tables (in the caller's task, in parallel with other batches); the
//! [`commit::GroupCommit`] thread checks the batch id, appends the prepared
//! batch to the log, syncs once for every batch waiting, applies them to the
//! memtable in log order and acknowledges.
//!
//! A prepared batch is self-contained (attribution already resolved), so
//! replaying the log after a crash gives the same result whatever tables
//! are loaded then.

pub mod codec;
pub mod commit;
pub mod dedupe;

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::attribution::{Attribution, Attributor, OrgIdx};
use crate::catalog::Namespace;
use crate::error::{quoted, Error, Result};
use crate::sketch::{hash_ipv4, hash_ipv6, hash_org, Sketch};
use crate::store::index::OrgCountry;
use crate::store::keys::{
    country_dim, country_sector_dim, org_dim, sector_dim, BatchId, CounterKey, DedupeKey, Family,
    NamespaceId, SketchKey,
};
use crate::store::memtable::{row_source, MemState, MIXED_SOURCES};
use crate::time::{seconds_text, utc_text, Day, SECONDS_PER_DAY};
use rustc_hash::{FxHashMap, FxHashSet};

/// The org that rows no table covers are counted under.
pub const UNATTRIBUTED_ORG: &str = "unattributed";
/// The country that rows no table covers are counted under (ISO 3166-1
/// user-assigned code).
pub const UNATTRIBUTED_COUNTRY: [u8; 2] = *b"ZZ";
/// Longest org id accepted.
pub const MAX_ORG_LEN: usize = 256;
/// Longest collector id accepted.
pub const MAX_COLLECTOR_LEN: usize = 128;

/// A batch as a collector sent it (columnar; see the proto for the layout).
#[derive(Clone, Debug, Default)]
pub struct ObservationBatch {
    pub namespace: String,
    pub collector: String,
    pub sequence: u64,
    pub ipv4: Vec<u32>,
    /// 16 bytes per address, concatenated.
    pub ipv6: Vec<u8>,
    pub unix_seconds: Vec<i64>,
    pub org_dict: Vec<String>,
    pub org_index: Vec<u32>,
    pub country_dict: Vec<String>,
    pub country_index: Vec<u32>,
}

/// A validated, attributed batch: what the log holds and what is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedBatch {
    pub ns: NamespaceId,
    pub collector: String,
    pub sequence: u64,
    /// [`dedupe::rows_digest`] of the batch as sent; `None` in log records
    /// written before digests were kept.
    pub digest: Option<u64>,
    pub ipv4: Vec<u32>,
    pub ipv6: Vec<[u8; 16]>,
    /// Per row (IPv4 rows first, then IPv6 rows).
    pub days: Vec<u32>,
    /// Org dictionary of the batch; rows refer to it by index.
    pub orgs: Vec<String>,
    /// Sector labels of each dictionary org (from the org registry).
    pub org_sectors: Vec<Vec<String>>,
    pub org_of_row: Vec<u32>,
    pub country_of_row: Vec<[u8; 2]>,
    /// Rows whose org or country came from the tables.
    pub attributed: u64,
    /// Rows left (partly) unattributed.
    pub unattributed: u64,
    /// Version of the attribution tables the batch was prepared with.
    pub tables_version: String,
}

impl PreparedBatch {
    pub fn rows(&self) -> usize {
        self.days.len()
    }

    pub fn id(&self) -> BatchId {
        BatchId {
            key: DedupeKey {
                ns: self.ns,
                collector: self.collector.clone(),
                sequence: self.sequence,
            },
            digest: self.digest,
        }
    }
}

/// Limits that do not depend on the namespace.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_rows: usize,
}

/// Validates `batch` for namespace `ns` at time `now` and attributes rows
/// that lack an org or a country. Any violation is an error naming the row
/// and field; nothing is applied then.
pub fn prepare(
    batch: ObservationBatch,
    ns: &Namespace,
    limits: BatchLimits,
    now: i64,
    tables: &Attributor,
) -> Result<PreparedBatch> {
    validate_collector(&batch.collector)?;
    if batch.sequence == 0 {
        return Err(Error::invalid(
            "sequence",
            "0 is not a batch number: number batches from 1 (each (namespace, collector_id, \
             sequence) is applied once, so batches that leave it unset would be dropped as \
             repeats of the first)",
        ));
    }
    if !batch.ipv6.len().is_multiple_of(16) {
        return Err(Error::invalid(
            "ipv6",
            format!("length {} is not a multiple of 16", batch.ipv6.len()),
        ));
    }
    let n4 = batch.ipv4.len();
    let rows = n4 + batch.ipv6.len() / 16;
    if rows > limits.max_rows {
        return Err(Error::LimitExceeded(format!(
            "batch has {rows} rows; the limit is {} rows per batch",
            limits.max_rows
        )));
    }
    let digest = dedupe::rows_digest(&batch);
    check_column_len("unix_seconds", batch.unix_seconds.len(), rows, false)?;
    check_column_len("org_index", batch.org_index.len(), rows, true)?;
    check_column_len("country_index", batch.country_index.len(), rows, true)?;

    for (i, org) in batch.org_dict.iter().enumerate() {
        validate_org(org).map_err(|reason| Error::invalid(format!("org_dict[{i}]"), reason))?;
    }
    let countries: Vec<[u8; 2]> = batch
        .country_dict
        .iter()
        .enumerate()
        .map(|(i, c)| {
            parse_country(c).map_err(|reason| Error::invalid(format!("country_dict[{i}]"), reason))
        })
        .collect::<Result<_>>()?;

    let oldest = now - i64::from(ns.policy.max_age_days) * SECONDS_PER_DAY;
    let newest = now + i64::from(ns.policy.max_future_skew_seconds);
    let mut days = Vec::with_capacity(rows);
    for (row, &t) in batch.unix_seconds.iter().enumerate() {
        if t < oldest {
            return Err(Error::row(row, "unix_seconds", too_old(ns, t, oldest)));
        }
        if t > newest {
            return Err(Error::row(row, "unix_seconds", too_new(ns, t, now, newest)));
        }
        let day = Day::from_unix_seconds(t)
            .ok_or_else(|| Error::row(row, "unix_seconds", format!("{t} is before 1970")))?;
        days.push(day.0);
    }
    ns.check_retained(&days, now)?;
    for (row, &i) in batch.org_index.iter().enumerate() {
        if i as usize > batch.org_dict.len() {
            return Err(Error::row(
                row,
                "org_index",
                format!(
                    "refers to entry {i} but org_dict has {} entries",
                    batch.org_dict.len()
                ),
            ));
        }
    }
    for (row, &i) in batch.country_index.iter().enumerate() {
        if i as usize > countries.len() {
            return Err(Error::row(
                row,
                "country_index",
                format!(
                    "refers to entry {i} but country_dict has {} entries",
                    countries.len()
                ),
            ));
        }
    }

    let ipv6: Vec<[u8; 16]> = batch
        .ipv6
        .chunks_exact(16)
        .map(|c| c.try_into().expect("chunks of 16"))
        .collect();

    // Org dictionary of the prepared batch: entry 0 is the unattributed org,
    // then the collector's entries, then orgs found in the tables.
    let mut orgs = Vec::with_capacity(batch.org_dict.len() + 1);
    orgs.push(UNATTRIBUTED_ORG.to_owned());
    orgs.extend(batch.org_dict);
    let mut org_sectors: Vec<Vec<String>> = orgs
        .iter()
        .enumerate()
        .map(|(i, id)| match tables.org_by_id(id) {
            Some(idx) if i > 0 => tables.org(idx).sectors.clone(),
            _ => Vec::new(),
        })
        .collect();
    let mut table_orgs: HashMap<OrgIdx, u32> = HashMap::new();
    let mut org_of_row = Vec::with_capacity(rows);
    let mut country_of_row = Vec::with_capacity(rows);
    let (mut attributed, mut unattributed) = (0u64, 0u64);
    for row in 0..rows {
        let given_org = batch.org_index.get(row).copied().unwrap_or(0);
        let given_country = batch.country_index.get(row).copied().unwrap_or(0);
        let mut org = given_org;
        let mut country = (given_country > 0).then(|| countries[given_country as usize - 1]);
        if given_org == 0 || country.is_none() {
            let found: Attribution = if row < n4 {
                tables.lookup_v4(batch.ipv4[row])
            } else {
                tables.lookup_v6(u128::from_be_bytes(ipv6[row - n4]))
            };
            let mut filled = false;
            if org == 0 {
                if let Some(idx) = found.org {
                    org = *table_orgs.entry(idx).or_insert_with(|| {
                        let info = tables.org(idx);
                        orgs.push(info.id.clone());
                        org_sectors.push(info.sectors.clone());
                        (orgs.len() - 1) as u32
                    });
                    filled = true;
                }
            }
            if country.is_none() {
                if let Some(code) = found.country {
                    country = Some(code);
                    filled = true;
                }
            }
            if org == 0 || country.is_none() {
                unattributed += 1;
            } else if filled {
                attributed += 1;
            }
        }
        org_of_row.push(org);
        country_of_row.push(country.unwrap_or(UNATTRIBUTED_COUNTRY));
    }

    Ok(PreparedBatch {
        ns: ns.id,
        collector: batch.collector,
        sequence: batch.sequence,
        digest: Some(digest),
        ipv4: batch.ipv4,
        ipv6,
        days,
        orgs,
        org_sectors,
        org_of_row,
        country_of_row,
        attributed,
        unattributed,
        tables_version: tables.version().to_owned(),
    })
}

/// Folds a prepared batch into the active memtable (the deltas a
/// checkpoint persists) and into the full in-memory index.
pub fn apply(
    state: &mut MemState,
    ns: &Namespace,
    batch: &PreparedBatch,
    applied_at: i64,
) -> Result<()> {
    /// What a dictionary org contributes to every row that names it.
    struct OrgRef<'a> {
        dim: u64,
        hash: u64,
        /// False for the unattributed org: it is no organisation.
        counted: bool,
        sectors: Vec<(u64, &'a str)>,
    }
    let MemState {
        active: mem, index, ..
    } = state;
    let mut name = |dim: u64, text: &str| {
        if let Entry::Vacant(e) = index.names.entry((ns.id, dim)) {
            e.insert(text.to_owned());
            mem.names.insert((ns.id, dim), text.to_owned());
        }
    };
    let orgs: Vec<OrgRef> = batch
        .orgs
        .iter()
        .zip(&batch.org_sectors)
        .enumerate()
        .map(|(i, (id, sectors))| {
            let dim = org_dim(id);
            name(dim, id);
            let sectors = sectors
                .iter()
                .map(|s| {
                    let dim = sector_dim(s);
                    name(dim, s);
                    (dim, s.as_str())
                })
                .collect();
            OrgRef {
                dim,
                hash: hash_org(ns.seed, id),
                counted: i != 0,
                sectors,
            }
        })
        .collect();
    // Rows are grouped by (org, country, day) first: every series of a
    // row follows from that triple, so each series' group is found once
    // per triple, not once per row. Each triple's hashes go into its org
    // sketch first; while that sketch holds rows of this source only
    // (`Memtable::org_sources`), the hashes that leave it unchanged (a
    // repeated IP, or a register already as high) would leave the
    // source's global, country and sector sketches unchanged too, so only
    // the others are passed on. Then each sketch of the memtable is looked
    // up once per batch. Org hashes go in once per triple.
    let n4 = batch.ipv4.len();
    // The triples in the order first seen; `last` is each dictionary org's
    // latest triple, which most rows hit (an org is mostly seen in one
    // country, and a batch mostly covers one day), so most rows skip the
    // map.
    /// (dictionary org, country, day).
    type Triple = (u32, [u8; 2], u32);
    let mut triples: Vec<(Triple, Vec<u64>)> = Vec::new();
    let mut triple_at: FxHashMap<Triple, usize> = FxHashMap::default();
    let mut last = vec![usize::MAX; orgs.len()];
    let (mut first, mut end) = (u32::MAX, 0u32);
    for row in 0..batch.rows() {
        let day = batch.days[row];
        first = first.min(day);
        end = end.max(day + 1);
        let ip = if row < n4 {
            hash_ipv4(ns.seed, batch.ipv4[row])
        } else {
            hash_ipv6(ns.seed, batch.ipv6[row - n4])
        };
        let org = batch.org_of_row[row];
        let key = (org, batch.country_of_row[row], day);
        let at = match last[org as usize] {
            at if at != usize::MAX && triples[at].0 == key => at,
            _ => {
                let at = *triple_at.entry(key).or_insert_with(|| {
                    triples.push((key, Vec::new()));
                    triples.len() - 1
                });
                last[org as usize] = at;
                at
            }
        };
        triples[at].1.push(ip);
    }
    let mut groups: FxHashMap<(Family, u64, Day), Vec<u64>> = FxHashMap::default();
    let presence = index.presence.entry(ns.id).or_default();
    for ((org_ref, code, day), mut ips) in triples {
        let org = &orgs[org_ref as usize];
        let day = Day(day);
        let country = country_dim(code);
        // The observation counters (all rows, and per country) count
        // every row, repeated or not.
        for dim in [CounterKey::ALL, country] {
            *mem.counters
                .entry(CounterKey {
                    ns: ns.id,
                    dim,
                    day,
                })
                .or_insert(0) += ips.len() as u64;
        }
        let org_key = SketchKey::day(ns.id, Family::IpsOrg, org.dim, day);
        let (sketch, created) = day_sketch(&mut mem.sketches, &mut index.dims, ns, org_key)?;
        let source = row_source(code, org.sectors.iter().map(|&(dim, _)| dim));
        let held =
            mem.org_sources
                .entry(org_key)
                .or_insert(if created { source } else { MIXED_SOURCES });
        if *held != source {
            *held = MIXED_SOURCES;
        }
        let sole = *held == source;
        let before = sketch.heap_bytes();
        if sole {
            ips.retain(|&h| sketch.insert_hash(h));
        } else {
            for &h in &ips {
                sketch.insert_hash(h);
            }
        }
        mem.sketch_bytes = (mem.sketch_bytes + sketch.heap_bytes()).saturating_sub(before);
        for (sector, label) in &org.sectors {
            let cs = country_sector_dim(code, label);
            if let Entry::Vacant(e) = index.names.entry((ns.id, cs)) {
                let text = format!("{}/{label}", String::from_utf8_lossy(&code));
                e.insert(text.clone());
                mem.names.insert((ns.id, cs), text);
            }
            groups
                .entry((Family::IpsSector, *sector, day))
                .or_default()
                .extend_from_slice(&ips);
            groups
                .entry((Family::IpsCountrySector, cs, day))
                .or_default()
                .extend_from_slice(&ips);
            groups
                .entry((Family::OrgsSector, *sector, day))
                .or_default()
                .push(org.hash);
            groups
                .entry((Family::OrgsCountrySector, cs, day))
                .or_default()
                .push(org.hash);
        }
        groups
            .entry((Family::IpsGlobal, 0, day))
            .or_default()
            .extend_from_slice(&ips);
        match groups.entry((Family::IpsCountry, country, day)) {
            Entry::Occupied(mut e) => e.get_mut().extend_from_slice(&ips),
            Entry::Vacant(e) => {
                e.insert(ips);
            }
        }
        if !org.counted {
            continue;
        }
        groups
            .entry((Family::OrgsGlobal, 0, day))
            .or_default()
            .push(org.hash);
        groups
            .entry((Family::OrgsCountry, country, day))
            .or_default()
            .push(org.hash);
        let oc = OrgCountry {
            org: org.dim,
            country: code,
        };
        // The index holds every day the memtable does: a day already in the
        // memtable (most, within a checkpoint) is in the index too.
        let days = mem.presence.entry((ns.id, oc)).or_default();
        if !days.contains(day) {
            days.insert(day);
            presence.insert(oc, day);
        }
    }
    for ((family, dim, day), hashes) in groups {
        if hashes.is_empty() {
            // Every hash was known to the org sketches: nothing changes
            // (the series exists already, from the rows that did).
            continue;
        }
        let key = SketchKey::day(ns.id, family, dim, day);
        let (sketch, _) = day_sketch(&mut mem.sketches, &mut index.dims, ns, key)?;
        let before = sketch.heap_bytes();
        for h in hashes {
            sketch.insert_hash(h);
        }
        mem.sketch_bytes = (mem.sketch_bytes + sketch.heap_bytes()).saturating_sub(before);
    }
    if first < end {
        mem.widen_extent(ns.id, Day(first), Day(end));
    }
    if index
        .table_versions
        .entry(ns.id)
        .or_default()
        .insert(batch.tables_version.clone())
    {
        mem.table_versions
            .insert((ns.id, batch.tables_version.clone()));
    }
    mem.rows += batch.rows() as u64;
    mem.applied.push((batch.id(), applied_at));
    Ok(())
}

/// The memtable's sketch at `key`, created (and its dimension indexed)
/// if it is new; true if it was created.
fn day_sketch<'m>(
    sketches: &'m mut FxHashMap<SketchKey, Sketch>,
    dims: &mut HashMap<(NamespaceId, Family), FxHashSet<u64>>,
    ns: &Namespace,
    key: SketchKey,
) -> Result<(&'m mut Sketch, bool)> {
    Ok(match sketches.entry(key) {
        Entry::Occupied(e) => (e.into_mut(), false),
        Entry::Vacant(e) => {
            dims.entry((ns.id, key.family)).or_default().insert(key.dim);
            (e.insert(Sketch::new(ns.policy.precision, ns.seed)?), true)
        }
    })
}

fn check_column_len(field: &str, len: usize, rows: usize, optional: bool) -> Result<()> {
    if len == rows || (optional && len == 0) {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        format!(
            "has {len} entries but the batch has {rows} rows{}",
            if optional {
                " (send none or one per row)"
            } else {
                ""
            }
        ),
    ))
}

/// Why `t` is before the oldest time `ns` accepts, and what to do.
fn too_old(ns: &Namespace, t: i64, oldest: i64) -> String {
    format!(
        "{} is older than namespace {} accepts: its policy keeps {} days (nothing before \
         {}); a policy is fixed when the namespace is created, so send such rows to a \
         namespace created with a larger policy.max_age_days (or, for namespaces created on \
         first use, a larger [default_policy] max_age_days in the server's configuration)",
        seconds_text(t),
        quoted(&ns.name),
        ns.policy.max_age_days,
        utc_text(oldest).unwrap_or_default()
    )
}

/// Why `t` is after the newest time `ns` accepts at `now`, and what to do;
/// names milliseconds when `t / 1000` would be accepted.
fn too_new(ns: &Namespace, t: i64, now: i64, newest: i64) -> String {
    let mut text = format!(
        "{} is more than {} s after the server's clock ({})",
        seconds_text(t),
        ns.policy.max_future_skew_seconds,
        utc_text(now).unwrap_or_default()
    );
    let oldest = now - i64::from(ns.policy.max_age_days) * SECONDS_PER_DAY;
    if (oldest..=newest).contains(&(t / 1000)) {
        text.push_str(
            "; it looks like milliseconds: send unix seconds (divide by 1000, or give RFC 3339 \
             times)",
        );
    } else {
        text.push_str("; check the collector's clock and the time column");
    }
    text
}

fn validate_collector(collector: &str) -> Result<()> {
    if collector.is_empty() {
        return Err(Error::invalid("collector_id", "is empty"));
    }
    if collector.len() > MAX_COLLECTOR_LEN {
        return Err(Error::invalid(
            "collector_id",
            format!(
                "is {} bytes long; the limit is {MAX_COLLECTOR_LEN}",
                collector.len()
            ),
        ));
    }
    if collector.chars().any(char::is_control) {
        return Err(Error::invalid(
            "collector_id",
            "contains a control character",
        ));
    }
    Ok(())
}

fn validate_org(org: &str) -> std::result::Result<(), String> {
    if org.is_empty() {
        return Err("is empty (leave the row's org_index at 0 to have it attributed)".into());
    }
    if org.len() > MAX_ORG_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_ORG_LEN}",
            org.len()
        ));
    }
    if org.chars().any(char::is_control) {
        return Err(format!("{} contains a control character", quoted(org)));
    }
    if org == UNATTRIBUTED_ORG {
        return Err(format!("{org:?} is reserved for rows no table covers"));
    }
    Ok(())
}

/// Parses an ISO 3166-1 alpha-2 code (officially assigned, plus `EU` and
/// the user-assigned `ZZ` that marks unattributed rows).
pub fn parse_country(code: &str) -> std::result::Result<[u8; 2], String> {
    let bytes: [u8; 2] = code.as_bytes().try_into().map_err(|_| {
        format!(
            "{} is not a two-letter ISO 3166-1 alpha-2 code",
            quoted(code)
        )
    })?;
    if !bytes.iter().all(u8::is_ascii_uppercase) {
        return Err(format!("{code:?} is not upper-case ISO 3166-1 alpha-2"));
    }
    if code == "ZZ" || code == "EU" || ISO_3166_ALPHA2.split(' ').any(|c| c == code) {
        Ok(bytes)
    } else {
        Err(format!(
            "{code:?} is not an assigned ISO 3166-1 alpha-2 code"
        ))
    }
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespacePolicy;
    use crate::replication::{apply_merge, MergeBatch};
    use crate::sketch::HashSeed;
    use crate::store::keys::{self, KIND_SKETCH};
    use crate::store::memtable::Memtable;
    use crate::store::Store;

    fn namespace() -> Namespace {
        Namespace {
            id: 1,
            name: "t".into(),
            policy: NamespacePolicy::default(),
            seed: HashSeed::DEFAULT,
        }
    }

    /// One row: (org index, country, day, ip).
    type Row = (u32, [u8; 2], u32, u32);

    fn batch(sequence: u64, orgs: &[(&str, &[&str])], rows: &[Row]) -> PreparedBatch {
        let mut names = vec![UNATTRIBUTED_ORG.to_owned()];
        let mut sectors = vec![Vec::new()];
        for (id, labels) in orgs {
            names.push((*id).to_owned());
            sectors.push(labels.iter().map(|s| (*s).to_owned()).collect());
        }
        PreparedBatch {
            ns: 1,
            collector: "c".into(),
            sequence,
            digest: None,
            ipv4: rows.iter().map(|r| r.3).collect(),
            ipv6: Vec::new(),
            days: rows.iter().map(|r| r.2).collect(),
            orgs: names,
            org_sectors: sectors,
            org_of_row: rows.iter().map(|r| r.0).collect(),
            country_of_row: rows.iter().map(|r| r.1).collect(),
            attributed: 0,
            unattributed: 0,
            tables_version: "v".into(),
        }
    }

    /// What `apply` must leave in the memtable: every row's IP hash
    /// inserted into each of its series, one row at a time, plus what was
    /// merged (`merged`: sketches a region sent, already in the memtable).
    fn reference(ns: &Namespace, batches: &[PreparedBatch], merged: &Memtable) -> Memtable {
        let mut mem = Memtable::default();
        for (key, sketch) in &merged.sketches {
            mem.sketches.insert(*key, sketch.clone());
        }
        let insert = |mem: &mut Memtable, family, dim, day, hash| {
            mem.sketches
                .entry(SketchKey::day(ns.id, family, dim, day))
                .or_insert_with(|| Sketch::new(ns.policy.precision, ns.seed).unwrap())
                .insert_hash(hash);
        };
        for b in batches {
            for row in 0..b.rows() {
                let (org, code, day) = (
                    b.org_of_row[row] as usize,
                    b.country_of_row[row],
                    Day(b.days[row]),
                );
                let ip = hash_ipv4(ns.seed, b.ipv4[row]);
                let org_hash = hash_org(ns.seed, &b.orgs[org]);
                insert(&mut mem, Family::IpsGlobal, 0, day, ip);
                insert(&mut mem, Family::IpsCountry, country_dim(code), day, ip);
                insert(&mut mem, Family::IpsOrg, org_dim(&b.orgs[org]), day, ip);
                for label in &b.org_sectors[org] {
                    let (sector, cs) = (sector_dim(label), country_sector_dim(code, label));
                    insert(&mut mem, Family::IpsSector, sector, day, ip);
                    insert(&mut mem, Family::IpsCountrySector, cs, day, ip);
                    insert(&mut mem, Family::OrgsSector, sector, day, org_hash);
                    insert(&mut mem, Family::OrgsCountrySector, cs, day, org_hash);
                }
                if org != 0 {
                    insert(&mut mem, Family::OrgsGlobal, 0, day, org_hash);
                    insert(
                        &mut mem,
                        Family::OrgsCountry,
                        country_dim(code),
                        day,
                        org_hash,
                    );
                }
                for dim in [CounterKey::ALL, country_dim(code)] {
                    *mem.counters
                        .entry(CounterKey {
                            ns: ns.id,
                            dim,
                            day,
                        })
                        .or_insert(0) += 1;
                }
            }
        }
        mem
    }

    fn assert_same_sketches(got: &Memtable, want: &Memtable) {
        assert_eq!(got.counters, want.counters);
        let mut keys: Vec<_> = want.sketches.keys().collect();
        keys.sort_by_key(|k| k.encode());
        for key in keys {
            let g = got.sketches.get(key);
            assert!(g == Some(&want.sketches[key]), "sketch {key:?} differs");
        }
        assert_eq!(got.sketches.len(), want.sketches.len());
    }

    const DAY: u32 = 20_000;

    /// Rows of the shapes that skipping must get right: repeated IPs, an
    /// org past the exact limit (dense), an org seen in two countries on a
    /// day, an org whose sector labels change between batches, several
    /// days, and the unattributed org.
    fn batches() -> Vec<PreparedBatch> {
        let orgs: &[(&str, &[&str])] = &[
            ("AS1", &["government"]),
            ("AS2", &[]),
            ("AS3", &["finance", "telecom"]),
            ("AS4", &[]),
        ];
        let relabelled: &[(&str, &[&str])] = &[
            ("AS1", &["government", "education"]),
            ("AS2", &["finance"]),
            ("AS3", &["finance", "telecom"]),
            ("AS4", &[]),
        ];
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..6_000u32 {
            // AS4: 3,000 distinct IPs a day, each twice (dense).
            a.push((4, *b"US", DAY, 1_000_000 + i % 3_000));
            // AS1: 40 IPs, repeated; AS3 in DE and, for some rows, in FR.
            a.push((1, *b"DE", DAY + i % 2, 2_000_000 + i % 40));
            let country = if i % 7 == 0 { *b"FR" } else { *b"DE" };
            a.push((3, country, DAY, 3_000_000 + i % 50));
            // Unattributed rows, and AS2 in GB.
            a.push((0, *b"ZZ", DAY, 4_000_000 + i % 30));
            b.push((2, *b"GB", DAY, 5_000_000 + i % 60));
            // The same IPs again, some now under other labels or countries.
            b.push((4, *b"US", DAY, 1_000_000 + (i * 7) % 4_000));
            b.push((1, *b"DE", DAY, 2_000_000 + i % 45));
            b.push((4, *b"CA", DAY + 1, 1_000_000 + i % 3_000));
        }
        vec![
            batch(1, orgs, &a),
            batch(2, relabelled, &b),
            batch(3, orgs, &a),
        ]
    }

    #[test]
    fn apply_leaves_every_series_as_inserting_each_row_would() {
        let ns = namespace();
        let batches = batches();
        let mut state = MemState::default();
        for b in &batches {
            apply(&mut state, &ns, b, 0).unwrap();
        }
        let want = reference(&ns, &batches, &Memtable::default());
        assert_same_sketches(&state.active, &want);
        // The rows cover the dense case too (registers, not a set, decide
        // what is skipped).
        let dense = SketchKey::day(1, Family::IpsOrg, org_dim("AS4"), Day(DAY));
        assert!(want.sketches[&dense].dense_registers().is_some());
    }

    #[test]
    fn rows_after_a_merge_into_their_org_sketch_reach_every_series() {
        // A region's org sketch holds IPs that no other series of this
        // memtable has seen: a later row with one of them must still go
        // into its global and country sketches.
        let ns = namespace();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let orgs: &[(&str, &[&str])] = &[("AS9", &["finance"])];
        let day = Day(DAY);
        let mut state = MemState::default();
        let first = batch(1, orgs, &[(1, *b"NL", DAY, 7)]);
        apply(&mut state, &ns, &first, 0).unwrap();
        let mut region = Sketch::new(ns.policy.precision, ns.seed).unwrap();
        for ip in 100..200u32 {
            region.insert_hash(hash_ipv4(ns.seed, ip));
        }
        let key = SketchKey::day(1, Family::IpsOrg, org_dim("AS9"), day);
        let merge = MergeBatch {
            ns: 1,
            region: "eu".into(),
            revision: 1,
            merged_at: 0,
            records: vec![(keys::record_of(&key.encode()), region.encode())],
        };
        assert_eq!(merge.records[0].0[0], KIND_SKETCH);
        apply_merge(&mut state, &store, &ns, &merge).unwrap();
        let later = batch(2, orgs, &[(1, *b"NL", DAY, 150), (1, *b"NL", DAY, 7)]);
        apply(&mut state, &ns, &later, 0).unwrap();
        let mut merged = Memtable::default();
        merged.sketches.insert(key, region);
        let want = reference(&ns, &[first, later], &merged);
        assert_same_sketches(&state.active, &want);
    }
}
