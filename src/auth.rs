//! Access control: TLS material, bearer tokens, roles per namespace.
//!
//! Authentication and authorisation are two steps:
//!
//! 1. [`Authenticate`], a tonic interceptor put in front of every guarded
//!    service (Ingest, Query, Admin; health and reflection stay open), reads
//!    `authorization: Bearer <token>`, resolves it in the [`TokenTable`] and
//!    stores the resulting [`Caller`] in the request's extensions. A missing
//!    or unknown token is `UNAUTHENTICATED` before the request is decoded.
//!    With no tokens configured every caller is [`Caller::Unrestricted`]
//!    (mutual TLS, when configured, has then already authenticated the
//!    connection).
//! 2. Each RPC handler, before any domain code runs, calls [`authorize`]
//!    with the namespace it touches and the [`Role`] it needs (or
//!    [`authorize_everywhere`] for namespace-less RPCs); a caller without
//!    that role on that namespace gets `PERMISSION_DENIED`.
//!
//! Invariants: a token is never logged, printed by `Debug` or kept in
//! memory in clear after start (only its SHA-256 digest is kept); digests
//! are compared in constant time against every configured token. A request
//! that reaches [`authorize`] without having passed [`Authenticate`] is
//! refused (fail closed), so a new service cannot be left open by mistake.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::catalog::validate_name;
use crate::error::quoted;

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

/// Who is calling, as resolved by [`Authenticate`].
#[derive(Clone, Debug)]
pub enum Caller {
    /// No tokens are configured: everything is allowed.
    Unrestricted,
    Token(Arc<Principal>),
}

impl Caller {
    pub fn may(&self, role: Role, namespace: &str) -> bool {
        match self {
            Caller::Unrestricted => true,
            Caller::Token(p) => p.may(role, namespace),
        }
    }

    pub fn may_everywhere(&self, role: Role) -> bool {
        match self {
            Caller::Unrestricted => true,
            Caller::Token(p) => p.may_everywhere(role),
        }
    }

    pub fn may_somewhere(&self, role: Role) -> bool {
        match self {
            Caller::Unrestricted => true,
            Caller::Token(p) => p.may_somewhere(role),
        }
    }

    /// The name for logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Unrestricted => "anonymous",
            Caller::Token(p) => &p.name,
        }
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
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config = ServerTlsConfig::new().identity(Identity::from_pem(
            self.cert_pem.clone(),
            self.key_pem.clone(),
        ));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca.clone())),
            None => config,
        }
    }

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

/// The interceptor that authenticates every request of a guarded service.
///
/// A service is guarded by wrapping its generated server:
/// `tonic::service::interceptor::InterceptedService::new(XServer::new(svc), auth.clone())`
/// (see `server::run`); its handlers then call [`authorize`].
#[derive(Clone, Debug)]
pub struct Authenticate {
    tokens: Arc<TokenTable>,
}

impl Authenticate {
    pub fn new(tokens: TokenTable) -> Authenticate {
        Authenticate {
            tokens: Arc::new(tokens),
        }
    }

    /// The caller behind `metadata`, or `UNAUTHENTICATED`.
    fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let value = metadata
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        self.caller_for(value).map_err(Status::unauthenticated)
    }

    /// The caller presenting `authorization` (the value of an
    /// `authorization` header or metadata entry, if any), or why not: the
    /// one check of gRPC calls and of the web page's requests.
    pub fn caller_for(&self, authorization: Option<&str>) -> Result<Caller, &'static str> {
        if self.tokens.is_empty() {
            return Ok(Caller::Unrestricted);
        }
        let Some(value) = authorization else {
            return Err("missing \"authorization: Bearer <token>\" metadata");
        };
        let token = {
            let (scheme, token) = value
                .split_once(' ')
                .ok_or("the authorization metadata is not \"Bearer <token>\"")?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err("the authorization metadata is not \"Bearer <token>\"");
            }
            token.trim()
        };
        match self.tokens.resolve(token) {
            Some(principal) => Ok(Caller::Token(principal)),
            None => {
                tracing::warn!("request with an unknown bearer token refused");
                Err("unknown bearer token")
            }
        }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.caller(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller [`Authenticate`] stored in `request`.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        tracing::error!("a guarded RPC was reached without the authentication interceptor");
        Status::internal("the service has no authentication layer")
    })
}

/// Checks that the caller of `request` holds `role` on `namespace`:
/// `PERMISSION_DENIED` if not. Call it first in each handler.
pub fn authorize<T>(request: &Request<T>, namespace: &str, role: Role) -> Result<(), Status> {
    let caller = caller(request)?;
    if caller.may(role, namespace) {
        return Ok(());
    }
    tracing::warn!(
        caller = caller.name(),
        namespace,
        %role,
        "permission denied"
    );
    Err(Status::permission_denied(format!(
        "{:?} may not do this on namespace {} (needs role {role})",
        caller.name(),
        quoted(namespace)
    )))
}

/// Checks that the caller holds `role` on every namespace (`"*"`), for
/// RPCs that concern the whole server (table reloads).
pub fn authorize_everywhere<T>(request: &Request<T>, role: Role) -> Result<(), Status> {
    let caller = caller(request)?;
    if caller.may_everywhere(role) {
        return Ok(());
    }
    tracing::warn!(caller = caller.name(), %role, "permission denied (server-wide)");
    Err(Status::permission_denied(format!(
        "{:?} may not do this (needs role {role} on namespaces [\"*\"])",
        caller.name()
    )))
}

/// Checks that the caller holds `role` on at least one namespace and
/// returns it, so that the handler can filter what it shows (listing
/// namespaces).
pub fn authorize_somewhere<T>(request: &Request<T>, role: Role) -> Result<Caller, Status> {
    let caller = caller(request)?;
    if caller.may_somewhere(role) {
        return Ok(caller.clone());
    }
    tracing::warn!(caller = caller.name(), %role, "permission denied (no namespace)");
    Err(Status::permission_denied(format!(
        "{:?} may not do this (needs role {role} on some namespace)",
        caller.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn grant(role: Role, names: &[&str]) -> Grant {
        let list: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Grant {
            role,
            namespaces: Namespaces::parse(&list).unwrap(),
        }
    }

    fn table() -> TokenTable {
        let mut t = TokenTable::new();
        t.add(
            "eu",
            &Secret::new("collector-token-0123456789"),
            grant(Role::Collector, &["ips"]),
        )
        .unwrap();
        t.add(
            "eu",
            &Secret::new("collector-token-0123456789"),
            grant(Role::Reader, &["ips-test"]),
        )
        .unwrap();
        t.add(
            "root",
            &Secret::new("admin-token-0123456789"),
            grant(Role::Admin, &["*"]),
        )
        .unwrap();
        t
    }

    fn request(auth: &Authenticate, header: Option<&str>) -> Result<Request<()>, Status> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        auth.clone().call(r)
    }

    #[test]
    fn roles_and_namespaces() {
        let t = table();
        let eu = t.resolve("collector-token-0123456789").unwrap();
        assert_eq!(eu.grants.len(), 2, "same token merges grants");
        assert!(eu.may(Role::Collector, "ips"));
        assert!(!eu.may(Role::Collector, "ips-test"));
        assert!(eu.may(Role::Reader, "ips-test"));
        assert!(!eu.may(Role::Reader, "ips"));
        assert!(!eu.may(Role::Admin, "ips"));
        assert!(!eu.may_everywhere(Role::Collector));
        assert!(eu.may_somewhere(Role::Reader));
        assert!(!eu.may_somewhere(Role::Peer));
        let root = t.resolve("admin-token-0123456789").unwrap();
        for role in Role::ALL {
            assert!(root.may(role, "anything"));
            assert!(root.may_everywhere(role));
        }
        assert!(t.resolve("admin-token-012345678").is_none());
        assert!(t.resolve("").is_none());
    }

    #[test]
    fn namespace_lists() {
        assert_eq!(Namespaces::parse(&["*".into()]), Ok(Namespaces::Any));
        assert!(Namespaces::parse(&[]).is_err());
        assert!(Namespaces::parse(&["*".into(), "a".into()]).is_err());
        assert!(Namespaces::parse(&["bad name".into()]).is_err());
    }

    #[test]
    fn short_or_odd_tokens_are_refused() {
        let mut t = TokenTable::new();
        assert!(t
            .add("x", &Secret::new("short"), grant(Role::Reader, &["*"]))
            .is_err());
        assert!(t
            .add(
                "x",
                &Secret::new("has a space in the middle"),
                grant(Role::Reader, &["*"])
            )
            .is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn interceptor_codes() {
        let auth = Authenticate::new(table());
        assert_eq!(
            request(&auth, None).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            request(&auth, Some("Bearer nope-nope-nope-nope"))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            request(&auth, Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l"))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        let r = request(&auth, Some("bearer collector-token-0123456789")).unwrap();
        authorize(&r, "ips", Role::Collector).unwrap();
        assert_eq!(
            authorize(&r, "other", Role::Collector).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            authorize(&r, "ips", Role::Admin).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            authorize_everywhere(&r, Role::Collector)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        authorize_somewhere(&r, Role::Reader).unwrap();

        let open = Authenticate::new(TokenTable::new());
        let r = request(&open, None).unwrap();
        authorize(&r, "ips", Role::Admin).unwrap();
        authorize_everywhere(&r, Role::Admin).unwrap();
    }

    #[test]
    fn unauthenticated_requests_fail_closed() {
        let r = Request::new(());
        assert_eq!(
            authorize(&r, "ips", Role::Reader).unwrap_err().code(),
            Code::Internal
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = table();
        let text = format!("{t:?} {:?}", Secret::new("collector-token-0123456789"));
        assert!(!text.contains("collector-token"), "{text}");
        assert!(!text.contains("admin-token"), "{text}");
        assert!(text.contains("root"), "{text}");
        let tls = TlsConfig {
            cert_pem: b"CERT".to_vec(),
            key_pem: b"PRIVATE KEY MATERIAL".to_vec(),
            client_ca_pem: None,
        };
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }
}
