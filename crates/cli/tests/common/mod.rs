//! Helpers shared by the binary's end-to-end tests: the built `fruits` binary,
//! the shared Fruits-360 images, the installed model, Parquet reading.

#![allow(dead_code)]

pub mod azure;
pub mod cluster;
pub mod http;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// `fruits` with quiet logs.
pub fn fruits() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fruits"));
    cmd.env("FRUITS_LOG", "warn").env_remove("RUST_LOG");
    cmd
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("fruits runs");
    assert!(
        out.status.success(),
        "fruits failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `../shared/fruits-360/Training` beside the checkout (or `$FRUITS_DATA/Training`).
pub fn training() -> PathBuf {
    let root = std::env::var_os("FRUITS_DATA").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
            .join("../../../shared/fruits-360")
    });
    let dir = root.join("Training");
    assert!(
        dir.is_dir(),
        "{} is missing: the tests read the shared Fruits-360 images",
        dir.display()
    );
    dir
}

/// `../shared/real-photos/grocery-store/SPLIT` beside the checkout: real
/// phone photos in catalogue-kind folders.
pub fn real_photos(split: &str) -> PathBuf {
    let dir = training().join("../../real-photos/grocery-store").join(split);
    assert!(
        dir.is_dir(),
        "{} is missing: the tests read the shared real photos",
        dir.display()
    );
    dir
}

/// The photographs training scenes are composed on, that
/// scripts/backgrounds installs (`FRUITS_BACKGROUNDS`, as scripts/test sets it).
pub fn backgrounds() -> PathBuf {
    installed("FRUITS_BACKGROUNDS", "scripts/backgrounds", "backgrounds")
}

/// The photos without fruit that scripts/non-fruit-photos installs
/// (`FRUITS_NON_FRUIT_DIR`, as scripts/test sets it).
pub fn non_fruit_photos() -> PathBuf {
    installed(
        "FRUITS_NON_FRUIT_DIR",
        "scripts/non-fruit-photos",
        "photos without fruit",
    )
}

/// The folder in `$var` that `script` installed (it writes `LICENSES.txt` last).
fn installed(var: &str, script: &str, what: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through scripts/test (it runs {script})"));
    assert!(
        dir.join("LICENSES.txt").is_file(),
        "{}: no {what}; run {script} {}",
        dir.display(),
        dir.display()
    );
    dir
}

/// Links (never copies) up to `per_kind` real photos of each kind of
/// `split` into `dest/<kind>/`; returns how many were linked.
pub fn link_real_photos(split: &str, kinds: &[&str], per_kind: usize, dest: &Path) -> usize {
    let mut count = 0;
    for kind in kinds {
        std::fs::create_dir_all(dest.join(kind)).unwrap();
        for photo in std::fs::read_dir(real_photos(split).join(kind)).unwrap().take(per_kind) {
            let photo = photo.unwrap().path();
            std::os::unix::fs::symlink(&photo, dest.join(kind).join(photo.file_name().unwrap())).unwrap();
            count += 1;
        }
    }
    count
}

/// `fruits featurize --input INPUT --output OUT EXTRA...`, ready to run.
pub fn featurize(input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = fruits();
    cmd.arg("featurize")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(extra);
    cmd
}

/// Image files of one class folder, sorted.
pub fn class_images(class: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(training().join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fruits_storage::is_image_name(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    files
}

/// Links the first `n` images of a shared class into `dest/<class>`; returns them.
pub fn link_class_images(class: &str, n: usize, dest: &Path) -> Vec<PathBuf> {
    let dir = dest.join(class);
    std::fs::create_dir_all(&dir).unwrap();
    let images: Vec<PathBuf> = class_images(class).into_iter().take(n).collect();
    for image in &images {
        std::os::unix::fs::symlink(image, dir.join(image.file_name().unwrap())).unwrap();
    }
    images
}

/// One Parquet file's bytes (e.g. fetched from a store), read into batches.
pub fn read_parquet_bytes(bytes: bytes::Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Every Parquet file under `dir`, read into batches.
pub fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let file = std::fs::File::open(f).unwrap();
            ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
        })
        .collect()
}

pub fn success_json(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("_SUCCESS")).expect("_SUCCESS is written");
    serde_json::from_str(&text).expect("_SUCCESS is JSON")
}

/// Classes used by the smaller `fruits run` tests: look-alikes included
/// (apples, cherries, tomatoes), so that a weak pipeline shows.
pub const RUN_CLASSES: [&str; 12] = [
    "Apple Braeburn 1",
    "Apple Golden 1",
    "Apple Red 1",
    "Banana 1",
    "Cherry 1",
    "Cherry Rainier 1",
    "Kiwi 1",
    "Lemon 1",
    "Pear 1",
    "Strawberry 1",
    "Tomato 1",
    "Tomato 2",
];

/// `dir/train` and `dir/test` made by `scripts/holdout-split` (whole index
/// ranges held out) from the [`RUN_CLASSES`] of the shared Training folder.
pub fn holdout_split(dir: &Path) -> (PathBuf, PathBuf) {
    let source = dir.join("source");
    std::fs::create_dir_all(&source).unwrap();
    for class in RUN_CLASSES {
        let from = training().join(class);
        assert!(from.is_dir(), "{} is missing", from.display());
        std::os::unix::fs::symlink(from, source.join(class)).unwrap();
    }
    let script = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
        .join("../../scripts/holdout-split");
    let split = dir.join("split");
    let out = Command::new("python3")
        .arg(script)
        .arg(&source)
        .arg(&split)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (split.join("train"), split.join("test"))
}

/// `fruits run --train TRAIN --test TEST --output OUT`, to add flags to.
pub fn fruits_run(train: &Path, test: &Path, out: &Path) -> Command {
    let mut cmd = fruits();
    cmd.arg("run")
        .arg("--train")
        .arg(train)
        .arg("--test")
        .arg(test)
        .arg("--output")
        .arg(out);
    cmd
}

/// A `fruits run` output over the [`RUN_CLASSES`] holdout split and the real
/// photos of `train` (so with a kind head), made once per test binary:
/// `(run output, held-out test folder)`.
pub fn trained_run() -> &'static (PathBuf, PathBuf) {
    static RUN: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (train, test) = holdout_split(&dir);
        let out = dir.join("run");
        run_ok(
            fruits_run(&train, &test, &out)
                .arg("--photos")
                .arg(real_photos("train")),
        );
        (out, test)
    })
}

/// Up to `per_class` images of every class of a `<class>/<image>` folder, sorted.
pub fn labelled_images(dir: &Path, per_class: usize) -> Vec<(String, PathBuf)> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    classes.sort();
    let mut out = Vec::new();
    for class in classes {
        let label = class.file_name().unwrap().to_str().unwrap().to_string();
        let mut images: Vec<PathBuf> = std::fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()).collect();
        images.sort();
        let step = (images.len() / per_class.max(1)).max(1);
        out.extend(
            images
                .into_iter()
                .step_by(step)
                .take(per_class)
                .map(|p| (label.clone(), p)),
        );
    }
    out
}

/// The file a bundle folder's `bundle.json` names for `what` (`pca`, or a
/// classifier's name): bundle files are named by their content.
pub fn bundle_file(model_dir: &Path, what: &str) -> PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir.join("bundle.json")).unwrap()).unwrap();
    let file = match what {
        "pca" => manifest["pca"]["file"].clone(),
        name => manifest["classifiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == name)
            .map(|c| c[1]["file"].clone())
            .unwrap_or_else(|| panic!("the bundle has no {name}")),
    };
    model_dir.join(file.as_str().unwrap())
}
