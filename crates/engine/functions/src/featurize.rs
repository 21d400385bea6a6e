//! The featurizer as a DataFusion scalar function, run by the engine's executors.
//!
//! `featurize(path, input_size, model_sha256)` takes object URIs (see
//! `fruits-storage`); `featurize(path, input_size, model_sha256, view, seed)`
//! featurizes the `view`-th seeded training view of each image instead
//! (`fruits_preprocess::view`, 0 being the whole image);
//! `featurize(path, input_size, model_sha256, view, seed, backgrounds)`
//! featurizes the `view`-th seeded training *scene* of each studio shot
//! instead (`fruits_preprocess::scene`: the fruit cut out and placed on one of
//! the photographs under the `backgrounds` URI, which each executor reads
//! once). Each returns, per row, a struct `{features, error, worker, sha256}`:
//! the 1280-d backbone vector (null for a bad image), why this image could not
//! be featurized (null for a good one), the `host:pid` of the executor that
//! did the work, and the sha256 of the bytes read (null when none could be
//! read): what the row was computed from. A bad image
//! is a value, never a failed task: one corrupt file must not kill a job.
//!
//! The bytes are read here, on the executor, not on the client. The model is the
//! executor's own installed copy; `model_sha256` makes a task fail loudly if an
//! executor holds a different model than the job was planned with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, StringArray, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use fruits_backbone::Backbone;
use fruits_preprocess::scene::{Backgrounds, Scene};
use fruits_preprocess::view::View;
use fruits_preprocess::Spec;
use fruits_storage::ObjectUri;
use futures::StreamExt;

pub const NAME: &str = "featurize";
/// Width of the feature vector.
pub const FEATURES_DIM: i32 = 1280;
/// Images per inference call: large enough to amortise the call, small enough
/// to bound memory (32 × 3 × 224² floats = 19 MB).
pub const INFERENCE_BATCH: usize = 32;
/// Concurrent object reads per task.
const READ_CONCURRENCY: usize = 16;
/// Objects a task holds in memory at once: it reads them a window at a time
/// (the next window while the current one is decoded and run), so a task of
/// 256 rows holds 2 × 64 objects, not 256.
const READ_WINDOW: usize = 2 * INFERENCE_BATCH;

/// `FixedSizeList<Float32, 1280>`: the `features` column.
pub fn features_type() -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), FEATURES_DIM)
}

/// The function's result: `Struct<features, error, worker>`, exactly one of
/// `features` and `error` set; `worker` (`host:pid`) says which process did it.
pub fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new("features", features_type(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("worker", DataType::Utf8, false),
        Field::new("sha256", DataType::Utf8, true),
    ])
}

/// This process as `host:pid`.
pub fn worker_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
        format!("{}:{}", host.trim(), std::process::id())
    })
}

/// Builds the function for a model directory on this machine.
pub fn udf(model_dir: impl Into<PathBuf>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Featurize::new(model_dir.into()))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Featurize {
    model_dir: PathBuf,
    signature: Signature,
}

impl Featurize {
    pub fn new(model_dir: PathBuf) -> Self {
        let strings = [DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8];
        let variants = strings
            .iter()
            .flat_map(|p| strings.iter().map(move |s| (p, s)))
            .flat_map(|(p, s)| {
                let whole = vec![p.clone(), DataType::Int64, s.clone()];
                let mut views = whole.clone();
                views.extend([DataType::Int32, DataType::Int64]);
                let mut scenes = views.clone();
                scenes.push(s.clone());
                [
                    TypeSignature::Exact(whole),
                    TypeSignature::Exact(views),
                    TypeSignature::Exact(scenes),
                ]
            })
            .collect();
        Self {
            model_dir,
            signature: Signature::one_of(variants, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Featurize {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (paths, size, sha, views) = match &args.args[..] {
            [paths, size, sha] => (paths, size, sha, None),
            [paths, size, sha, view, seed] => (paths, size, sha, Some(views(view, seed, None, args.number_rows)?)),
            [paths, size, sha, view, seed, backgrounds] => {
                let views = views(view, seed, Some(backgrounds), args.number_rows)?;
                (paths, size, sha, Some(views))
            }
            _ => return exec_err!("{NAME} takes (path, input_size, model_sha256[, view, seed[, backgrounds]])"),
        };
        let paths = paths.to_array(args.number_rows)?;
        let paths = datafusion::arrow::compute::cast(&paths, &DataType::Utf8)?;
        let paths = paths.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let size = match size {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(s))) if (16..=1024).contains(s) => *s as u32,
            other => return exec_err!("{NAME}: input_size must be a constant from 16 to 1024, got {other:?}"),
        };
        let sha = match sha {
            ColumnarValue::Scalar(s) => s.to_string(),
            _ => return exec_err!("{NAME}: model_sha256 must be a constant"),
        };
        let backbone = Backbone::shared_matching(&self.model_dir, &sha).map_err(|e| exec_datafusion(e.to_string()))?;
        if backbone.manifest().onnx.sha256 != sha {
            return exec_err!(
                "{NAME}: the model in {} (sha256 {}) is not the job's model ({sha}); install the same model everywhere",
                self.model_dir.display(),
                backbone.manifest().onnx.sha256
            );
        }
        let spec = Spec {
            size,
            mean: backbone.manifest().input.mean,
            std: backbone.manifest().input.std,
        };
        let (results, digests) = featurize_paths(&backbone, paths, views.as_ref(), &spec)?;
        Ok(ColumnarValue::Array(to_struct_array(results, digests)?))
    }
}

/// The view index of each row, the job's seed, and for scenes the backgrounds.
struct Views {
    index: Vec<u32>,
    seed: u64,
    scenes: Option<Arc<Backgrounds>>,
}

impl Views {
    /// What row `row` of `paths` becomes: the image, a view of it, or a scene.
    fn look(&self, paths: &StringArray, row: usize) -> Look {
        if paths.is_null(row) || self.index[row] == 0 {
            return Look::View(View::WHOLE);
        }
        let key = paths.value(row);
        match &self.scenes {
            Some(b) => Look::Scene(Scene::seeded(self.seed, key, self.index[row], b.len()), b.clone()),
            None => Look::View(View::seeded(self.seed, key, self.index[row])),
        }
    }
}

/// How one row's image is looked at.
enum Look {
    View(View),
    Scene(Scene, Arc<Backgrounds>),
}

impl Look {
    fn prepare(
        &self,
        bytes: &[u8],
        key: &str,
        spec: &Spec,
        out: &mut Vec<f32>,
    ) -> Result<(), fruits_preprocess::Error> {
        match self {
            Look::View(view) => fruits_preprocess::prepare_view(bytes, view, spec, out),
            Look::Scene(scene, backgrounds) => {
                let shot = fruits_preprocess::decode(bytes)?;
                fruits_preprocess::prepare_decoded(&scene.render(&shot, backgrounds, key), spec, out)
            }
        }
    }
}

fn views(view: &ColumnarValue, seed: &ColumnarValue, scenes: Option<&ColumnarValue>, rows: usize) -> Result<Views> {
    let seed = match seed {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(s))) => *s as u64,
        other => return exec_err!("{NAME}: seed must be a constant integer, got {other:?}"),
    };
    let scenes = match scenes {
        None => None,
        Some(ColumnarValue::Scalar(uri)) if !uri.is_null() => Some(backgrounds(&uri.to_string())?),
        Some(other) => return exec_err!("{NAME}: backgrounds must be a constant URI, got {other:?}"),
    };
    let view = view.to_array(rows)?;
    let index = view
        .as_primitive::<Int32Type>()
        .iter()
        .map(|v| u32::try_from(v.unwrap_or(0)).unwrap_or(0))
        .collect();
    Ok(Views { index, seed, scenes })
}

/// The photographs under `uri`, read and decoded once per process.
fn backgrounds(uri: &str) -> Result<Arc<Backgrounds>> {
    static LOADED: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Backgrounds>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(b) = loaded.lock().expect("backgrounds lock").get(uri) {
        return Ok(b.clone());
    }
    // On the I/O runtime, waited for from this engine thread (see `start_reads`).
    let reading = io_runtime().spawn(read_backgrounds(uri.to_string()));
    let files = futures::executor::block_on(reading)
        .map_err(|e| exec_datafusion(format!("reading the backgrounds failed: {e}")))?
        .map_err(|e| exec_datafusion(format!("cannot read the backgrounds {uri}: {e}")))?;
    let b = Arc::new(Backgrounds::decode(&files).map_err(|e| exec_datafusion(format!("backgrounds {uri}: {e}")))?);
    loaded
        .lock()
        .expect("backgrounds lock")
        .insert(uri.to_string(), b.clone());
    Ok(b)
}

/// Every image under `uri`, in URI order (the order scenes draw them in).
async fn read_backgrounds(uri: String) -> std::result::Result<Vec<bytes::Bytes>, fruits_storage::Error> {
    let location = fruits_storage::Location::parse(&uri)?;
    let files = fruits_storage::read_images(&location).await?;
    Ok(files.into_iter().map(|(_, bytes)| bytes).collect())
}

fn exec_datafusion(msg: String) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Execution(format!("{NAME}: {msg}"))
}

fn featurize_paths(
    backbone: &Backbone,
    paths: &StringArray,
    views: Option<&Views>,
    spec: &Spec,
) -> Result<(Vec<RowResult>, Vec<Option<String>>)> {
    let uris: Vec<Option<String>> = paths.iter().map(|p| p.map(str::to_string)).collect();
    let look_of = |row: usize| match views {
        Some(v) => v.look(paths, row),
        None => Look::View(View::WHOLE),
    };
    let windows: Vec<Vec<Option<String>>> = uris.chunks(READ_WINDOW).map(<[_]>::to_vec).collect();
    let mut reading = windows.first().cloned().map(start_reads);

    let mut results: Vec<RowResult> = Vec::with_capacity(uris.len());
    // The sha256 of each object's bytes, hashed here because they are read here anyway.
    let mut digests: Vec<Option<String>> = Vec::with_capacity(uris.len());
    let mut pending: Vec<usize> = Vec::new();
    let mut input: Vec<f32> = Vec::new();
    for next in windows.iter().skip(1).map(Some).chain([None]) {
        let t0 = Instant::now();
        let contents = match reading.take() {
            Some(reads) => finish_reads(reads)?,
            None => break,
        };
        STATS
            .read_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        reading = next.cloned().map(start_reads);
        for content in contents {
            let t = Instant::now();
            let row = results.len();
            digests.push(content.as_ref().ok().map(|b| fruits_common::sha256_hex(b)));
            let prepared = content.and_then(|bytes| {
                STATS.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let key = if paths.is_valid(row) { paths.value(row) } else { "" };
                look_of(row)
                    .prepare(&bytes, key, spec, &mut input)
                    .map_err(|e| e.to_string())
            });
            STATS
                .preprocess_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match prepared {
                Ok(()) => {
                    pending.push(results.len());
                    results.push(Ok(Vec::new()));
                }
                Err(e) => {
                    STATS.failed.fetch_add(1, Ordering::Relaxed);
                    PROGRESS.fetch_add(1, Ordering::Relaxed);
                    results.push(Err(e));
                }
            }
            if pending.len() == INFERENCE_BATCH {
                infer(backbone, &mut input, &mut pending, spec, &mut results)?;
            }
        }
    }
    infer(backbone, &mut input, &mut pending, spec, &mut results)?;
    STATS.images.fetch_add(results.len() as u64, Ordering::Relaxed);
    Ok((results, digests))
}

/// Runs the pending images through the model and fills their rows.
fn infer(
    backbone: &Backbone,
    input: &mut Vec<f32>,
    pending: &mut Vec<usize>,
    spec: &Spec,
    results: &mut [RowResult],
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    let out = backbone
        .run(std::mem::take(input), pending.len(), spec.size)
        .map_err(|e| exec_datafusion(e.to_string()))?;
    STATS
        .infer_ns
        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let dim = FEATURES_DIM as usize;
    for (k, &row) in pending.iter().enumerate() {
        results[row] = Ok(out.features[k * dim..(k + 1) * dim].to_vec());
    }
    PROGRESS.fetch_add(pending.len() as u64, Ordering::Relaxed);
    pending.clear();
    Ok(())
}

fn to_struct_array(results: Vec<RowResult>, digests: Vec<Option<String>>) -> Result<ArrayRef> {
    let dim = FEATURES_DIM as usize;
    let mut values = Vec::with_capacity(results.len() * dim);
    let mut valid = Vec::with_capacity(results.len());
    let mut errors = Vec::with_capacity(results.len());
    for r in &results {
        match r {
            Ok(v) => {
                values.extend_from_slice(v);
                valid.push(true);
                errors.push(None);
            }
            Err(e) => {
                values.extend(std::iter::repeat_n(0.0, dim));
                valid.push(false);
                errors.push(Some(e.as_str()));
            }
        }
    }
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    let features = FixedSizeListArray::try_new(
        item,
        FEATURES_DIM,
        Arc::new(Float32Array::from(values)),
        Some(NullBuffer::from(valid)),
    )?;
    let errors = StringArray::from(errors);
    let workers = StringArray::from_iter_values(std::iter::repeat_n(worker_id(), results.len()));
    let digests = StringArray::from(digests);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(features),
        Arc::new(errors),
        Arc::new(workers),
        Arc::new(digests),
    ];
    let array = StructArray::try_new(result_fields(), columns, None)?;
    Ok(Arc::new(array))
}

/// Objects being read, in order, on the I/O runtime.
type Reads = tokio::task::JoinHandle<Vec<Result<RowResult<bytes::Bytes>>>>;

/// Starts reading a window of objects on the I/O runtime.
///
/// The UDF is synchronous and runs on an engine worker thread; blocking that
/// thread (in [`finish_reads`]) while a separate runtime does the I/O keeps
/// the engine's own runtime free of nested `block_on` calls.
fn start_reads(uris: Vec<Option<String>>) -> Reads {
    io_runtime().spawn(async move {
        futures::stream::iter(uris)
            .map(read_one)
            .buffered(READ_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
    })
}

/// Waits for a window's reads: each object's bytes or per-image failure, or
/// the first transient failure.
fn finish_reads(reads: Reads) -> Result<Vec<RowResult<bytes::Bytes>>> {
    let reads = futures::executor::block_on(reads).map_err(|e| exec_datafusion(format!("read task failed: {e}")))?;
    reads.into_iter().collect()
}

/// One object's bytes; `Ok(Err(_))` for a permanent, per-image failure (an
/// errors row), `Err(_)` for a transient one (the task fails and the engine
/// runs it again: an outage must not turn good images into errors).
async fn read_one(uri: Option<String>) -> Result<RowResult<bytes::Bytes>> {
    let Some(uri) = uri else {
        return Ok(Err("path is null".into()));
    };
    let uri = match ObjectUri::parse(&uri) {
        Ok(uri) => uri,
        Err(e) => return Ok(Err(e.to_string())),
    };
    match uri.read().await {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(e) if e.is_not_found() => Ok(Err("object not found (deleted after listing?)".into())),
        Err(e) if e.is_permanent() => Ok(Err(format!("cannot read: {e}"))),
        Err(e) => Err(exec_datafusion(format!("cannot read {uri}, will retry the task: {e}"))),
    }
}

/// Per-row outcome: the value (by default the feature vector) or why it is missing.
type RowResult<T = Vec<f32>> = std::result::Result<T, String>;

fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fruits-io")
            .enable_all()
            .build()
            .expect("cannot start the I/O runtime")
    })
}

/// Images featurized (or failed) so far in this process: drives progress bars.
pub static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// Cumulative counters of this process, summed over worker threads.
#[derive(Debug, Default)]
pub struct Stats {
    pub images: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_read: AtomicU64,
    pub read_ns: AtomicU64,
    pub preprocess_ns: AtomicU64,
    pub infer_ns: AtomicU64,
}

pub static STATS: Stats = Stats {
    images: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    bytes_read: AtomicU64::new(0),
    read_ns: AtomicU64::new(0),
    preprocess_ns: AtomicU64::new(0),
    infer_ns: AtomicU64::new(0),
};

/// A plain copy of [`STATS`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub images: u64,
    pub failed: u64,
    pub bytes_read: u64,
    pub read_ms: u64,
    pub preprocess_ms: u64,
    pub infer_ms: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let ms = |a: &AtomicU64| a.load(Ordering::Relaxed) / 1_000_000;
        StatsSnapshot {
            images: self.images.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            read_ms: ms(&self.read_ns),
            preprocess_ms: ms(&self.preprocess_ns),
            infer_ms: ms(&self.infer_ns),
        }
    }
}

impl StatsSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            images: self.images - earlier.images,
            failed: self.failed - earlier.failed,
            bytes_read: self.bytes_read - earlier.bytes_read,
            read_ms: self.read_ms - earlier.read_ms,
            preprocess_ms: self.preprocess_ms - earlier.preprocess_ms,
            infer_ms: self.infer_ms - earlier.infer_ms,
        }
    }
}
