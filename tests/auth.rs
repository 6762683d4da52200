//! Access control over real sockets: every role against every RPC, wrong
//! namespaces, missing and unknown tokens, TLS and mutual TLS, and keyed
//! hashing per namespace.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{TestServer, APRIL_1, DAY};
use sketchd::auth::{Grant, Namespaces, Role, Secret, TlsConfig, TokenTable};
use sketchd::client::{BatchBuilder, Client, ClientOptions, ClientTls, Observation};
use sketchd::config::ServerConfig;
use sketchd::pb;
use sketchd::query::Scope;
use sketchd::sketch::HashSeed;
use sketchd::time::DayWindow;
use tonic::Code;

const COLLECTOR: &str = "collector-token-0123456789";
const READER: &str = "reader-token-0123456789";
const PEER: &str = "peer-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const NS_ADMIN: &str = "ns-admin-token-0123456789";

fn grant(role: Role, names: &[&str]) -> Grant {
    let list: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    Grant {
        role,
        namespaces: Namespaces::parse(&list).unwrap(),
    }
}

fn tokens() -> TokenTable {
    let mut t = TokenTable::new();
    for (name, token, role, names) in [
        ("collector-eu", COLLECTOR, Role::Collector, &["ips"][..]),
        ("dashboard", READER, Role::Reader, &["ips"][..]),
        ("replica", PEER, Role::Peer, &["ips"][..]),
        ("root", ADMIN, Role::Admin, &["*"][..]),
        ("ips-admin", NS_ADMIN, Role::Admin, &["ips"][..]),
    ] {
        t.add(name, &Secret::new(token), grant(role, names))
            .unwrap();
    }
    t
}

async fn client(server: &TestServer, token: Option<&str>) -> Client {
    Client::connect_with(
        &server.url,
        ClientOptions {
            token: token.map(str::to_owned),
            tls: None,
        },
    )
    .await
    .unwrap()
}

fn batch(namespace: &str, sequence: u64, rows: u32) -> pb::IngestRequest {
    let mut b = BatchBuilder::new();
    for i in 0..rows {
        b.push(&Observation {
            ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            unix_seconds: APRIL_1 + i64::from(i % 3) * DAY,
            org: Some("org-a".into()),
            country: Some("DE".into()),
        });
    }
    b.build(namespace, "auth-test", sequence)
}

fn april() -> DayWindow {
    DayWindow::parse("from", "2026-04-01", "to", "2026-05-01").unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Ingest,
    Count,
    Observations,
    GroupBy,
    Compare,
    Retention,
    Overlap,
    Series,
    CreateNamespace,
    GetNamespace,
    ListNamespaces,
    ReloadTables,
    GetTables,
}

const RPCS: [Rpc; 13] = [
    Rpc::Ingest,
    Rpc::Count,
    Rpc::Observations,
    Rpc::GroupBy,
    Rpc::Compare,
    Rpc::Retention,
    Rpc::Overlap,
    Rpc::Series,
    Rpc::CreateNamespace,
    Rpc::GetNamespace,
    Rpc::ListNamespaces,
    Rpc::ReloadTables,
    Rpc::GetTables,
];

/// What an RPC needs on the namespace it names.
enum Needs {
    /// The role on that namespace.
    On(Role),
    /// The role on at least one namespace (the answer is filtered).
    Somewhere(Role),
    /// The role on every namespace.
    Everywhere(Role),
}

impl Rpc {
    fn needs(self) -> Needs {
        match self {
            Rpc::Ingest => Needs::On(Role::Collector),
            Rpc::Count
            | Rpc::Observations
            | Rpc::GroupBy
            | Rpc::Compare
            | Rpc::Retention
            | Rpc::Overlap
            | Rpc::Series
            | Rpc::GetNamespace => Needs::On(Role::Reader),
            Rpc::CreateNamespace => Needs::On(Role::Admin),
            Rpc::ListNamespaces => Needs::Somewhere(Role::Reader),
            Rpc::ReloadTables | Rpc::GetTables => Needs::Everywhere(Role::Admin),
        }
    }

    /// Calls the RPC on `namespace`; `Ok` or the status code.
    async fn call(self, client: &Client, namespace: &str, sequence: u64) -> Result<(), Code> {
        let ns = namespace.to_owned();
        let (from, to) = ("2026-04-01".to_owned(), "2026-05-01".to_owned());
        let (b_from, b_to) = ("2026-05-01".to_owned(), "2026-06-01".to_owned());
        let ips = pb::Metric::Ips as i32;
        let country = pb::GroupKind::Country as i32;
        let mut q = client.query_client();
        let mut admin = client.admin_client();
        let result = match self {
            Rpc::Ingest => client
                .ingest_client()
                .ingest(batch(namespace, sequence, 5))
                .await
                .map(drop),
            Rpc::Count => q
                .count(pb::CountRequest {
                    namespace: ns,
                    metric: ips,
                    from,
                    to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Observations => q
                .observations(pb::ObservationsRequest {
                    namespace: ns,
                    from,
                    to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::GroupBy => q
                .group_by(pb::GroupByRequest {
                    namespace: ns,
                    metric: ips,
                    by: country,
                    from,
                    to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Compare => q
                .compare(pb::CompareRequest {
                    namespace: ns,
                    metric: ips,
                    by: country,
                    a_from: from,
                    a_to: to,
                    b_from,
                    b_to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Retention => q
                .retention(pb::RetentionRequest {
                    namespace: ns,
                    a_from: from,
                    a_to: to,
                    b_from,
                    b_to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Overlap => q
                .overlap(pb::OverlapRequest {
                    namespace: ns,
                    a_from: from,
                    a_to: to,
                    b_from,
                    b_to,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Series => q
                .series(pb::SeriesRequest {
                    namespace: ns,
                    metric: ips,
                    from,
                    to,
                    step: "week".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::CreateNamespace => admin
                .create_namespace(pb::CreateNamespaceRequest {
                    name: ns,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::GetNamespace => admin
                .get_namespace(pb::GetNamespaceRequest { name: ns })
                .await
                .map(drop),
            Rpc::ListNamespaces => admin
                .list_namespaces(pb::ListNamespacesRequest {})
                .await
                .map(drop),
            Rpc::ReloadTables => admin
                .reload_tables(pb::ReloadTablesRequest {})
                .await
                .map(drop),
            Rpc::GetTables => admin.get_tables(pb::GetTablesRequest {}).await.map(drop),
        };
        result.map_err(|s| s.code())
    }
}

fn holds(role: Role, names: &[&str], needs: &Needs, namespace: &str) -> bool {
    match *needs {
        Needs::On(r) => role.grants(r) && (names == ["*"] || names.contains(&namespace)),
        Needs::Somewhere(r) => role.grants(r),
        Needs::Everywhere(r) => role.grants(r) && names == ["*"],
    }
}

async fn auth_server(dir: &std::path::Path) -> TestServer {
    let config = ServerConfig {
        tokens: tokens(),
        ..common::config(dir)
    };
    common::start_with_client(
        config,
        ClientOptions {
            token: Some(ADMIN.into()),
            tls: None,
        },
    )
    .await
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path()).await;
    // The admin's client sets up two namespaces with data.
    for (i, ns) in ["ips", "other"].into_iter().enumerate() {
        server
            .client
            .ingest(batch(ns, i as u64 + 1, 20))
            .await
            .unwrap();
    }

    let roles = [
        (COLLECTOR, Role::Collector, &["ips"][..]),
        (READER, Role::Reader, &["ips"][..]),
        (PEER, Role::Peer, &["ips"][..]),
        (ADMIN, Role::Admin, &["*"][..]),
        (NS_ADMIN, Role::Admin, &["ips"][..]),
    ];
    let mut sequence = 1000;
    let mut checked = 0;
    for (token, role, names) in roles {
        let c = client(&server, Some(token)).await;
        for rpc in RPCS {
            for namespace in ["ips", "other"] {
                sequence += 1;
                let allowed = holds(role, names, &rpc.needs(), namespace);
                let got = rpc.call(&c, namespace, sequence).await;
                if allowed {
                    // Every request is valid, so an allowed call succeeds.
                    assert_eq!(got, Ok(()), "{role} {names:?} {rpc:?} on {namespace}");
                } else {
                    assert_eq!(
                        got,
                        Err(Code::PermissionDenied),
                        "{role} {names:?} {rpc:?} on {namespace}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * 13 * 2);

    for token in [None, Some("unknown-token-0123456789"), Some("x")] {
        let c = client(&server, token).await;
        for rpc in RPCS {
            assert_eq!(
                rpc.call(&c, "ips", 1).await,
                Err(Code::Unauthenticated),
                "{rpc:?} with token {token:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn denied_calls_change_nothing_and_lists_are_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path()).await;
    let admin = &server.client;
    admin.ingest(batch("ips", 1, 10)).await.unwrap();
    admin.ingest(batch("other", 1, 10)).await.unwrap();
    let observations = |ns: &'static str| async move {
        admin
            .observations(ns, &Scope::Global, april())
            .await
            .unwrap()
    };
    assert_eq!(observations("ips").await, 10);
    assert_eq!(observations("other").await, 10);

    let collector = client(&server, Some(COLLECTOR)).await;
    let reader = client(&server, Some(READER)).await;
    let nobody = client(&server, None).await;
    for (c, ns, code) in [
        (&collector, "other", Code::PermissionDenied),
        (&collector, "brand-new", Code::PermissionDenied),
        (&reader, "ips", Code::PermissionDenied),
        (&nobody, "ips", Code::Unauthenticated),
    ] {
        let err = c
            .ingest_client()
            .ingest(batch(ns, 2, 30))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{ns}");
        assert!(!err.message().contains("token-0123456789"));
    }
    assert_eq!(observations("ips").await, 10);
    assert_eq!(observations("other").await, 10);
    // The refused batch did not create its namespace on first use.
    let names = |r: pb::ListNamespacesResponse| -> Vec<String> {
        r.namespaces.into_iter().map(|n| n.name).collect()
    };
    let all = admin
        .admin_client()
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(all), ["ips", "other"]);
    // A reader of "ips" sees only "ips".
    let seen = reader
        .admin_client()
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(seen), ["ips"]);
    // The allowed collector's batch lands.
    collector.ingest(batch("ips", 3, 30)).await.unwrap();
    assert_eq!(observations("ips").await, 40);

    // Health stays open without a token.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop((collector, reader, nobody));
    server.stop().await;
}

#[test]
fn tokens_never_appear_in_debug_output() {
    let config = ServerConfig {
        tokens: tokens(),
        ..ServerConfig::default()
    };
    let text = format!("{config:?}");
    for token in [COLLECTOR, READER, PEER, ADMIN, NS_ADMIN] {
        assert!(!text.contains(token), "{token} in {text}");
    }
    assert!(text.contains("collector-eu"));
    let options = ClientOptions {
        token: Some(ADMIN.into()),
        tls: None,
    };
    assert!(!format!("{options:?}").contains(ADMIN));
}

/// A CA, a server certificate for localhost and a client certificate.
struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn new_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sketchd test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["collector-eu".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca_pem: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn tls_options(pki: &Pki, with_client_cert: bool, token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(str::to_owned),
        tls: Some(ClientTls {
            ca_cert_pem: Some(pki.ca_pem.clone().into_bytes()),
            client_cert_pem: with_client_cert.then(|| pki.client_cert.clone().into_bytes()),
            client_key_pem: with_client_cert.then(|| pki.client_key.clone().into_bytes()),
            domain: Some("localhost".into()),
        }),
    }
}

/// An RPC's outcome: `Ok`, or any error (refused at connect or at call).
async fn observations_via(url: &str, options: ClientOptions) -> Result<u64, String> {
    let client = Client::connect_with(url, options)
        .await
        .map_err(|e| e.to_string())?;
    client
        .observations("ips", &Scope::Global, april())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn tls_with_tokens() {
    let pki = new_pki();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert_pem: pki.server_cert.clone().into_bytes(),
            key_pem: pki.server_key.clone().into_bytes(),
            client_ca_pem: None,
        }),
        tokens: tokens(),
        ..common::config(dir.path())
    };
    let server = common::start_with_client(config, tls_options(&pki, false, Some(ADMIN))).await;
    assert!(server.url.starts_with("https://"));
    server.client.ingest(batch("ips", 1, 7)).await.unwrap();
    assert_eq!(
        observations_via(&server.url, tls_options(&pki, false, Some(READER))).await,
        Ok(7)
    );
    // An http:// URL is dialled with TLS when TLS options are given.
    let http_url = server.url.replacen("https://", "http://", 1);
    assert_eq!(
        observations_via(&http_url, tls_options(&pki, false, Some(READER))).await,
        Ok(7)
    );
    // Plain text against the TLS server fails.
    let plain = ClientOptions {
        token: Some(READER.into()),
        tls: None,
    };
    assert!(observations_via(&http_url, plain).await.is_err());
    // A client that does not trust the server's CA fails.
    let mut untrusting = tls_options(&pki, false, Some(READER));
    untrusting.tls.as_mut().unwrap().ca_cert_pem = Some(new_pki().ca_pem.into_bytes());
    assert!(observations_via(&server.url, untrusting).await.is_err());
    // TLS does not replace the token.
    let tokenless = Client::connect_with(&server.url, tls_options(&pki, false, None))
        .await
        .unwrap();
    match tokenless.observations("ips", &Scope::Global, april()).await {
        Err(sketchd::client::ClientError::Status(s)) => {
            assert_eq!(s.code(), Code::Unauthenticated)
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = new_pki();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert_pem: pki.server_cert.clone().into_bytes(),
            key_pem: pki.server_key.clone().into_bytes(),
            client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        }),
        ..common::config(dir.path())
    };
    assert!(config.authenticates());
    let server = common::start_with_client(config, tls_options(&pki, true, None)).await;
    server.client.ingest(batch("ips", 1, 3)).await.unwrap();
    assert_eq!(
        observations_via(&server.url, tls_options(&pki, true, None)).await,
        Ok(3)
    );
    assert!(
        observations_via(&server.url, tls_options(&pki, false, None))
            .await
            .is_err()
    );
    // A certificate from another CA is refused too.
    let stranger = new_pki();
    let mut foreign = tls_options(&pki, true, None);
    let tls = foreign.tls.as_mut().unwrap();
    tls.client_cert_pem = Some(stranger.client_cert.into_bytes());
    tls.client_key_pem = Some(stranger.client_key.into_bytes());
    assert!(observations_via(&server.url, foreign).await.is_err());
    server.stop().await;
}

fn seeded(dir: &std::path::Path, secret: Option<&[u8]>) -> ServerConfig {
    let mut config = common::config(dir);
    if let Some(secret) = secret {
        config
            .seeds
            .by_namespace
            .insert("ips".into(), HashSeed::from_secret(secret));
    }
    config
}

async fn fingerprint(server: &TestServer, ns: &str) -> String {
    server
        .client
        .admin_client()
        .get_namespace(pb::GetNamespaceRequest { name: ns.into() })
        .await
        .unwrap()
        .into_inner()
        .seed_fingerprint
}

#[tokio::test]
async fn keyed_namespaces_hash_with_their_seed_and_refuse_another() {
    let secret_a: &[u8] = b"namespace-ips-secret-a";
    let secret_b: &[u8] = b"namespace-ips-secret-b";
    let mut counts = Vec::new();
    let mut fingerprints = Vec::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, secret) in dirs.iter().zip([None, Some(secret_a), Some(secret_b)]) {
        let server = common::start_with(seeded(dir.path(), secret)).await;
        server.client.ingest(batch("ips", 1, 500)).await.unwrap();
        server.client.ingest(batch("plain", 1, 500)).await.unwrap();
        let c = server
            .client
            .count("ips", sketchd::query::Metric::Ips, &Scope::Global, april())
            .await
            .unwrap();
        counts.push(c.estimate.value);
        fingerprints.push((
            fingerprint(&server, "ips").await,
            fingerprint(&server, "plain").await,
        ));
        server.stop().await;
    }
    // The same rows count the same (exact below 2^(p-4) elements)...
    assert!(counts.iter().all(|&c| c == 500.0), "{counts:?}");
    // ...but hash differently: three fingerprints for "ips", one for "plain".
    assert_ne!(fingerprints[0].0, fingerprints[1].0);
    assert_ne!(fingerprints[1].0, fingerprints[2].0);
    assert_ne!(fingerprints[0].0, fingerprints[2].0);
    assert!(fingerprints.iter().all(|f| f.1 == fingerprints[0].1));
    assert_eq!(
        fingerprints[1].0,
        format!("{:016x}", HashSeed::from_secret(secret_a).fingerprint())
    );

    // Restarting the data dir of secret A with secret B, or with none, is
    // refused naming the namespace.
    for wrong in [Some(secret_b), None] {
        let err = match common::try_open_engine(&seeded(dirs[1].path(), wrong)).await {
            Ok(_) => panic!("opened with the wrong seed"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("\"ips\""), "{err}");
        assert!(err.contains("fingerprint"), "{err}");
        assert!(!err.contains("namespace-ips-secret"), "{err}");
    }
    // The right seed opens it, and the data is there.
    let server = common::start_with(seeded(dirs[1].path(), Some(secret_a))).await;
    let n = server
        .client
        .observations("ips", &Scope::Global, april())
        .await
        .unwrap();
    assert_eq!(n, 500);
    server.stop().await;
}

fn sketchd() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sketchd"));
    cmd.env_remove("SKETCHD_TOKEN");
    cmd
}

#[test]
fn serve_refuses_a_remote_listen_address_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = sketchd()
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--allow-insecure-remote"), "{stderr}");
}

#[test]
fn serve_says_it_listens_on_loopback_only_without_auth() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = sketchd()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("SKETCHD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = false;
    for line in stderr.lines().take(50) {
        let line = line.unwrap();
        if line.contains("no authentication configured: listening on loopback only") {
            seen = true;
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen);
}

#[tokio::test]
async fn cli_sends_the_token_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path()).await;
    server.client.ingest(batch("ips", 1, 12)).await.unwrap();
    let token_file = dir.path().join("reader.token");
    std::fs::write(&token_file, format!("{READER}\n")).unwrap();
    let url = server.url.clone();
    let run = move |token_file: Option<std::path::PathBuf>, env: Option<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = sketchd();
            cmd.args([
                "query",
                "observations",
                "--server",
                &url,
                "--namespace",
                "ips",
                "--from",
                "2026-04-01",
                "--to",
                "2026-05-01",
            ]);
            if let Some(f) = token_file {
                cmd.arg("--token-file").arg(f);
            }
            if let Some(t) = env {
                cmd.env("SKETCHD_TOKEN", t);
            }
            cmd.output().unwrap()
        })
    };
    let out = run(Some(token_file), None).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("12"),
        "{out:?}"
    );
    let out = run(None, Some(READER)).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = run(None, None).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Bearer"), "{stderr}");
    server.stop().await;
}
