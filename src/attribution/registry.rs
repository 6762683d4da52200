//! The organisation registry: org ids, names, countries and sector labels.
//!
//! This file owns [`OrgInfo`], [`OrgIdx`] and the build-time registry that interns organisations
//! from the ASN tables, the custom networks file and the operator's orgs file.
//!
//! Invariants:
//! * Org ids are unique and case-sensitive. ASN organisations have the id `AS<n>` (`n` decimal,
//!   no leading zeros); operator ids are free-form non-empty strings.
//! * `OrgIdx(i)` indexes the registry's vector; indices are dense `0..len`, and `len` never
//!   exceeds [`MAX_ORGS`](super::MAX_ORGS) (2^22 - 1, the width of the packed lookup value).
//! * Sector labels are trimmed, lower-cased, non-empty and without duplicates (first occurrence
//!   order kept).
//!
//! Orgs file format (`org,name,country,sectors`, header row required, exactly four columns):
//! a row adds a new org or overrides an existing one; an EMPTY field keeps the existing value
//! (for a new org: name = id, no country, no sectors). `sectors` is `;`-separated, e.g.
//! `government;defence`. An org id listed twice in the file is an error.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::load::{check_columns, for_each_record, parse_country, LoadedFile};
use crate::error::AttributionError;

/// Index of an organisation in an [`Attributor`](super::Attributor)'s registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OrgIdx(pub u32);

/// An organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrgInfo {
    /// `AS<n>` for ASN organisations, or the operator's own key.
    pub id: String,
    /// Display name (the ASN table's organisation name, or the orgs file's).
    pub name: String,
    /// The organisation's country (see the `attribution` module docs for how it is chosen).
    #[serde(serialize_with = "serialize_country")]
    pub country: Option<[u8; 2]>,
    /// Lower-case sector labels, e.g. `["government", "defence"]`.
    pub sectors: Vec<String>,
}

impl OrgInfo {
    /// The country as a `&str` (`"DE"`), if any.
    pub fn country_str(&self) -> Option<&str> {
        self.country.as_ref().map(country_str)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.id.capacity()
            + self.name.capacity()
            + self.sectors.capacity() * std::mem::size_of::<String>()
            + self.sectors.iter().map(String::capacity).sum::<usize>()
    }
}

/// A country code as text. Codes are always ASCII (validated at load).
pub fn country_str(cc: &[u8; 2]) -> &str {
    std::str::from_utf8(cc).unwrap_or("??")
}

fn serialize_country<S: serde::Serializer>(cc: &Option<[u8; 2]>, s: S) -> Result<S::Ok, S::Error> {
    match cc {
        Some(cc) => s.serialize_some(country_str(cc)),
        None => s.serialize_none(),
    }
}

/// Parse a `;`-separated sector list: trimmed, lower-cased, empties and duplicates dropped.
pub fn parse_sectors(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split(';') {
        let label = part.trim().to_lowercase();
        if !label.is_empty() && !out.contains(&label) {
            out.push(label);
        }
    }
    out
}

/// Build-time registry. Frozen into the `Attributor` as `orgs` + `by_id`.
#[derive(Debug, Default)]
pub(crate) struct OrgRegistry {
    pub(crate) orgs: Vec<OrgInfo>,
    pub(crate) by_id: HashMap<String, OrgIdx>,
    by_asn: HashMap<u32, OrgIdx>,
}

fn too_many() -> String {
    format!("too many organisations (limit {})", super::MAX_ORGS)
}

impl OrgRegistry {
    fn push(&mut self, info: OrgInfo) -> Result<OrgIdx, String> {
        if self.orgs.len() >= super::MAX_ORGS {
            return Err(too_many());
        }
        let idx = self.orgs.len() as u32;
        self.by_id.insert(info.id.clone(), OrgIdx(idx));
        self.orgs.push(info);
        Ok(OrgIdx(idx))
    }

    /// The org for AS `asn`, created with `name` (or its id if `name` is empty) on first sight.
    /// Later rows of the same ASN keep the first name.
    pub(crate) fn intern_asn(&mut self, asn: u32, name: &str) -> Result<OrgIdx, String> {
        if let Some(&idx) = self.by_asn.get(&asn) {
            return Ok(idx);
        }
        let id = format!("AS{asn}");
        let idx = match self.by_id.get(&id) {
            Some(&idx) => idx,
            None => self.push(OrgInfo {
                name: if name.is_empty() {
                    id.clone()
                } else {
                    name.to_string()
                },
                id,
                country: None,
                sectors: Vec::new(),
            })?,
        };
        self.by_asn.insert(asn, idx);
        Ok(idx)
    }

    /// The org with `id`, created (name = id, the given country, no sectors) if unknown.
    pub(crate) fn intern_id(
        &mut self,
        id: &str,
        country: Option<[u8; 2]>,
    ) -> Result<OrgIdx, String> {
        if let Some(&idx) = self.by_id.get(id) {
            return Ok(idx);
        }
        self.push(OrgInfo {
            id: id.to_string(),
            name: id.to_string(),
            country,
            sectors: Vec::new(),
        })
    }

    /// Apply an operator orgs file (see the module docs for the format).
    pub(crate) fn apply_orgs_file(&mut self, path: &Path) -> Result<LoadedFile, AttributionError> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut layout: Option<OrgsHeader> = None;
        let mut loaded = for_each_record(path, |row| {
            let Some(cols) = &layout else {
                let names: Vec<&str> = (0..row.len()).map(|i| row.get(i)).collect();
                layout = Some(OrgsHeader::parse(&names)?);
                return Ok(());
            };
            let names: Vec<&str> = cols.names.iter().map(String::as_str).collect();
            check_columns(&row, &names, names.len())?;
            let id = row.get(cols.org);
            if id.is_empty() {
                return Err("empty org id".to_string());
            }
            if let Some(first) = seen.insert(id.to_string(), row.line()) {
                return Err(format!("org {id:?} is already defined on line {first}"));
            }
            let field = |col: Option<usize>| col.map(|i| row.get(i)).unwrap_or("");
            let country = match field(cols.country) {
                "" => None,
                c => Some(parse_country(c)?),
            };
            let idx = self.intern_id(id, None)?;
            let org = &mut self.orgs[idx.0 as usize];
            if !field(cols.name).is_empty() {
                org.name = field(cols.name).to_string();
            }
            if country.is_some() {
                org.country = country;
            }
            if !field(cols.sectors).is_empty() {
                org.sectors = parse_sectors(field(cols.sectors));
            }
            Ok(())
        })?;
        loaded.rows = loaded.rows.saturating_sub(1); // header
        Ok(loaded)
    }

    /// Drop build-only state.
    pub(crate) fn freeze(mut self) -> (Vec<OrgInfo>, HashMap<String, OrgIdx>) {
        self.by_asn = HashMap::new();
        self.orgs.shrink_to_fit();
        self.by_id.shrink_to_fit();
        (self.orgs, self.by_id)
    }
}

/// Approximate heap bytes of a `HashMap`'s table (entries plus one control byte each).
pub(crate) fn map_heap_bytes<K, V>(m: &HashMap<K, V>) -> usize {
    m.capacity() * (std::mem::size_of::<(K, V)>() + 1)
}

/// Where the columns of an orgs file are, from its header row: `org` (or
/// `org_id`, `id`) and any of `name` (`org_name`), `country` (`cc`) and
/// `sectors` (`sector`), in any order, in any case; other columns (e.g. the
/// peers' `pool_ips`) are ignored.
struct OrgsHeader {
    /// The header's column names, for messages.
    names: Vec<String>,
    org: usize,
    name: Option<usize>,
    country: Option<usize>,
    sectors: Option<usize>,
}

impl OrgsHeader {
    fn parse(header: &[&str]) -> Result<OrgsHeader, String> {
        let find = |aliases: &[&str]| {
            header
                .iter()
                .position(|h| aliases.iter().any(|a| h.trim().eq_ignore_ascii_case(a)))
        };
        let Some(org) = find(&["org", "org_id", "id"]) else {
            return Err(format!(
                "the header row names no org column: found {:?}; it needs org (or org_id) and \
                 any of name, country, sector/sectors",
                header.join(",")
            ));
        };
        Ok(OrgsHeader {
            names: header.iter().map(|h| h.to_string()).collect(),
            org,
            name: find(&["name", "org_name"]),
            country: find(&["country", "cc"]),
            sectors: find(&["sectors", "sector"]),
        })
    }
}
