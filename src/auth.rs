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
//!
//! The data both steps work on (roles, grants, the token table, the TLS
//! material) is defined in [`crate::access`], below `config`, and
//! re-exported here.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

pub use crate::access::{
    Grant, Namespaces, Principal, Role, Secret, TlsConfig, TokenTable, MIN_TOKEN_LEN,
};
use crate::error::quoted;

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
