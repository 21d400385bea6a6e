//! `fruits featurize` end to end on the in-process Ballista engine, with real
//! images, the real model, and broken files planted among them.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::{class_images, featurize, fruits, link_class_images, read_parquet_dir, run_ok, success_json, training};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float32Type;

/// Files that are not images, or not whole ones; each must become an errors row.
fn plant_broken(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let real = std::fs::read(&class_images("Lemon 1")[0]).unwrap();
    let mut garbage_png = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage_png.extend((0..500u32).map(|i| (i * 7919 % 251) as u8));
    let planted = [
        ("empty.jpg", Vec::new()),
        ("notes.jpg", b"this is a text file with a .jpg name".to_vec()),
        ("header-only.JPG", real[..200].to_vec()),
        ("garbage.png", garbage_png),
    ];
    planted
        .into_iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

/// `(path, label, features)` rows of `OUTPUT/features/`.
fn feature_rows(out: &Path) -> Vec<(String, String, Vec<f32>)> {
    let batches: Vec<RecordBatch> = read_parquet_dir(&out.join("features"));
    let mut rows = Vec::new();
    for b in &batches {
        let (paths, labels) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
        let feats = b.column(2).as_fixed_size_list();
        assert_eq!(feats.value_length(), 1280);
        assert_eq!(feats.null_count(), 0);
        for i in 0..b.num_rows() {
            let v = feats.value(i);
            let v = v.as_primitive::<Float32Type>().values().to_vec();
            rows.push((paths.value(i).to_string(), labels.value(i).to_string(), v));
        }
    }
    rows
}

fn error_rows(out: &Path) -> Vec<(String, String)> {
    read_parquet_dir(&out.join("errors"))
        .iter()
        .flat_map(|b| {
            let (p, e) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
            (0..b.num_rows())
                .map(|i| (p.value(i).to_string(), e.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn count_images(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                count_images(&p)
            } else {
                usize::from(fruits_storage::is_image_name(p.file_name().unwrap().to_str().unwrap()))
            }
        })
        .sum()
}

/// Peak resident memory (MiB) of a child, polled until it exits.
fn wait_with_peak_rss(mut child: std::process::Child) -> (std::process::ExitStatus, f64) {
    let mut peak = 0.0f64;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        peak = peak.max(fruits_bench::process::peak_rss_mib(child.id()));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_3_gb_object_among_images_is_an_error_row_and_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let images = link_class_images("Lemon 1", 100, &tmp.path().join("input"));
    // Sparse: 3 GB listed, no disk used.
    let huge = std::fs::File::create(tmp.path().join("input/Lemon 1/huge.jpg")).unwrap();
    huge.set_len(3 << 30).unwrap();
    let out = tmp.path().join("out");
    let child = featurize(&tmp.path().join("input"), &out, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_mib) = wait_with_peak_rss(child);
    assert!(status.success(), "{status:?}");
    eprintln!("featurize beside a 3 GB object: peak RSS {peak_mib:.0} MiB");
    assert!(peak_mib > 0.0 && peak_mib < 1024.0, "peak RSS {peak_mib:.0} MiB");
    assert_eq!(feature_rows(&out).len(), images.len());
    let errors = error_rows(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.ends_with("/huge.jpg"), "{errors:?}");
    assert!(errors[0].1.contains("3072.0 MiB, over the 64 MiB limit"), "{errors:?}");
    let summary = success_json(&out);
    assert_eq!(summary["objects_listed"], images.len() + 1);
    assert_eq!(
        (summary["featurized"].as_u64(), summary["failed"].as_u64()),
        (Some(100), Some(1))
    );
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn whole_training_folder_gives_one_row_per_image_and_one_error_per_broken_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("Training");
    std::fs::create_dir_all(&input).unwrap();
    for class in std::fs::read_dir(training()).unwrap() {
        let class = class.unwrap().path();
        std::os::unix::fs::symlink(&class, input.join(class.file_name().unwrap())).unwrap();
    }
    let planted = plant_broken(&input.join("Planted"));
    let expected_images = count_images(&training());
    assert!(
        expected_images > 16_000,
        "the shared Training folder has {expected_images} images"
    );
    let out = tmp.path().join("out");

    run_ok(&mut featurize(&input, &out, &[]));

    let rows = feature_rows(&out);
    assert_eq!(rows.len(), expected_images, "exactly one features row per real image");
    let paths: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(paths.len(), rows.len(), "no image twice");
    for (path, label, v) in &rows {
        let parent = Path::new(path).parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(label, parent, "label is the class folder of {path}");
        assert!(v.iter().all(|x| x.is_finite()), "{path} has a non-finite feature");
        assert!(v.iter().any(|&x| x != 0.0), "{path} has an all-zero vector");
    }

    let errors = error_rows(&out);
    let mut got: Vec<&str> = errors.iter().map(|(p, _)| p.rsplit('/').next().unwrap()).collect();
    let mut want: Vec<&str> = planted
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every planted file, and only those, is in errors/");
    assert!(errors.iter().all(|(_, e)| !e.is_empty()));
    let by_name = |n: &str| &errors.iter().find(|(p, _)| p.ends_with(n)).unwrap().1;
    assert_eq!(by_name("empty.jpg"), "empty file");
    assert!(by_name("notes.jpg").contains("not a supported image"));

    let summary = success_json(&out);
    assert_eq!(summary["objects_listed"], expected_images + planted.len());
    assert_eq!(summary["featurized"], expected_images);
    assert_eq!(summary["failed"], planted.len());
    assert_eq!(summary["input_size"], 224);
    assert!(!out.join("_temporary").exists() || count_images(&out.join("_temporary")) == 0);
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_rerun_replaces_the_previous_output_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let input = training().join("Banana 1");
    let run = |limit: &str, size: &str| {
        run_ok(&mut featurize(
            &input,
            &out,
            &["--limit", limit, "--input-size", size, "--rows-per-task", "8"],
        ))
    };
    run("40", "224");
    assert_eq!(feature_rows(&out).len(), 40);
    let first = success_json(&out);
    run("12", "100");
    let rows = feature_rows(&out);
    assert_eq!(rows.len(), 12, "nothing of the first run is left");
    let summary = success_json(&out);
    assert_ne!(summary["job_id"], first["job_id"]);
    assert_eq!(summary["input_size"], 100);
    let listed: HashSet<String> = std::fs::read_dir(out.join("features"))
        .unwrap()
        .map(|e| format!("file://{}", e.unwrap().path().display()))
        .collect();
    let committed: HashSet<String> = summary["files"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, committed, "the folder holds exactly the files _SUCCESS names");
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn same_image_gives_the_same_features_in_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = training().join("Lemon 1");
    let run = |out: &Path, per_task: &str| {
        run_ok(&mut featurize(
            &input,
            out,
            &["--limit", "20", "--rows-per-task", per_task],
        ));
        let mut rows = feature_rows(out);
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let (a, b) = (run(&tmp.path().join("a"), "3"), run(&tmp.path().join("b"), "20"));
    assert_eq!(a.len(), 20);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        let worst = x.2.iter().zip(&y.2).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{}: batching changed the features by {worst}", x.0);
    }
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_symbolic_link_loop_is_an_error_row_and_the_listing_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    for class in ["Lemon 1", "Kiwi 1"] {
        link_class_images(class, 5, &input);
    }
    // A folder that leads back to the input's root, between the two classes.
    std::os::unix::fs::symlink("..", input.join("Lemon 1/loop")).unwrap();
    let out = tmp.path().join("out");
    run_ok(&mut featurize(&input, &out, &[]));
    assert_eq!(feature_rows(&out).len(), 10, "every image of both classes");
    let errors = error_rows(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.ends_with("/Lemon 1/loop"), "{errors:?}");
    assert!(errors[0].1.contains("symbolic link loop"), "{errors:?}");
    assert_eq!(success_json(&out)["failed"], 1);
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_rerun_with_a_misspelled_input_leaves_the_last_result_whole() {
    let tmp = tempfile::tempdir().unwrap();
    link_class_images("Lemon 1", 10, &tmp.path().join("input"));
    let out = tmp.path().join("out");
    run_ok(&mut featurize(&tmp.path().join("input"), &out, &[]));
    let before = success_json(&out);
    let rerun = featurize(&tmp.path().join("inptu"), &out, &[]).output().unwrap();
    assert!(!rerun.status.success());
    let stderr = String::from_utf8(rerun.stderr).unwrap();
    assert!(stderr.starts_with("error: no images"), "{stderr}");
    assert_eq!(success_json(&out), before, "the last result is still committed");
    for file in before["files"]["features"].as_array().unwrap() {
        let path = file.as_str().unwrap().trim_start_matches("file://");
        assert!(Path::new(path).is_file(), "{path} is still there");
    }
    assert_eq!(feature_rows(&out).len(), 10);
    assert!(
        !out.join("_temporary").read_dir().is_ok_and(|mut d| d.next().is_some()),
        "no scratch left behind"
    );
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_folder_without_images_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("readme.txt"), "no images here").unwrap();
    let out = featurize(tmp.path(), &tmp.path().join("o"), &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: no images"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line, no backtrace: {stderr}");
    assert!(!tmp.path().join("o/_SUCCESS").exists());
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn a_missing_model_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let no_model = tmp.path().join("no-model");
    let out = featurize(
        &training().join("Banana 1"),
        &tmp.path().join("o"),
        &["--model-dir", no_model.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("fruits model install"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn two_jobs_into_one_output_two_seconds_apart_one_refuses_and_the_other_commits_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    for class in ["Lemon 1", "Kiwi 1", "Banana 1", "Cherry 1", "Tomato 1"] {
        link_class_images(class, 100, &input);
    }
    let out = tmp.path().join("out");
    // fp32: the slower model keeps the first job running past two seconds.
    let args = ["--rows-per-task", "16", "--precision", "fp32"];
    let first = featurize(&input, &out, &args).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let second = featurize(&input, &out, &args).output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let summary = success_json(&out);
    let stderr = String::from_utf8(second.stderr).unwrap();
    assert!(!second.status.success(), "the second job must refuse");
    let holder = format!("is in use by job {}", summary["job_id"].as_str().unwrap());
    assert!(stderr.starts_with("error: ") && stderr.contains(&holder), "{stderr}");

    // The first job's result is whole: every image once, exactly the listed
    // files in the folder, and the lease released.
    assert_eq!(feature_rows(&out).len(), 500);
    let listed: HashSet<String> = summary["files"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let present: HashSet<String> = std::fs::read_dir(out.join("features"))
        .unwrap()
        .map(|e| format!("file://{}", e.unwrap().path().display()))
        .collect();
    assert_eq!(present, listed);
    assert!(!out.join("_LEASE").exists());

    // Readers read the listed files only: a stray copy of a data file (what
    // a crashed job leaves) is not read twice.
    let one = listed.iter().next().unwrap().trim_start_matches("file://");
    std::fs::copy(one, out.join("features/part-stray-00000.parquet")).unwrap();
    let trained = run_ok(
        fruits()
            .args(["train", "--components", "16", "--features"])
            .arg(&out)
            .arg("--output")
            .arg(tmp.path().join("model")),
    );
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(stdout.contains("trained on 500 rows of 5 classes"), "{stdout}");
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn each_precision_is_recorded_and_a_bundle_never_reads_features_of_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for class in ["Banana 1", "Lemon 1", "Strawberry 1"] {
        link_class_images(class, 12, &input.join(class));
    }
    let manifest = fruits_backbone::Manifest::load(&fruits_backbone::default_model_dir()).unwrap();
    let int8 = manifest
        .int8
        .as_ref()
        .expect("scripts/test installs the int8 model (--calibration)");
    let mut made = Vec::new();
    for precision in ["fp32", "int8"] {
        let out = tmp.path().join(precision);
        run_ok(&mut featurize(&input, &out, &["--precision", precision]));
        let model = &success_json(&out)["model"];
        assert_eq!(model["precision"], precision);
        made.push((out, model["onnx"]["sha256"].as_str().unwrap().to_string()));
    }
    assert_eq!(made[0].1, manifest.onnx.sha256);
    assert_eq!(made[1].1, int8.sha256);
    // Features of one image, both precisions: close, not equal.
    let (fp32, int8) = (feature_rows(&made[0].0), feature_rows(&made[1].0));
    let by_path: std::collections::HashMap<_, _> = fp32.iter().map(|(p, _, f)| (p.clone(), f.clone())).collect();
    for (path, _, q) in &int8 {
        let f = &by_path[path];
        let dot: f32 = f.iter().zip(q).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(f) * norm(q));
        assert!(cosine > 0.9 && cosine < 0.99999, "{path}: cosine {cosine}");
    }
    // A bundle trained on fp32 features refuses int8 features, by name.
    let trained = tmp.path().join("trained");
    run_ok(
        fruits()
            .arg("train")
            .arg("--features")
            .arg(&made[0].0)
            .arg("--output")
            .arg(&trained),
    );
    let out = fruits()
        .args(["evaluate", "--model"])
        .arg(&trained)
        .arg("--input")
        .arg(&made[1].0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("another backbone"), "{stderr}");
    // Given images, it featurizes them with its own precision, whatever the default.
    let out = run_ok(
        fruits()
            .args(["evaluate", "--json", "--model"])
            .arg(&trained)
            .arg("--input")
            .arg(&input)
            .env("FRUITS_PRECISION", "int8"),
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains("accuracy"));
}

#[test]
#[ignore = "end-to-end: the installed model on the shared images; scripts/test runs it"]
fn asking_for_a_gpu_without_one_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = featurize(
        &training().join("Banana 1"),
        &tmp.path().join("o"),
        &["--device", "cuda", "--limit", "4"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("CUDA") && stderr.contains("--device cuda"), "{stderr}");
    assert!(!tmp.path().join("o/_SUCCESS").exists());
}
