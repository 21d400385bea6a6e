//! The outputs as other tools read them: pyarrow, pandas, polars and DuckDB
//! (PyPI packages `scripts/test` installs) read a featurize output and a run
//! output, only the files `_SUCCESS` lists, vector columns as arrays.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fruits, fruits_run, link_class_images, read_parquet_dir, run_ok};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float32Type;

/// `path → [sum of each vector column]`, as this crate's own reader sees it.
fn sums(out: &Path, vectors: &[&str]) -> BTreeMap<String, Vec<f64>> {
    let mut all = BTreeMap::new();
    for b in read_parquet_dir(&out.join("features")) {
        let paths = b.column_by_name("path").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            let row_sums = vectors
                .iter()
                .map(|name| {
                    let column = b.column_by_name(name).unwrap();
                    let v = match column.data_type() {
                        datafusion::arrow::datatypes::DataType::FixedSizeList(..) => {
                            column.as_fixed_size_list().value(i)
                        }
                        _ => column.as_list::<i32>().value(i),
                    };
                    v.as_primitive::<Float32Type>()
                        .values()
                        .iter()
                        .map(|x| f64::from(*x))
                        .sum()
                })
                .collect();
            all.insert(paths.value(i).to_string(), row_sums);
        }
    }
    all
}

fn python() -> String {
    std::env::var("FRUITS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What `tests/readers/read.py` prints for `out`.
fn read_with_python_tools(out: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/read.py");
    let output = std::process::Command::new(python())
        .arg(script)
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every tool read every committed row once, vectors of the right width and values.
fn check(out: &Path, widths: &[(&str, u64)]) {
    let names: Vec<&str> = widths.iter().map(|(n, _)| *n).collect();
    let expected = sums(out, &names);
    let read = read_with_python_tools(out);
    for tool in ["pyarrow", "pandas", "polars", "duckdb"] {
        let seen = &read[tool];
        assert_eq!(seen["rows"], expected.len(), "{tool}");
        for (name, width) in widths {
            assert_eq!(seen["width"][name], *width, "{tool}: {name}");
        }
        for (path, sums) in &expected {
            let theirs = seen["sums"][path]
                .as_array()
                .unwrap_or_else(|| panic!("{tool}: no {path}"));
            for (mine, theirs) in sums.iter().zip(theirs) {
                let theirs = theirs.as_f64().unwrap();
                assert!(
                    (mine - theirs).abs() < 1e-3 * mine.abs().max(1.0),
                    "{tool}: {path}: {mine} vs {theirs}"
                );
            }
        }
    }
}

fn input(root: &Path, classes: &[&str], per_class: usize) -> PathBuf {
    for class in classes {
        link_class_images(class, per_class, root);
    }
    root.to_path_buf()
}

#[test]
#[ignore = "end-to-end: the installed model, and pyarrow, pandas, polars and DuckDB; scripts/test installs them"]
fn pyarrow_pandas_polars_and_duckdb_read_a_featurize_output() {
    let tmp = tempfile::tempdir().unwrap();
    let images = input(&tmp.path().join("input"), &["Lemon 1", "Kiwi 1", "Banana 1"], 12);
    let out = tmp.path().join("out");
    run_ok(
        fruits()
            .arg("featurize")
            .arg("--input")
            .arg(&images)
            .arg("--output")
            .arg(&out),
    );
    // A file no `_SUCCESS` lists (what a job that died leaves) is not read.
    let listed = read_parquet_dir(&out.join("features"));
    assert_eq!(listed.iter().map(|b| b.num_rows()).sum::<usize>(), 36);
    let any = std::fs::read_dir(out.join("features"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&any, tmp.path().join("stray.parquet")).unwrap();
    check(&out, &[("features", 1280)]);
    std::fs::copy(
        tmp.path().join("stray.parquet"),
        out.join("features/part-stray-00000.parquet"),
    )
    .unwrap();
    let read = read_with_python_tools(&out);
    assert_eq!(read["duckdb"]["rows"], 36, "the stray file is not read");
}

#[test]
#[ignore = "end-to-end: the installed model, and pyarrow, pandas, polars and DuckDB; scripts/test installs them"]
fn pyarrow_pandas_polars_and_duckdb_read_a_run_output_with_its_pca_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = ["Lemon 1", "Kiwi 1", "Banana 1"];
    let train = input(&tmp.path().join("train"), &classes, 10);
    let test = tmp.path().join("test");
    for class in classes {
        let images = common::class_images(class);
        std::fs::create_dir_all(test.join(class)).unwrap();
        for image in images.iter().skip(10).take(4) {
            std::os::unix::fs::symlink(image, test.join(class).join(image.file_name().unwrap())).unwrap();
        }
    }
    let out = tmp.path().join("run");
    run_ok(fruits_run(&train, &test, &out).args(["--components", "8"]));
    check(&out, &[("features", 1280), ("pca", 8)]);
}
