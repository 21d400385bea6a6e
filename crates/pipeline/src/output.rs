//! The output folder and its commit rule.
//!
//! Layout: `OUTPUT/features/*.parquet`, `OUTPUT/errors/*.parquet`, `OUTPUT/_SUCCESS`.
//!
//! Rule: a result is complete if and only if `_SUCCESS` exists, and then it is
//! exactly the files `_SUCCESS` lists. A job (1) deletes `_SUCCESS` before
//! anything else, (2) writes its data files under names that carry its job id,
//! (3) deletes the files of earlier runs, (4) writes `_SUCCESS` last. A reader
//! that finds no `_SUCCESS` must treat the folder as incomplete; a crash at any
//! step leaves no `_SUCCESS`, and a rerun replaces everything cleanly.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use fruits_dataset::{Location, ObjectUri};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::Error;

pub const SUCCESS: &str = "_SUCCESS";
/// Rows per data file before a new one is started.
pub const ROWS_PER_FILE: usize = 50_000;

/// Removes `_SUCCESS`: from here on the folder reads as incomplete.
pub async fn begin(out: &Location) -> Result<(), Error> {
    let marker = out.child(SUCCESS);
    match out.store.delete(&marker.path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(marker.err(e).into()),
    }
}

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

/// Writes `_SUCCESS` (the JSON summary): the last act of a job.
pub async fn commit(out: &Location, summary_json: &str) -> Result<(), Error> {
    let marker = out.child(SUCCESS);
    let payload = PutPayload::from(summary_json.as_bytes().to_vec());
    out.store.put(&marker.path, payload).await.map_err(|e| marker.err(e))?;
    Ok(())
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
        }
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.as_ref().is_some_and(|(_, rows)| *rows >= ROWS_PER_FILE) {
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
        Err(e) => return tracing::warn!("cannot list {prefix} for cleanup: {e}"),
    };
    for meta in listed {
        if let Err(e) = out.store.delete(&meta.location).await {
            tracing::warn!("cannot delete {}: {e}", meta.location);
        }
    }
}
