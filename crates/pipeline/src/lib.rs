//! The product's jobs, end to end, on the engine: each chains the stages
//! (ingest → featurize → reduce → store → learn) over one engine session.
//!
//! - [`featurize`]: list, featurize on the engine, write `features/` and `errors/`.
//! - [`run`]: both splits featurized, the PCA fitted and every row projected on
//!   the engine, both classifiers trained and scored, bundle and report written.
//! - [`learn`]: the stages `run`, `train`, `evaluate` and `validate` share.
//! - [`validate`]: PCA size and classifier settings chosen on held-out index ranges.
//! - [`calibration`]: the int8 model's calibration set and install step.
//!
//! The layout of an output folder and its commit rule are `fruits-output`'s;
//! which engine runs a job is `fruits_engine::session`'s choice. Jobs report
//! progress through [`Progress`], so the binary decides how it shows.
//!
//! Must not depend on HTTP or the service: the service reads what jobs write.

pub mod calibration;
pub mod featurize;
pub mod incremental;
mod job;
pub mod kinds;
pub mod learn;
pub mod localise;
pub mod run;
pub mod validate;

pub use featurize::{FeaturizeJob, Summary};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] fruits_storage::Error),
    #[error(transparent)]
    Backbone(#[from] fruits_backbone::Error),
    #[error(transparent)]
    Engine(#[from] fruits_engine::Error),
    #[error(transparent)]
    Output(#[from] fruits_output::Error),
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
    /// The training thread died (a panic in a classifier): a bug, said plainly.
    #[error("training failed: {0}")]
    Training(String),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("cannot make a scratch folder: {0}")]
    Scratch(std::io::Error),
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
    #[error(
        "{uri}: {} not a catalogue kind ({}); real-photo folders are named after kinds, e.g. {}",
        if .unknown.len() == 1 { "this folder is" } else { "these folders are" },
        .unknown.join(", "),
        .examples
    )]
    UnknownKinds {
        uri: String,
        unknown: Vec<String>,
        examples: String,
    },
    #[error("{0}: no <kind>/ folders of real photos")]
    NoKindFolders(String),
    #[error("no background photographs in {0} to compose training scenes on (scripts/backgrounds installs some; --studio-scenes 0 --localiser-scenes 0 make none)")]
    NoBackgrounds(String),
    #[error("the features were made with model {features} but --model-dir holds {installed}: real photos must go through the same backbone")]
    OtherBackbone { features: String, installed: String },
    #[error("the job lost its lease on the output (another job may write there now): the result is not committed")]
    LeaseGone,
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
    // Only the message of an executor's failure reaches the client.
    let plain = match fruits_storage::Fault::recognise(&full) {
        Some(fruits_storage::Fault::NotFound) => Some("an object it needed was not found".to_string()),
        fault => fault.and_then(|f| f.plain()),
    };
    if let Some(plain) = plain {
        return format!("the job failed: storage: {plain}");
    }
    if full.contains("fetch partition") {
        return "the job failed: an executor that held results could not be reached (it stopped or was lost)".into();
    }
    let line = full.lines().next().unwrap_or_default();
    fruits_storage::redact(&line.chars().take(300).collect::<String>())
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
