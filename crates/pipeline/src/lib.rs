//! The product's jobs, end to end, on the engine: today `featurize` (images →
//! CNN features in Parquet); later the PCA and classifier stages.
//!
//! - [`featurize`]: list, featurize on the engine, write `features/` and `errors/`.
//! - [`output`]: the output folder layout and its commit rule (`_SUCCESS` last).
//! - [`bench`], [`bench_cluster`]: `fruits bench featurize` and `fruits bench cluster`.
//!
//! Jobs report progress through [`Progress`], so the binary decides how it shows.

pub mod bench;
pub mod bench_classify;
pub mod bench_cluster;
pub mod featurize;
pub mod learn;
pub mod output;
pub mod run;
pub mod validate;

pub use featurize::{FeaturizeJob, Summary};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dataset(#[from] fruits_dataset::Error),
    #[error(transparent)]
    Backbone(#[from] fruits_backbone::Error),
    #[error(transparent)]
    Engine(#[from] fruits_engine::Error),
    /// Not a `source`: the raw engine error is long and nested, and people get
    /// the plain message below instead.
    #[error("engine: {}", engine_message(.0))]
    DataFusion(datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("no images (*.jpg, *.jpeg, *.png) found under {0}")]
    NoImages(String),
    #[error("{listed} images were listed but {written} rows were written: the result is not committed")]
    Incomplete { listed: usize, written: usize },
    #[error("{0}")]
    Bench(String),
    #[error("not a featurize output: {0}")]
    NotFeatures(String),
    #[error("the data has no '{0}' column")]
    Column(&'static str),
    #[error(transparent)]
    Pca(#[from] fruits_pca::Error),
    #[error(transparent)]
    Classify(#[from] fruits_classify::Error),
    #[error(transparent)]
    Bundle(#[from] fruits_bundle::Error),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(e)
    }
}

/// An engine failure in plain words: storage failures relayed from executors
/// are recognised; anything else is cut to its first line, 300 characters at most.
fn engine_message(e: &datafusion::error::DataFusionError) -> String {
    let full = e.to_string();
    if let Some(plain) = fruits_dataset::classify(&full, false) {
        return format!("the job failed: storage: {plain}");
    }
    let line = full.lines().next().unwrap_or_default();
    fruits_dataset::redact(&line.chars().take(300).collect::<String>())
}

/// Where a job reports how far it is.
pub trait Progress: Send + Sync {
    /// `n` images listed so far.
    fn listed(&self, n: usize);
    /// `done` of `total` images featurized (or failed).
    fn featurized(&self, done: usize, total: usize);
    /// A named stage of a longer job begins.
    fn stage(&self, _name: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn listed(&self, _: usize) {}
    fn featurized(&self, _: usize, _: usize) {}
}
