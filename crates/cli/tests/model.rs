//! `fruits model install` is idempotent and a damaged model is a clear error.

mod common;

use common::{class_images, fruits, run_ok};

fn model_dir() -> std::path::PathBuf {
    fruits_backbone::default_model_dir()
}

#[test]
#[ignore = "end-to-end: the installed model; scripts/test installs it and runs this"]
fn install_twice_is_a_no_op_that_says_so() {
    let out = run_ok(fruits().args(["model", "install"]).arg("--model-dir").arg(model_dir()));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("already installed"), "{stdout}");
}

#[test]
#[ignore = "end-to-end: the installed model; scripts/test installs it and runs this"]
fn a_corrupt_onnx_file_is_reported_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir();
    let manifest = fruits_backbone::Manifest::load(&src).expect("model installed: run `fruits model install`");
    std::fs::copy(src.join("manifest.json"), tmp.path().join("manifest.json")).unwrap();
    std::fs::create_dir_all(tmp.path().join("lib")).unwrap();
    std::os::unix::fs::symlink(manifest.library_path(&src), manifest.library_path(tmp.path())).unwrap();
    std::fs::write(manifest.onnx_path(tmp.path()), b"not an onnx model").unwrap();
    let image = &class_images("Banana 1")[0];
    let out = fruits()
        .args(["model", "imagenet", "--model-dir"])
        .arg(tmp.path())
        .arg(image)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("is corrupt") && stderr.contains("--force"), "{stderr}");
}
