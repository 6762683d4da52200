//! Every error a person or a client meets, table-driven, against the real
//! server over real sockets: the exact wrong input, and the status code and
//! a stable part of the message (which names the field, file or address,
//! and says what to do). The API's refusals over gRPC; the command line's
//! errors by running the binary, which must print each as one sentence
//! chain on stderr, once, without `Debug` output.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::APRIL_1;
use sketchd::auth::{Grant, Namespaces, Role, Secret, TlsConfig, TokenTable};
use sketchd::client::{BatchBuilder, Client, ClientOptions, ClientTls, Observation};
use sketchd::config::ServerConfig;
use sketchd::pb;
use tonic::{Code, Status};

const NS: &str = "errors";

/// One request of any RPC the table uses.
enum Call {
    Ingest(pb::IngestRequest),
    Count(pb::CountRequest),
}

/// The status of `call` (OK when it succeeded).
async fn status(client: &Client, call: Call) -> Status {
    let result = match call {
        Call::Ingest(r) => client.ingest_client().ingest(r).await.map(|_| ()),
        Call::Count(r) => client.query_client().count(r).await.map(|_| ()),
    };
    match result {
        Ok(()) => Status::ok(""),
        Err(status) => status,
    }
}

/// A batch of `rows` IPv4 rows from 10.0.0.1 at `APRIL_1`.
fn batch(collector: &str, sequence: u64, rows: u32, first_ip: u32) -> pb::IngestRequest {
    let mut b = BatchBuilder::new();
    for i in 0..rows {
        b.push(&Observation {
            ip: std::net::Ipv4Addr::from(0x0a00_0000 + first_ip + i).into(),
            unix_seconds: APRIL_1,
            org: Some("AS64500".into()),
            country: Some("DE".into()),
        });
    }
    b.build(NS, collector, sequence)
}

fn count(namespace: &str, scope: pb::Scope, from: &str, to: &str) -> pb::CountRequest {
    pb::CountRequest {
        namespace: namespace.into(),
        metric: pb::Metric::Ips as i32,
        scope: Some(scope),
        from: from.into(),
        to: to.into(),
        confidence: 0.0,
    }
}

fn country(cc: &str) -> pb::Scope {
    pb::Scope {
        country: cc.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn api_misuse_is_refused_with_a_status_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&dir.path().join("data")).await;
    let client = &server.client;
    // Data to query, and a batch whose id a later case reuses.
    client.ingest(batch("c", 1, 10, 0)).await.unwrap();

    let cases: Vec<(&str, Call, Code, &[&str])> = vec![
        (
            "a client that never sets sequence",
            Call::Ingest(batch("c", 0, 5, 100)),
            Code::InvalidArgument,
            &["invalid sequence", "number batches from 1"],
        ),
        (
            "(namespace, collector, sequence) reused with other rows",
            Call::Ingest(batch("c", 1, 10, 1)),
            Code::AlreadyExists,
            &[
                "collector \"c\" already sent sequence 1 with other rows",
                "nothing of this batch was applied",
                "its own sequence",
            ],
        ),
        (
            "an unknown country in a query",
            Call::Count(count(NS, country("BR"), "2026-04-01", "2026-05-01")),
            Code::NotFound,
            &[
                "scope.country: namespace \"errors\" has no observation of country \"BR\"",
                "GroupBy by country",
            ],
        ),
        (
            "an unknown org in a query",
            Call::Count(count(
                NS,
                pb::Scope {
                    org: "AS6450".into(),
                    ..Default::default()
                },
                "2026-04-01",
                "2026-05-01",
            )),
            Code::NotFound,
            &["scope.org: namespace \"errors\" has no observation of org \"AS6450\""],
        ),
        (
            "an unknown sector in a query",
            Call::Count(count(
                NS,
                pb::Scope {
                    country: "DE".into(),
                    sector: "goverment".into(),
                    ..Default::default()
                },
                "2026-04-01",
                "2026-05-01",
            )),
            Code::NotFound,
            &[
                "scope.sector: namespace \"errors\" has no observation of sector \"goverment\"",
                "check the spelling",
            ],
        ),
        (
            "a known country outside its days is a real zero",
            Call::Count(count(NS, country("DE"), "2026-06-01", "2026-07-01")),
            Code::Ok,
            &[],
        ),
        (
            "a 70 KB value is quoted short",
            Call::Count(count(NS, country("DE"), &"x".repeat(70_000), "2026-05-01")),
            Code::InvalidArgument,
            &[
                "invalid from: \"xxxxxxxx",
                "…\" (70000 bytes) is not a date YYYY-MM-DD",
            ],
        ),
        (
            "a 70 KB country is quoted short",
            Call::Count(count(
                NS,
                country(&"Q".repeat(70_000)),
                "2026-04-01",
                "2026-05-01",
            )),
            Code::InvalidArgument,
            &["invalid scope.country", "(70000 bytes) is not a two-letter"],
        ),
    ];
    for (what, call, code, parts) in cases {
        let got = status(client, call).await;
        assert_eq!(got.code(), code, "{what}: {got:?}");
        for part in parts {
            assert!(
                got.message().contains(part),
                "{what}: {:?} lacks {part:?}",
                got.message()
            );
        }
        assert!(
            got.message().len() <= 1_024,
            "{what}: a message of {} bytes",
            got.message().len()
        );
    }
    server.stop().await;
}

/// A token the CLI cases' token server knows.
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// A server that requires tokens (and knows [`ADMIN_TOKEN`]).
async fn token_server(dir: &Path) -> common::TestServer {
    let mut tokens = TokenTable::new();
    let grant = Grant {
        role: Role::Admin,
        namespaces: Namespaces::parse(&["*".to_owned()]).unwrap(),
    };
    tokens
        .add("root", &Secret::new(ADMIN_TOKEN), grant)
        .unwrap();
    let config = ServerConfig {
        tokens,
        ..common::config(dir)
    };
    let options = ClientOptions {
        token: Some(ADMIN_TOKEN.into()),
        tls: None,
    };
    common::start_with_client(config, options).await
}

/// A server that speaks TLS only, with a certificate of a fresh CA.
async fn tls_server(dir: &Path) -> common::TestServer {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            client_ca_pem: None,
        }),
        ..common::config(dir)
    };
    let options = ClientOptions {
        token: None,
        tls: Some(ClientTls {
            ca_cert_pem: Some(ca.pem().into_bytes()),
            domain: Some("localhost".into()),
            ..Default::default()
        }),
    };
    common::start_with_client(config, options).await
}

/// Runs `sketchd ARGS`, killed if it runs past a minute (the old default
/// retried an unreachable server for ten).
async fn sketchd(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let child = Command::new(env!("CARGO_BIN_EXE_sketchd"))
            .args(&args)
            .env("SKETCHD_LOG", "error")
            .env_remove("SKETCHD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output().unwrap()));
        match wait.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out,
            Err(_) => {
                // SAFETY: signals the child this test started, by its id.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!("sketchd {args:?} still runs after 60 s");
            }
        }
    })
    .await
    .unwrap()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Checks one failed run: one line on stderr, `error: ` and a sentence
/// chain with every wanted part, no `Debug` output, no part said twice.
fn assert_one_clean_error(what: &str, out: &Output, parts: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded; stderr {stderr}");
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "{what}: not one error line: {stderr:?}"
    );
    for part in parts {
        assert!(stderr.contains(part), "{what}: {stderr:?} lacks {part:?}");
    }
    for debug in ["Error(", "Os {", "kind: ", "Some(", "((", "code: '"] {
        assert!(
            !stderr.contains(debug),
            "{what}: Debug output in {stderr:?}"
        );
    }
    for piece in stderr.trim_end().split([':', ';', '(', ')']) {
        let piece = piece.trim();
        if piece.len() >= 16 {
            assert_eq!(
                stderr.matches(piece).count(),
                1,
                "{what}: {piece:?} said twice in {stderr:?}"
            );
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn cli_errors_are_one_sentence_with_a_remedy() {
    let dir = tempfile::tempdir().unwrap();
    // Namespaces created on first use refuse rows older than three years.
    let mut config = common::config(&dir.path().join("data"));
    config.default_policy.max_age_days = 3 * 366;
    let server = common::start_with(config).await;
    server.client.ingest(batch("c", 1, 10, 0)).await.unwrap();
    let tls = tls_server(&dir.path().join("tls")).await;
    let tokens = token_server(&dir.path().join("tokens")).await;
    let free = free_port();
    let count = |server: &str, namespace: &str| {
        strings(&[
            "query",
            "count",
            "--server",
            server,
            "--namespace",
            namespace,
            "--metric",
            "ips",
            "--from",
            "2026-04-01",
            "--to",
            "2026-05-01",
        ])
    };
    let ingest = |server: &str, file: &str| {
        strings(&["ingest", "--server", server, "--namespace", NS, file])
    };
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = file("good.csv", "time,ip\n1775001600,1.2.3.4\n");
    let old = file(
        "old.csv",
        "time,ip\n1775001600,1.2.3.4\n1554906150,1.2.3.5\n",
    );
    let millis = file(
        "millis.csv",
        &format!("time,ip\n{}000,1.2.3.4\n", common::NOW),
    );
    let header = file("header.csv", "when,addr\n1775001600,1.2.3.4\n");
    let short_token = file("short.token", "short\n");
    let short_config = file(
        "short.toml",
        &format!(
            "[[auth.tokens]]\nname = \"collector-1\"\ntoken_file = {short_token:?}\nrole = \
             \"collector\"\nnamespaces = [\"*\"]\n"
        ),
    );
    let nowhere = format!("http://127.0.0.1:{free}");
    let tls_http = tls.url.replacen("https://", "http://", 1);
    let data = server.data_dir.display().to_string();
    let nope = dir.path().join("nope.toml").display().to_string();

    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "no server",
            count(&nowhere, NS),
            vec![
                format!("cannot connect to {nowhere}: nothing is listening there"),
                format!("is `sketchd serve` running on 127.0.0.1:{free}?"),
            ],
        ),
        (
            "ingest without a server fails at once",
            ingest(&nowhere, &good),
            vec![
                "nothing is listening there".into(),
                "pass --wait-for-server 30s".into(),
            ],
        ),
        (
            "data directory in use",
            strings(&["serve", "--listen", "127.0.0.1:0", "--data", &data]),
            vec![format!(
                "the data directory {data} is in use by another sketchd"
            ), "pass another --data".into()],
        ),
        (
            "missing configuration file",
            strings(&["serve", "--config", &nope]),
            vec![format!("the configuration file {nope} does not exist; pass --config")],
        ),
        (
            "a token file too short",
            strings(&["serve", "--listen", "127.0.0.1:0", "--config", &short_config]),
            vec!["the token of \"collector-1\" is 5 characters long; a token has at least 16".into()],
        ),
        (
            "http:// to a TLS port",
            count(&tls_http, NS),
            vec![
                format!("the connection to {tls_http} failed"),
                "if it serves TLS, use https:// and --ca-cert FILE".into(),
            ],
        ),
        (
            "https:// without --ca-cert",
            count(&tls.url, NS),
            vec![
                "needs the CA certificate that signed its certificate".into(),
                "pass --ca-cert FILE".into(),
            ],
        ),
        (
            "a server error, said once",
            count(&server.url, "nosuch"),
            vec!["error: namespace \"nosuch\" does not exist\n".into()],
        ),
        (
            "a missing token",
            count(&tokens.url, NS),
            vec!["pass --token-file FILE or set SKETCHD_TOKEN".into()],
        ),
        (
            "a missing token, ingesting",
            ingest(&tokens.url, &good),
            vec![
                "was refused".into(),
                "pass --token-file FILE or set SKETCHD_TOKEN".into(),
            ],
        ),
        (
            "a CSV header without the time column",
            ingest(&server.url, &header),
            vec![
                format!("{header}:1: field time: the header has no such column"),
                "its columns: \"when\", \"addr\"".into(),
                "time and ip".into(),
            ],
        ),
        (
            "a row too old",
            ingest(&server.url, &old),
            vec![
                format!("{old}:3: invalid unix_seconds: 1554906150 (2019-04-10T14:22:30Z) is older than namespace \"errors\" accepts"),
                "policy.max_age_days".into(),
            ],
        ),
        (
            "millisecond timestamps",
            ingest(&server.url, &millis),
            vec![
                format!("{millis}:2: invalid unix_seconds"),
                "it looks like milliseconds: send unix seconds".into(),
            ],
        ),
        (
            "an unknown org",
            {
                let mut args = count(&server.url, NS);
                args.extend(strings(&["--scope", "org:AS1"]));
                args
            },
            vec!["scope.org: namespace \"errors\" has no observation of org \"AS1\"".into()],
        ),
        (
            "a chart that cannot be written fails before the run",
            strings(&["demo", "--chart", "/nonexistent/x.svg"]),
            vec!["--chart /nonexistent/x.svg: the directory /nonexistent does not exist".into()],
        ),
    ];
    for (what, args, parts) in cases {
        let out = sketchd(args).await;
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_one_clean_error(what, &out, &parts);
    }

    // What works: HOST:PORT without a scheme, and the good file.
    let out = sketchd(count(&server.addr.to_string(), NS)).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("distinct ips"));
    let out = sketchd(ingest(&server.addr.to_string(), &good)).await;
    assert!(out.status.success(), "{out:?}");

    // A closed stdout (`| head`) ends the command quietly with status 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sketchd"))
        .args(strings(&[
            "query",
            "series",
            "--server",
            &server.url,
            "--namespace",
            NS,
            "--metric",
            "ips",
            "--from",
            "2026-01-01",
            "--to",
            "2026-12-01",
        ]))
        .env("SKETCHD_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Completions for a shell.
    let out = sketchd(strings(&["completions", "bash"])).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("_sketchd()"));

    tokens.stop().await;
    tls.stop().await;
    server.stop().await;
}

/// A batch refused for any reason creates nothing: its namespace is not
/// listed afterwards and can still be created with another policy.
#[tokio::test]
async fn a_refused_batch_creates_no_namespace() {
    let dir = tempfile::tempdir().unwrap();
    // Namespaces created on first use refuse rows older than three years.
    let mut config = common::config(dir.path());
    config.default_policy.max_age_days = 3 * 366;
    let server = common::start_with(config).await;
    let client = &server.client;
    let fresh = |mut r: pb::IngestRequest| {
        r.namespace = "never-created".into();
        r
    };
    let mut too_old = fresh(batch("c", 1, 3, 0));
    too_old.unix_seconds[1] = 0;
    let mut bad_org = fresh(batch("c", 2, 3, 0));
    bad_org.org_index[2] = 99;
    let sequence_zero = fresh(batch("c", 0, 3, 0));
    for bad in [too_old, bad_org, sequence_zero] {
        let refused = client.ingest(bad).await.unwrap_err();
        assert!(
            matches!(&refused, sketchd::client::ClientError::Status(s) if s.code() == Code::InvalidArgument),
            "{refused}"
        );
    }
    let listed = client
        .admin_client()
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.namespaces.iter().all(|n| n.name != "never-created"),
        "{listed:?}"
    );
    let created = client
        .admin_client()
        .create_namespace(pb::CreateNamespaceRequest {
            name: "never-created".into(),
            policy: Some(pb::NamespacePolicy {
                precision: 12,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "never-created");
    // A good batch for a new namespace still creates it.
    let mut good = batch("c", 3, 3, 0);
    good.namespace = "created-by-a-batch".into();
    client.ingest(good).await.unwrap();
    let listed = client
        .admin_client()
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .namespaces
        .iter()
        .any(|n| n.name == "created-by-a-batch"));
    server.stop().await;
}
