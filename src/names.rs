//! Names the configuration and the domain share: namespace names and
//! region names, and the checks that make one. Pure functions over plain
//! strings, at the bottom of the layers so that `config` can check the
//! names it reads without importing the modules that use them.

use crate::error::{quoted, Error, Result};

/// Longest namespace name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Longest region name.
pub const MAX_REGION_LEN: usize = 64;

/// Names are 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            field,
            format!(
                "{} contains {c:?}; use letters, digits, '.', '_' and '-'",
                quoted(name)
            ),
        ));
    }
    Ok(())
}

/// Checks a region name: 1-64 bytes of `[A-Za-z0-9._-]`.
pub fn validate_region(field: &str, region: &str) -> Result<()> {
    if region.is_empty()
        || region.len() > MAX_REGION_LEN
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not a region name (1-{MAX_REGION_LEN} of A-Z a-z 0-9 . _ -)",
                quoted(region)
            ),
        ));
    }
    Ok(())
}
