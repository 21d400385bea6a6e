//! The featurize job: list images → manifest → `featurize()` on the engine →
//! `features/` and `errors/` Parquet → `_SUCCESS`.
//!
//! The client lists (streaming, page by page) and writes the listing as small
//! Parquet manifest files under `OUTPUT/_temporary/JOB/`: one file is one task
//! for the engine, which is where parallelism comes from. Executors read the
//! image bytes and run the model; the client streams the results back and
//! writes them, so that the output commit (see [`crate::output`]) is ours.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, AsArray, FixedSizeListArray, RecordBatch, StringArray, StructArray};
use datafusion::arrow::compute::{cast, filter, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::FunctionRegistry;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use fruits_backbone::{Backbone, Manifest};
use fruits_dataset::{list_images, ImageEntry, Location};
use fruits_featurize::{features_type, StatsSnapshot, PROGRESS, STATS};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::output::{self, PartWriter};
use crate::{Error, Progress};

/// What to featurize and how.
#[derive(Debug, Clone)]
pub struct FeaturizeJob {
    pub input: String,
    pub output: String,
    pub limit: Option<usize>,
    /// Square input side; `None` takes the manifest's.
    pub input_size: Option<u32>,
    pub model_dir: std::path::PathBuf,
    /// Images per manifest file, i.e. per engine task.
    pub rows_per_task: usize,
    pub parallelism: usize,
    /// `df://host:port` of a Ballista scheduler; `None` runs in-process.
    pub cluster: Option<String>,
    /// Write rows sorted by path, so that the same input gives the same
    /// bytes on any engine. Costs memory: Ballista's final merge reads every
    /// sorted partition at once on one executor (1067 MiB at 50,889 images,
    /// against 530 MiB unsorted), so it is off by default.
    pub sorted: bool,
}

/// The run summary: printed, and written as `_SUCCESS`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job_id: String,
    pub input: String,
    pub output: String,
    pub engine: String,
    pub objects_listed: usize,
    pub featurized: usize,
    pub failed: usize,
    /// Size of the listed objects: each is read exactly once by an executor.
    pub bytes_read: u64,
    pub wall_ms: u64,
    pub images_per_s: f64,
    pub stages_ms: Stages,
    /// Worker time summed over threads (CPU-bound work: close to CPU time).
    /// Counted in the executor's process, so only in-process runs fill it;
    /// on a remote cluster it stays zero.
    pub worker_ms: StatsSnapshot,
    /// Worker processes (`host:pid`) that featurized images: the executors used.
    pub executors_used: Vec<String>,
    pub input_size: u32,
    pub model: Manifest,
    pub files: Files,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    pub list: u64,
    pub featurize_and_write: u64,
    pub commit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Files {
    pub features: Vec<String>,
    pub errors: Vec<String>,
}

/// Runs the job in-process, or on the cluster the job names.
pub async fn run(job: &FeaturizeJob, progress: &Arc<dyn Progress>) -> Result<Summary, Error> {
    let opts = fruits_engine::EngineOptions {
        model_dir: job.model_dir.clone(),
        parallelism: job.parallelism,
    };
    let ctx = match &job.cluster {
        None => fruits_engine::in_process(&opts).await?,
        Some(url) => fruits_engine::cluster::remote(url, &opts).await?,
    };
    run_on(&ctx, job, progress).await
}

/// Runs the job on a given engine session (whose functions must be registered).
pub async fn run_on(ctx: &SessionContext, job: &FeaturizeJob, progress: &Arc<dyn Progress>) -> Result<Summary, Error> {
    let started = Instant::now();
    let backbone = Backbone::shared(&job.model_dir)?;
    let manifest = backbone.manifest().clone();
    let input_size = job.input_size.unwrap_or(manifest.input.size);
    let input = Location::parse(&job.input)?;
    let out = Location::parse(&job.output)?;
    let job_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    tracing::info!(job = %job_id, input = %input.uri(), output = %out.uri(), input_size, "featurize job");

    output::begin(&out).await?;
    let staging = out.child(&format!("_temporary/{job_id}"));
    let staging_loc = Location::parse(&format!("{staging}/manifest/"))?;
    let t_list = Instant::now();
    let (listed, listed_bytes) = write_manifest(&input, &staging_loc, job, progress).await?;
    if listed == 0 {
        output::remove_prefix(&out, &staging).await;
        return Err(Error::NoImages(input.uri()));
    }
    let list_ms = t_list.elapsed().as_millis() as u64;

    let t_run = Instant::now();
    let before = STATS.snapshot();
    // In-process, the executor's counter drives the bar; a remote cluster's does not reach us.
    let quiet: Arc<dyn Progress> = Arc::new(crate::NoProgress);
    let progress = if job.cluster.is_none() { progress } else { &quiet };
    let result = featurize_and_write(
        ctx,
        &staging_loc,
        &out,
        &job_id,
        input_size,
        &manifest,
        listed,
        job.sorted,
        progress,
    )
    .await;
    let worker_ms = STATS.snapshot().since(&before);
    output::remove_prefix(&out, &staging).await;
    let Outcome {
        features,
        errors,
        workers,
    } = result?;
    let featurize_ms = t_run.elapsed().as_millis() as u64;

    let t_commit = Instant::now();
    if features.1 + errors.1 != listed {
        return Err(Error::Incomplete {
            listed,
            written: features.1 + errors.1,
        });
    }
    output::remove_stale(&out, "features", &features.0).await?;
    output::remove_stale(&out, "errors", &errors.0).await?;
    let wall = started.elapsed();
    let mut summary = Summary {
        job_id,
        input: input.uri(),
        output: out.uri(),
        engine: job
            .cluster
            .as_ref()
            .map_or("ballista-standalone".into(), |url| format!("ballista-cluster {url}")),
        objects_listed: listed,
        featurized: features.1,
        failed: errors.1,
        bytes_read: listed_bytes,
        wall_ms: wall.as_millis() as u64,
        images_per_s: listed as f64 / wall.as_secs_f64().max(1e-9),
        stages_ms: Stages {
            list: list_ms,
            featurize_and_write: featurize_ms,
            commit: 0,
        },
        worker_ms,
        executors_used: workers.into_iter().collect(),
        input_size,
        model: manifest,
        files: Files {
            features: features.0,
            errors: errors.0,
        },
    };
    summary.stages_ms.commit = t_commit.elapsed().as_millis() as u64;
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    output::commit(&out, &json).await?;
    Ok(summary)
}

/// Streams the listing into manifest files of `rows_per_task` rows; returns
/// the count and total size of the listed objects (each is read once).
async fn write_manifest(
    input: &Location,
    staging: &Location,
    job: &FeaturizeJob,
    progress: &Arc<dyn Progress>,
) -> Result<(usize, u64), Error> {
    let limit = job.limit.unwrap_or(usize::MAX);
    let mut chunks = list_images(input).take(limit).try_chunks(job.rows_per_task.max(1));
    let (mut count, mut part, mut total_bytes) = (0, 0, 0u64);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.1)?;
        count += chunk.len();
        total_bytes += chunk.iter().map(|e| e.size).sum::<u64>();
        let bytes = manifest_parquet(&chunk)?;
        output::put(
            &staging.store,
            &staging.child(&format!("part-{part:05}.parquet")),
            bytes,
        )
        .await?;
        part += 1;
        progress.listed(count);
    }
    Ok((count, total_bytes))
}

fn manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
    ]))
}

fn manifest_parquet(entries: &[ImageEntry]) -> Result<Vec<u8>, Error> {
    let paths = StringArray::from_iter_values(entries.iter().map(|e| e.uri.to_string()));
    let labels = StringArray::from_iter_values(entries.iter().map(|e| e.label.as_str()));
    let batch = RecordBatch::try_new(manifest_schema(), vec![Arc::new(paths), Arc::new(labels)])?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", features_type(), false),
    ]))
}

pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
    ]))
}

type Written = (Vec<String>, usize);

/// Rows per partition of the output sort, at most (≈ 5 KiB each).
const ROWS_PER_SORT_PARTITION: usize = 10_000;

#[allow(clippy::too_many_arguments)]
async fn featurize_and_write(
    ctx: &SessionContext,
    manifest_dir: &Location,
    out: &Location,
    job_id: &str,
    input_size: u32,
    manifest: &Manifest,
    listed: usize,
    sorted: bool,
    progress: &Arc<dyn Progress>,
) -> Result<Outcome, Error> {
    if sorted {
        // The sort's tasks hold one range partition each: enough partitions
        // keep those small (the final merge still reads them all, see `sorted`).
        let partitions = ctx
            .copied_config()
            .target_partitions()
            .max(listed.div_ceil(ROWS_PER_SORT_PARTITION));
        ctx.sql(&format!("SET datafusion.execution.target_partitions = {partitions}"))
            .await?;
    }
    // A trailing slash makes the engine read the folder, not one file.
    let folder = format!("{}/", manifest_dir.uri());
    let table = ctx.read_parquet(folder, ParquetReadOptions::default()).await?;
    let udf = ctx.udf(fruits_featurize::NAME)?;
    let call = udf.call(vec![
        col("path"),
        lit(i64::from(input_size)),
        lit(manifest.onnx.sha256.clone()),
    ]);
    let mut df = table.select(vec![col("path"), col("label"), call.alias("r")])?;
    if sorted {
        df = df.sort(vec![col("path").sort(true, false)])?;
    }
    let metadata = vec![
        KeyValue::new("fruits.model".into(), manifest.model.clone()),
        KeyValue::new("fruits.model_sha256".into(), manifest.onnx.sha256.clone()),
        KeyValue::new("fruits.input_size".into(), input_size.to_string()),
    ];
    let mut features = PartWriter::new(out, "features", job_id, features_schema(), metadata.clone());
    let mut errors = PartWriter::new(out, "errors", job_id, errors_schema(), metadata);

    let start = PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
    let ticker = progress_ticker(Arc::clone(progress), start, listed);
    let mut workers = BTreeSet::new();
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let result: &StructArray = batch.column(2).as_struct();
        workers.extend(result.column(2).as_string::<i32>().iter().flatten().map(str::to_string));
        let (ok, bad) = split(&batch)?;
        features.write(&ok).await?;
        errors.write(&bad).await?;
    }
    drop(ticker);
    progress.featurized(listed, listed);
    Ok(Outcome {
        features: features.finish().await?,
        errors: errors.finish().await?,
        workers,
    })
}

/// What the engine run wrote, and which worker processes did it.
struct Outcome {
    features: Written,
    errors: Written,
    workers: BTreeSet<String>,
}

/// Polls the process-wide counter while the engine works (the in-process
/// executor updates it; the engine hands results back only at the end).
fn progress_ticker(progress: Arc<dyn Progress>, start: u64, total: usize) -> Ticker {
    Ticker(tokio::spawn(async move {
        loop {
            let done = PROGRESS
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(start) as usize;
            progress.featurized(done.min(total), total);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

/// Stops the ticker when dropped.
struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Splits engine output rows into the features and errors batches.
fn split(batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch), Error> {
    let path = cast(batch.column(0), &DataType::Utf8)?;
    let label = cast(batch.column(1), &DataType::Utf8)?;
    let result: &StructArray = batch.column(2).as_struct();
    let feats: &FixedSizeListArray = result.column(0).as_fixed_size_list();
    let error = result.column(1);
    let failed = datafusion::arrow::compute::is_not_null(error)?;
    let ok = not(&failed)?;

    let kept = filter(feats, &ok)?;
    let kept = kept.as_fixed_size_list();
    // The struct marks failed rows null; the kept rows have none, so drop the mask.
    let dense = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        fruits_featurize::FEATURES_DIM,
        kept.values().clone(),
        None,
    )?;
    let good: Vec<ArrayRef> = vec![filter(&path, &ok)?, filter(&label, &ok)?, Arc::new(dense)];
    let bad: Vec<ArrayRef> = vec![filter(&path, &failed)?, filter(error.as_ref(), &failed)?];
    Ok((
        RecordBatch::try_new(features_schema(), good)?,
        RecordBatch::try_new(errors_schema(), bad)?,
    ))
}
