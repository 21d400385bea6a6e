//! `fruits bench featurize`: where the time of one image goes, against a bare
//! ONNX Runtime loop over the same tensors in the same run.
//!
//! Stages are timed one by one on one thread (decode, resize, normalise,
//! inference through our pooled runtime); the end-to-end figure is the whole
//! featurize job on the in-process engine (listing, Parquet, engine overhead
//! included), measured as process CPU time. The bare loop is an `ort` session
//! built directly from the same ONNX file, fed the same prepared batches.
//! Each precision asked for (fp32, int8) gets its rows in the same run, on
//! the same images.

use std::sync::Arc;
use std::time::Instant;

use fruits_backbone::{Backbone, Precision};
use fruits_functions::featurize::INFERENCE_BATCH;
use fruits_preprocess::Spec;
use fruits_storage::{list_images, Location};
use futures::{StreamExt, TryStreamExt};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use fruits_pipeline::{FeaturizeJob, NoProgress, Progress};

use crate::process::cpu_ms;
use crate::Error;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub input: String,
    pub images: usize,
    pub sizes: Vec<u32>,
    pub precisions: Vec<Precision>,
    pub model_dir: std::path::PathBuf,
    pub scratch: std::path::PathBuf,
}

/// CPU milliseconds per image for each stage at one input size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub precision: Precision,
    pub size: u32,
    pub images: usize,
    pub decode_ms: f64,
    pub resize_ms: f64,
    pub normalize_ms: f64,
    pub inference_ms: f64,
    pub end_to_end_ms: f64,
    /// Wall-clock throughput of the whole featurize job on every core.
    pub end_to_end_images_per_s: f64,
    pub bare_ort_ms: f64,
}

impl Row {
    /// End-to-end cost over the bare runtime's: the price of the pipeline.
    pub fn ratio(&self) -> f64 {
        self.end_to_end_ms / self.bare_ort_ms
    }
}

pub async fn run(opts: &BenchOptions) -> Result<Vec<Row>, Error> {
    let location = Location::parse(&opts.input)?;
    let entries: Vec<_> = list_images(&location).take(opts.images).try_collect().await?;
    if entries.is_empty() {
        return Err(Error::NoImages(location.uri()));
    }
    let mut blobs = Vec::with_capacity(entries.len());
    for e in &entries {
        blobs.push(e.uri.read().await?);
    }
    let mut rows = Vec::new();
    for &precision in &opts.precisions {
        let backbone = Backbone::shared(&opts.model_dir, precision)?;
        for &size in &opts.sizes {
            let mut row = stages(&backbone, &blobs, size)?;
            row.bare_ort_ms = bare_ort(&backbone, &blobs, size)?;
            (row.end_to_end_ms, row.end_to_end_images_per_s) = end_to_end(opts, (size, precision), blobs.len()).await?;
            rows.push(row);
        }
    }
    Ok(rows)
}

fn per_image(t: Instant, n: usize) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0 / n as f64
}

fn stages(backbone: &Backbone, blobs: &[bytes::Bytes], size: u32) -> Result<Row, Error> {
    let n = blobs.len();
    let spec = Spec {
        size,
        mean: backbone.manifest().input.mean,
        std: backbone.manifest().input.std,
    };
    let t = Instant::now();
    let decoded = blobs
        .iter()
        .map(|b| fruits_preprocess::decode(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Setup(format!("a benchmark image does not decode: {e}")))?;
    let decode_ms = per_image(t, n);
    let t = Instant::now();
    let resized = decoded
        .iter()
        .map(|img| fruits_preprocess::resize(img, size))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let resize_ms = per_image(t, n);
    let t = Instant::now();
    let mut tensors = Vec::with_capacity(n * spec.len());
    resized
        .iter()
        .for_each(|img| fruits_preprocess::normalize_into(img, &spec, &mut tensors));
    let normalize_ms = per_image(t, n);
    backbone.run(tensors[..spec.len()].to_vec(), 1, size)?; // warm-up: session creation
    let t = Instant::now();
    for chunk in tensors.chunks(INFERENCE_BATCH * spec.len()) {
        backbone.run(chunk.to_vec(), chunk.len() / spec.len(), size)?;
    }
    let inference_ms = per_image(t, n);
    Ok(Row {
        precision: backbone.precision(),
        size,
        images: n,
        decode_ms,
        resize_ms,
        normalize_ms,
        inference_ms,
        end_to_end_ms: 0.0,
        end_to_end_images_per_s: 0.0,
        bare_ort_ms: 0.0,
    })
}

/// The reference: decode nothing, pool nothing, just `Session::run` on ready tensors.
fn bare_ort(backbone: &Backbone, blobs: &[bytes::Bytes], size: u32) -> Result<f64, Error> {
    let spec = Spec {
        size,
        mean: backbone.manifest().input.mean,
        std: backbone.manifest().input.std,
    };
    let mut tensors = Vec::with_capacity(blobs.len() * spec.len());
    for b in blobs {
        fruits_preprocess::prepare(b, &spec, &mut tensors).map_err(|e| Error::Setup(e.to_string()))?;
    }
    let mut session = Session::builder(backbone.environment())
        .map_err(rt)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(rt)?
        .with_intra_threads(1)
        .map_err(rt)?
        .commit_from_file(backbone.manifest().onnx_path(backbone.dir()))
        .map_err(rt)?;
    let side = size as usize;
    let warm = Tensor::from_array(([1, 3, side, side], tensors[..spec.len()].to_vec())).map_err(rt)?;
    session.run(ort::inputs!["input" => warm]).map_err(rt)?;
    let t = Instant::now();
    for chunk in tensors.chunks(INFERENCE_BATCH * spec.len()) {
        let batch = chunk.len() / spec.len();
        let input = Tensor::from_array(([batch, 3, side, side], chunk.to_vec())).map_err(rt)?;
        session.run(ort::inputs!["input" => input]).map_err(rt)?;
    }
    Ok(per_image(t, blobs.len()))
}

fn rt(e: impl std::fmt::Display) -> Error {
    Error::Setup(format!("bare ONNX Runtime: {e}"))
}

/// CPU time of the whole featurize job per image, and its images per second.
async fn end_to_end(opts: &BenchOptions, (size, precision): (u32, Precision), n: usize) -> Result<(f64, f64), Error> {
    let job = FeaturizeJob {
        input: opts.input.clone(),
        output: opts
            .scratch
            .join(format!("bench-{precision}-{size}"))
            .display()
            .to_string(),
        limit: Some(n),
        input_size: Some(size),
        model_dir: opts.model_dir.clone(),
        precision,
        rows_per_task: 64,
        parallelism: fruits_engine::cores(),
        cluster: None,
        sorted: false,
        views: None,
        backgrounds: None,
        only: None,
        max_object_bytes: fruits_pipeline::featurize::MAX_OBJECT_BYTES,
        incremental: None,
    };
    let progress: Arc<dyn Progress> = Arc::new(NoProgress);
    fruits_pipeline::featurize::run(&job, &progress).await?; // warm-up: engine, sessions
    let (cpu, wall) = (cpu_ms(), Instant::now());
    fruits_pipeline::featurize::run(&job, &progress).await?;
    Ok(((cpu_ms() - cpu) / n as f64, n as f64 / wall.elapsed().as_secs_f64()))
}
