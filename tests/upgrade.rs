//! A data directory written by the sketchd before sketch envelope format 2
//! and day groups (`tests/data/format1/`, made as its README says) opens
//! with this build, has its sketches rewritten in format 2 and the days of
//! its flat series moved into day groups once, and answers every query
//! exactly as that sketchd did (`tests/data/format1/answers.txt`, recorded
//! from it over gRPC).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::NOW;
use sketchd::client::Client;
use sketchd::sketch::{Sketch, FORMAT_VERSION, FORMAT_VERSION_1, LAYOUT_DENSE_ZSTD};

const NS: &str = "study";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn recorded_answers() -> Vec<String> {
    std::fs::read_to_string(fixture().join("answers.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The answers equal the recorded ones, line by line (the first
/// difference is named).
fn assert_answers(got: &[String], case: &str) {
    let want = recorded_answers();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{case}: answer {i} differs");
    }
    assert_eq!(got.len(), want.len(), "{case}: number of answers");
}

/// The sketch records of a dump: rollup blocks and days, those in day
/// groups as the `s` keys they would have.
fn sketches(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    common::expand_groups(dump)
        .into_iter()
        .filter(|(k, _)| k[0] == b's')
        .collect()
}

/// How many day groups a dump holds.
fn groups(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
    dump.keys().filter(|k| k[0] == b'f').count()
}

#[tokio::test]
async fn a_format_1_directory_is_upgraded_once_and_answers_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    copy_dir(&fixture().join("data"), &dir);
    let before = common::dump(&dir);
    let old = sketches(&before);
    assert!(old.len() > 1000, "the fixture holds {} sketches", old.len());
    assert!(old.values().all(|v| v[4] == FORMAT_VERSION_1));

    let server = common::start(&dir).await;
    let first = common::answers(NS, &server.client, NOW).await;
    assert_answers(&first, "after the upgrade");
    server.stop().await;

    // Every other record is as it was; every
    // sketch holds the same state, now in format 2, and the dense ones are
    // compressed and smaller; the days of flat series are in day groups.
    let after = common::dump(&dir);
    let others = |dump: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
        dump.iter()
            .filter(|(k, _)| !matches!(k[0], b's' | b'f'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(others(&before), others(&after));
    assert_eq!(groups(&before), 0);
    let new = sketches(&after);
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    let grouped = groups(&after);
    let keyed_days = after
        .keys()
        .filter(|k| k[0] == b's' && k.len() == 19 && k[6] == 0)
        .count();
    assert!(
        grouped >= 100 && keyed_days * 2 < old.len(),
        "{grouped} groups, {keyed_days} days under their own keys"
    );
    let (mut dense, mut bytes_old, mut bytes_new) = (0, 0, 0);
    for (k, old_bytes) in &old {
        let new_bytes = &new[k];
        assert_eq!(new_bytes[4], FORMAT_VERSION, "{k:?}");
        let (was, is) = (
            Sketch::decode(old_bytes).unwrap(),
            Sketch::decode(new_bytes).unwrap(),
        );
        assert_eq!(was, is, "{k:?}");
        assert_eq!(new_bytes, &is.encode(), "{k:?} is not canonical");
        if !is.is_exact() {
            dense += 1;
            assert_eq!(new_bytes[15], LAYOUT_DENSE_ZSTD, "{k:?}");
        }
        bytes_old += old_bytes.len();
        bytes_new += new_bytes.len();
    }
    assert!(dense >= 50, "{dense} dense sketches");
    assert!(
        bytes_new * 10 < bytes_old * 7,
        "sketch bytes {bytes_old} -> {bytes_new}"
    );

    // Once: a second start rewrites nothing and answers the same.
    let server = common::start(&dir).await;
    assert_answers(
        &common::answers(NS, &server.client, NOW).await,
        "second start",
    );
    server.stop().await;
    assert_eq!(
        common::dump(&dir),
        after,
        "the second start rewrote records"
    );
}

/// Records `answers.txt` from a server started by the old build on a copy
/// of the fixture (see tests/data/format1/README.md).
#[tokio::test]
#[ignore]
async fn record() {
    let url = std::env::var("SKETCHD_RECORD_URL").expect("SKETCHD_RECORD_URL");
    let client = Client::connect(&url).await.unwrap();
    let answers = common::answers(NS, &client, NOW).await;
    let mut text = answers.join("\n");
    text.push('\n');
    std::fs::write(fixture().join("answers.txt"), text).unwrap();
}
