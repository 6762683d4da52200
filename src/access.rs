//! The plain data of access control, on both sides of a connection: roles,
//! the namespaces a grant covers, tokens (kept as SHA-256 digests) and the
//! principals they stand for, the server's TLS material, and a client's
//! token and TLS options.
//!
//! `config` builds these from the file; `auth` uses them to authenticate
//! and authorise requests, `client` to reach a server. Nothing here knows
//! of requests or connections (the tonic side of the TLS types stays in
//! `auth` and `client`), so `config` can hold them without importing
//! anything above it.
//!
//! Invariants: a token is never printed by `Debug` or kept in clear once
//! added to a [`TokenTable`] (only its digest is kept); digests are compared
//! in constant time against every entry.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::names::validate_name;

/// What a caller may do. `Admin` implies every other role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `Ingest.Ingest`: send batches.
    Collector,
    /// The `Query` RPCs, `Admin.GetNamespace` and `Admin.ListNamespaces`.
    Reader,
    /// Replication between servers.
    Peer,
    /// The `Admin` RPCs (namespaces, tables, reload), and everything else.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Collector, Role::Reader, Role::Peer, Role::Admin];

    /// Whether holding `self` grants `wanted`.
    pub fn grants(self, wanted: Role) -> bool {
        self == Role::Admin || self == wanted
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Collector => "collector",
            Role::Reader => "reader",
            Role::Peer => "peer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The namespaces a grant covers: all (`"*"`) or a set of names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    Any,
    Named(BTreeSet<String>),
}

impl Namespaces {
    /// Parses a configured list: `["*"]` or namespace names.
    pub fn parse(list: &[String]) -> Result<Namespaces, String> {
        if list.is_empty() {
            return Err("namespaces is empty; list names or \"*\"".into());
        }
        if list.iter().any(|n| n == "*") {
            if list.len() > 1 {
                return Err("\"*\" must stand alone".into());
            }
            return Ok(Namespaces::Any);
        }
        let mut names = BTreeSet::new();
        for name in list {
            validate_name("namespaces", name).map_err(|e| e.to_string())?;
            names.insert(name.clone());
        }
        Ok(Namespaces::Named(names))
    }

    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::Named(names) => names.contains(namespace),
        }
    }
}

/// One role on some namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub namespaces: Namespaces,
}

/// An authenticated caller: the name of its token and what it may do.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal {
    /// The configured name, shown in logs instead of the token.
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether the principal holds `role` (or admin) on `namespace`.
    pub fn may(&self, role: Role, namespace: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.role.grants(role) && g.namespaces.contains(namespace))
    }

    /// Whether the principal holds `role` (or admin) on every namespace.
    pub fn may_everywhere(&self, role: Role) -> bool {
        self.grants
            .iter()
            .any(|g| g.role.grants(role) && g.namespaces == Namespaces::Any)
    }

    /// Whether the principal holds `role` (or admin) on any namespace.
    pub fn may_somewhere(&self, role: Role) -> bool {
        self.grants.iter().any(|g| g.role.grants(role))
    }
}

/// A secret string (a token) read from the configuration. Its `Debug` is
/// redacted; [`Secret::expose`] is the only way to the text.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The configured tokens, kept as SHA-256 digests, each with the principal
/// it stands for. Several entries with the same token merge into one
/// principal holding all their grants.
#[derive(Clone, Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

impl TokenTable {
    pub fn new() -> TokenTable {
        TokenTable::default()
    }

    /// Adds `token` as `name` with `grant`. The token must be at least
    /// [`MIN_TOKEN_LEN`] visible ASCII characters (it travels in a header).
    pub fn add(&mut self, name: &str, token: &Secret, grant: Grant) -> Result<(), String> {
        let text = token.expose();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token of {name:?} is {} characters long; a token has at least \
                 {MIN_TOKEN_LEN} (make one with `openssl rand -hex 24`)",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the token of {name:?} has characters other than visible ASCII (it travels \
                 in a header; make one with `openssl rand -hex 24`)"
            ));
        }
        let digest = digest(text);
        match self.entries.iter_mut().find(|(d, _)| *d == digest) {
            Some((_, principal)) => {
                let merged = Principal {
                    name: principal.name.clone(),
                    grants: principal
                        .grants
                        .iter()
                        .cloned()
                        .chain(std::iter::once(grant))
                        .collect(),
                };
                *principal = Arc::new(merged);
            }
            None => self.entries.push((
                digest,
                Arc::new(Principal {
                    name: name.to_owned(),
                    grants: vec![grant],
                }),
            )),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal of `token`: its digest is compared with every entry in
    /// constant time, without stopping at a match.
    pub fn resolve(&self, token: &str) -> Option<Arc<Principal>> {
        let digest = digest(token);
        let mut found = None;
        for (d, principal) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(_, p)| p))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The server's TLS material, read at start. `Debug` shows no key.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsConfig {
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// How to reach a server that authenticates its callers.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
    /// Speak TLS (an `http://` URL is then dialled as `https://`).
    pub tls: Option<ClientTls>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS options of a client, as PEM bytes.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the server's certificate.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that require one.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// The name to check the server's certificate against (default: the
    /// URL's host).
    pub domain: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_cert", &self.ca_cert_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field(
                "client_key",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("domain", &self.domain)
            .finish()
    }
}
