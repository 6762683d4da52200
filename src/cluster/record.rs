//! The records of the cluster's log.
//!
//! `K | version 1 | kind | namespace (u16 len, UTF-8) | body`, where the
//! body of a [`Record::Namespace`] is `precision u8 | max_age_days u32 |
//! max_future_skew_seconds u32 | seed fingerprint (u16 len, bytes)` and the
//! bodies of batches and merges are their write-ahead log payloads
//! (`ingest::codec`, `replication::encode`). Namespaces are named, not
//! numbered: ids are local to a node, and each node maps the name when it
//! applies the record. Decoding checks every length.

use crate::config::NamespacePolicy;
use crate::error::{Error, Result};

const MAGIC: u8 = b'K';
const VERSION: u8 = 1;
const KIND_NAMESPACE: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_MERGE: u8 = 3;

/// One record of the cluster's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Create a namespace with this policy, unless it exists.
    Namespace {
        name: String,
        policy: NamespacePolicy,
        /// Hex fingerprint of the hash seed the creating node holds for it.
        seed_fingerprint: String,
    },
    /// A prepared batch (`ingest::codec` payload; its namespace id is the
    /// sending node's and is replaced by the applying node's).
    Batch { namespace: String, payload: Vec<u8> },
    /// Records merged from a region (`replication` payload).
    Merge { namespace: String, payload: Vec<u8> },
}

impl Record {
    pub fn namespace(&self) -> &str {
        match self {
            Record::Namespace { name, .. } => name,
            Record::Batch { namespace, .. } | Record::Merge { namespace, .. } => namespace,
        }
    }
}

pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[MAGIC, VERSION]);
    let (kind, body): (u8, Vec<u8>) = match record {
        Record::Namespace {
            policy,
            seed_fingerprint,
            ..
        } => {
            let mut b = vec![policy.precision];
            b.extend_from_slice(&policy.max_age_days.to_le_bytes());
            b.extend_from_slice(&policy.max_future_skew_seconds.to_le_bytes());
            put_str(&mut b, seed_fingerprint);
            (KIND_NAMESPACE, b)
        }
        Record::Batch { payload, .. } => (KIND_BATCH, payload.clone()),
        Record::Merge { payload, .. } => (KIND_MERGE, payload.clone()),
    };
    out.push(kind);
    put_str(&mut out, record.namespace());
    out.extend_from_slice(&body);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    let corrupt = |what: &str| Error::Corrupt(format!("cluster log record: {what}"));
    if bytes.len() < 5 || bytes[0] != MAGIC {
        return Err(corrupt("not a sketchd record"));
    }
    if bytes[1] != VERSION {
        return Err(corrupt(&format!(
            "version {} (this build reads {VERSION}); upgrade this node",
            bytes[1]
        )));
    }
    let kind = bytes[2];
    let mut at = 3;
    let namespace = get_str(bytes, &mut at).ok_or_else(|| corrupt("namespace"))?;
    let body = &bytes[at..];
    Ok(match kind {
        KIND_NAMESPACE => {
            if body.len() < 9 {
                return Err(corrupt("namespace policy"));
            }
            let policy = NamespacePolicy {
                precision: body[0],
                max_age_days: u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")),
                max_future_skew_seconds: u32::from_le_bytes(
                    body[5..9].try_into().expect("4 bytes"),
                ),
                // Cluster nodes refuse retention (see `Engine::create_namespace`).
                retention_days: 0,
            };
            let mut at = 9;
            let seed_fingerprint = get_str(body, &mut at).ok_or_else(|| corrupt("seed"))?;
            if at != body.len() {
                return Err(corrupt("trailing bytes"));
            }
            Record::Namespace {
                name: namespace,
                policy,
                seed_fingerprint,
            }
        }
        KIND_BATCH => Record::Batch {
            namespace,
            payload: body.to_vec(),
        },
        KIND_MERGE => Record::Merge {
            namespace,
            payload: body.to_vec(),
        },
        other => return Err(corrupt(&format!("unknown kind {other}"))),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn get_str(bytes: &[u8], at: &mut usize) -> Option<String> {
    let len = u16::from_le_bytes(bytes.get(*at..*at + 2)?.try_into().ok()?) as usize;
    let s = bytes.get(*at + 2..*at + 2 + len)?;
    *at += 2 + len;
    String::from_utf8(s.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let records = [
            Record::Namespace {
                name: "ips".into(),
                policy: NamespacePolicy::default(),
                seed_fingerprint: "00ff".into(),
            },
            Record::Batch {
                namespace: "ips".into(),
                payload: vec![1, 2, 3],
            },
            Record::Merge {
                namespace: "x".into(),
                payload: vec![],
            },
        ];
        for r in &records {
            let bytes = encode(r);
            assert_eq!(&decode(&bytes).unwrap(), r);
            for cut in 0..5.min(bytes.len()) {
                assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut wrong = encode(&records[0]);
        wrong[1] = 9;
        assert!(decode(&wrong).unwrap_err().to_string().contains("upgrade"));
    }
}
