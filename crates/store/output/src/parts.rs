//! Part files: a Parquet dataset written as numbered files
//! `DIR/STEM-JOB-NNNNN.parquet`, whose bytes depend on the rows alone.
//!
//! Why the bytes depend on the rows alone: Parquet's column writers cut
//! pages per call, so the same rows handed over in other batches give other
//! bytes. Rows are therefore re-cut into [`WRITE_CHUNK`]-row slices counted
//! from the start of each file, and a file ends at exactly `rows_per_file`
//! rows. An incremental run, which merges rows it carried over with rows it
//! computed, then writes the same bytes as a run from scratch.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use fruits_common::Sha256;
use fruits_storage::Location;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use serde::{Deserialize, Serialize};

use crate::{Error, ROWS_PER_FILE};

/// Rows per call into the Parquet writer, counted from each file's start.
pub const WRITE_CHUNK: usize = 1024;

/// One written file: where, how many rows, and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub uri: String,
    pub rows: usize,
    pub sha256: String,
}

/// What a [`PartWriter`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub files: Vec<DataFile>,
    pub rows: usize,
}

impl Dataset {
    pub fn uris(&self) -> Vec<String> {
        self.files.iter().map(|f| f.uri.clone()).collect()
    }
}

/// A Parquet dataset written as numbered files.
pub struct PartWriter {
    out: Location,
    dir: String,
    stem: String,
    job: String,
    schema: SchemaRef,
    metadata: Vec<KeyValue>,
    current: Option<Open>,
    /// Rows of the current file not yet handed to the Parquet writer.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    files: Vec<DataFile>,
    rows: usize,
    rows_per_file: usize,
}

/// The file being written.
struct Open {
    writer: AsyncArrowWriter<Hashing>,
    uri: String,
    rows: usize,
    digest: Arc<Mutex<Sha256>>,
}

impl PartWriter {
    pub fn new(out: &Location, dir: &str, job: &str, schema: SchemaRef, metadata: Vec<KeyValue>) -> Self {
        Self {
            out: out.clone(),
            dir: dir.into(),
            stem: "part".into(),
            job: job.into(),
            schema,
            metadata,
            current: None,
            pending: Vec::new(),
            pending_rows: 0,
            files: Vec::new(),
            rows: 0,
            rows_per_file: ROWS_PER_FILE,
        }
    }

    /// Ends a file after exactly `rows` rows instead of [`ROWS_PER_FILE`].
    pub fn with_rows_per_file(mut self, rows: usize) -> Self {
        self.rows_per_file = rows.max(1);
        self
    }

    /// Names the files `STEM-JOB-NNNNN.parquet` instead of `part-…`.
    pub fn with_stem(mut self, stem: &str) -> Self {
        self.stem = stem.into();
        self
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.current = Some(self.open()?);
            }
            let open = self.current.as_mut().expect("opened above");
            let take = (self.rows_per_file - open.rows).min(batch.num_rows() - offset);
            open.rows += take;
            let full = open.rows == self.rows_per_file;
            self.pending.push(batch.slice(offset, take));
            self.pending_rows += take;
            offset += take;
            self.write_chunks(false).await?;
            if full {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Hands the pending rows to the Parquet writer in [`WRITE_CHUNK`]-row
    /// slices; with `all`, the last, shorter slice too.
    async fn write_chunks(&mut self, all: bool) -> Result<(), Error> {
        if self.pending_rows < WRITE_CHUNK && !(all && self.pending_rows > 0) {
            return Ok(());
        }
        let rows = concat_batches(&self.schema, &self.pending)?;
        let whole = if all {
            rows.num_rows()
        } else {
            rows.num_rows() / WRITE_CHUNK * WRITE_CHUNK
        };
        let writer = &mut self
            .current
            .as_mut()
            .expect("pending rows belong to an open file")
            .writer;
        for start in (0..whole).step_by(WRITE_CHUNK) {
            writer.write(&rows.slice(start, WRITE_CHUNK.min(whole - start))).await?;
        }
        self.pending = vec![rows.slice(whole, rows.num_rows() - whole)];
        self.pending_rows = rows.num_rows() - whole;
        Ok(())
    }

    /// Closes the current file: every row written so far is then in a
    /// complete file, which a later run can find and use.
    pub async fn checkpoint(&mut self) -> Result<(), Error> {
        if self.current.is_none() {
            return Ok(());
        }
        self.write_chunks(true).await?;
        let open = self.current.take().expect("checked above");
        open.writer.close().await?;
        let sha256 = open.digest.lock().expect("digest lock").clone().hex();
        self.rows += open.rows;
        self.files.push(DataFile {
            uri: open.uri,
            rows: open.rows,
            sha256,
        });
        self.pending.clear();
        Ok(())
    }

    fn open(&mut self) -> Result<Open, Error> {
        let uri = self.out.child(&format!(
            "{}/{}-{}-{:05}.parquet",
            self.dir,
            self.stem,
            self.job,
            self.files.len()
        ));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_key_value_metadata(Some(self.metadata.clone()))
            .build();
        let digest = Arc::new(Mutex::new(Sha256::default()));
        let sink = Hashing {
            inner: BufWriter::new(Arc::clone(&self.out.store), uri.path.clone()),
            digest: Arc::clone(&digest),
        };
        let writer = AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(props))?;
        Ok(Open {
            writer,
            uri: uri.to_string(),
            rows: 0,
            digest,
        })
    }

    /// Rows written so far, in closed files and the open one.
    pub fn rows(&self) -> usize {
        self.rows + self.current.as_ref().map_or(0, |o| o.rows)
    }

    /// Closes the last file; returns the files written (none if no rows were).
    pub async fn close(mut self) -> Result<Dataset, Error> {
        self.checkpoint().await?;
        Ok(Dataset {
            files: self.files,
            rows: self.rows,
        })
    }

    /// Finishes the last file; returns the files written and the row count.
    /// An empty dataset still gets one (empty) file, so readers see its schema.
    pub async fn finish(mut self) -> Result<Dataset, Error> {
        if self.files.is_empty() && self.current.is_none() {
            self.current = Some(self.open()?);
        }
        self.checkpoint().await?;
        Ok(Dataset {
            files: self.files,
            rows: self.rows,
        })
    }
}

/// A sink that hashes what it passes on, so that a file's sha256 costs no
/// second read.
struct Hashing {
    inner: BufWriter,
    digest: Arc<Mutex<Sha256>>,
}

impl AsyncFileWriter for Hashing {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, datafusion::parquet::errors::Result<()>> {
        self.digest.lock().expect("digest lock").update(&bs);
        self.inner.write(bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, datafusion::parquet::errors::Result<()>> {
        self.inner.complete()
    }
}
