//! TEMPORARY stand-in until the real sketch module lands.
use std::collections::HashSet;
use std::net::IpAddr;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub const DEFAULT_PRECISION: u8 = 14;
pub const MIN_PRECISION: u8 = 4;
pub const MAX_PRECISION: u8 = 18;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashSeed(u64);
impl HashSeed {
    pub const DEFAULT: HashSeed = HashSeed(0);
    pub fn fingerprint(&self) -> u64 {
        xxh3_64_with_seed(b"fp", self.0)
    }
}
pub fn hash_ip(seed: HashSeed, ip: IpAddr) -> u64 {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    xxh3_64_with_seed(&v6.octets(), seed.0)
}
pub fn hash_ipv4(seed: HashSeed, ip: u32) -> u64 {
    hash_ip(seed, IpAddr::V4(ip.into()))
}
pub fn hash_ipv6(seed: HashSeed, o: [u8; 16]) -> u64 {
    hash_ip(seed, IpAddr::V6(o.into()))
}
pub fn hash_org(seed: HashSeed, org: &str) -> u64 {
    xxh3_64_with_seed(org.as_bytes(), seed.0)
}
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    pub confidence: f64,
    pub exact: bool,
}
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SketchError {
    #[error("bad")]
    Bad,
}
#[derive(Clone, Debug)]
pub struct Sketch {
    set: HashSet<u64>,
}
impl Sketch {
    pub fn new(_p: u8, _s: HashSeed) -> Result<Sketch, SketchError> {
        Ok(Sketch {
            set: HashSet::new(),
        })
    }
    pub fn insert_hash(&mut self, h: u64) -> bool {
        self.set.insert(h)
    }
    pub fn merge(&mut self, o: &Sketch) -> Result<(), SketchError> {
        self.set.extend(o.set.iter().copied());
        Ok(())
    }
    pub fn estimate_at(&self, c: f64) -> Estimate {
        let n = self.set.len() as f64;
        Estimate {
            value: n,
            lower: n,
            upper: n,
            confidence: c,
            exact: true,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        self.set.iter().flat_map(|h| h.to_le_bytes()).collect()
    }
    pub fn decode(b: &[u8]) -> Result<Sketch, SketchError> {
        Ok(Sketch {
            set: b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        })
    }
}
