//! The featurize job: list images → manifest → `featurize()` on the engine →
//! `features/` and `errors/` Parquet → `_SUCCESS`.
//!
//! The client lists (streaming, page by page) and writes the listing as small
//! Parquet manifest files under `OUTPUT/_temporary/JOB/`: one file is one task
//! for the engine, which is where parallelism comes from. Executors read the
//! image bytes and run the model; the client streams the results back and
//! writes them, so that the output commit (see `fruits-output`) is ours.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, AsArray, FixedSizeListArray, Int32Array, RecordBatch, StringArray, StructArray,
};
use datafusion::arrow::compute::{cast, filter, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::FunctionRegistry;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use fruits_backbone::{Backbone, Manifest};
use fruits_functions::featurize::{features_type, StatsSnapshot, PROGRESS, STATS};
use fruits_output as output;
use fruits_storage::{list_images, ImageEntry, Location, ObjectUri};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::job::JobContext;
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
    /// Which of the installed models runs (the outputs record it).
    pub precision: fruits_backbone::Precision,
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
    /// Featurize this many seeded training views of each image instead of
    /// the image itself (see `fruits_preprocess::view`); the rows get a
    /// `view` column (1..=n) and keep the image's path.
    pub views: Option<TrainingViews>,
    /// With `views`: compose that many seeded training scenes of each image
    /// (a studio shot's fruit cut out and placed on one of the photographs
    /// under this URI, see `fruits_preprocess::scene`) instead of cutting views.
    pub backgrounds: Option<String>,
    /// Featurize only the listed images whose URI is in this set (the kind
    /// head's few studio shots per class, say); `None` takes every image.
    pub only: Option<Arc<BTreeSet<String>>>,
    /// Objects larger than this are not read: each becomes an `errors/` row
    /// at listing time (a 3 GB `x.jpg` must not take an executor's memory).
    pub max_object_bytes: u64,
}

/// The default [`FeaturizeJob::max_object_bytes`]: far above any photo (a
/// 12 MP JPEG is 3–5 MB, a 50 MP PNG ~100 MB at worst is refused anyway by
/// the pixel limit), and what bounds a task's reads: at most
/// `rows_per_task` objects of this size.
pub const MAX_OBJECT_BYTES: u64 = 64 << 20;

/// How many training views per image, and the seed that makes them reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingViews {
    pub per_image: u32,
    pub seed: u64,
}

/// The run summary: printed, and written as `_SUCCESS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stages {
    pub list: u64,
    pub featurize_and_write: u64,
    pub commit: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    let ctx = fruits_engine::session(&opts, job.cluster.as_deref()).await?;
    run_on(&ctx, job, progress).await
}

/// Runs the job on a given engine session (whose functions must be registered).
pub async fn run_on(ctx: &SessionContext, job: &FeaturizeJob, progress: &Arc<dyn Progress>) -> Result<Summary, Error> {
    let started = Instant::now();
    let model = ModelRef::of(job)?;
    let input = Location::parse(&job.input)?;
    let cx = JobContext::begin(ctx, &job.output).await?;
    let result = featurize_into(&cx, job, &input, model, progress, started).await;
    cx.end().await;
    result
}

/// The job once it holds the output: the last result stays committed, and
/// readable, until this one commits.
async fn featurize_into(
    cx: &JobContext<'_>,
    job: &FeaturizeJob,
    input: &Location,
    model: ModelRef,
    progress: &Arc<dyn Progress>,
    started: Instant,
) -> Result<Summary, Error> {
    tracing::info!(job = %cx.id, input = %input.uri(), output = %cx.out.uri(), input_size = model.input_size, "featurize job");
    let staging = cx.scratch("_temporary");
    let listing = list(cx, input, &staging, job, progress).await?;
    // In-process, the executor's counter drives the bar; a remote cluster's does not reach us.
    let quiet: Arc<dyn Progress> = Arc::new(crate::NoProgress);
    let engine_progress = if job.cluster.is_none() { progress } else { &quiet };
    let engine = featurize_and_write(cx, &listing, &model, job, engine_progress).await;
    output::remove_prefix(&cx.out, &staging).await;
    let result = match engine {
        Ok(engine) => finish(cx, job, input, model, listing, engine, started).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        cx.remove_unlisted(&["features", "errors"]).await;
    }
    result
}

/// The backbone a job runs and the input side it feeds it.
struct ModelRef {
    manifest: Manifest,
    input_size: u32,
}

impl ModelRef {
    fn of(job: &FeaturizeJob) -> Result<Self, Error> {
        let backbone = Backbone::shared(&job.model_dir, job.precision)?;
        // In-process, the engine runs this backbone: a model or device that
        // cannot run fails here, before any output is touched. On a cluster
        // the executors made theirs when they started.
        if job.cluster.is_none() {
            backbone.ready()?;
        }
        let manifest = backbone.manifest().clone();
        let input_size = job.input_size.unwrap_or(manifest.input.size);
        Ok(Self { manifest, input_size })
    }
}

/// The listing, written as manifest files: what the engine reads.
struct Listing {
    dir: Location,
    images: usize,
    /// Size of the listed objects: each is read exactly once by an executor.
    bytes: u64,
    /// Objects listed but not read (over the size limit): `errors/` rows.
    refused: Vec<Refused>,
    ms: u64,
}

/// Lists the input into manifest files under the job's scratch folder
/// (removed again when there is nothing to featurize).
async fn list(
    cx: &JobContext<'_>,
    input: &Location,
    staging: &ObjectUri,
    job: &FeaturizeJob,
    progress: &Arc<dyn Progress>,
) -> Result<Listing, Error> {
    let t = Instant::now();
    let dir = Location::parse(&format!("{staging}/manifest/"))?;
    let (images, bytes, refused) = write_manifest(input, &dir, job, progress).await?;
    if images == 0 {
        output::remove_prefix(&cx.out, staging).await;
        return Err(Error::NoImages(input.uri()));
    }
    Ok(Listing {
        dir,
        images,
        bytes,
        refused,
        ms: t.elapsed().as_millis() as u64,
    })
}

/// Checks that every listed image became a row, commits the summary, then
/// removes the files of earlier runs.
async fn finish(
    cx: &JobContext<'_>,
    job: &FeaturizeJob,
    input: &Location,
    model: ModelRef,
    listing: Listing,
    engine: Engine,
    started: Instant,
) -> Result<Summary, Error> {
    let t_commit = Instant::now();
    let Engine { outcome, worker_ms, ms } = engine;
    // The refused objects' rows are among the errors, not in the manifest.
    let written = outcome.features.1 + outcome.errors.1 - listing.refused.len();
    if written != listing.images {
        return Err(Error::Incomplete {
            listed: listing.images,
            written,
        });
    }
    let wall = started.elapsed();
    let files = Files {
        features: outcome.features.0,
        errors: outcome.errors.0,
    };
    let mut summary = Summary {
        job_id: cx.id.clone(),
        input: input.uri(),
        output: cx.out.uri(),
        engine: job
            .cluster
            .as_ref()
            .map_or("ballista-standalone".into(), |url| format!("ballista-cluster {url}")),
        objects_listed: listing.images + listing.refused.len(),
        featurized: outcome.features.1,
        failed: outcome.errors.1,
        bytes_read: listing.bytes,
        wall_ms: wall.as_millis() as u64,
        images_per_s: listing.images as f64 / wall.as_secs_f64().max(1e-9),
        stages_ms: Stages {
            list: listing.ms,
            featurize_and_write: ms,
            commit: 0,
        },
        worker_ms,
        executors_used: outcome.workers.into_iter().collect(),
        input_size: model.input_size,
        model: model.manifest,
        files,
    };
    summary.stages_ms.commit = t_commit.elapsed().as_millis() as u64;
    cx.commit(&summary).await?;
    let keep: Vec<String> = summary
        .files
        .features
        .iter()
        .chain(&summary.files.errors)
        .cloned()
        .collect();
    cx.remove_stale(&["features", "errors"], &keep).await?;
    Ok(summary)
}

/// An object listed but not read, and why: an `errors/` row.
type Refused = (String, String);

/// Streams the listing into manifest files of `rows_per_task` rows; returns
/// the count and total size of the rows to featurize (each object is read
/// once), and the objects refused at listing (over `max_object_bytes`).
async fn write_manifest(
    input: &Location,
    staging: &Location,
    job: &FeaturizeJob,
    progress: &Arc<dyn Progress>,
) -> Result<(usize, u64, Vec<Refused>), Error> {
    let limit = job.limit.unwrap_or(usize::MAX);
    let views = job.views.map_or(0, |v| v.per_image);
    let rows_per_image = views.max(1);
    // A task holds about `rows_per_task` rows, views included.
    let per_task = (job.rows_per_task / rows_per_image as usize).max(1);
    let mut listing = list_images(input).take(limit);
    let mut parts = ManifestParts {
        staging,
        views,
        written: 0,
        rows: 0,
        bytes: 0,
    };
    let mut refused = Vec::new();
    let mut chunk = Vec::with_capacity(per_task);
    while let Some(item) = listing.next().await {
        match item {
            Ok(entry)
                if job
                    .only
                    .as_ref()
                    .is_some_and(|only| !only.contains(&entry.uri.to_string())) => {}
            Ok(entry) if entry.size > job.max_object_bytes => {
                refused.push((entry.uri.to_string(), too_large(entry.size, job.max_object_bytes)));
            }
            Ok(entry) => chunk.push(entry),
            Err(fruits_storage::Error::Unlisted { uri, reason }) => refused.push((uri, reason)),
            Err(e) => return Err(e.into()),
        }
        if chunk.len() == per_task {
            parts.write(&mut chunk).await?;
            progress.listed(parts.rows);
        }
    }
    if !chunk.is_empty() {
        parts.write(&mut chunk).await?;
        progress.listed(parts.rows);
    }
    let (count, total_bytes) = (parts.rows, parts.bytes);
    Ok((count, total_bytes, refused))
}

/// The manifest files written so far: one per engine task.
struct ManifestParts<'a> {
    staging: &'a Location,
    views: u32,
    written: usize,
    /// Rows to featurize (views included), and the bytes they read.
    rows: usize,
    bytes: u64,
}

impl ManifestParts<'_> {
    /// Writes `chunk` as the next manifest file and empties it.
    async fn write(&mut self, chunk: &mut Vec<ImageEntry>) -> Result<(), Error> {
        let per_image = self.views.max(1);
        self.rows += chunk.len() * per_image as usize;
        self.bytes += chunk.iter().map(|e| e.size).sum::<u64>() * u64::from(per_image);
        let file = self.staging.child(&format!("part-{:05}.parquet", self.written));
        output::put(&self.staging.store, &file, manifest_parquet(chunk, self.views)?).await?;
        self.written += 1;
        chunk.clear();
        Ok(())
    }
}

fn too_large(size: u64, limit: u64) -> String {
    format!(
        "the object is {:.1} MiB, over the {:.0} MiB limit (--max-object-bytes): not read",
        size as f64 / f64::from(1 << 20),
        limit as f64 / f64::from(1 << 20)
    )
}

/// The refused objects as rows of [`errors_schema`].
fn refused_batch(refused: &[Refused]) -> Result<RecordBatch, Error> {
    let paths = StringArray::from_iter_values(refused.iter().map(|(p, _)| p.as_str()));
    let errors = StringArray::from_iter_values(refused.iter().map(|(_, e)| e.as_str()));
    Ok(RecordBatch::try_new(
        errors_schema(),
        vec![Arc::new(paths), Arc::new(errors)],
    )?)
}

fn manifest_schema(views: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
    ];
    if views {
        fields.push(Field::new("view", DataType::Int32, false));
    }
    Arc::new(Schema::new(fields))
}

/// One row per image, or with `views` > 0 one row per view (1..=views).
fn manifest_parquet(entries: &[ImageEntry], views: u32) -> Result<Vec<u8>, Error> {
    let rows: Vec<(&ImageEntry, i32)> = match views {
        0 => entries.iter().map(|e| (e, 0)).collect(),
        n => entries
            .iter()
            .flat_map(|e| (1..=n as i32).map(move |v| (e, v)))
            .collect(),
    };
    let paths = StringArray::from_iter_values(rows.iter().map(|(e, _)| e.uri.to_string()));
    let labels = StringArray::from_iter_values(rows.iter().map(|(e, _)| e.label.as_str()));
    let mut columns: Vec<ArrayRef> = vec![Arc::new(paths), Arc::new(labels)];
    if views > 0 {
        columns.push(Arc::new(Int32Array::from_iter_values(rows.iter().map(|(_, v)| *v))));
    }
    let batch = RecordBatch::try_new(manifest_schema(views > 0), columns)?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(features_fields()))
}

fn features_fields() -> Vec<Field> {
    vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", features_type(), false),
    ]
}

/// The order training views are read back in: by image, then view, so that
/// what learns from them does not depend on the order tasks finished in.
pub fn view_order() -> Vec<datafusion::logical_expr::SortExpr> {
    vec![col("path").sort(true, false), col("view").sort(true, false)]
}

/// [`features_schema`] with the `view` column of a job with training views.
pub fn view_features_schema() -> SchemaRef {
    let mut fields = features_fields();
    fields.push(Field::new("view", DataType::Int32, false));
    Arc::new(Schema::new(fields))
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

/// Featurizes the listing on the engine and writes `features/` and `errors/`.
async fn featurize_and_write(
    cx: &JobContext<'_>,
    listing: &Listing,
    model: &ModelRef,
    job: &FeaturizeJob,
    progress: &Arc<dyn Progress>,
) -> Result<Engine, Error> {
    let t = Instant::now();
    let sorted = job.sorted;
    let before = STATS.snapshot();
    let ctx = cx.ctx;
    let listed = listing.images;
    let manifest = &model.manifest;
    let input_size = model.input_size;
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
    let folder = format!("{}/", listing.dir.uri());
    let table = ctx.read_parquet(folder, ParquetReadOptions::default()).await?;
    let udf = ctx.udf(fruits_functions::featurize::NAME)?;
    let mut args = vec![
        col("path"),
        lit(i64::from(input_size)),
        lit(manifest.onnx.sha256.clone()),
    ];
    let mut columns = vec![col("path"), col("label")];
    if let Some(views) = job.views {
        args.extend([col("view"), lit(views.seed as i64)]);
        if let Some(backgrounds) = &job.backgrounds {
            args.push(lit(backgrounds.clone()));
        }
    }
    columns.push(udf.call(args).alias("r"));
    if job.views.is_some() {
        columns.push(col("view"));
    }
    let mut df = table.select(columns)?;
    if sorted {
        df = df.sort(vec![col("path").sort(true, false)])?;
    }
    let metadata = vec![
        KeyValue::new("fruits.model".into(), manifest.model.clone()),
        KeyValue::new("fruits.model_sha256".into(), manifest.onnx.sha256.clone()),
        KeyValue::new("fruits.input_size".into(), input_size.to_string()),
    ];
    let schema = match job.views {
        Some(_) => view_features_schema(),
        None => features_schema(),
    };
    let mut features = cx.part_writer("features", schema, metadata.clone());
    let mut errors = cx.part_writer("errors", errors_schema(), metadata);
    if !listing.refused.is_empty() {
        errors.write(&refused_batch(&listing.refused)?).await?;
    }

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
    let outcome = Outcome {
        features: features.finish().await?,
        errors: errors.finish().await?,
        workers,
    };
    Ok(Engine {
        outcome,
        worker_ms: STATS.snapshot().since(&before),
        ms: t.elapsed().as_millis() as u64,
    })
}

/// The engine stage's outcome, its workers' time, and its wall time.
struct Engine {
    outcome: Outcome,
    worker_ms: StatsSnapshot,
    ms: u64,
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
        fruits_functions::featurize::FEATURES_DIM,
        kept.values().clone(),
        None,
    )?;
    let mut good: Vec<ArrayRef> = vec![filter(&path, &ok)?, filter(&label, &ok)?, Arc::new(dense)];
    let schema = match batch.num_columns() {
        4 => {
            good.push(filter(&cast(batch.column(3), &DataType::Int32)?, &ok)?);
            view_features_schema()
        }
        _ => features_schema(),
    };
    let bad: Vec<ArrayRef> = vec![filter(&path, &failed)?, filter(error.as_ref(), &failed)?];
    Ok((
        RecordBatch::try_new(schema, good)?,
        RecordBatch::try_new(errors_schema(), bad)?,
    ))
}
