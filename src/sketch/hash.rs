//! Element hashing: `xxh3_64_with_seed` over the canonical byte forms (IPs
//! as 16 bytes, IPv4 mapped; orgs as `org\0` + id) and the seed, whose
//! fingerprint, never the seed itself, goes into envelopes. An element's
//! hash is the top [`HASH_BITS`] bits of that value, the rest zero
//! ([`HASH_MASK`]): an exact set stores 5 bytes a hash. The byte forms
//! are part of the on-disk and wire format. The seed itself ([`HashSeed`])
//! is plain data below `config`, in `crate::sketch_params`.

use std::net::IpAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::sketch_params::HashSeed;

/// Bits of xxh3-64 an element hash keeps (hash id 2): the top 40. Two of
/// 1,024 elements share them with probability below 5e-7, so exact counts
/// stay exact; dense estimates from 2^30 distinct hashes on correct for
/// the 2^40 values a hash can take (`estimate`).
pub const HASH_BITS: u32 = 40;
/// The bits of an element hash that may be set.
pub const HASH_MASK: u64 = !0u64 << (64 - HASH_BITS);

/// Prefix of the canonical byte form of an organisation id.
pub const ORG_PREFIX: &[u8; 4] = b"org\0";

/// The canonical form of an address: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) becomes the IPv4 address; anything else is unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The canonical 16-byte form of an IPv4 address (IPv4-mapped IPv6).
#[inline]
fn ipv4_bytes(ip: u32) -> [u8; 16] {
    let o = ip.to_be_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// Hash of an IP address (v4 and IPv4-mapped v6 hash equal).
#[inline]
pub fn hash_ip(seed: HashSeed, ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_ipv4(seed, u32::from(v4)),
        IpAddr::V6(v6) => hash_ipv6(seed, v6.octets()),
    }
}

/// Hash of an IPv4 address given as a host-order `u32` (`a.b.c.d` is
/// `u32::from(Ipv4Addr::new(a, b, c, d))`). Equal to `hash_ip` of the address.
#[inline]
pub fn hash_ipv4(seed: HashSeed, ip: u32) -> u64 {
    xxh3_64_with_seed(&ipv4_bytes(ip), seed.0) & HASH_MASK
}

/// Hash of an IPv6 address given as octets. Equal to `hash_ip` of the same
/// address, including IPv4-mapped addresses (whose octets already are the
/// canonical form of the IPv4 address).
#[inline]
pub fn hash_ipv6(seed: HashSeed, octets: [u8; 16]) -> u64 {
    xxh3_64_with_seed(&octets, seed.0) & HASH_MASK
}

/// Hash of an organisation id: xxh3 over `b"org\0"` followed by the UTF-8 id.
///
/// IP forms are always exactly 16 bytes and never start with `org\0` in
/// practice (`6f72:6700::/32` is unallocated); orgs and IPs are also never
/// counted in the same sketch.
pub fn hash_org(seed: HashSeed, org: &str) -> u64 {
    let id = org.as_bytes();
    let mut stack = [0u8; 64];
    if id.len() + ORG_PREFIX.len() <= stack.len() {
        let n = ORG_PREFIX.len() + id.len();
        stack[..ORG_PREFIX.len()].copy_from_slice(ORG_PREFIX);
        stack[ORG_PREFIX.len()..n].copy_from_slice(id);
        xxh3_64_with_seed(&stack[..n], seed.0) & HASH_MASK
    } else {
        let mut buf = Vec::with_capacity(ORG_PREFIX.len() + id.len());
        buf.extend_from_slice(ORG_PREFIX);
        buf.extend_from_slice(id);
        xxh3_64_with_seed(&buf, seed.0) & HASH_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Literals cross-checked against the C reference implementation
    /// (libxxhash 0.8.1 `XXH3_64bits_withSeed`) over the documented byte forms,
    /// of which an element hash keeps the top 40 bits.
    #[test]
    fn known_answer_hashes() {
        let d = HashSeed::DEFAULT;
        let s42 = HashSeed::new(42);
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(
            hash_ipv4(d, u32::from(ip)),
            0x9fe2_8067_5064_061a & HASH_MASK
        );
        assert_eq!(
            hash_ipv4(s42, u32::from(ip)),
            0x9d55_7270_4d08_1191 & HASH_MASK
        );
        assert_eq!(
            hash_ip(d, IpAddr::V4(ip)),
            0x9fe2_8067_5064_061a & HASH_MASK
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            hash_ip(d, IpAddr::V6(v6)),
            0x275c_8fa5_8c2d_19a0 & HASH_MASK
        );
        assert_eq!(hash_ipv6(d, v6.octets()), 0x275c_8fa5_8c2d_19a0 & HASH_MASK);
        assert_eq!(hash_org(d, "AS16509"), 0x52a4_c05a_b479_354a & HASH_MASK);
        assert_eq!(hash_org(s42, "AS16509"), 0x8934_f9de_76f6_44b8 & HASH_MASK);
        assert_eq!(
            HashSeed::from_secret(b"correct horse"),
            HashSeed::new(0x1358_ff3d_3bae_1672)
        );
        assert_eq!(HashSeed::DEFAULT.fingerprint(), 0xa910_f450_33cb_aa7e);
        assert_eq!(s42.fingerprint(), 0x004c_e2b7_f412_aa50);
    }

    #[test]
    fn mapped_v6_hashes_as_v4() {
        for seed in [
            HashSeed::DEFAULT,
            HashSeed::new(7),
            HashSeed::from_secret(b"k"),
        ] {
            for v4 in [
                Ipv4Addr::new(0, 0, 0, 0),
                Ipv4Addr::new(10, 1, 2, 3),
                Ipv4Addr::new(255, 255, 255, 255),
            ] {
                let mapped = v4.to_ipv6_mapped();
                let h = hash_ip(seed, IpAddr::V4(v4));
                assert_eq!(hash_ip(seed, IpAddr::V6(mapped)), h);
                assert_eq!(hash_ipv4(seed, u32::from(v4)), h);
                assert_eq!(hash_ipv6(seed, mapped.octets()), h);
                assert_eq!(canonical_ip(IpAddr::V6(mapped)), IpAddr::V4(v4));
                assert_eq!(canonical_ip(IpAddr::V4(v4)), IpAddr::V4(v4));
                // The deprecated IPv4-compatible form ::a.b.c.d is a distinct
                // IPv6 address, not the IPv4 address.
                #[allow(deprecated)]
                let compat = v4.to_ipv6_compatible();
                if u32::from(v4) > 1 {
                    assert_ne!(hash_ip(seed, IpAddr::V6(compat)), h);
                    assert_eq!(canonical_ip(IpAddr::V6(compat)), IpAddr::V6(compat));
                }
            }
        }
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(IpAddr::V6(v6)), IpAddr::V6(v6));
    }

    #[test]
    fn org_hashing_is_domain_separated() {
        let seed = HashSeed::new(3);
        // An org id spelled like an address does not hash like the address.
        assert_ne!(
            hash_org(seed, "192.0.2.1"),
            hash_ip(seed, "192.0.2.1".parse().unwrap())
        );
        // Nor like the raw id bytes.
        assert_ne!(
            hash_org(seed, "AS1"),
            xxh3_64_with_seed(b"AS1", 3) & HASH_MASK
        );
        let kept = |form: &[u8]| xxh3_64_with_seed(form, 3) & HASH_MASK;
        assert_eq!(hash_org(seed, "AS1"), kept(b"org\0AS1"));
        assert_eq!(hash_org(seed, ""), kept(b"org\0"));
        // The long-id path (heap buffer) hashes the same byte form.
        let long = "x".repeat(200);
        let mut form = b"org\0".to_vec();
        form.extend_from_slice(long.as_bytes());
        assert_eq!(hash_org(seed, &long), kept(&form));
        let edge = "y".repeat(60); // exactly fills the stack buffer
        let mut form = b"org\0".to_vec();
        form.extend_from_slice(edge.as_bytes());
        assert_eq!(hash_org(seed, &edge), kept(&form));
        // The seed changes every hash.
        assert_ne!(hash_org(seed, "AS1"), hash_org(HashSeed::new(4), "AS1"));
        assert_ne!(
            hash_ipv4(seed, 1),
            hash_ipv4(HashSeed::new(4), 1),
            "seed must key the IP hash"
        );
    }

    #[test]
    fn seed_fingerprint_hides_the_seed() {
        let seed = HashSeed::from_secret(b"deployment secret");
        assert_ne!(seed.fingerprint(), seed.0);
        assert_ne!(HashSeed::from_secret(b"a"), HashSeed::from_secret(b"b"));
        assert_ne!(
            HashSeed::new(1).fingerprint(),
            HashSeed::new(2).fingerprint()
        );
        // The fingerprint is not an element hash of the seed's bytes.
        assert_ne!(
            seed.fingerprint(),
            xxh3_64_with_seed(&seed.0.to_le_bytes(), 0)
        );
        let dbg = format!("{seed:?}");
        assert!(!dbg.contains(&format!("{}", seed.0)), "{dbg}");
        assert!(!dbg.contains(&format!("{:x}", seed.0)), "{dbg}");
        let s = Sketch::new(14, seed).unwrap();
        assert_eq!(s.seed_fingerprint(), seed.fingerprint());
        let bytes = s.encode();
        assert!(!bytes.windows(8).any(|w| w == seed.0.to_le_bytes()));
    }

    // ---- construction and exact mode ---------------------------------------
}
