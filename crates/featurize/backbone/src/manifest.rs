//! `manifest.json`: what an installed model directory holds and how to feed it.
//!
//! Written last by `install`, so a directory with a manifest is complete; read by
//! everything that runs the model, so preprocessing never guesses.

use std::path::{Path, PathBuf};

use fruits_common::sha256_hex;
use serde::{Deserialize, Serialize};

use crate::Error;

pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Architecture name, e.g. `efficientnet-lite0`.
    pub model: String,
    pub source: Source,
    pub onnx: FileRef,
    pub runtime: Runtime,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    pub created_by: String,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub package: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub sha256: String,
}

/// The ONNX Runtime shared library the model runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub package: String,
    pub version: String,
    pub library: String,
}

/// How pixels become the input tensor: `(rgb - mean) / std`, NCHW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    /// Default square side in pixels; a job may choose another (the graph's H/W are free).
    pub size: u32,
    pub layout: String,
    pub color: String,
    pub mean: f32,
    pub std: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub features: String,
    pub features_dim: usize,
    pub logits: String,
    pub classes: usize,
    /// The feature map before pooling (absent from models converted before
    /// it was exported: `install` converts those again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<String>,
}

impl Manifest {
    pub fn new(model: &str, source: Source, onnx: FileRef, runtime: Runtime, input_size: u32) -> Self {
        Self {
            format: FORMAT,
            model: model.into(),
            source,
            onnx,
            runtime,
            input: InputSpec {
                name: crate::efficientnet::INPUT.into(),
                size: input_size,
                layout: "NCHW".into(),
                color: "RGB".into(),
                mean: 127.0,
                std: 128.0,
            },
            outputs: OutputSpec {
                features: crate::efficientnet::FEATURES.into(),
                features_dim: 1280,
                logits: crate::efficientnet::LOGITS.into(),
                classes: 1000,
                cells: Some(crate::efficientnet::CELLS.into()),
            },
            created_by: format!("fruits {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotInstalled(dir.to_path_buf())
            } else {
                Error::io(&path, e)
            }
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Manifest(format!("{} is not a valid manifest: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(Error::Manifest(format!(
                "{} has format {}, this build reads {FORMAT}: run `fruits model install --force`",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically (temporary file, then rename).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())
    }

    pub fn onnx_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.onnx.file)
    }

    pub fn library_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.runtime.library)
    }

    /// Checks that the files the manifest names exist and the model's hash matches.
    pub fn verify(&self, dir: &Path) -> Result<(), Error> {
        let onnx = self.onnx_path(dir);
        let bytes = std::fs::read(&onnx).map_err(|e| Error::io(&onnx, e))?;
        let actual = sha256_hex(&bytes);
        if actual != self.onnx.sha256 {
            return Err(Error::Manifest(format!(
                "{} is corrupt (sha256 {actual}, manifest says {}): run `fruits model install --force`",
                onnx.display(),
                self.onnx.sha256
            )));
        }
        let lib = self.library_path(dir);
        if !lib.is_file() {
            return Err(Error::Manifest(format!(
                "{} is missing: run `fruits model install --force`",
                lib.display()
            )));
        }
        Ok(())
    }
}

/// Writes through a sibling temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
