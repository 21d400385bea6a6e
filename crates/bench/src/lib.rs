//! The benchmarks behind `fruits bench *`: each measures one part of the
//! product and, in the same run, a reference to compare it with.
//!
//! - [`featurize`]: where the time of one image goes (decode, resize,
//!   normalise, inference, the whole job) against a bare ONNX Runtime loop;
//! - [`cluster`]: the featurize job on local clusters of 1, 2, … executor
//!   processes: images/s, speed-up, executor peak memory;
//! - [`incremental`]: a full featurize run, then the rerun after 1 % new
//!   images arrived: wall time of each and their ratio;
//! - [`classify`]: training and prediction time of both classifiers;
//! - [`decode`]: the pure-Rust JPEG decoders on 12 MP photos, as the service
//!   needs them;
//! - [`serve`]: a load test of the running service against direct calls;
//! - [`photos`]: kind accuracy, confidence and latency on real photos;
//! - [`scene`]: phone-like photos composed from studio shots, for the service
//!   benchmark and the service's tests;
//! - [`labelled`]: the `DIR/<label>/<image>` folders benchmarks read;
//! - [`process`]: CPU time and peak memory of processes, read from `/proc`.
//!
//! Benchmarks measure; tests assert. Nothing of the product depends on this
//! crate: it sits beside the binary, which only calls it.

pub mod classify;
pub mod cluster;
pub mod decode;
pub mod featurize;
pub mod incremental;
pub mod labelled;
pub mod pairs;
pub mod photos;
pub mod process;
pub mod scene;
pub mod serve;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] fruits_pipeline::Error),
    #[error(transparent)]
    Serve(#[from] fruits_serve::Error),
    #[error(transparent)]
    Storage(#[from] fruits_storage::Error),
    #[error(transparent)]
    Backbone(#[from] fruits_backbone::Error),
    #[error(transparent)]
    Classify(#[from] fruits_classify::Error),
    #[error(transparent)]
    Pca(#[from] fruits_pca::Error),
    #[error("no images (*.jpg, *.jpeg, *.png) found under {0}")]
    NoImages(String),
    /// The benchmark could not set itself up (inputs, processes, reference runtime).
    #[error("{0}")]
    Setup(String),
}
