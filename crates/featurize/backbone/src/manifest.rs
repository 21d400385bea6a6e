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
    /// The precision of the model `onnx` names: `fp32` in the directory's own
    /// manifest, `int8` in the one a job records when it ran the int8 model
    /// ([`Manifest::at`]).
    #[serde(default)]
    pub precision: Precision,
    /// The int8 model beside the fp32 one, if `install` made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Quantized>,
}

/// Which of the installed models runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The converted float model.
    #[default]
    Fp32,
    /// The statically quantized model (`fruits model install --calibration`).
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision '{s}': fp32 or int8")),
        }
    }
}

/// The int8 model: its file, how it was made and on what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    pub file: String,
    pub sha256: String,
    /// [`crate::quantize::METHOD`] when it was made.
    pub method: String,
    pub calibration: Calibration,
}

/// The calibration set: which images set the activation ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calibration {
    pub images: usize,
    pub seed: u64,
    /// Side the images were prepared at.
    pub size: u32,
    /// sha256 of the list of images (one relative path per line, in order).
    pub list_sha256: String,
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
            precision: Precision::Fp32,
            int8: None,
        }
    }

    /// The manifest of the model of `precision`: `onnx` names that model's
    /// file, `precision` says which it is. Jobs record this one, so their
    /// outputs name the model that made them.
    pub fn at(&self, precision: Precision) -> Result<Self, Error> {
        if precision == self.precision {
            return Ok(self.clone());
        }
        let int8 = match (self.precision, precision) {
            (Precision::Fp32, Precision::Int8) => self.int8.as_ref(),
            _ => None,
        };
        let Some(q) = int8 else {
            return Err(Error::NotQuantized(format!(
                "no {precision} model is installed beside this {} one: run `fruits model install \
                 --calibration DIR` (or pass --precision fp32)",
                self.precision
            )));
        };
        Ok(Self {
            onnx: FileRef {
                file: q.file.clone(),
                sha256: q.sha256.clone(),
            },
            precision,
            ..self.clone()
        })
    }

    /// The precision whose model has this sha256, if one is installed.
    pub fn precision_of(&self, sha256: &str) -> Option<Precision> {
        if self.onnx.sha256 == sha256 {
            return Some(self.precision);
        }
        self.int8
            .as_ref()
            .filter(|q| q.sha256 == sha256 && self.precision == Precision::Fp32)
            .map(|_| Precision::Int8)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32() -> Manifest {
        let source = Source {
            package: "p".into(),
            version: "1".into(),
            file: "f".into(),
            sha256: "s".into(),
        };
        let onnx = FileRef {
            file: "m.onnx".into(),
            sha256: "a".repeat(64),
        };
        let runtime = Runtime {
            package: "onnxruntime".into(),
            version: "1".into(),
            library: "lib/x.so".into(),
        };
        Manifest::new("efficientnet-lite0", source, onnx, runtime, 224)
    }

    #[test]
    fn without_an_int8_model_asking_for_one_says_how_to_make_it() {
        let m = fp32();
        assert_eq!(m.at(Precision::Fp32).unwrap(), m);
        let err = m.at(Precision::Int8).unwrap_err().to_string();
        assert!(
            err.contains("--calibration") && err.contains("--precision fp32"),
            "{err}"
        );
    }

    #[test]
    fn the_int8_manifest_names_its_own_file_and_is_found_by_its_sha() {
        let mut m = fp32();
        m.int8 = Some(Quantized {
            file: "m.int8.onnx".into(),
            sha256: "b".repeat(64),
            method: "qdq".into(),
            calibration: Calibration {
                images: 8,
                seed: 1,
                size: 224,
                list_sha256: "c".repeat(64),
            },
        });
        let int8 = m.at(Precision::Int8).unwrap();
        assert_eq!(
            (int8.precision, int8.onnx.file.as_str()),
            (Precision::Int8, "m.int8.onnx")
        );
        assert_eq!(m.precision_of(&"b".repeat(64)), Some(Precision::Int8));
        assert_eq!(m.precision_of(&"a".repeat(64)), Some(Precision::Fp32));
        assert_eq!(m.precision_of(&"d".repeat(64)), None);
        // A job's int8 manifest cannot be turned back into an fp32 one.
        assert!(int8.at(Precision::Fp32).is_err());
        // Manifests written before precisions existed read as fp32.
        let mut old = serde_json::to_value(fp32()).unwrap();
        old.as_object_mut().unwrap().remove("precision");
        let old: Manifest = serde_json::from_value(old).unwrap();
        assert_eq!(old.precision, Precision::Fp32);
    }
}
