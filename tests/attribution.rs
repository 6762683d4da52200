//! Attribution at ingest, over real gRPC, with the real sample tables
//! checked in under tests/data/ipmeta (CC BY 4.0, see its README).

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use common::{TestServer, APRIL_1, DAY};
use sketchd::attribution::TableFiles;
use sketchd::client::{BatchBuilder, Observation};
use sketchd::pb;
use sketchd::query::{GroupBy, Metric, Scope};
use sketchd::time::{Day, DayWindow};

const NS: &str = "attributed";

fn sample_tables(dir: &Path) -> TableFiles {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ipmeta");
    let orgs = dir.join("orgs.csv");
    std::fs::write(
        &orgs,
        "org,name,country,sectors\nacme-gov,Acme Federal Agency,US,government;defence\nAS15169,,,cloud\n",
    )
    .unwrap();
    let networks = dir.join("networks.csv");
    std::fs::write(
        &networks,
        "cidr,org\n192.0.2.0/24,acme-gov\n8.8.4.0/24,acme-gov\n",
    )
    .unwrap();
    TableFiles {
        orgs: Some(orgs),
        networks: Some(networks),
        ..TableFiles::from_dir(data)
    }
}

async fn start(dir: &Path) -> (TestServer, PathBuf) {
    let mut config = common::config(&dir.join("data"));
    config.tables = sample_tables(dir);
    (common::start_with(config).await, dir.join("networks.csv"))
}

fn obs(ip: &str, org: Option<&str>, country: Option<&str>) -> Observation {
    Observation {
        ip: ip.parse::<IpAddr>().unwrap(),
        unix_seconds: APRIL_1 + 3600,
        org: org.map(str::to_owned),
        country: country.map(str::to_owned),
    }
}

fn april() -> DayWindow {
    DayWindow::new(
        Day::from_unix_seconds(APRIL_1).unwrap(),
        Day::from_unix_seconds(APRIL_1 + 30 * DAY).unwrap(),
    )
    .unwrap()
}

async fn count(s: &TestServer, metric: Metric, scope: Scope) -> f64 {
    let e = s
        .client
        .count(NS, metric, &scope, april())
        .await
        .unwrap()
        .estimate;
    assert!(e.exact, "small sets are exact");
    e.value
}

#[tokio::test]
async fn rows_without_org_or_country_are_attributed_from_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path()).await;
    let rows = [
        obs("1.1.1.1", None, None),                       // AS13335, AU (APNIC)
        obs("8.8.8.8", None, None),                       // AS15169, US
        obs("2606:4700:4700::1111", None, None),          // AS13335 over IPv6
        obs("::ffff:1.1.1.2", None, None),                // mapped: same org as 1.1.1.1
        obs("5.9.0.1", None, Some("DE")),                 // Hetzner AS24940; country given
        obs("2.112.0.1", Some("my-own-key"), None),       // org given; country from the table (IT)
        obs("192.0.2.7", None, None), // custom network -> acme-gov, no country row
        obs("8.8.4.4", None, None),   // custom network wins over AS15169
        obs("10.1.2.3", None, None),  // private: no table covers it
        obs("198.51.100.1", Some("AS64500"), Some("FR")), // nothing to attribute
    ];
    let mut b = BatchBuilder::new();
    rows.iter().for_each(|r| b.push(r));
    let reply = server.client.ingest(b.build(NS, "c", 1)).await.unwrap();
    assert_eq!(reply.rows_accepted, 10);
    // 192.0.2.7 gets an org but no country row covers it; 10.1.2.3 gets
    // neither. 8.8.4.4 takes the custom network's org and the table's US.
    assert_eq!(reply.rows_unattributed, 2);
    assert_eq!(reply.rows_attributed, 7);

    assert_eq!(
        count(&server, Metric::Ips, Scope::Org("AS13335".into())).await,
        3.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Org("AS15169".into())).await,
        1.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Org("AS24940".into())).await,
        1.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Org("acme-gov".into())).await,
        2.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Org("unattributed".into())).await,
        1.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Country(*b"AU")).await,
        2.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Country(*b"IT")).await,
        1.0
    );
    assert_eq!(
        count(&server, Metric::Ips, Scope::Country(*b"ZZ")).await,
        2.0
    );
    // The unattributed org is not an organisation.
    assert_eq!(count(&server, Metric::Orgs, Scope::Global).await, 6.0);

    // Sectors from the operator's orgs file.
    assert_eq!(
        count(&server, Metric::Ips, Scope::Sector("government".into())).await,
        2.0
    );
    assert_eq!(
        count(&server, Metric::Orgs, Scope::Sector("government".into())).await,
        1.0
    );
    assert_eq!(
        count(&server, Metric::Orgs, Scope::Sector("cloud".into())).await,
        1.0
    );
    assert_eq!(
        count(
            &server,
            Metric::Ips,
            Scope::CountrySector(*b"US", "cloud".into())
        )
        .await,
        1.0
    );
    assert_eq!(
        count(
            &server,
            Metric::Ips,
            Scope::CountrySector(*b"ZZ", "defence".into())
        )
        .await,
        1.0
    );
    assert_eq!(
        count(
            &server,
            Metric::Ips,
            Scope::CountrySector(*b"US", "defence".into())
        )
        .await,
        1.0
    );
    let sectors = server
        .client
        .group(
            NS,
            Metric::Orgs,
            GroupBy::Sector,
            &Scope::Global,
            april(),
            0,
        )
        .await
        .unwrap();
    let names: Vec<_> = sectors.iter().map(|r| r.group.as_str()).collect();
    assert_eq!(names, ["cloud", "defence", "government"]);
    let by_country = server
        .client
        .group(
            NS,
            Metric::Ips,
            GroupBy::Country,
            &Scope::Sector("cloud".into()),
            april(),
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        by_country
            .iter()
            .map(|r| r.group.as_str())
            .collect::<Vec<_>>(),
        ["US"]
    );
    let gov_orgs = server
        .client
        .group(
            NS,
            Metric::Ips,
            GroupBy::Org,
            &Scope::Sector("government".into()),
            april(),
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        gov_orgs
            .iter()
            .map(|r| r.group.as_str())
            .collect::<Vec<_>>(),
        ["acme-gov"]
    );
    let kept = server
        .client
        .retention(NS, &Scope::Sector("government".into()), april(), april())
        .await
        .unwrap();
    assert_eq!((kept.in_a, kept.in_both), (1, 1));

    // The namespace remembers which tables attributed its batches.
    let info = server
        .client
        .admin_client()
        .get_namespace(pb::GetNamespaceRequest { name: NS.into() })
        .await
        .unwrap()
        .into_inner();
    let tables = server
        .client
        .admin_client()
        .get_tables(pb::GetTablesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.table_versions, vec![tables.version.clone()]);
    assert!(tables.version.starts_with("t-") && tables.version != "t-empty");
    assert!(tables.orgs > 17, "{tables:?}");
    server.stop().await;
}

#[tokio::test]
async fn reload_under_concurrent_ingest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, networks) = start(dir.path()).await;
    let before = server
        .client
        .admin_client()
        .get_tables(pb::GetTablesRequest {})
        .await
        .unwrap()
        .into_inner();

    let mut senders = Vec::new();
    for c in 0..3u64 {
        let client = server.client.clone();
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            for seq in 1..=40u64 {
                let mut b = BatchBuilder::new();
                for i in 0..500u32 {
                    // Addresses in the custom network, which the reload remaps.
                    let ip = IpAddr::from([192, 0, 2, (i % 250) as u8]);
                    b.push(&Observation {
                        ip,
                        unix_seconds: APRIL_1 + (seq as i64 % 20) * DAY + i64::from(i),
                        org: None,
                        country: Some("US".into()),
                    });
                }
                let reply = client
                    .ingest(b.build(NS, &format!("c{c}"), seq))
                    .await
                    .unwrap();
                assert!(!reply.duplicate);
                sent += reply.rows_accepted;
            }
            sent
        }));
    }
    // Meanwhile the operator moves the network to another org, twice.
    let mut admin = server.client.admin_client();
    for org in ["acme-civil", "acme-gov"] {
        std::fs::write(&networks, format!("cidr,org\n192.0.2.0/24,{org}\n")).unwrap();
        admin
            .reload_tables(pb::ReloadTablesRequest {})
            .await
            .unwrap();
    }
    let mut total = 0;
    for s in senders {
        total += s.await.unwrap();
    }
    assert_eq!(total, 3 * 40 * 500);
    assert_eq!(
        server
            .client
            .observations(NS, &Scope::Global, april())
            .await
            .unwrap(),
        total
    );
    let after = admin
        .get_tables(pb::GetTablesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(after.version, before.version, "the networks file changed");
    // Every row went to one of the two orgs, never to "unattributed".
    // An org no row reached (the reloads may both land between two
    // batches) is unknown to the namespace: NOT_FOUND, counted as 0 here.
    let mut seen = 0.0;
    for org in ["acme-gov", "acme-civil"] {
        match server
            .client
            .count(NS, Metric::Ips, &Scope::Org(org.into()), april())
            .await
        {
            Ok(e) => seen += e.estimate.value,
            Err(sketchd::client::ClientError::Status(s)) if s.code() == tonic::Code::NotFound => {}
            Err(e) => panic!("{org}: {e}"),
        }
    }
    assert!(seen >= 250.0, "{seen} IPs in the two orgs");
    // (no row ever had it: the org is unknown to the namespace)
    match server
        .client
        .count(NS, Metric::Ips, &Scope::Org("unattributed".into()), april())
        .await
    {
        Err(sketchd::client::ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}")
        }
        other => panic!("unattributed rows: {other:?}"),
    }
    // A failed reload keeps the old tables.
    std::fs::write(&networks, "cidr,org\nnot-a-network,x\n").unwrap();
    let err = admin
        .reload_tables(pb::ReloadTablesRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("networks.csv"), "{}", err.message());
    let still = admin
        .get_tables(pb::GetTablesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.version, after.version);
    server.stop().await;
}
