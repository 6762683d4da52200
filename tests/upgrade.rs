//! Data directories written by older builds open with this one, are
//! rewritten once, and answer every query exactly as those builds did
//! (`answers.txt` beside each, recorded from them over gRPC; each made as
//! its README says):
//!
//! * `tests/data/format1/`: before sketch envelope format 2 and day
//!   groups; its sketches are rewritten in the current format and the days
//!   of its flat series moved into day groups;
//! * `tests/data/format2/`: envelope format 2 (exact hashes of 8 bytes,
//!   hash id 1) and day groups; its sketches and groups are rewritten with
//!   exact hashes of 5 bytes (hash id 2);
//! * `tests/data/format3/`: envelope format 3 (dense registers as zstd
//!   frames); its sketches are rewritten in format 4, the dense ones below
//!   half load Rice-coded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::NOW;
use sketchd::client::Client;
use sketchd::sketch::{
    Sketch, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_2, FORMAT_VERSION_3, HASH_ID_XXH3_40,
    LAYOUT_DENSE, LAYOUT_DENSE_RICE, LAYOUT_DENSE_ZSTD,
};

const NS: &str = "study";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
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

fn recorded_answers(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name).join("answers.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The answers equal the ones recorded beside fixture `name`, line by line
/// (the first difference is named).
fn assert_answers(name: &str, got: &[String], case: &str) {
    let want = recorded_answers(name);
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

/// The records of a dump other than sketches and day groups.
fn others(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    dump.iter()
        .filter(|(k, _)| !matches!(k[0], b's' | b'f'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Fixture `name` copied into `tmp`, opened (and so upgraded) by this
/// build, which answers as the fixture recorded: the directory and its
/// records before and after.
async fn upgrade(
    name: &str,
    tmp: &Path,
) -> (
    PathBuf,
    BTreeMap<Vec<u8>, Vec<u8>>,
    BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let dir = tmp.join("data");
    copy_dir(&fixture(name).join("data"), &dir);
    let before = common::dump(&dir);
    let server = common::start(&dir).await;
    assert_answers(
        name,
        &common::answers(NS, &server.client, NOW).await,
        "after the upgrade",
    );
    server.stop().await;
    let after = common::dump(&dir);
    (dir, before, after)
}

/// Bytes of the sketch values and day groups of a dump.
fn stored(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
    dump.iter()
        .filter(|(k, _)| matches!(k[0], b's' | b'f'))
        .map(|(_, v)| v.len())
        .sum()
}

/// The day group keys of a dump.
fn group_keys(dump: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Vec<u8>> {
    dump.keys().filter(|k| k[0] == b'f').cloned().collect()
}

/// A sketch record upgraded: its key, old bytes, new bytes and state.
type Upgraded<'a> = (&'a Vec<u8>, &'a Vec<u8>, &'a Vec<u8>, Sketch);

/// The sketches of `old` and `new` (the sketch records of two dumps)
/// have the same keys, and each key's new bytes are the current format's
/// canonical encoding of the state the old bytes held: (key, old bytes,
/// new bytes, that state) for every key.
fn same_states<'a>(
    old: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    new: &'a BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<Upgraded<'a>> {
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    old.iter()
        .map(|(k, old_bytes)| {
            let new_bytes = &new[k];
            assert_eq!(new_bytes[4..6], [FORMAT_VERSION, HASH_ID_XXH3_40], "{k:?}");
            let (was, is) = (
                Sketch::decode(old_bytes).unwrap(),
                Sketch::decode(new_bytes).unwrap(),
            );
            assert_eq!(was, is, "{k:?}");
            assert_eq!(new_bytes, &is.encode(), "{k:?} is not canonical");
            (k, old_bytes, new_bytes, is)
        })
        .collect()
}

/// Once: a second start of the upgraded `dir` (whose records are `after`)
/// rewrites nothing and answers as fixture `name` recorded.
async fn assert_second_start_rewrites_nothing(
    name: &str,
    dir: &Path,
    after: &BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let server = common::start(dir).await;
    assert_answers(
        name,
        &common::answers(NS, &server.client, NOW).await,
        "second start",
    );
    server.stop().await;
    assert_eq!(
        &common::dump(dir),
        after,
        "the second start rewrote records"
    );
}

#[tokio::test]
async fn a_format_1_directory_is_upgraded_once_and_answers_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, before, after) = upgrade("format1", tmp.path()).await;
    let old = sketches(&before);
    assert!(old.len() > 1000, "the fixture holds {} sketches", old.len());
    assert!(old.values().all(|v| v[4] == FORMAT_VERSION_1));

    // Every other record is as it was; every sketch holds the same state,
    // now in the current format, and the dense ones are compressed and
    // smaller; the days of flat series are in day groups.
    assert_eq!(others(&before), others(&after));
    assert_eq!(groups(&before), 0);
    let new = sketches(&after);
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
    for (k, old_bytes, new_bytes, is) in same_states(&old, &new) {
        if !is.is_exact() {
            dense += 1;
            assert_ne!(new_bytes[15], LAYOUT_DENSE, "{k:?} is not compressed");
        }
        bytes_old += old_bytes.len();
        bytes_new += new_bytes.len();
    }
    assert!(dense >= 50, "{dense} dense sketches");
    assert!(
        bytes_new * 10 < bytes_old * 7,
        "sketch bytes {bytes_old} -> {bytes_new}"
    );

    assert_second_start_rewrites_nothing("format1", &dir, &after).await;
}

#[tokio::test]
async fn a_format_2_directory_is_upgraded_once_and_answers_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, before, after) = upgrade("format2", tmp.path()).await;
    let old = sketches(&before);
    assert!(old.len() > 1000, "the fixture holds {} sketches", old.len());
    assert!(old.values().all(|v| v[4] == FORMAT_VERSION_2));
    let old_groups = groups(&before);
    assert!(old_groups >= 100, "{old_groups} day groups");

    // Every other record is as it was, the day groups are the same keys;
    // every sketch holds the same state (its exact hashes cut to 40 bits),
    // now in the current format, canonical, its exact hashes in 5 bytes
    // and its dense registers no larger.
    assert_eq!(others(&before), others(&after));
    assert_eq!(group_keys(&before), group_keys(&after));
    let new = sketches(&after);
    let (mut exact, mut hashes, mut bytes_old, mut bytes_new) = (0, 0, 0, 0);
    for (k, old_bytes, new_bytes, is) in same_states(&old, &new) {
        if let Some(n) = is.exact_len() {
            exact += 1;
            hashes += n;
            assert_eq!(old_bytes.len(), 24 + 8 * n, "{k:?}");
            assert_eq!(new_bytes.len(), 24 + 5 * n, "{k:?}");
        } else {
            // The same registers (above), Rice-coded where that is smaller.
            assert!(new_bytes.len() <= old_bytes.len(), "{k:?}");
        }
        bytes_old += old_bytes.len();
        bytes_new += new_bytes.len();
    }
    assert!(exact >= 1000 && hashes > 0, "{exact} exact sketches");
    assert!(
        bytes_new < bytes_old,
        "sketch bytes {bytes_old} -> {bytes_new}"
    );
    assert!(
        stored(&after) * 10 < stored(&before) * 8,
        "stored sketch bytes {} -> {}",
        stored(&before),
        stored(&after)
    );

    assert_second_start_rewrites_nothing("format2", &dir, &after).await;
}

#[tokio::test]
async fn a_format_3_directory_is_upgraded_once_and_answers_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, before, after) = upgrade("format3", tmp.path()).await;
    let old = sketches(&before);
    assert!(old.len() > 1000, "the fixture holds {} sketches", old.len());
    // (The days in groups hold no version: they read as the current one.)
    let keyed = before.iter().filter(|(k, _)| k[0] == b's');
    assert!(keyed.clone().count() > 100);
    assert!(keyed.into_iter().all(|(_, v)| v[4] == FORMAT_VERSION_3));

    // Every other record is as it was, the day groups are the same keys;
    // every sketch holds the same state, now in format 4 and canonical: an
    // exact one the same payload, a dense one below half load Rice-coded
    // and smaller, one above it the same zstd frame.
    assert_eq!(others(&before), others(&after));
    assert_eq!(group_keys(&before), group_keys(&after));
    let new = sketches(&after);
    let payload = |b: &[u8]| b[15..b.len() - 4].to_vec();
    let (mut rice, mut zstd, mut dense_old, mut dense_new) = (0, 0, 0, 0);
    for (k, old_bytes, new_bytes, is) in same_states(&old, &new) {
        let Some(regs) = is.dense_registers() else {
            assert!(payload(new_bytes) == payload(old_bytes), "{k:?}: hashes");
            continue;
        };
        let below_half = regs.iter().filter(|&&r| r != 0).count() * 2 <= regs.len();
        match new_bytes[15] {
            LAYOUT_DENSE_RICE => {
                rice += 1;
                assert!(below_half, "{k:?}");
                assert!(new_bytes.len() < old_bytes.len(), "{k:?}");
            }
            LAYOUT_DENSE_ZSTD => {
                zstd += 1;
                assert!(!below_half, "{k:?}");
                assert!(payload(new_bytes) == payload(old_bytes), "{k:?}");
            }
            layout => panic!("{k:?}: layout {layout}"),
        }
        dense_old += old_bytes.len();
        dense_new += new_bytes.len();
    }
    assert!(rice >= 20, "{rice} Rice-coded sketches, {zstd} zstd frames");
    assert!(
        dense_new * 10 < dense_old * 8,
        "dense sketch bytes {dense_old} -> {dense_new}"
    );
    assert!(stored(&after) < stored(&before));

    assert_second_start_rewrites_nothing("format3", &dir, &after).await;
}

/// Records `answers.txt` beside fixture `SKETCHD_RECORD_FIXTURE` (format1,
/// format2, format3) from a server started by the old build on a copy of it (see
/// the fixture's README.md).
#[tokio::test]
#[ignore]
async fn record() {
    let url = std::env::var("SKETCHD_RECORD_URL").expect("SKETCHD_RECORD_URL");
    let name = std::env::var("SKETCHD_RECORD_FIXTURE").expect("SKETCHD_RECORD_FIXTURE");
    let client = Client::connect(&url).await.unwrap();
    let answers = common::answers(NS, &client, NOW).await;
    let mut text = answers.join("\n");
    text.push('\n');
    std::fs::write(fixture(&name).join("answers.txt"), text).unwrap();
}
