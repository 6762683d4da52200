//! Scopes that name what a namespace has never seen.
//!
//! A count of an org, sector or country that no row of the namespace ever
//! had would be 0, exact, indistinguishable from a real zero, so a typo
//! would pass for an answer. A query whose scope names one is refused with
//! [`Error::UnknownInScope`] (`NOT_FOUND`) instead. Known means that the
//! namespace has the IP series of it on some day (the index's dimensions,
//! stored or in the memtable), the same set a group-by lists. A country and
//! a sector are checked each on its own: their combination may well be a
//! real zero.

use super::Scope;
use crate::catalog::Namespace;
use crate::error::{Error, Result};
use crate::store::index::Index;
use crate::store::keys::{country_dim, org_dim, sector_dim, Family};

/// Refuses `scope` (the request field `field`) if it names an org, sector
/// or country that namespace `ns` has never seen.
pub(super) fn require_known(
    index: &Index,
    ns: &Namespace,
    field: &str,
    scope: &Scope,
) -> Result<()> {
    let seen = |family: Family, dim: u64| {
        index
            .dims
            .get(&(ns.id, family))
            .is_some_and(|dims| dims.contains(&dim))
    };
    let unknown = |part: &str, kind: &'static str, value: &str| Error::UnknownInScope {
        field: format!("{field}.{part}"),
        kind,
        value: value.to_owned(),
        namespace: ns.name.clone(),
    };
    let country = |cc: &[u8; 2]| {
        if seen(Family::IpsCountry, country_dim(*cc)) {
            Ok(())
        } else {
            Err(unknown("country", "country", &String::from_utf8_lossy(cc)))
        }
    };
    let sector = |s: &str| {
        if seen(Family::IpsSector, sector_dim(s)) {
            Ok(())
        } else {
            Err(unknown("sector", "sector", s))
        }
    };
    match scope {
        Scope::Global => Ok(()),
        Scope::Country(cc) => country(cc),
        Scope::Sector(s) => sector(s),
        Scope::CountrySector(cc, s) => country(cc).and_then(|()| sector(s)),
        Scope::Org(id) if seen(Family::IpsOrg, org_dim(id)) => Ok(()),
        Scope::Org(id) => Err(unknown("org", "org", id)),
    }
}
