//! The other clouds' stores. Azure (`az://`) end to end against Microsoft's
//! own emulator (Azurite, from npm) on 127.0.0.1, configured the way Azure's
//! tools are (`AZURE_*` variables): every row written, an incremental rerun
//! read from Azure's ETags, and the account key never printed. Google Cloud
//! Storage (`gs://`) has no emulator in a registry that speaks the XML API
//! object_store uses: its configuration is tested in `fruits-storage`, and here
//! the `GOOGLE_*` environment is shown to reach the store.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::azure::{Azurite, KEY};
use common::s3::{get, list, put};
use common::{class_images, fruits, run_ok};
use datafusion::arrow::array::AsArray;

const CLASSES: [&str; 3] = ["Banana 1", "Lemon 1", "Kiwi 1"];
const PER_CLASS: usize = 40;

fn assert_no_key(what: &str, text: &str) {
    assert!(!text.contains(KEY), "{what} shows the account key: {text}");
}

fn image_name(class: &str, index: usize) -> String {
    class_images(class)[index]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The paths of every row of the Parquet files under `prefix`.
fn paths_under(store: &std::sync::Arc<dyn object_store::ObjectStore>, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for key in list(store, prefix).iter().filter(|k| k.ends_with(".parquet")) {
        for batch in common::read_parquet_bytes(get(store, key)) {
            let column = batch.column_by_name("path").unwrap().as_string::<i32>();
            paths.extend(column.iter().map(|p| p.unwrap().to_string()));
        }
    }
    paths
}

#[test]
#[ignore = "end-to-end: Azurite from npm and the installed model; scripts/test runs it"]
fn az_in_az_out_every_row_every_error_incremental_and_no_key() {
    let azurite = Azurite::start();
    azurite.create_container("lake");
    let store = azurite.store("lake");
    let uploaded = common::s3::upload_classes(&store, "az://lake", "raw", &CLASSES, PER_CLASS);
    put(&store, "raw/Kiwi 1/empty.jpg", Vec::new());
    put(&store, "raw/Kiwi 1/text.jpg", b"not an image".to_vec());

    let featurize = |extra: &[&str]| {
        let mut cmd = fruits();
        cmd.envs(azurite.env())
            .args([
                "featurize",
                "--input",
                "az://lake/raw",
                "--output",
                "az://lake/out",
                "--json",
            ])
            .args(extra);
        let out = run_ok(&mut cmd);
        assert_no_key("stdout", &String::from_utf8_lossy(&out.stdout));
        assert_no_key("stderr", &String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = featurize(&["--rows-per-task", "16"]);
    assert_eq!(
        (first["featurized"].as_u64(), first["failed"].as_u64()),
        (Some((CLASSES.len() * PER_CLASS) as u64), Some(2))
    );
    let keys = list(&store, "out");
    assert!(keys.contains(&"out/_SUCCESS".to_string()), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("_temporary") || k.ends_with("_LEASE")),
        "scratch and lease are gone: {keys:?}"
    );
    let success = String::from_utf8(get(&store, "out/_SUCCESS").to_vec()).unwrap();
    assert_no_key("_SUCCESS", &success);
    let features = paths_under(&store, "out/features");
    assert_eq!(features.len(), uploaded.len(), "one row per image, none twice");
    assert_eq!(features.into_iter().collect::<HashSet<_>>(), uploaded);
    let mut failed = paths_under(&store, "out/errors");
    failed.sort();
    assert_eq!(
        failed,
        ["az://lake/raw/Kiwi 1/empty.jpg", "az://lake/raw/Kiwi 1/text.jpg"]
    );

    // Azure's ETags decide what changed: one image rewritten, one deleted.
    let changed = format!("raw/Lemon 1/{}", image_name("Lemon 1", 0));
    let new_bytes = std::fs::read(&class_images("Kiwi 1")[PER_CLASS]).unwrap();
    put(&store, &changed, new_bytes.clone());
    common::s3::delete(&store, &format!("raw/Banana 1/{}", image_name("Banana 1", 1)));
    let rerun = featurize(&[]);
    let changes = &rerun["changes"];
    assert_eq!(
        (
            changes["changed"].as_u64(),
            changes["deleted"].as_u64(),
            changes["new"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{rerun}"
    );
    assert_eq!(
        (rerun["featurized"].as_u64(), rerun["bytes_read"].as_u64()),
        (Some(1), Some(new_bytes.len() as u64)),
        "only the rewritten image is read"
    );
    assert_eq!(paths_under(&store, "out/features").len(), uploaded.len() - 1);
}

#[test]
#[ignore = "end-to-end: Azurite from npm and the installed model; scripts/test runs it"]
fn a_missing_container_or_a_wrong_key_is_one_clear_line_without_the_key() {
    let azurite = Azurite::start();
    azurite.create_container("lake");
    put(
        &azurite.store("lake"),
        "raw/Banana 1/a.jpg",
        std::fs::read(&class_images("Banana 1")[0]).unwrap(),
    );
    let fails = |env: Vec<(&'static str, String)>, input: &str, expect: &str| {
        let out = fruits()
            .envs(env)
            .args(["featurize", "--input", input, "--output", "az://lake/out"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{input} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expect), "expected '{expect}': {stderr}");
        assert_no_key("stderr", &stderr);
        stderr
    };
    fails(azurite.env(), "az://no-such-container/raw", "does not exist");
    let wrong_key = "d3JvbmctYXp1cmUta2V5LWZvci10aGUtdGVzdHMtMTI=";
    let mut env = azurite.env();
    env.retain(|(k, _)| *k != "AZURE_STORAGE_ACCOUNT_KEY");
    env.push(("AZURE_STORAGE_ACCOUNT_KEY", wrong_key.into()));
    let stderr = fails(env, "az://lake/raw", "access denied");
    assert!(!stderr.contains(wrong_key), "{stderr}");
    assert!(!list(&azurite.store("lake"), "out").contains(&"out/_SUCCESS".to_string()));
}

#[test]
#[ignore = "end-to-end: the installed model; scripts/test runs it"]
fn gs_is_configured_from_the_google_environment_and_fails_in_one_line_without_the_key() {
    let private_key = "fruits-gcs-private-key-do-not-print";
    // A service account key that asks for no OAuth token, as emulators use.
    let account = format!(
        r#"{{"private_key": "{private_key}", "private_key_id": "k1", "client_email": "fruits@example.iam.gserviceaccount.com", "disable_oauth": true}}"#
    );
    let nowhere = format!("http://127.0.0.1:{}", common::s3::free_port());
    let started = Instant::now();
    let out = fruits()
        .env("GOOGLE_SERVICE_ACCOUNT_KEY", &account)
        .env("GOOGLE_BASE_URL", &nowhere)
        .args(["featurize", "--input", "gs://lake/raw", "--output", "gs://lake/out"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: gs://lake") && stderr.contains("cannot reach the storage endpoint"),
        "the GOOGLE_BASE_URL of the environment is the one asked: {stderr}"
    );
    assert!(
        !stderr.contains(private_key) && !stderr.contains("disable_oauth"),
        "{stderr}"
    );
}
