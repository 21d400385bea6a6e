//! The featurize job: list images → manifest → `featurize()` on the engine →
//! `features/` and `errors/` Parquet → `_SUCCESS`.
//!
//! The client lists (streaming, page by page) and writes the objects to
//! featurize as small Parquet manifest files under `OUTPUT/_temporary/JOB/`;
//! objects an earlier result already holds are carried over instead (see
//! [`crate::incremental`]). The manifest files go to the engine a group at a
//! time, one query per group, two groups in flight: executors read the
//! image bytes and run the model; the client writes each group's rows as
//! soon as the group is done, as complete files (a *checkpoint*: a job that
//! dies is resumed from them, and on a cluster the groups done are the
//! progress). At the end the client assembles the result (carried rows and
//! checkpoints; with `--sorted`, merged in path order) and commits it (see
//! `fruits-output`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, AsArray, FixedSizeListArray, Int32Array, RecordBatch, StringArray, StructArray, UInt64Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter, not, sort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::FunctionRegistry;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use fruits_backbone::{Backbone, Manifest};
use fruits_functions::featurize::{features_type, StatsSnapshot, PROGRESS, STATS};
use fruits_output::{self as output, DataFile, Dataset, PartWriter};
use fruits_storage::{list_images, ImageEntry, Location, ObjectUri};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::incremental::{carried_rows, Changes, CommittedFiles, Computation, Fate, Incremental, Known};
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
    /// bytes on any engine and after any incremental rerun. Each group is
    /// sorted on the client and the groups merged at the end (one batch per
    /// file in memory), which writes the result twice: off by default.
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
    /// Use the rows of earlier results again (unchanged objects, and what a
    /// job that died finished); `None` featurizes everything (`--full`).
    pub incremental: Option<Incremental>,
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
    /// Images this job featurized (new, changed, or not finished before).
    pub featurized: usize,
    /// Images this job found bad (error rows it made; carried ones are in `changes`).
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
    /// Rows in path order (`--sorted`).
    #[serde(default)]
    pub sorted: bool,
    /// What was featurized, carried over, resumed and dropped.
    #[serde(default)]
    pub changes: Changes,
    #[serde(default)]
    pub lineage: Lineage,
}

/// What a result was made from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// sha256 of the listing (`path\tetag\tsize\n` per object, in listing order).
    pub listing_sha256: String,
    /// How every row was computed.
    pub computation: Option<Computation>,
    /// The result that unchanged rows were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Jobs whose rows are in this result, this one included.
    pub jobs: Vec<String>,
    /// Every data file, with its row count and sha256.
    pub files: Vec<DataFile>,
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

impl Files {
    /// Every data file, features first: what a commit keeps.
    pub fn all(&self) -> Vec<String> {
        self.features.iter().chain(&self.errors).cloned().collect()
    }
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
    let mut known = match &job.incremental {
        Some(incremental) => {
            let committed = CommittedFiles::read(&cx.out).await?;
            Known::read(&cx.out, incremental, &model.computation(), &committed).await?
        }
        None => Known::default(),
    };
    let listing = list(cx, input, &staging, job, &mut known, progress).await?;
    let engine = featurize_and_write(cx, &listing, &model, job, progress).await;
    output::remove_prefix(&cx.out, &staging).await;
    let result = match engine {
        Ok(engine) => finish(cx, job, input, model, listing, known, engine, started).await,
        Err(e) => Err(e),
    };
    // The checkpoints of an incremental job stay for the next run to resume
    // from (no `_SUCCESS` lists them, so readers never see them).
    if result.is_err() && job.incremental.is_none() {
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

    fn computation(&self) -> Computation {
        Computation {
            model_sha256: self.manifest.onnx.sha256.clone(),
            precision: self.manifest.precision,
            input_size: self.input_size,
            preprocess: fruits_preprocess::VERSION,
        }
    }
}

/// The listing, written as manifest files: what the engine reads.
struct Listing {
    /// The manifest files, one per task, in listing order.
    files: Vec<String>,
    /// Rows to featurize (views included).
    images: usize,
    /// Size of the objects to read: each is read exactly once by an executor.
    bytes: u64,
    /// Objects listed but not read (over the size limit): `errors/` rows.
    refused: Vec<Refused>,
    /// sha256 of `path\tetag\tsize\n` per listed object, in listing order.
    sha256: String,
    ms: u64,
}

/// Lists the input into manifest files under the job's scratch folder.
async fn list(
    cx: &JobContext<'_>,
    input: &Location,
    staging: &ObjectUri,
    job: &FeaturizeJob,
    known: &mut Known,
    progress: &Arc<dyn Progress>,
) -> Result<Listing, Error> {
    let t = Instant::now();
    let dir = Location::parse(&format!("{staging}/manifest/"))?;
    let mut listing = write_manifest(input, &dir, job, known, progress).await?;
    known.finish_listing();
    if listing.images + known.carried() == 0 {
        output::remove_prefix(&cx.out, staging).await;
        return Err(Error::NoImages(input.uri()));
    }
    listing.ms = t.elapsed().as_millis() as u64;
    Ok(listing)
}

/// Assembles the result, checks that every listed image became exactly one
/// row, commits the summary, then removes the files of earlier runs.
#[allow(clippy::too_many_arguments)]
async fn finish(
    cx: &JobContext<'_>,
    job: &FeaturizeJob,
    input: &Location,
    model: ModelRef,
    listing: Listing,
    known: Known,
    engine: Engine,
    started: Instant,
) -> Result<Summary, Error> {
    let t_commit = Instant::now();
    let Engine { outcome, worker_ms, ms } = engine;
    let (featurized, failed) = (outcome.checkpoints.features.rows, outcome.checkpoints.errors.rows);
    let computation = model.computation();
    let assembled = assemble(
        cx,
        job,
        &computation,
        &model.manifest.model,
        &listing,
        &known,
        outcome.checkpoints,
    )
    .await?;
    let written = assembled.features.rows + assembled.errors.rows - listing.refused.len();
    let expected = listing.images + known.carried();
    if written != expected {
        return Err(Error::Incomplete {
            listed: expected,
            written,
        });
    }
    let wall = started.elapsed();
    let files = Files {
        features: assembled.features.uris(),
        errors: assembled.errors.uris(),
    };
    let all_files: Vec<DataFile> = assembled
        .features
        .files
        .iter()
        .chain(&assembled.errors.files)
        .cloned()
        .collect();
    let mut jobs: BTreeSet<String> = assembled.jobs;
    jobs.insert(cx.id.clone());
    let mut summary = Summary {
        job_id: cx.id.clone(),
        input: input.uri(),
        output: cx.out.uri(),
        engine: job
            .cluster
            .as_ref()
            .map_or("ballista-standalone".into(), |url| format!("ballista-cluster {url}")),
        objects_listed: expected + listing.refused.len(),
        featurized,
        failed: failed + listing.refused.len(),
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
        sorted: job.sorted,
        changes: known.changes.clone(),
        lineage: Lineage {
            listing_sha256: listing.sha256.clone(),
            computation: Some(computation),
            from: job.incremental.as_ref().and_then(|i| i.from.clone()),
            jobs: jobs.into_iter().collect(),
            files: all_files,
        },
    };
    summary.stages_ms.commit = t_commit.elapsed().as_millis() as u64;
    cx.commit(&summary).await?;
    cx.remove_stale(&["features", "errors"], &summary.files.all()).await?;
    // This job holds the output: any scratch there is its own or a dead job's.
    output::remove_prefix(&cx.out, &cx.out.child("_temporary")).await;
    Ok(summary)
}

/// The result's data files, and the jobs whose rows they hold.
struct Assembled {
    features: Dataset,
    errors: Dataset,
    jobs: BTreeSet<String>,
}

/// The job's id in a data file's name (`STEM-JOB-NNNNN.parquet`).
fn job_of(uri: &str) -> Option<String> {
    let name = uri.rsplit('/').next()?;
    let mut parts = name.split('-');
    parts.next()?;
    parts.next().map(str::to_string)
}

/// Builds `features/` and `errors/` from the carried rows, the refused
/// objects and this job's checkpoints. Unsorted, a file whose rows are all
/// kept is kept as it is and the checkpoints are the result's files; sorted,
/// every row is merged in path order into new files, so that the bytes
/// depend on the rows alone (a rerun that carried rows over writes the same
/// bytes as one from scratch).
async fn assemble(
    cx: &JobContext<'_>,
    job: &FeaturizeJob,
    computation: &Computation,
    model: &str,
    listing: &Listing,
    known: &Known,
    checkpoints: Checkpoints,
) -> Result<Assembled, Error> {
    let mut jobs = BTreeSet::new();
    let mut out = Assembled {
        features: Dataset::default(),
        errors: Dataset::default(),
        jobs: BTreeSet::new(),
    };
    for dir in ["features", "errors"] {
        let schema = match (dir, job.views) {
            ("errors", _) => errors_schema(),
            (_, Some(_)) => view_features_schema(),
            _ => features_schema(),
        };
        let mut whole = Vec::new();
        let mut sources: Vec<BoxStream<'static, Result<RecordBatch, Error>>> = Vec::new();
        for (k, source) in known.sources.iter().enumerate().filter(|(_, s)| s.dir == dir) {
            let keep = &known.keep[k];
            if keep.is_empty() {
                continue;
            }
            jobs.extend(job_of(&source.uri.to_string()));
            let in_place = source
                .uri
                .to_string()
                .starts_with(&format!("{}/", cx.out.uri().trim_end_matches('/')));
            if !job.sorted && in_place && keep.len() == source.rows {
                whole.push(kept_whole(source).await?);
                continue;
            }
            let rows = carried_rows(source, Some(Arc::new(keep.clone())));
            sources.push(if job.sorted && !source.sorted {
                sorted_stream(rows).await?
            } else {
                rows
            });
        }
        if dir == "errors" && !listing.refused.is_empty() {
            let refused = refused_batch(&listing.refused)?;
            let refused = if job.sorted { sort_by_path(&refused)? } else { refused };
            sources.push(futures::stream::once(async move { Ok(refused) }).boxed());
        }
        let done = match dir {
            "features" => &checkpoints.features,
            _ => &checkpoints.errors,
        };
        let metadata = computation.metadata(model);
        let mut writer = cx.part_writer(dir, schema.clone(), metadata);
        if job.sorted {
            for file in &done.files {
                let source = checkpoint_source(cx, dir, file)?;
                sources.push(carried_rows(&source, None));
            }
            merge_sorted(sources, &mut writer).await?;
            set(&mut out, dir, writer.finish().await?);
        } else {
            for mut source in sources {
                while let Some(batch) = source.next().await {
                    writer.write(&batch?).await?;
                }
            }
            let mut files = whole;
            files.extend(done.files.iter().cloned());
            let rewritten = if writer.rows() > 0 || files.is_empty() {
                writer.finish().await?.files
            } else {
                Vec::new()
            };
            files.extend(rewritten);
            let rows = files.iter().map(|f| f.rows).sum();
            set(&mut out, dir, Dataset { files, rows });
        }
    }
    out.jobs = jobs;
    Ok(out)
}

fn set(out: &mut Assembled, dir: &str, written: Dataset) {
    match dir {
        "features" => out.features = written,
        _ => out.errors = written,
    }
}

/// A checkpoint of this job as a source of rows (all of them).
fn checkpoint_source(
    cx: &JobContext<'_>,
    dir: &'static str,
    file: &DataFile,
) -> Result<crate::incremental::Source, Error> {
    Ok(crate::incremental::Source {
        uri: ObjectUri::parse(&file.uri)?,
        store: Arc::clone(&cx.out.store),
        dir,
        rows: file.rows,
        committed: false,
        sorted: true,
        sha256: Some(file.sha256.clone()),
    })
}

/// A data file kept as it is: its sha256 from the `_SUCCESS` that listed it,
/// or read again (a dead job's checkpoint).
async fn kept_whole(source: &crate::incremental::Source) -> Result<DataFile, Error> {
    let sha256 = match &source.sha256 {
        Some(sha) => sha.clone(),
        None => {
            let get = source
                .store
                .get(&source.uri.path)
                .await
                .map_err(|e| source.uri.err(e))?;
            let bytes = get.bytes().await.map_err(|e| source.uri.err(e))?;
            fruits_common::sha256_hex(&bytes)
        }
    };
    Ok(DataFile {
        uri: source.uri.to_string(),
        rows: source.rows,
        sha256,
    })
}

/// `rows` sorted by path, in memory (a source that was written unsorted).
async fn sorted_stream(
    rows: BoxStream<'static, Result<RecordBatch, Error>>,
) -> Result<BoxStream<'static, Result<RecordBatch, Error>>, Error> {
    let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(rows).await?;
    let Some(first) = batches.first() else {
        return Ok(futures::stream::empty().boxed());
    };
    let all = sort_by_path(&concat_batches(&first.schema(), &batches)?)?;
    Ok(futures::stream::once(async move { Ok(all) }).boxed())
}

fn sort_by_path(batch: &RecordBatch) -> Result<RecordBatch, Error> {
    let paths = batch.column_by_name("path").expect("rows have a path");
    let order = sort_to_indices(paths, None, None)?;
    Ok(take_record_batch(batch, &order)?)
}

/// Writes the rows of `sources`, each in path order, merged in path order.
/// Holds one batch per source.
async fn merge_sorted(
    sources: Vec<BoxStream<'static, Result<RecordBatch, Error>>>,
    writer: &mut PartWriter,
) -> Result<(), Error> {
    let mut cursors = Vec::with_capacity(sources.len());
    for stream in sources {
        let mut cursor = Cursor {
            stream,
            batch: None,
            row: 0,
        };
        cursor.fill().await?;
        cursors.push(cursor);
    }
    loop {
        let mut live: Vec<(usize, &str)> = cursors
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.path().map(|p| (k, p)))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        live.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
        let first = live[0].0;
        let bound = live.get(1).map(|(_, p)| p.to_string());
        let cursor = &mut cursors[first];
        let batch = cursor.batch.clone().expect("a live cursor holds a batch");
        let paths = batch
            .column_by_name("path")
            .expect("rows have a path")
            .as_string::<i32>();
        let mut end = cursor.row + 1;
        while end < batch.num_rows() && bound.as_deref().is_none_or(|b| paths.value(end) <= b) {
            end += 1;
        }
        writer.write(&batch.slice(cursor.row, end - cursor.row)).await?;
        cursor.row = end;
        cursor.fill().await?;
    }
}

/// A position in one sorted source.
struct Cursor {
    stream: BoxStream<'static, Result<RecordBatch, Error>>,
    batch: Option<RecordBatch>,
    row: usize,
}

impl Cursor {
    /// Moves to the next row, reading batches as needed; `batch` is `None` at the end.
    async fn fill(&mut self) -> Result<(), Error> {
        while self.batch.as_ref().is_none_or(|b| self.row >= b.num_rows()) {
            match self.stream.next().await {
                Some(batch) => {
                    self.batch = Some(batch?);
                    self.row = 0;
                }
                None => {
                    self.batch = None;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn path(&self) -> Option<&str> {
        let batch = self.batch.as_ref()?;
        let paths = batch.column_by_name("path")?.as_string::<i32>();
        Some(paths.value(self.row))
    }
}

/// An object listed but not read, and why: an `errors/` row (path, etag,
/// size, why).
type Refused = (String, Option<String>, u64, String);

/// Streams the listing into manifest files of `rows_per_task` rows, leaving
/// out what `known` carries over; returns the listing with the count and
/// total size of the rows to featurize (each object is read once), and the
/// objects refused at listing (over `max_object_bytes`).
async fn write_manifest(
    input: &Location,
    staging: &Location,
    job: &FeaturizeJob,
    known: &mut Known,
    progress: &Arc<dyn Progress>,
) -> Result<Listing, Error> {
    let limit = job.limit.unwrap_or(usize::MAX);
    let views = job.views.map_or(0, |v| v.per_image);
    let rows_per_image = views.max(1);
    // A task holds about `rows_per_task` rows, views included.
    let per_task = (job.rows_per_task / rows_per_image as usize).max(1);
    let mut listing = list_images(input).take(limit);
    let mut parts = ManifestParts {
        staging,
        views,
        files: Vec::new(),
        rows: 0,
        bytes: 0,
    };
    let mut digest = fruits_common::Sha256::default();
    let mut refused = Vec::new();
    let mut chunk = Vec::with_capacity(per_task);
    let mut listed = 0;
    while let Some(item) = listing.next().await {
        match item {
            Ok(entry)
                if job
                    .only
                    .as_ref()
                    .is_some_and(|only| !only.contains(&entry.uri.to_string())) => {}
            Ok(entry) => {
                listed += 1;
                let uri = entry.uri.to_string();
                let etag = entry.etag.as_deref().unwrap_or("");
                digest.update(format!("{uri}\t{etag}\t{}\n", entry.size).as_bytes());
                if entry.size > job.max_object_bytes {
                    let why = too_large(entry.size, job.max_object_bytes);
                    known.refused(&uri);
                    refused.push((uri, entry.etag, entry.size, why));
                } else if let Fate::Featurize = known.fate(&entry) {
                    chunk.push(entry);
                }
            }
            Err(fruits_storage::Error::Unlisted { uri, reason }) => {
                known.refused(&uri);
                refused.push((uri, None, 0, reason));
            }
            Err(e) => return Err(e.into()),
        }
        if chunk.len() == per_task {
            parts.write(&mut chunk).await?;
        }
        if listed % 1000 == 0 {
            progress.listed(listed);
        }
    }
    if !chunk.is_empty() {
        parts.write(&mut chunk).await?;
    }
    progress.listed(listed);
    Ok(Listing {
        files: parts.files,
        images: parts.rows,
        bytes: parts.bytes,
        refused,
        sha256: digest.hex(),
        ms: 0,
    })
}

/// The manifest files written so far: one per engine task.
struct ManifestParts<'a> {
    staging: &'a Location,
    views: u32,
    files: Vec<String>,
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
        let file = self.staging.child(&format!("part-{:05}.parquet", self.files.len()));
        output::put(&self.staging.store, &file, manifest_parquet(chunk, self.views)?).await?;
        self.files.push(file.to_string());
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
    let paths = StringArray::from_iter_values(refused.iter().map(|r| r.0.as_str()));
    let etags: StringArray = refused.iter().map(|r| r.1.as_deref()).collect();
    let sizes = UInt64Array::from_iter_values(refused.iter().map(|r| r.2));
    let errors = StringArray::from_iter_values(refused.iter().map(|r| r.3.as_str()));
    let digests = StringArray::new_null(refused.len());
    Ok(RecordBatch::try_new(
        errors_schema(),
        vec![
            Arc::new(paths),
            Arc::new(errors),
            Arc::new(etags),
            Arc::new(sizes),
            Arc::new(digests),
        ],
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
    fields.push(Field::new("etag", DataType::Utf8, true));
    fields.push(Field::new("size", DataType::UInt64, false));
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
    let etags: StringArray = rows.iter().map(|(e, _)| e.etag.as_deref()).collect();
    columns.push(Arc::new(etags));
    columns.push(Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(|(e, _)| e.size),
    )));
    let batch = RecordBatch::try_new(manifest_schema(views > 0), columns)?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// The columns that say what a row was made from: the object (`etag`,
/// `size` as listed, `sha256` of the bytes read) and the computation.
fn identity_fields() -> Vec<Field> {
    vec![
        Field::new("etag", DataType::Utf8, true),
        Field::new("size", DataType::UInt64, false),
        Field::new("sha256", DataType::Utf8, true),
        Field::new("model_sha256", DataType::Utf8, false),
        Field::new("precision", DataType::Utf8, false),
        Field::new("input_size", DataType::Int32, false),
        Field::new("preprocess", DataType::Int32, false),
    ]
}

pub fn features_schema() -> SchemaRef {
    let mut fields = features_fields();
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
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
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Error rows: the object, why, and what it was (`sha256` set when the
/// bytes were read: the image itself is bad).
pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("etag", DataType::Utf8, true),
        Field::new("size", DataType::UInt64, false),
        Field::new("sha256", DataType::Utf8, true),
    ]))
}

/// Featurizes the listing on the engine, a group of tasks per query, and
/// writes each group's rows as soon as it is done: the job's checkpoints.
async fn featurize_and_write(
    cx: &JobContext<'_>,
    listing: &Listing,
    model: &ModelRef,
    job: &FeaturizeJob,
    progress: &Arc<dyn Progress>,
) -> Result<Engine, Error> {
    let t = Instant::now();
    let before = STATS.snapshot();
    let total = listing.images;
    let computation = model.computation();
    let metadata = computation.metadata(&model.manifest.model);
    let schema = match job.views {
        Some(_) => view_features_schema(),
        None => features_schema(),
    };
    let mut features = cx.part_writer("features", schema, metadata.clone()).with_stem("chunk");
    let mut errors = cx.part_writer("errors", errors_schema(), metadata).with_stem("chunk");
    let start = PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
    // In-process, the executor's counter moves the bar between groups.
    let ticker = job
        .cluster
        .is_none()
        .then(|| progress_ticker(Arc::clone(progress), start, total));
    let mut workers = BTreeSet::new();
    let per_query = tasks_per_query(job);
    let queries: Vec<Vec<String>> = listing.files.chunks(per_query).map(<[String]>::to_vec).collect();
    let mut results = futures::stream::iter(queries.into_iter().map(|files| run_query(cx.ctx, files, model, job)))
        .buffered(QUERIES_IN_FLIGHT);
    let mut done = 0;
    let mut outcome = Ok(());
    while let Some(batches) = results.next().await {
        outcome = write_group(
            batches,
            &computation,
            job.sorted,
            &mut features,
            &mut errors,
            &mut workers,
        )
        .await;
        if outcome.is_err() {
            break;
        }
        done = features.rows() + errors.rows();
        if job.cluster.is_some() {
            progress.featurized(done, total);
        }
    }
    drop(ticker);
    drop(results);
    // What is written stays written: the rows of finished groups are complete files.
    let features = features.close().await?;
    let errors = errors.close().await?;
    outcome?;
    progress.featurized(done, total);
    Ok(Engine {
        outcome: Outcome {
            checkpoints: Checkpoints { features, errors },
            workers,
        },
        worker_ms: STATS.snapshot().since(&before),
        ms: t.elapsed().as_millis() as u64,
    })
}

/// Engine queries running at once: while the client writes one group's
/// rows, and while the last tasks of one group run, the next one starts.
const QUERIES_IN_FLIGHT: usize = 2;

/// Manifest files (tasks) per query: four per task slot, so that a group
/// keeps every slot busy and a checkpoint comes every few tasks per slot.
fn tasks_per_query(job: &FeaturizeJob) -> usize {
    (job.parallelism * 4).max(1)
}

/// One group of manifest files through `featurize()`: its rows, in memory
/// (a group is a few thousand rows).
async fn run_query(
    ctx: &SessionContext,
    files: Vec<String>,
    model: &ModelRef,
    job: &FeaturizeJob,
) -> Result<Vec<RecordBatch>, Error> {
    let table = ctx.read_parquet(files, ParquetReadOptions::default()).await?;
    let udf = ctx.udf(fruits_functions::featurize::NAME)?;
    let mut args = vec![
        col("path"),
        lit(i64::from(model.input_size)),
        lit(model.manifest.onnx.sha256.clone()),
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
    columns.extend([col("etag"), col("size")]);
    Ok(table.select(columns)?.collect().await?)
}

/// Writes one group's rows (sorted by path with `--sorted`) and closes the
/// files: a checkpoint.
async fn write_group(
    batches: Result<Vec<RecordBatch>, Error>,
    computation: &Computation,
    sorted: bool,
    features: &mut PartWriter,
    errors: &mut PartWriter,
    workers: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for batch in batches? {
        let result: &StructArray = batch.column_by_name("r").expect("the function's column").as_struct();
        workers.extend(result.column(2).as_string::<i32>().iter().flatten().map(str::to_string));
        let (ok, failed) = split(&batch, computation)?;
        good.push(ok);
        bad.push(failed);
    }
    for (rows, writer, schema) in [(good, &mut *features, None), (bad, &mut *errors, Some(errors_schema()))] {
        let Some(schema) = schema.or_else(|| rows.first().map(RecordBatch::schema)) else {
            continue;
        };
        let all = concat_batches(&schema, &rows)?;
        let all = if sorted { sort_by_path(&all)? } else { all };
        writer.write(&all).await?;
        writer.checkpoint().await?;
    }
    Ok(())
}

/// This job's checkpoints: the rows it featurized, in complete files.
struct Checkpoints {
    features: Dataset,
    errors: Dataset,
}

/// The engine stage's outcome, its workers' time, and its wall time.
struct Engine {
    outcome: Outcome,
    worker_ms: StatsSnapshot,
    ms: u64,
}

/// What the engine run wrote, and which worker processes did it.
struct Outcome {
    checkpoints: Checkpoints,
    workers: BTreeSet<String>,
}

/// Polls the process-wide counter while the engine works (the in-process
/// executor updates it; rows come back a group at a time).
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

/// Splits engine output rows into the features and errors batches, each
/// with the columns that say what it was made from.
fn split(batch: &RecordBatch, computation: &Computation) -> Result<(RecordBatch, RecordBatch), Error> {
    let column = |name: &str| batch.column_by_name(name).expect("the query's columns");
    let path = cast(column("path"), &DataType::Utf8)?;
    let label = cast(column("label"), &DataType::Utf8)?;
    let etag = cast(column("etag"), &DataType::Utf8)?;
    let size = cast(column("size"), &DataType::UInt64)?;
    let result: &StructArray = column("r").as_struct();
    let feats: &FixedSizeListArray = result.column(0).as_fixed_size_list();
    let error = result.column(1);
    let digest = result.column(3);
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
    let schema = match batch.column_by_name("view") {
        Some(view) => {
            good.push(filter(&cast(view, &DataType::Int32)?, &ok)?);
            view_features_schema()
        }
        None => features_schema(),
    };
    let n = good[0].len();
    good.extend([filter(&etag, &ok)?, filter(&size, &ok)?, filter(digest.as_ref(), &ok)?]);
    good.extend(computation_columns(computation, n));
    let bad: Vec<ArrayRef> = vec![
        filter(&path, &failed)?,
        filter(error.as_ref(), &failed)?,
        filter(&etag, &failed)?,
        filter(&size, &failed)?,
        filter(digest.as_ref(), &failed)?,
    ];
    Ok((
        RecordBatch::try_new(schema, good)?,
        RecordBatch::try_new(errors_schema(), bad)?,
    ))
}

/// The computation's columns for `n` rows (constant: Parquet stores each in a few bytes).
fn computation_columns(c: &Computation, n: usize) -> Vec<ArrayRef> {
    vec![
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            c.model_sha256.as_str(),
            n,
        ))),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            c.precision.as_str(),
            n,
        ))),
        Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(
            c.input_size as i32,
            n,
        ))),
        Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(
            c.preprocess as i32,
            n,
        ))),
    ]
}
