//! TEMPORARY stand-in until the real attribution module lands.
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct TableFiles {
    pub asn_v4: Option<PathBuf>,
    pub asn_v6: Option<PathBuf>,
    pub country_v4: Option<PathBuf>,
    pub country_v6: Option<PathBuf>,
    pub orgs: Option<PathBuf>,
    pub networks: Option<PathBuf>,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgIdx(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attribution {
    pub org: Option<OrgIdx>,
    pub country: Option<[u8; 2]>,
}
pub struct OrgInfo {
    pub id: String,
    pub name: String,
    pub country: Option<[u8; 2]>,
    pub sectors: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("x")]
    X,
}
pub struct Attributor {
    orgs: Vec<OrgInfo>,
}
impl Attributor {
    pub fn load(_f: &TableFiles) -> Result<Attributor, AttributionError> {
        Ok(Self::empty())
    }
    pub fn empty() -> Attributor {
        Attributor { orgs: vec![] }
    }
    pub fn version(&self) -> &str {
        "none"
    }
    pub fn lookup_v4(&self, _ip: u32) -> Attribution {
        Attribution::default()
    }
    pub fn lookup_v6(&self, _ip: u128) -> Attribution {
        Attribution::default()
    }
    pub fn lookup(&self, _ip: IpAddr) -> Attribution {
        Attribution::default()
    }
    pub fn org(&self, idx: OrgIdx) -> &OrgInfo {
        &self.orgs[idx.0 as usize]
    }
}
