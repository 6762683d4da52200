//! Organisation names: the registry's name and country beside an org id in
//! every listed answer, and `org:NAME` scopes resolved to the org's id.
//!
//! The registry is the one loaded now (`Engine::tables`): names and
//! countries follow a table reload, while ids are what was counted. An org
//! id is always tried first; a scope text that is not an id the namespace
//! has seen is matched against the names of the orgs it has seen (equal
//! ignoring case, else contained ignoring case). One match resolves to its
//! id; several are refused with the candidates, so that the caller picks one.

use super::Scope;
use crate::attribution::Attributor;
use crate::catalog::Namespace;
use crate::error::{quoted, Error, Result};
use crate::store::index::Index;
use crate::store::keys::{org_dim, Family};

/// Most candidates named in the message refusing an ambiguous name.
const MAX_CANDIDATES: usize = 10;

/// An org's name and country from the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrgLabel {
    /// Empty when the registry has no name for it.
    pub name: String,
    /// ISO 3166-1 alpha-2, when the registry knows it.
    pub country: Option<String>,
}

/// The registry's label of org `id`, if the registry knows the org.
pub fn label(tables: &Attributor, id: &str) -> Option<OrgLabel> {
    let org = tables.org(tables.org_by_id(id)?);
    Some(OrgLabel {
        name: org.name.clone(),
        country: org.country_str().map(str::to_owned),
    })
}

/// `scope` with an `org:` part that is a name rather than a seen id
/// replaced by the id of the one org of `ns` with that name. Other scopes,
/// and org texts that are ids or match no name, come back unchanged (the
/// known-check then refuses an unknown one).
pub(super) fn resolve(
    index: &Index,
    tables: &Attributor,
    ns: &Namespace,
    field: &str,
    scope: &Scope,
) -> Result<Scope> {
    let Scope::Org(text) = scope else {
        return Ok(scope.clone());
    };
    let seen = index
        .dims
        .get(&(ns.id, Family::IpsOrg))
        .is_some_and(|d| d.contains(&org_dim(text)));
    if seen {
        return Ok(scope.clone());
    }
    let wanted = text.to_lowercase();
    let mut equal = Vec::new();
    let mut containing = Vec::new();
    for dim in index.dims(ns.id, Family::IpsOrg) {
        let Some(id) = index.name(ns.id, dim) else {
            continue;
        };
        let Some(org) = tables.org_by_id(id).map(|i| tables.org(i)) else {
            continue;
        };
        let name = org.name.to_lowercase();
        if name.is_empty() {
            continue;
        }
        if name == wanted {
            equal.push(org);
        } else if name.contains(&wanted) {
            containing.push(org);
        }
    }
    let mut matches = if equal.is_empty() { containing } else { equal };
    matches.sort_by(|a, b| a.id.cmp(&b.id));
    match matches.as_slice() {
        [] => Ok(scope.clone()),
        [one] => Ok(Scope::Org(one.id.clone())),
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(MAX_CANDIDATES)
                .map(|o| match o.country_str() {
                    Some(cc) => format!("{} {:?} ({cc})", o.id, o.name),
                    None => format!("{} {:?}", o.id, o.name),
                })
                .collect();
            let more = many.len().saturating_sub(MAX_CANDIDATES);
            Err(Error::invalid(
                format!("{field}.org"),
                format!(
                    "{} names {} organisations of namespace {}: {}{}; give one id, e.g. \
                     org:{}",
                    quoted(text),
                    many.len(),
                    quoted(&ns.name),
                    listed.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    },
                    many[0].id
                ),
            ))
        }
    }
}
