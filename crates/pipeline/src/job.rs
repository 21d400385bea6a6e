//! What every stage of one job shares: the engine session, the output
//! folder, and the job's id, which names its data files and its scratch.

use datafusion::prelude::SessionContext;
use fruits_output::PartWriter;
use fruits_storage::{Location, ObjectUri};
use serde::Serialize;

use crate::Error;

pub struct JobContext<'a> {
    pub ctx: &'a SessionContext,
    pub out: Location,
    pub id: String,
}

impl<'a> JobContext<'a> {
    /// Starts a job that writes under `output` with a fresh id. Nothing
    /// readers see changes yet: the job writes only its own scratch until it
    /// calls [`JobContext::invalidate`], once its inputs are known good, so
    /// a misspelled input leaves the last result whole.
    pub async fn begin(ctx: &'a SessionContext, output: &str) -> Result<Self, Error> {
        let out = Location::parse(output)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        Ok(Self { ctx, out, id })
    }

    /// Deletes `_SUCCESS`, so that the folder reads as incomplete from here
    /// on: call it before the first write outside the job's scratch.
    pub async fn invalidate(&self) -> Result<(), Error> {
        Ok(fruits_output::begin(&self.out).await?)
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
    pub async fn remove_stale(&self, dirs: &[&str], keep: &[String]) -> Result<(), Error> {
        for dir in dirs {
            fruits_output::remove_stale(&self.out, dir, keep).await?;
        }
        Ok(())
    }

    /// Writes `_SUCCESS`: the last act of a job.
    pub async fn commit<S: Serialize>(&self, summary: &S) -> Result<(), Error> {
        Ok(fruits_output::commit(&self.out, summary).await?)
    }
}
