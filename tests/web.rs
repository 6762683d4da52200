//! The report page over real HTTP against a server holding a generated
//! world: its JSON with the gRPC rules of access (401, 403), and the page
//! itself in a real headless browser (Debian's `chromium`): it loads, asks
//! the API, renders the report and the chart, and the numbers it shows are
//! the exact truth. Without chromium the browser part is skipped with a
//! reason, unless CI=true, where it fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::world::{self, window, World, CUTOFF};
use common::TestServer;
use serde_json::Value;
use sketchd::attribution::TableFiles;
use sketchd::auth::{Grant, Namespaces, Role, Secret, TokenTable};
use sketchd::client::ClientOptions;
use sketchd::config::ServerConfig;

const NS: &str = "study";
const READER: &str = "reader-token-0123456789";
const OTHER: &str = "other-reader-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";

fn tokens() -> TokenTable {
    let mut t = TokenTable::new();
    for (name, token, role, ns) in [
        ("analyst", READER, Role::Reader, NS),
        ("elsewhere", OTHER, Role::Reader, "other"),
        ("root", ADMIN, Role::Admin, "*"),
    ] {
        let grant = Grant {
            role,
            namespaces: Namespaces::parse(&[ns.to_owned()]).unwrap(),
        };
        t.add(name, &Secret::new(token), grant).unwrap();
    }
    t
}

async fn loaded(dir: &Path) -> (TestServer, World) {
    let world = world::generate(100, 0x5eed_0022);
    let orgs = dir.join("orgs.csv");
    world.write_orgs(&orgs);
    let config = ServerConfig {
        tokens: tokens(),
        tables: TableFiles {
            orgs: Some(orgs),
            ..TableFiles::default()
        },
        ..common::config(&dir.join("data"))
    };
    let options = ClientOptions {
        token: Some(ADMIN.into()),
        tls: None,
    };
    let server = common::start_with_client(config, options).await;
    world.load(&server.client, NS).await;
    (server, world)
}

/// One GET; (status, body).
async fn get(addr: SocketAddr, target: &str, token: Option<&str>) -> (u16, String) {
    let target = target.to_owned();
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(conn, "GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    })
    .await
    .unwrap()
}

fn study_query() -> String {
    format!(
        "namespace={NS}&a_from=2026-04-01&a_to=2026-05-01&b_from=2026-09-18&b_to=2026-10-18\
         &cutoff={}&countries=US,DE,GB&sort=change",
        world::day(CUTOFF)
    )
}

#[tokio::test]
async fn the_page_shows_the_study_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (server, world) = loaded(dir.path()).await;
    let addr = server.web_addr;
    let (a, b) = (window(0, 30), window(170, 200));
    let (before, after) = (window(0, CUTOFF), window(CUTOFF, 200));

    // The page is open; its data needs a reader token of the namespace.
    let (status, page) = get(addr, "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("sketchd report") && !page.contains("http://"));
    let report = format!("/api/report?{}", study_query());
    assert_eq!(get(addr, &report, None).await.0, 401);
    assert_eq!(get(addr, &report, Some("not-a-token-at-all")).await.0, 401);
    let (status, body) = get(addr, &report, Some(OTHER)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(addr, "/api/namespaces", Some(OTHER)).await;
    assert_eq!((status, body.contains(NS)), (200, false), "{body}");
    let (status, body) = get(addr, "/api/namespaces", Some(READER)).await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["namespaces"][0]["name"], NS);
    assert_eq!(
        listed["namespaces"][0]["end_day"],
        world::day(200).to_string()
    );

    // The report's JSON: exact figures equal the truth.
    let (status, body) = get(addr, &report, Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    let retention = |v: &Value| (v["in_a"].as_u64().unwrap(), v["in_both"].as_u64().unwrap());
    assert_eq!(
        retention(&r["global"]["org_retention"]),
        world.retention(a, b, None, None)
    );
    assert_eq!(
        retention(&r["cutoff"]["global"]["org_retention"]),
        world.retention(before, after, None, None)
    );
    let countries: Vec<&str> = r["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["country"].as_str().unwrap())
        .collect();
    assert_eq!(countries.len(), 3);
    // Bad input is a 400 naming the parameter.
    let (status, body) = get(
        addr,
        &report.replace("sort=change", "sort=size"),
        Some(READER),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid sort"), "{body}");
    let (status, body) = get(
        addr,
        &format!("/api/chart?{}&index=1", study_query()),
        Some(READER),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let chart: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(chart["panels"][0]["lines"][0]["label"], "global");
    assert_eq!(
        chart["panels"][0]["lines"][0]["points"][0]["estimate"],
        100.0
    );

    // The page in a browser.
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{CHROMIUM} is missing; .ci/run installs it (apt-get install -y chromium)"
        );
        eprintln!(
            "skipped the browser part: {CHROMIUM} is not installed (apt-get install -y chromium)"
        );
        server.stop().await;
        return;
    }
    let url = format!("http://{addr}/?{}#token={READER}", study_query());
    let profile = dir.path().join("chromium");
    let shot = std::env::temp_dir().join(format!("sketchd-page-{}.png", std::process::id()));
    let browse = |extra: Vec<String>| {
        let (url, profile) = (url.clone(), profile.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,2400",
                    "--virtual-time-budget=30000",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .args(extra)
                .arg(url)
                .output()
                .unwrap()
        })
    };
    let out = browse(vec!["--dump-dom".into()]).await.unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains(r#"data-state="done""#),
        "the page did not finish: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cell = |key: &str| -> String {
        let at = dom
            .find(&format!("data-k=\"{key}\""))
            .unwrap_or_else(|| panic!("{key} is not on the page"));
        let text = &dom[at..];
        let start = text.find('>').unwrap() + 1;
        let end = text[start..].find('<').unwrap() + start;
        text[start..end].to_owned()
    };
    let kept = |(seen, kept): (u64, u64)| {
        format!(
            "{} of {} = {:.1} %",
            thousands(kept),
            thousands(seen),
            100.0 * kept as f64 / seen as f64
        )
    };
    assert_eq!(
        cell("global-retention"),
        kept(world.retention(a, b, None, None))
    );
    assert_eq!(
        cell("cut-retention"),
        kept(world.retention(before, after, None, None))
    );
    assert_eq!(
        cell("global-orgs-a"),
        format!(
            "{} exact",
            thousands(world.orgs_in(a, None, None).len() as u64)
        )
    );
    for cc in ["US", "DE", "GB"] {
        assert_eq!(
            cell(&format!("cut-{cc}-retention")),
            kept(world.retention(before, after, Some(cc), None)),
            "{cc}"
        );
        assert_eq!(
            cell(&format!("country-{cc}-orgs-b")),
            thousands(world.orgs_in(b, Some(cc), None).len() as u64)
        );
    }
    let (seen, still) = world.retention(before, after, Some("US"), Some("government"));
    assert_eq!(cell("sector-government-US-seen"), thousands(seen));
    assert_eq!(cell("sector-government-US-kept"), thousands(still));
    // IPs carry their interval; the chart is drawn with its marks.
    let ips_a = cell("global-ips-a");
    assert!(ips_a.contains('[') && ips_a.contains(','), "{ips_a}");
    assert!(dom.contains(&format!("cut-off {}", world::day(CUTOFF))));
    assert!(dom.contains("global 95 % interval"));
    assert!(dom.contains("distinct organisations"));
    // The chart as PNG, drawn by the browser from the SVG.
    assert!(
        dom.contains(&format!(
            r#"download="sketchd-{NS}.png" href="data:image/png;base64,iVBORw0KGgo"#
        )),
        "no PNG of the chart on the page"
    );

    let out = browse(vec![format!("--screenshot={}", shot.display())])
        .await
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000);
    eprintln!("screenshot of the page: {}", shot.display());
    server.stop().await;
}

fn thousands(n: u64) -> String {
    sketchd::report::text::thousands(n as f64)
}
