//! `fruits run`, `train`, `evaluate` and `predict` on real images: 12
//! classes of the shared Training folder, split by whole index ranges.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{fruits, fruits_run, holdout_split, read_parquet_dir, run_ok, RUN_CLASSES};
use datafusion::arrow::array::AsArray;

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count_images(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|c| std::fs::read_dir(c.unwrap().path()).unwrap().count())
        .sum()
}

/// One `fruits run` over the holdout split with a broken image planted in
/// the test split, made once and shared by the tests below.
struct Run {
    train: PathBuf,
    test: PathBuf,
    out: PathBuf,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (train, test) = holdout_split(&dir);
        std::fs::write(test.join("Kiwi 1/broken.jpg"), b"not an image").unwrap();
        let out = dir.join("out");
        run_ok(fruits_run(&train, &test, &out).args(["--rows-per-task", "64"]));
        Run { train, test, out }
    })
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn run_featurizes_reduces_learns_and_scores_far_above_chance() {
    let Run { train, test, out } = run();
    let metrics = json_file(&out.join("report/metrics.json"));
    assert_eq!(metrics["classes"], RUN_CLASSES.len());
    assert_eq!(metrics["train_rows"], count_images(train));
    assert_eq!(
        metrics["test_rows"],
        count_images(test) - 1,
        "the broken image is not a row"
    );
    let explained = metrics["pca"]["explained_variance"].as_f64().unwrap();
    assert!((0.95..1.0).contains(&explained), "{explained}");
    // Chance is 1/12; look-alike apples, cherries and tomatoes are included.
    let floors = [("logistic_regression", 0.97), ("random_forest", 0.85)];
    for (name, floor) in floors {
        let c = &metrics["classifiers"][name];
        for key in [
            "accuracy",
            "top5_accuracy",
            "precision_weighted",
            "recall_weighted",
            "f1_macro",
        ] {
            assert!(c[key].is_number(), "{name}.{key} missing");
        }
        let accuracy = c["accuracy"].as_f64().unwrap();
        assert!(accuracy >= floor, "{name}: accuracy {accuracy} < {floor}");
    }
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn run_writes_the_seeds_table_and_the_broken_image_as_an_error() {
    let Run { train, test, out } = run();
    let k = json_file(&out.join("report/metrics.json"))["pca"]["k"]
        .as_u64()
        .unwrap() as i32;
    // The seed's table: path, label, split, features, pca.
    let batches = read_parquet_dir(&out.join("features"));
    let (mut train_rows, mut test_rows) = (0, 0);
    for b in &batches {
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["path", "label", "split", "features", "pca"]);
        assert_eq!(b.column(4).as_fixed_size_list().value_length(), k);
        for split in b.column(2).as_string::<i32>().iter().flatten() {
            match split {
                "train" => train_rows += 1,
                "test" => test_rows += 1,
                other => panic!("split {other}"),
            }
        }
    }
    assert_eq!((train_rows, test_rows), (count_images(train), count_images(test) - 1));
    let errors = read_parquet_dir(&out.join("errors"));
    let failed: Vec<(String, String)> = errors
        .iter()
        .flat_map(|b| {
            let (p, s) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
            (0..b.num_rows())
                .map(|i| (p.value(i).to_string(), s.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].0.ends_with("Kiwi 1/broken.jpg") && failed[0].1 == "test");
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn run_writes_the_report_the_bundle_and_success_last() {
    let Run { out, .. } = run();
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    for part in [
        "<svg",
        "Confusion matrix",
        "F1 per class",
        "Run timings",
        "explained variance",
    ] {
        assert!(html.contains(part), "report lacks {part}");
    }
    let bundle = json_file(&out.join("model/bundle.json"));
    assert_eq!(bundle["classes"].as_array().unwrap().len(), RUN_CLASSES.len());
    let summary = json_file(&out.join("_SUCCESS"));
    assert!(summary["stages"].as_array().unwrap().len() >= 6);
    assert!(!out.join("_work").exists(), "scratch is removed");

    // A rerun with a misspelled test folder fails before it touches the
    // result: `_SUCCESS` and the bundle are the same bytes, no scratch stays.
    let (success, bundle) = (
        std::fs::read(out.join("_SUCCESS")).unwrap(),
        std::fs::read(out.join("model/bundle.json")).unwrap(),
    );
    let Run { train, test, .. } = run();
    let rerun = fruits_run(train, &test.with_file_name("tset"), out).output().unwrap();
    assert!(!rerun.status.success());
    assert!(
        String::from_utf8_lossy(&rerun.stderr).contains("no images"),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(std::fs::read(out.join("_SUCCESS")).unwrap(), success);
    assert_eq!(std::fs::read(out.join("model/bundle.json")).unwrap(), bundle);
    assert!(
        !out.join("_work").read_dir().is_ok_and(|mut d| d.next().is_some()),
        "no scratch left behind"
    );
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn evaluate_featurizes_the_test_images_again_and_agrees_with_the_run() {
    let Run { test, out, .. } = run();
    let metrics = json_file(&out.join("report/metrics.json"));
    let eval = run_ok(
        fruits()
            .args(["evaluate", "--json", "--model"])
            .arg(out)
            .arg("--input")
            .arg(test),
    );
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let lr = eval["classifiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "logistic_regression")
        .unwrap();
    let same = lr[1]["accuracy"].as_f64().unwrap()
        - metrics["classifiers"]["logistic_regression"]["accuracy"]
            .as_f64()
            .unwrap();
    assert!(same.abs() < 1e-9, "evaluate and run disagree by {same}");
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn predict_names_held_out_images_and_refuses_a_broken_one() {
    let Run { test, out, .. } = run();
    // One held-out image per class, JSON lines, labels = folder names.
    let images: Vec<_> = RUN_CLASSES
        .iter()
        .map(|c| {
            let mut files: Vec<_> = std::fs::read_dir(test.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.retain(|p| !p.ends_with("broken.jpg"));
            files.sort();
            files[0].clone()
        })
        .collect();
    let predicted = run_ok(
        fruits()
            .args(["predict", "--json", "--model"])
            .arg(out.join("model"))
            .args(&images),
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(predicted.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), RUN_CLASSES.len());
    let mut right = 0;
    for (line, class) in lines.iter().zip(RUN_CLASSES) {
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(line["kinds"], serde_json::json!([]), "no photos, no kind head: {line}");
        let total: f64 = top.iter().map(|t| t["probability"].as_f64().unwrap()).sum();
        assert!(total <= 1.0 + 1e-4);
        right += usize::from(top[0]["label"] == class);
    }
    assert!(right >= RUN_CLASSES.len() - 1, "{right} of {} right", RUN_CLASSES.len());

    let bad = fruits()
        .args(["predict", "--model"])
        .arg(out)
        .arg(test.join("Kiwi 1/broken.jpg"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot use this image"));
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model; scripts/test runs it"]
fn train_and_evaluate_work_apart_on_a_featurize_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = holdout_split(tmp.path());
    let (features, model) = (tmp.path().join("features"), tmp.path().join("model"));
    featurize(&train, &features);
    let train_into = |output: &std::path::Path| {
        let mut cmd = fruits();
        cmd.arg("train")
            .arg("--features")
            .arg(&features)
            .arg("--output")
            .arg(output);
        cmd
    };
    let trained = run_ok(train_into(&model).args(["--components", "64"]));
    assert!(String::from_utf8_lossy(&trained.stdout).contains("PCA 64 components"));
    assert!(model.join("_SUCCESS").exists() && model.join("model/bundle.json").exists());
    let eval = run_ok(
        fruits()
            .args(["evaluate", "--json", "--classifier", "logistic_regression", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&test),
    );
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let accuracy = eval["classifiers"][0][1]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.97, "accuracy {accuracy}");
    assert_eq!(eval["classifiers"].as_array().unwrap().len(), 1);

    // With real photos, train learns the kinds too (photos and views
    // featurized on the engine into a scratch folder that goes away).
    let photos = tmp.path().join("photos");
    common::link_real_photos("train", &["apple", "banana"], 8, &photos);
    let with_kinds = tmp.path().join("with-kinds");
    let trained = run_ok(
        train_into(&with_kinds)
            .args(["--components", "64", "--photo-views", "2", "--photos"])
            .arg(&photos),
    );
    assert!(
        String::from_utf8_lossy(&trained.stdout).contains("kind head"),
        "{trained:?}"
    );
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(with_kinds.join("model/bundle.json")).unwrap()).unwrap();
    let kinds = bundle["kind_head"]["kinds"].as_array().unwrap();
    assert!(
        kinds.iter().any(|k| k == "apple") && kinds.iter().any(|k| k == "banana"),
        "{kinds:?}"
    );
    assert!(!with_kinds.join("_work").exists(), "the photos' scratch is removed");
    // A folder that is not a kind is refused before anything is written.
    std::fs::create_dir_all(photos.join("Bananas")).unwrap();
    let refused = tmp.path().join("refused");
    let out = train_into(&refused).arg("--photos").arg(&photos).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a catalogue kind (Bananas)"),
        "{out:?}"
    );
    assert!(!refused.exists());

    // A damaged bundle file is refused, in one line.
    let pca = common::bundle_file(&model.join("model"), "pca");
    let mut bytes = std::fs::read(&pca).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&pca, bytes).unwrap();
    let out = fruits()
        .args(["evaluate", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&test)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sha256 differs"), "{stderr}");
}

#[test]
fn photo_folders_that_are_not_catalogue_kinds_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for folder in ["apple", "Apples"] {
        std::fs::create_dir_all(photos.join(folder)).unwrap();
        std::fs::write(photos.join(folder).join("IMG_0001.jpg"), b"not read").unwrap();
    }
    let out = dir.path().join("out");
    let result = common::fruits_run(&dir.path().join("train"), &dir.path().join("test"), &out)
        .arg("--photos")
        .arg(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("not a catalogue kind (Apples)") && stderr.contains("apple"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing was written");

    // Views per photo are bounded: 65 would be a typo, not a setting.
    let result = common::fruits_run(&dir.path().join("train"), &dir.path().join("test"), &out)
        .args(["--photo-views", "65", "--photos"])
        .arg(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("65 is not in 0..=64"), "{stderr}");
    assert!(!out.exists(), "nothing was written");
}

#[test]
#[ignore = "end-to-end: fruits run with the installed model and backgrounds; scripts/test runs it"]
fn studio_scenes_are_composed_on_the_engine_and_learned_by_the_kind_head() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = small_split(dir.path(), &["Apple Braeburn 1", "Banana 1"], (20, 4));
    let photos = dir.path().join("photos");
    common::link_real_photos("train", &["apple", "banana"], 6, &photos);
    let run_into = |out: &Path| {
        let mut cmd = common::fruits_run(&train, &test, out);
        cmd.args([
            "--components",
            "16",
            "--photo-views",
            "0",
            "--studio-scenes",
            "2",
            "--localiser-scenes",
            "0",
            "--photos",
        ])
        .arg(&photos);
        cmd
    };
    let out = dir.path().join("out");
    run_ok(run_into(&out).arg("--backgrounds").arg(common::backgrounds()));
    let kinds = &json_file(&out.join("report/metrics.json"))["kinds"];
    // 10 studio shots per class, 2 scenes of each, none of them scored.
    assert_eq!(kinds["studio_rows"], 20, "{kinds}");
    assert_eq!(kinds["scene_rows"], 40, "{kinds}");
    assert_eq!(kinds["photos"], 12, "{kinds}");
    assert!(!out.join("_work").exists(), "the scenes' scratch is removed");

    // `train` finds the studio shots through the featurize output's input.
    let features = dir.path().join("features");
    featurize(&train, &features);
    let trained_dir = dir.path().join("trained");
    let trained = run_ok(
        fruits()
            .env("FRUITS_LOG", "warn,fruits=info")
            .arg("train")
            .arg("--features")
            .arg(&features)
            .arg("--output")
            .arg(&trained_dir)
            .args([
                "--components",
                "16",
                "--photo-views",
                "0",
                "--studio-scenes",
                "1",
                "--photos",
            ])
            .arg(&photos)
            .arg("--backgrounds")
            .arg(common::backgrounds()),
    );
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(log.contains("kind head trained") && log.contains("scenes=20"), "{log}");
    assert!(!trained_dir.join("_work").exists(), "the scenes' scratch is removed");

    // Scenes without backgrounds, or on an empty folder: refused before any work.
    let refused = dir.path().join("refused");
    let result = run_into(&refused).env_remove("FRUITS_BACKGROUNDS").output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("no --backgrounds given") && stderr.contains("scripts/backgrounds"),
        "{stderr}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let result = run_into(&refused).arg("--backgrounds").arg(&empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("no background photographs in"), "{stderr}");
    assert!(!refused.exists(), "nothing was written");
}

#[test]
#[ignore = "end-to-end: fruits run and fruits serve with the installed model and backgrounds; scripts/test runs it"]
fn a_localiser_learned_from_scenes_looks_where_the_fruits_are() {
    use common::http::Server;
    let dir = tempfile::tempdir().unwrap();
    let classes = ["Apple Braeburn 1", "Banana 1"];
    let (train, test) = small_split(dir.path(), &classes, (20, 4));
    let photos = dir.path().join("photos");
    common::link_real_photos("train", &["apple", "banana"], 6, &photos);
    let out = dir.path().join("out");
    let mut cmd = common::fruits_run(&train, &test, &out);
    cmd.args(["--components", "16", "--photo-views", "0", "--localiser-scenes", "200"])
        .arg("--photos")
        .arg(&photos)
        .arg("--backgrounds")
        .arg(common::backgrounds());
    run_ok(&mut cmd);
    let found = &json_file(&out.join("report/metrics.json"))["localiser"];
    assert_eq!(
        (found["train_scenes"].as_u64(), found["test_scenes"].as_u64()),
        (Some(160), Some(40))
    );
    // Over a 16-component PCA of 40 shots (the full run reads ~200: 0.91 and 0.96).
    for (figure, floor) in [("recall", 0.6), ("precision", 0.85)] {
        assert!(found[figure].as_f64().unwrap() > floor, "held-out scene cells: {found}");
    }
    assert!(json_file(&out.join("model/bundle.json"))["localiser"]["classifier"]["sha256"].is_string());

    // A photo of a room's wall with an apple on the left and a banana on the
    // right (studio shots the run did not learn from, cut out of their white).
    let background = first_background().resize_exact(960, 640, image::imageops::FilterType::Triangle);
    let apple = image::open(&common::class_images(classes[0])[100]).unwrap().to_rgb8();
    let banana = image::open(&common::class_images(classes[1])[100]).unwrap().to_rgb8();
    let mut photo = background.to_rgb8();
    paste_cut_out(&mut photo, &apple, (240, 320), 300);
    paste_cut_out(&mut photo, &banana, (720, 320), 300);
    let server = Server::start(&out, &["--rate-limit", "0"]);
    let answer = server.post_image("/v1/identify", "image/jpeg", &jpeg(&photo)).json();
    // The grid views that are mostly fruit (touching fruits are told apart
    // by them), and a view of each fruit that fits one.
    let views = answer["views"].as_u64().unwrap();
    assert!((3..=9).contains(&views), "{answer}");
    let regions = answer["regions"].as_array().unwrap();
    let centre = |kind: &str| {
        let r = regions
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind}: {answer}"));
        let b = &r["box"];
        let at = |start: &str, length: &str| b[start].as_f64().unwrap() + b[length].as_f64().unwrap() / 2.0;
        (at("x", "width"), at("y", "height"))
    };
    let ((ax, ay), (bx, by)) = (centre("apple"), centre("banana"));
    assert!(
        (ax - 0.25).abs() < 0.12 && (ay - 0.5).abs() < 0.15,
        "apple at ({ax}, {ay})"
    );
    assert!(
        (bx - 0.75).abs() < 0.12 && (by - 0.5).abs() < 0.15,
        "banana at ({bx}, {by})"
    );

    // A small apple on a large wall: a view of it besides the whole photo,
    // and at most the grid view it lies in (the grid alone: 7 views).
    let wide = first_background().resize_exact(1600, 1200, image::imageops::FilterType::Triangle);
    let mut small = wide.to_rgb8();
    paste_cut_out(&mut small, &apple, (1100, 400), 240);
    let answer = server.post_image("/v1/identify", "image/jpeg", &jpeg(&small)).json();
    assert!((2..=3).contains(&answer["views"].as_u64().unwrap()), "{answer}");
    assert_eq!(answer["kind"]["id"], "apple", "{answer}");

    // The wall alone: no fruit found, the whole photo is all there is to see.
    let wall = server
        .post_image("/v1/identify", "image/jpeg", &jpeg(&wide.to_rgb8()))
        .json();
    assert_eq!(wall["views"], 1, "{wall}");
    assert_eq!(wall["regions"].as_array().unwrap().len(), 0);
}

/// The first photograph (by name) of the installed backgrounds.
fn first_background() -> image::DynamicImage {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::backgrounds())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fruits_storage::is_image_name(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    image::open(&files[0]).unwrap()
}

/// Pastes a studio shot scaled to `side` px, centred at `centre`, leaving
/// out its near-white pixels.
fn paste_cut_out(photo: &mut image::RgbImage, shot: &image::RgbImage, centre: (u32, u32), side: u32) {
    let shot = image::imageops::resize(shot, side, side, image::imageops::FilterType::Triangle);
    for (x, y, px) in shot.enumerate_pixels() {
        if px.0.iter().all(|&c| c >= 235) {
            continue;
        }
        photo.put_pixel(centre.0 - side / 2 + x, centre.1 - side / 2 + y, *px);
    }
}

fn jpeg(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(image)
        .unwrap();
    bytes
}

/// `fruits featurize --input input --output output`, which must succeed.
fn featurize(input: &Path, output: &Path) {
    run_ok(
        fruits()
            .arg("featurize")
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output),
    );
}

/// `per_class.0` training and `per_class.1` test images of each class, linked
/// into `dir/train/<class>` and `dir/test/<class>`.
fn small_split(dir: &Path, classes: &[&str], per_class: (usize, usize)) -> (PathBuf, PathBuf) {
    for class in classes {
        let images = common::class_images(class);
        for (split, range) in [
            ("train", 0..per_class.0),
            ("test", per_class.0..per_class.0 + per_class.1),
        ] {
            let to = dir.join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            for image in &images[range] {
                std::os::unix::fs::symlink(image, to.join(image.file_name().unwrap())).unwrap();
            }
        }
    }
    (dir.join("train"), dir.join("test"))
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The data files under `out/dir` that `_SUCCESS` does not list.
fn unlisted(out: &Path, dir: &str) -> Vec<String> {
    let summary = json_file(&out.join("_SUCCESS"));
    let listed: Vec<&str> = ["features", "errors"]
        .iter()
        .flat_map(|d| summary["files"][d].as_array().unwrap())
        .map(|f| f.as_str().unwrap())
        .collect();
    std::fs::read_dir(out.join(dir))
        .map(|d| {
            d.map(|e| format!("file://{}", e.unwrap().path().display()))
                .filter(|f| !listed.contains(&f.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "end-to-end: fruits run and fruits serve with the installed model; scripts/test runs it"]
fn a_rerun_is_invisible_until_it_commits_and_a_killed_one_leaves_the_last_result_whole() {
    use common::http::{Server, ADMIN_TOKEN};
    let tmp = tempfile::tempdir().unwrap();
    let four = ["Apple Braeburn 1", "Banana 1", "Kiwi 1", "Lemon 1"];
    let (train, test) = small_split(&tmp.path().join("four"), &four, (40, 10));
    let (train3, test3) = small_split(&tmp.path().join("three"), &four[..3], (40, 10));
    let out = tmp.path().join("out");
    // More trees and a second classifier's worth of time between the first
    // data file and the commit: the window the rerun is caught in.
    let rerun = |train: &Path, test: &Path| {
        let mut cmd = fruits_run(train, test, &out);
        cmd.args(["--rows-per-task", "16"]);
        cmd
    };
    run_ok(&mut rerun(&train, &test));
    let committed = std::fs::read(out.join("_SUCCESS")).unwrap();
    let server = Server::start(&out, &["--rate-limit", "0"]);
    let old = server.get("/readyz").json();
    assert_eq!(old["classes"], 4);

    // Rerun A is frozen once its first data file is written (its PCA is
    // fitted, the bundle comes next), then killed.
    let mut a = rerun(&train3, &test3).spawn().unwrap();
    let start = std::time::Instant::now();
    while unlisted(&out, "features").is_empty() {
        assert!(
            a.try_wait().unwrap().is_none(),
            "the rerun ended before it was caught mid-way"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "the rerun wrote nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    signal(&a, "STOP");
    // A second job into the same output is refused while A holds the lease.
    let second = rerun(&train3, &test3).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && stderr.contains("is in use by job"),
        "{stderr}"
    );
    // A service started now loads the last committed model.
    let restarted = Server::start(&out, &["--rate-limit", "0"]);
    assert_eq!(restarted.get("/readyz").json()["model"], old["model"]);
    drop(restarted);
    signal(&a, "KILL");
    a.wait().unwrap();
    assert_eq!(
        std::fs::read(out.join("_SUCCESS")).unwrap(),
        committed,
        "still the last result"
    );
    let summary = json_file(&out.join("_SUCCESS"));
    for file in ["features", "errors"]
        .iter()
        .flat_map(|d| summary["files"][d].as_array().unwrap())
    {
        let path = file.as_str().unwrap().trim_start_matches("file://");
        assert!(Path::new(path).is_file(), "{path} is still there");
    }

    // Rerun B (the killed job's lease is taken over at once) while the
    // service reloads again and again: every reload gets a whole bundle,
    // the old one until B commits, then the new one.
    let reload = || {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        server.send("POST", "/v1/admin/reload", &[("authorization", auth.as_str())], b"")
    };
    let mut b = rerun(&train3, &test3).spawn().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while b.try_wait().unwrap().is_none() {
        let r = reload();
        assert_eq!(r.status, 200, "a reload mid-run failed: {}", r.text());
        seen.insert(r.json()["model"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(b.wait().unwrap().success());
    let new = reload().json()["model"].as_str().unwrap().to_string();
    assert_ne!(new, old["model"].as_str().unwrap());
    assert_eq!(server.get("/readyz").json()["classes"], 3);
    seen.remove(&new);
    seen.remove(old["model"].as_str().unwrap());
    assert!(seen.is_empty(), "models neither old nor new: {seen:?}");
    // What is left is exactly the new result: no file of A, no lease, no
    // scratch. (A killed writer's upload in progress, `NAME.parquet#N`, is
    // object_store's staging file: no listing shows it, no reader reads it.)
    for dir in ["features", "errors"] {
        let data: Vec<String> = unlisted(&out, dir)
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .collect();
        assert_eq!(data, Vec::<String>::new());
    }
    let bundle = json_file(&out.join("model/bundle.json"));
    let models = std::fs::read_dir(out.join("model")).unwrap().count();
    assert_eq!(
        models,
        1 + 1 + bundle["classifiers"].as_array().unwrap().len(),
        "bundle.json, pca, classifiers"
    );
    assert!(!out.join("_LEASE").exists() && !out.join("_work").exists());
}
