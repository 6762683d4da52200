//! A generated study world for the report and the page: orgs with names,
//! countries and sectors (written as an orgs file in the peers' layout,
//! `org_id,name,country,sector,pool_ips`), activity declining from April
//! 2026 with most US government orgs stopping before a cut-off, and the
//! exact truth of every figure the report gives.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use sketchd::client::{BatchBuilder, Client, Observation};
use sketchd::time::{Day, DayWindow};

use super::{Rng, APRIL_1, DAY};

pub const COUNTRIES: [&str; 5] = ["US", "DE", "GB", "IT", "FR"];
pub const SECTORS: [&str; 3] = ["government", "finance", "education"];
/// Days of data: 2026-04-01 .. 2026-10-18 (exclusive).
pub const DAYS: i64 = 200;
/// Day index of the cut-off (2026-07-30).
pub const CUTOFF: i64 = 120;
/// Two orgs carry this name (an ambiguous `org:NAME`).
pub const TWIN_NAME: &str = "Twin Networks";
/// One org carries this name.
pub const UNIQUE_NAME: &str = "Acme Government Services";

pub struct Org {
    pub id: String,
    pub name: String,
    pub country: &'static str,
    pub sector: Option<&'static str>,
}

pub struct World {
    pub orgs: Vec<Org>,
    pub rows: Vec<Observation>,
}

/// The day index `d` (from 2026-04-01) as a `Day`.
pub fn day(d: i64) -> Day {
    Day::from_unix_seconds(APRIL_1 + d * DAY).unwrap()
}

pub fn window(from: i64, to: i64) -> DayWindow {
    DayWindow::new(day(from), day(to)).unwrap()
}

/// About `orgs` orgs; a few large ones make the IP counts estimates.
pub fn generate(orgs: u64, seed: u64) -> World {
    let mut rng = Rng(seed);
    let mut world = World {
        orgs: Vec::new(),
        rows: Vec::new(),
    };
    for o in 0..orgs {
        let country = COUNTRIES[(o % COUNTRIES.len() as u64) as usize];
        let sector = match o % 4 {
            0 => Some(SECTORS[0]),
            1 => Some(SECTORS[1]),
            2 => Some(SECTORS[2]),
            _ => None,
        };
        let name = match o {
            0 => UNIQUE_NAME.to_owned(),
            1 | 2 => TWIN_NAME.to_owned(),
            _ => format!("Org {o} Ltd"),
        };
        let government_us = sector == Some("government") && country == "US";
        // US government orgs mostly stop in the three weeks before the
        // cut-off; others stop on a random day or never.
        let stop = if government_us && o != 0 && rng.below(10) < 7 {
            CUTOFF - 21 + rng.below(21) as i64
        } else if rng.below(10) < 4 {
            20 + rng.below((DAYS - 20) as u64) as i64
        } else {
            DAYS
        };
        let ips = if o < 3 { 3_000 } else { 5 } + rng.below(if o < 8 { 4_000 } else { 150 });
        for i in 0..ips {
            let ip = IpAddr::V4(Ipv4Addr::from(((o as u32 + 1) << 16) | i as u32));
            // IPs fade out inside surviving orgs too.
            let last = if rng.below(2) == 0 {
                1 + rng.below(stop as u64) as i64
            } else {
                stop
            };
            for _ in 0..1 + rng.below(3) {
                let d = rng.below(last as u64) as i64;
                world.rows.push(Observation {
                    ip,
                    unix_seconds: APRIL_1 + d * DAY + rng.below(DAY as u64) as i64,
                    org: Some(format!("{}", 1000 + o)),
                    country: Some(country.to_owned()),
                });
            }
        }
        world.orgs.push(Org {
            id: format!("{}", 1000 + o),
            name,
            country,
            sector,
        });
    }
    world
}

impl World {
    /// Writes the orgs file in the peers' layout with a name column.
    pub fn write_orgs(&self, path: &Path) {
        let mut text = String::from("org_id,name,country,sector,pool_ips\n");
        for o in &self.orgs {
            text.push_str(&format!(
                "{},{},{},{},0\n",
                o.id,
                o.name,
                o.country,
                o.sector.unwrap_or("")
            ));
        }
        std::fs::write(path, text).unwrap();
    }

    /// Sends every row to `namespace`.
    pub async fn load(&self, client: &Client, namespace: &str) {
        for (i, chunk) in self.rows.chunks(50_000).enumerate() {
            let mut b = BatchBuilder::new();
            chunk.iter().for_each(|r| b.push(r));
            client
                .ingest(b.build(namespace, "world", i as u64 + 1))
                .await
                .unwrap();
        }
    }

    fn rows_in(&self, w: DayWindow) -> impl Iterator<Item = &Observation> {
        self.rows
            .iter()
            .filter(move |r| w.contains(Day::from_unix_seconds(r.unix_seconds).unwrap()))
    }

    pub fn org(&self, id: &str) -> &Org {
        self.orgs.iter().find(|o| o.id == id).unwrap()
    }

    /// Distinct IPs in `w`, in one country or all.
    pub fn ips(&self, w: DayWindow, country: Option<&str>) -> usize {
        self.rows_in(w)
            .filter(|r| country.is_none_or(|c| r.country.as_deref() == Some(c)))
            .map(|r| r.ip)
            .collect::<HashSet<_>>()
            .len()
    }

    /// The orgs seen in `w`, in one country or all, of one sector or any.
    pub fn orgs_in(
        &self,
        w: DayWindow,
        country: Option<&str>,
        sector: Option<&str>,
    ) -> BTreeSet<String> {
        self.rows_in(w)
            .filter(|r| country.is_none_or(|c| r.country.as_deref() == Some(c)))
            .map(|r| r.org.clone().unwrap())
            .filter(|o| sector.is_none_or(|s| self.org(o).sector == Some(s)))
            .collect()
    }

    /// (seen in a, of them seen in b).
    pub fn retention(
        &self,
        a: DayWindow,
        b: DayWindow,
        country: Option<&str>,
        sector: Option<&str>,
    ) -> (u64, u64) {
        let seen = self.orgs_in(a, country, sector);
        let after = self.orgs_in(b, country, sector);
        (seen.len() as u64, seen.intersection(&after).count() as u64)
    }

    /// Distinct IPs per country in `w`.
    pub fn ips_by_country(&self, w: DayWindow) -> BTreeMap<String, usize> {
        COUNTRIES
            .iter()
            .map(|c| (c.to_string(), self.ips(w, Some(c))))
            .collect()
    }
}
