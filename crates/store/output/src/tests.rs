//! The commit rule and part files on an in-memory store: no disk, no engine.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use object_store::memory::InMemory;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::*;

fn memory() -> Location {
    Location {
        root: "memory://".into(),
        prefix: Path::from("out"),
        store: Arc::new(InMemory::new()),
    }
}

fn batch(rows: i32) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from_iter_values(0..rows))]).unwrap()
}

async fn names(out: &Location) -> Vec<String> {
    let mut listed: Vec<String> = out
        .store
        .list(Some(&out.prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    listed
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    job_id: String,
    files: Vec<String>,
}

#[tokio::test]
async fn a_rerun_replaces_the_files_and_success_is_written_last() {
    let out = memory();
    // An earlier run, committed.
    let mut first = PartWriter::new(&out, "features", "job1", batch(1).schema(), vec![]);
    first.write(&batch(10)).await.unwrap();
    let old_files = first.finish().await.unwrap().uris();
    commit(
        &out,
        &Summary {
            job_id: "job1".into(),
            files: old_files.clone(),
        },
    )
    .await
    .unwrap();

    // The rerun writes beside the last result, which stays committed and
    // whole until the new _SUCCESS replaces it.
    let mut second = PartWriter::new(&out, "features", "job2", batch(1).schema(), vec![]);
    second.write(&batch(5)).await.unwrap();
    let written = second.finish().await.unwrap();
    let (new_files, rows) = (written.uris(), written.rows);
    assert_eq!(rows, 5);
    assert_eq!(names(&out).await.len(), 3);
    assert_eq!(committed_files(&out, "features").await.unwrap(), old_files);
    let summary = Summary {
        job_id: "job2".into(),
        files: new_files.clone(),
    };
    commit(&out, &summary).await.unwrap();
    assert_eq!(committed_files(&out, "features").await.unwrap(), new_files);
    let removed = remove_stale(&out, "features", &new_files).await.unwrap();
    assert_eq!(removed, 1);

    assert_eq!(
        names(&out).await,
        vec![
            "out/_SUCCESS".to_string(),
            "out/features/part-job2-00000.parquet".to_string()
        ]
    );
    assert_eq!(read_committed::<Summary>(&out).await.unwrap(), summary);
    assert!(!new_files.iter().any(|f| old_files.contains(f)));
}

#[tokio::test]
async fn readers_get_the_listed_files_of_a_folder_even_after_a_move() {
    let out = memory();
    // Listed under another root (the output was copied), nested by kind
    // (a featurize summary) and beside files of other folders.
    let summary = serde_json::json!({
        "files": {
            "features": ["s3://old/place/features/part-a-00000.parquet", "s3://old/place/features/part-a-00001.parquet"],
            "errors": ["s3://old/place/errors/part-a-00000.parquet"]
        }
    });
    commit(&out, &summary).await.unwrap();
    assert_eq!(
        committed_files(&out, "features").await.unwrap(),
        vec![
            "memory:///out/features/part-a-00000.parquet".to_string(),
            "memory:///out/features/part-a-00001.parquet".to_string()
        ]
    );
    assert_eq!(committed_files(&out, "errors").await.unwrap().len(), 1);
    commit(&out, &serde_json::json!({"rows": 3})).await.unwrap();
    let err = committed_files(&out, "features").await.unwrap_err().to_string();
    assert!(err.contains("lists no files"), "{err}");
}

#[tokio::test]
async fn a_second_job_is_refused_while_the_first_holds_the_lease() {
    let out = memory();
    let first = Lease::take(&out, "job1", TTL).await.unwrap();
    let err = Lease::take(&out, "job2", TTL).await.unwrap_err().to_string();
    assert!(
        err.contains("in use by job job1") && err.contains("write elsewhere"),
        "{err}"
    );
    first.release().await;
    let second = Lease::take(&out, "job2", TTL).await.unwrap();
    assert_eq!(second.holder().job, "job2");
}

#[tokio::test]
async fn an_expired_lease_or_one_of_a_dead_process_is_taken_over_in_memory() {
    taken_over_and_its_holder_loses_it(memory()).await;
}

/// A local disk has no conditional replace: the take-over deletes, then creates.
#[tokio::test]
async fn an_expired_lease_or_one_of_a_dead_process_is_taken_over_on_a_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let out = Location::parse(dir.path().join("out").to_str().unwrap()).unwrap();
    taken_over_and_its_holder_loses_it(out).await;
}

async fn taken_over_and_its_holder_loses_it(out: Location) {
    let mut first = Lease::take(&out, "job1", std::time::Duration::ZERO).await.unwrap();
    let mut second = Lease::take(&out, "job2", TTL).await.unwrap();
    let err = first.renew().await.unwrap_err().to_string();
    assert!(err.contains("lost its lease") && err.contains("job job2"), "{err}");
    second.renew().await.unwrap();
    // A lease written by a process of this machine that has ended.
    let dead = Holder {
        job: "job3".into(),
        process: format!("{}:{}", this_process().rsplit_once(':').unwrap().0, u32::MAX),
        expires: u64::MAX / 2,
    };
    put(&out.store, &out.child(LEASE), serde_json::to_vec(&dead).unwrap())
        .await
        .unwrap();
    assert!(second.renew().await.is_err(), "job3 holds it now");
    let third = Lease::take(&out, "job4", TTL).await.unwrap();
    assert_eq!(third.holder().job, "job4");
}

#[tokio::test]
async fn part_files_roll_over_at_the_row_limit() {
    let out = memory();
    let mut writer = PartWriter::new(&out, "features", "job", batch(1).schema(), vec![]).with_rows_per_file(10);
    for _ in 0..5 {
        writer.write(&batch(4)).await.unwrap();
    }
    writer.write(&batch(0)).await.unwrap();
    let written = writer.finish().await.unwrap();
    assert_eq!(written.rows, 20);
    // A file ends at exactly 10 rows.
    assert_eq!(written.files.iter().map(|f| f.rows).collect::<Vec<_>>(), vec![10, 10]);
    assert_eq!(
        written.uris(),
        vec![
            "memory:///out/features/part-job-00000.parquet".to_string(),
            "memory:///out/features/part-job-00001.parquet".to_string()
        ]
    );
}

#[tokio::test]
async fn an_empty_dataset_still_gets_one_file_for_its_schema() {
    let out = memory();
    let writer = PartWriter::new(&out, "errors", "job", batch(1).schema(), vec![]);
    let written = writer.finish().await.unwrap();
    assert_eq!((written.files.len(), written.rows), (1, 0));
    assert_eq!(names(&out).await, vec!["out/errors/part-job-00000.parquet".to_string()]);
}

#[tokio::test]
async fn a_success_of_another_shape_is_a_clear_error() {
    let out = memory();
    commit(&out, &serde_json::json!({"rows": 3})).await.unwrap();
    let err = read_committed::<Summary>(&out).await.unwrap_err().to_string();
    assert!(err.contains("is not the summary expected here"), "{err}");
}

#[tokio::test]
async fn remove_prefix_clears_scratch_only() {
    let out = memory();
    put(&out.store, &out.child("_temporary/a/manifest/1"), b"x".to_vec())
        .await
        .unwrap();
    put(&out.store, &out.child("_temporary/a/manifest/2"), b"x".to_vec())
        .await
        .unwrap();
    put(&out.store, &out.child("keep/this"), b"x".to_vec()).await.unwrap();
    remove_prefix(&out, &out.child("_temporary/a")).await;
    assert_eq!(names(&out).await, vec!["out/keep/this".to_string()]);
}

/// The bytes of `files`, in order.
async fn contents(out: &Location, files: &[DataFile]) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for f in files {
        let path = Path::from(f.uri.trim_start_matches("memory:///"));
        all.push(out.store.get(&path).await.unwrap().bytes().await.unwrap().to_vec());
    }
    all
}

#[tokio::test]
async fn the_same_rows_in_other_batches_give_the_same_bytes_and_digests() {
    let out = memory();
    let rows = batch(5000);
    let mut a = PartWriter::new(&out, "a", "job", rows.schema(), vec![]).with_rows_per_file(2100);
    a.write(&rows).await.unwrap();
    let a = a.finish().await.unwrap();
    let mut b = PartWriter::new(&out, "b", "job", rows.schema(), vec![]).with_rows_per_file(2100);
    for (start, len) in [(0, 7), (7, 1500), (1507, 1), (1508, 3000), (4508, 492)] {
        b.write(&rows.slice(start, len)).await.unwrap();
    }
    let b = b.finish().await.unwrap();
    assert_eq!(
        a.files.iter().map(|f| f.rows).collect::<Vec<_>>(),
        vec![2100, 2100, 800]
    );
    let (bytes_a, bytes_b) = (contents(&out, &a.files).await, contents(&out, &b.files).await);
    assert_eq!(bytes_a, bytes_b, "the bytes depend on the rows alone");
    for (file, bytes) in a.files.iter().zip(&bytes_a) {
        assert_eq!(file.sha256, fruits_common::sha256_hex(bytes));
    }
    assert_eq!(
        a.files.iter().map(|f| &f.sha256).collect::<Vec<_>>(),
        b.files.iter().map(|f| &f.sha256).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_checkpoint_closes_the_file_so_its_rows_are_complete() {
    let out = memory();
    let mut writer = PartWriter::new(&out, "features", "job", batch(1).schema(), vec![]).with_stem("chunk");
    writer.write(&batch(3)).await.unwrap();
    writer.checkpoint().await.unwrap();
    writer.checkpoint().await.unwrap();
    assert_eq!(
        names(&out).await,
        vec!["out/features/chunk-job-00000.parquet".to_string()]
    );
    writer.write(&batch(2)).await.unwrap();
    let written = writer.finish().await.unwrap();
    assert_eq!(written.files.iter().map(|f| f.rows).collect::<Vec<_>>(), vec![3, 2]);
}
