//! What every stage of one job shares: the engine session, the output
//! folder, the job's id, which names its data files and its scratch, and the
//! output's lease, renewed in the background while the job runs.

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use fruits_output::{Lease, PartWriter};
use fruits_storage::{Location, ObjectUri};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::Error;

pub struct JobContext<'a> {
    pub ctx: &'a SessionContext,
    pub out: Location,
    pub id: String,
    lease: Arc<Mutex<Option<Lease>>>,
    renewal: tokio::task::JoinHandle<()>,
}

impl<'a> JobContext<'a> {
    /// Starts a job that writes under `output` with a fresh id, once it holds
    /// the output's lease (another job's live lease is `Busy`). Readers keep
    /// seeing the last result until [`JobContext::commit`]. Every job ends
    /// with [`JobContext::end`], whatever its result.
    pub async fn begin(ctx: &'a SessionContext, output: &str) -> Result<Self, Error> {
        let out = Location::parse(output)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let lease = Lease::take(&out, &id, fruits_output::TTL).await?;
        let lease = Arc::new(Mutex::new(Some(lease)));
        let renewal = tokio::spawn(renew(Arc::clone(&lease)));
        Ok(Self {
            ctx,
            out,
            id,
            lease,
            renewal,
        })
    }

    /// This job's own folder under `OUTPUT/area/`, for scratch files.
    pub fn scratch(&self, area: &str) -> ObjectUri {
        self.out.child(&format!("{area}/{}", self.id))
    }

    /// A Parquet dataset `OUTPUT/dir/part-JOB-NNNNN.parquet`.
    pub fn part_writer(
        &self,
        dir: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        metadata: Vec<datafusion::parquet::file::metadata::KeyValue>,
    ) -> PartWriter {
        PartWriter::new(&self.out, dir, &self.id, schema, metadata)
    }

    /// Removes what earlier runs left in `dirs`: every file not in `keep`.
    /// Called after [`JobContext::commit`], so readers never miss a file.
    pub async fn remove_stale(&self, dirs: &[&str], keep: &[String]) -> Result<(), Error> {
        for dir in dirs {
            fruits_output::remove_stale(&self.out, dir, keep).await?;
        }
        Ok(())
    }

    /// After a failed job: its own files in `dirs`, which no `_SUCCESS`
    /// lists. Best effort, like all cleanup: the next run removes what is left.
    pub async fn remove_unlisted(&self, dirs: &[&str]) {
        let mut keep = Vec::new();
        for dir in dirs {
            match fruits_output::committed_files(&self.out, dir).await {
                Ok(files) => keep.extend(files),
                // No committed result: nothing to keep.
                Err(fruits_output::Error::Storage(e)) if e.is_not_found() => {}
                Err(e) => return tracing::warn!("cannot read the last result to clean up: {e}"),
            }
        }
        if let Err(e) = self.remove_stale(dirs, &keep).await {
            tracing::warn!("cannot clean up: {e}");
        }
    }

    /// Writes `_SUCCESS`, if the lease is still this job's: the act that
    /// switches readers to this job's result.
    pub async fn commit<S: Serialize>(&self, summary: &S) -> Result<(), Error> {
        let mut lease = self.lease.lock().await;
        match lease.as_mut() {
            Some(lease) => lease.renew().await?,
            None => return Err(Error::LeaseGone),
        }
        Ok(fruits_output::commit(&self.out, summary).await?)
    }

    /// Stops renewing and releases the lease.
    pub async fn end(self) {
        self.renewal.abort();
        if let Some(lease) = self.lease.lock().await.take() {
            lease.release().await;
        }
    }
}

/// Renews the lease every third of its time to live until the job ends; a
/// lease lost meanwhile is dropped, so that the commit refuses.
async fn renew(lease: Arc<Mutex<Option<Lease>>>) {
    loop {
        tokio::time::sleep(fruits_output::TTL / 3).await;
        let mut held = lease.lock().await;
        let Some(current) = held.as_mut() else { return };
        if let Err(e) = current.renew().await {
            match e {
                fruits_output::Error::LeaseLost { .. } => {
                    tracing::error!("{e}");
                    *held = None;
                    return;
                }
                // A store that failed once: try again at the next round.
                other => tracing::warn!("cannot renew the lease: {other}"),
            }
        }
    }
}
