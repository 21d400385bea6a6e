//! Incremental and resumed `fruits featurize`, end to end: real images copied
//! out of the shared Training folder, changed, deleted and added to; a client
//! killed mid-job and started again.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{class_images, read_parquet_dir, run_ok, success_json, training};
use datafusion::arrow::array::AsArray;

/// Classes copied into the input: 20 classes of the shared sample, over 2,000 images.
fn classes() -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(training())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    all.sort();
    all.into_iter().take(21).collect()
}

/// Copies (not links: files are changed in place) every image of `classes`
/// into `dest/<class>/`; returns how many.
fn copy_classes(classes: &[String], dest: &Path) -> usize {
    let mut n = 0;
    for class in classes {
        std::fs::create_dir_all(dest.join(class)).unwrap();
        for image in class_images(class) {
            std::fs::copy(&image, dest.join(class).join(image.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    n
}

/// `fruits featurize … --json EXTRA...`.
fn featurize(input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::featurize(input, out, &["--json"]);
    cmd.args(extra);
    cmd
}

fn summary(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).expect("--json prints the summary")
}

/// The bytes of every file `_SUCCESS` lists under `dir`, in its order.
fn committed_bytes(out: &Path, dir: &str) -> Vec<Vec<u8>> {
    success_json(out)["files"][dir]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| std::fs::read(f.as_str().unwrap().trim_start_matches("file://")).unwrap())
        .collect()
}

/// `path → features` of the committed result.
fn rows(out: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut all = BTreeMap::new();
    for b in read_parquet_dir(&out.join("features")) {
        let paths = b.column_by_name("path").unwrap().as_string::<i32>();
        let feats = b.column_by_name("features").unwrap().as_fixed_size_list();
        for i in 0..b.num_rows() {
            let v = feats.value(i);
            let v = v
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
                .values()
                .to_vec();
            assert!(
                all.insert(paths.value(i).to_string(), v).is_none(),
                "{} twice",
                paths.value(i)
            );
        }
    }
    all
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[ignore = "end-to-end: the installed model on 2,400 shared images; scripts/test runs it"]
fn a_rerun_featurizes_only_what_changed_and_equals_a_run_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let all = classes();
    let (kept, extra) = all.split_at(20);
    let total = copy_classes(kept, &input);
    assert!(total >= 2000, "{total} images");
    let out = tmp.path().join("out");
    let first = summary(&run_ok(&mut featurize(&input, &out, &["--sorted"])));
    assert_eq!(first["featurized"], total);

    // 1 % new images (a new class folder), 5 changed in place, 10 deleted.
    let new = total.div_ceil(100);
    let extra_images = class_images(&extra[0]);
    std::fs::create_dir_all(input.join(&extra[0])).unwrap();
    for image in extra_images.iter().take(new) {
        std::fs::copy(image, input.join(&extra[0]).join(image.file_name().unwrap())).unwrap();
    }
    let mut files: Vec<PathBuf> = kept.iter().flat_map(|c| sorted_files(&input.join(c))).collect();
    files.sort();
    for (k, file) in files.iter().step_by(97).take(5).enumerate() {
        // Another image's bytes, so that the features change too.
        std::fs::copy(&extra_images[extra_images.len() - 1 - k], file).unwrap();
    }
    for file in files.iter().skip(13).step_by(101).take(10) {
        std::fs::remove_file(file).unwrap();
    }

    let second = summary(&run_ok(&mut featurize(&input, &out, &["--sorted"])));
    let changes = &second["changes"];
    assert_eq!(
        (changes["new"].as_u64(), changes["changed"].as_u64()),
        (Some(new as u64), Some(5))
    );
    assert_eq!(
        (changes["deleted"].as_u64(), changes["resumed"].as_u64()),
        (Some(10), Some(0))
    );
    assert_eq!(changes["unchanged"], total - 15);
    assert_eq!(second["featurized"], new + 5, "exactly the new and changed images");

    // From scratch on the final folder: the same rows, the same bytes.
    let scratch = tmp.path().join("scratch");
    let full = summary(&run_ok(&mut featurize(&input, &scratch, &["--sorted", "--full"])));
    assert_eq!(full["featurized"], total + new - 10);
    assert_eq!(rows(&out), rows(&scratch));
    for dir in ["features", "errors"] {
        assert_eq!(
            committed_bytes(&out, dir),
            committed_bytes(&scratch, dir),
            "{dir}: byte for byte"
        );
    }
    // Lineage: the same listing, every file's digest right, both jobs named.
    assert_eq!(second["lineage"]["listing_sha256"], full["lineage"]["listing_sha256"]);
    for file in second["lineage"]["files"].as_array().unwrap() {
        let bytes = std::fs::read(file["uri"].as_str().unwrap().trim_start_matches("file://")).unwrap();
        assert_eq!(file["sha256"].as_str().unwrap(), sha256(&bytes));
    }
    let jobs: HashSet<&str> = second["lineage"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    assert!(jobs.contains(first["job_id"].as_str().unwrap()) && jobs.contains(second["job_id"].as_str().unwrap()));

    // Nothing changed: nothing featurized, the result unchanged.
    let again = summary(&run_ok(&mut featurize(&input, &out, &["--sorted"])));
    assert_eq!(again["featurized"], 0);
    assert_eq!(committed_bytes(&out, "features"), committed_bytes(&scratch, "features"));

    // Another output starting from this one's rows (a feature store): nothing
    // featurized, the same bytes; a misspelled --from is an error, not a full run.
    let copy = tmp.path().join("copy");
    let from = out.display().to_string();
    let copied = summary(&run_ok(&mut featurize(&input, &copy, &["--sorted", "--from", &from])));
    assert_eq!(
        (copied["featurized"].as_u64(), copied["changes"]["new"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        committed_bytes(&copy, "features"),
        committed_bytes(&scratch, "features")
    );
    let typo = featurize(&input, &tmp.path().join("typo"), &["--from", &format!("{from}-typo")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        !typo.status.success() && stderr.contains("no committed result"),
        "{stderr}"
    );
    assert!(!tmp.path().join("typo/_SUCCESS").exists());

    // Another computation (input side) recomputes everything, by itself.
    let resized = summary(&run_ok(&mut featurize(&input, &out, &["--input-size", "128"])));
    assert_eq!(resized["featurized"], total + new - 10);
    assert_eq!(resized["changes"]["unchanged"], 0);
    assert!(resized["changes"]["recomputed_all"].is_string(), "{resized}");
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The complete data files under `dir` (a file being written has another name).
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = listing
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}

/// Rows in the data files under `dir` (a killed job's checkpoints).
fn rows_in(dir: &Path) -> usize {
    data_files(dir)
        .iter()
        .map(|f| {
            let file = std::fs::File::open(f).unwrap();
            let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
            datafusion::parquet::file::reader::FileReader::metadata(&reader)
                .file_metadata()
                .num_rows() as usize
        })
        .sum()
}

#[test]
#[ignore = "end-to-end: the installed model on 2,400 shared images; scripts/test runs it"]
fn a_killed_job_started_again_featurizes_only_what_it_had_not_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let total = copy_classes(&classes()[..20], &input);
    let out = tmp.path().join("out");
    let args = ["--rows-per-task", "32", "--parallelism", "2"];
    let mut job = featurize(&input, &out, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once two groups of tasks are written (each group: 8 tasks of 32).
    while data_files(&out.join("features")).len() < 2 {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(!out.join("_SUCCESS").exists(), "nothing committed");
    let finished = rows_in(&out.join("features")) + rows_in(&out.join("errors"));
    assert!(finished >= 512 && finished < total, "{finished} rows were finished");

    let rerun = summary(&run_ok(&mut featurize(&input, &out, &args)));
    assert_eq!(rerun["changes"]["resumed"], finished);
    assert_eq!(rerun["featurized"], total - finished, "only the unfinished images");
    // Complete and exactly once: every image one row, and equal to a run from scratch.
    let resumed = rows(&out);
    assert_eq!(resumed.len(), total);
    let scratch = tmp.path().join("scratch");
    run_ok(&mut featurize(&input, &scratch, &["--full"]));
    assert_eq!(resumed, rows(&scratch));
    assert!(!out.join("_temporary").exists() || sorted_files(&out.join("_temporary")).is_empty());
}
