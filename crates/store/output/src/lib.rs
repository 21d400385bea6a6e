//! The store stage: how a job writes its results to object storage, and the
//! commit rule that makes a result all-or-nothing.
//!
//! Layout: `OUTPUT/features/*.parquet`, `OUTPUT/errors/*.parquet`, `OUTPUT/_SUCCESS`,
//! and `OUTPUT/_LEASE` while a job runs.
//!
//! Rule: a result is complete if and only if `_SUCCESS` exists, and then it is
//! exactly the files `_SUCCESS` lists: readers read those ([`committed_files`]),
//! never a whole folder. A job (1) takes the output's [`Lease`], so that no
//! other job writes there meanwhile, (2) writes its data files under names
//! that carry its job id, beside the last result's, (3) replaces `_SUCCESS`
//! in one put, (4) deletes the files the new `_SUCCESS` does not list, (5)
//! releases the lease. Until (3), readers see the last result, whole; a
//! crash at any step leaves either the last result or the new one committed,
//! plus unlisted files the next run deletes.
//!
//! `_SUCCESS` holds the job's typed summary as JSON: [`commit`] writes it and
//! [`read_committed`] reads it back into the same type.
//!
//! Must not depend on an engine: it writes Arrow batches it is given (Arrow
//! and Parquet come through `datafusion`'s re-exports only, so the tree holds
//! one version of each), through `object_store`.

mod lease;

pub use lease::{this_process, Holder, Lease, LEASE, TTL};

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use fruits_storage::{Location, ObjectUri};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] fruits_storage::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// `_SUCCESS` is there but does not hold what the reader expects.
    #[error("{uri} is not the summary expected here: {cause}")]
    Summary { uri: String, cause: String },
    /// Another job holds the output's lease.
    #[error(
        "{output} is in use by job {job} ({process}), whose lease runs {seconds_left} s more and is renewed while it runs: \
         two jobs into one output would delete each other's files, so this one stops; wait for that job to end or write elsewhere"
    )]
    Busy {
        output: String,
        job: String,
        process: String,
        seconds_left: u64,
    },
    /// This job's lease ran out and it cannot be sure the output is its own.
    #[error("job {job} lost its lease on {output} ({why}): nothing more is written, the result is not committed")]
    LeaseLost { output: String, job: String, why: String },
}

pub const SUCCESS: &str = "_SUCCESS";
/// Rows per data file before a new one is started.
pub const ROWS_PER_FILE: usize = 50_000;

/// Deletes every object under `out/dir` whose URI is not in `keep`.
pub async fn remove_stale(out: &Location, dir: &str, keep: &[String]) -> Result<usize, Error> {
    let folder = out.child(dir);
    let listed: Vec<_> = out
        .store
        .list(Some(&folder.path))
        .try_collect()
        .await
        .map_err(|e| folder.err(e))?;
    let mut removed = 0;
    for meta in listed {
        let uri = ObjectUri {
            root: out.root.clone(),
            path: meta.location.clone(),
        };
        if !keep.contains(&uri.to_string()) {
            out.store.delete(&meta.location).await.map_err(|e| uri.err(e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `_SUCCESS` (the job's summary as JSON) in one put: the act that
/// switches readers from the last result to this one.
pub async fn commit<S: Serialize>(out: &Location, summary: &S) -> Result<(), Error> {
    let marker = out.child(SUCCESS);
    let json = serde_json::to_vec_pretty(summary).expect("a summary serializes");
    put(&out.store, &marker, json).await
}

/// Reads the summary a committed job left in `_SUCCESS`; no `_SUCCESS` is a
/// storage error (not found): the folder is not a complete result.
pub async fn read_committed<S: DeserializeOwned>(out: &Location) -> Result<S, Error> {
    let marker = out.child(SUCCESS);
    let get = out.store.get(&marker.path).await.map_err(|e| marker.err(e))?;
    let bytes = get.bytes().await.map_err(|e| marker.err(e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Summary {
        uri: marker.to_string(),
        cause: e.to_string(),
    })
}

/// The files of `out/dir/` that `out/_SUCCESS` lists, as URIs under `out`:
/// what a reader reads. A file is matched by its folder and name, so a
/// committed output that was copied or moved elsewhere still reads whole.
pub async fn committed_files(out: &Location, dir: &str) -> Result<Vec<String>, Error> {
    let summary: serde_json::Value = read_committed(out).await?;
    let mut listed = Vec::new();
    collect_strings(&summary["files"], &mut listed);
    let marker = out.child(SUCCESS).to_string();
    if summary.get("files").is_none() {
        return Err(Error::Summary {
            uri: marker,
            cause: "it lists no files".into(),
        });
    }
    Ok(listed
        .into_iter()
        .filter_map(|uri| {
            let (folder, name) = uri.rsplit_once('/')?;
            let parent = folder.rsplit('/').next()?;
            (parent == dir && !name.is_empty()).then(|| out.child(&format!("{dir}/{name}")).to_string())
        })
        .collect())
}

fn collect_strings(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => into.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, into)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, into)),
        _ => {}
    }
}

/// A Parquet dataset written as numbered files `DIR/part-JOB-NNNNN.parquet`.
pub struct PartWriter {
    out: Location,
    dir: String,
    job: String,
    schema: SchemaRef,
    metadata: Vec<KeyValue>,
    current: Option<(AsyncArrowWriter<BufWriter>, usize)>,
    files: Vec<String>,
    rows: usize,
    rows_per_file: usize,
}

impl PartWriter {
    pub fn new(out: &Location, dir: &str, job: &str, schema: SchemaRef, metadata: Vec<KeyValue>) -> Self {
        Self {
            out: out.clone(),
            dir: dir.into(),
            job: job.into(),
            schema,
            metadata,
            current: None,
            files: Vec::new(),
            rows: 0,
            rows_per_file: ROWS_PER_FILE,
        }
    }

    /// Starts a new file after `rows` rows instead of [`ROWS_PER_FILE`].
    pub fn with_rows_per_file(mut self, rows: usize) -> Self {
        self.rows_per_file = rows.max(1);
        self
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, rows)| *rows >= self.rows_per_file)
        {
            self.close_current().await?;
        }
        if self.current.is_none() {
            self.current = Some((self.open()?, 0));
        }
        let (writer, rows) = self.current.as_mut().expect("opened above");
        writer.write(batch).await?;
        *rows += batch.num_rows();
        self.rows += batch.num_rows();
        Ok(())
    }

    fn open(&mut self) -> Result<AsyncArrowWriter<BufWriter>, Error> {
        let uri = self.out.child(&format!(
            "{}/part-{}-{:05}.parquet",
            self.dir,
            self.job,
            self.files.len()
        ));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_key_value_metadata(Some(self.metadata.clone()))
            .build();
        let sink = BufWriter::new(Arc::clone(&self.out.store), uri.path.clone());
        self.files.push(uri.to_string());
        Ok(AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(props))?)
    }

    async fn close_current(&mut self) -> Result<(), Error> {
        if let Some((writer, _)) = self.current.take() {
            writer.close().await?;
        }
        Ok(())
    }

    /// Finishes the last file; returns the URIs written and the row count.
    /// An empty dataset still gets one (empty) file, so readers see its schema.
    pub async fn finish(mut self) -> Result<(Vec<String>, usize), Error> {
        if self.files.is_empty() {
            self.current = Some((self.open()?, 0));
        }
        self.close_current().await?;
        Ok((self.files, self.rows))
    }
}

/// Puts small bytes at `uri` (manifests, markers).
pub async fn put(store: &Arc<dyn ObjectStore>, uri: &ObjectUri, bytes: Vec<u8>) -> Result<(), Error> {
    store
        .put(&uri.path, PutPayload::from(bytes))
        .await
        .map_err(|e| uri.err(e))?;
    Ok(())
}

/// Deletes every object under `prefix`. Best effort: scratch left behind is
/// harmless, so failures are logged, not returned.
pub async fn remove_prefix(out: &Location, prefix: &ObjectUri) {
    let listed: Vec<_> = match out.store.list(Some(&prefix.path)).try_collect().await {
        Ok(l) => l,
        // Said in plain words, secrets redacted, like every storage error.
        Err(e) => return tracing::warn!("cannot list for cleanup: {}", prefix.err(e)),
    };
    for meta in listed {
        if let Err(e) = out.store.delete(&meta.location).await {
            let uri = ObjectUri {
                root: out.root.clone(),
                path: meta.location.clone(),
            };
            tracing::warn!("cannot delete for cleanup: {}", uri.err(e));
        }
    }
}

#[cfg(test)]
mod tests;
