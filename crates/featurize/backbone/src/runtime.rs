//! Running the backbone: ONNX Runtime loaded from the installed shared library.
//!
//! One ORT environment per process (ORT allows no more). Sessions are pooled: a
//! caller takes one, runs a batch, puts it back, so each engine worker thread ends
//! up with its own single-threaded session, created once and reused for the life of
//! the process (the weights are loaded once per session, never per batch).
//!
//! A [`Backbone`] runs one [`Precision`]: its manifest is the one of that model
//! ([`Manifest::at`]), so what a job records names the model that ran. Sessions
//! run on the process's [`Device`], chosen once with [`use_device`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use crate::manifest::{Manifest, Precision};
use crate::Error;

/// Where sessions run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider on this GPU. It needs a CUDA
    /// build of ONNX Runtime: the pinned library is the CPU one, so a session
    /// then fails with an error that says so (never silently on the CPU).
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}': cpu, cuda or cuda:N")),
        }
    }
}

static DEVICE: OnceLock<Device> = OnceLock::new();

/// Chooses the device for every session of this process; call it before
/// the first model runs. Choosing another device afterwards is an error.
pub fn use_device(device: Device) -> Result<(), Error> {
    let chosen = *DEVICE.get_or_init(|| device);
    if chosen != device {
        return Err(Error::Runtime(format!(
            "this process already runs its models on {chosen:?}, not {device:?}"
        )));
    }
    Ok(())
}

fn device() -> Device {
    *DEVICE.get_or_init(Device::default)
}

/// Outputs of one batch, row-major: `features` is `batch × features_dim`.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub features: Vec<f32>,
    pub logits: Vec<f32>,
    /// The feature maps before pooling, when asked for.
    pub cells: Option<Cells>,
}

/// Feature maps before pooling: `values` is `batch × dim × rows × columns`,
/// one `dim`-long feature per 32 px cell of the input.
#[derive(Debug, Clone)]
pub struct Cells {
    pub rows: usize,
    pub columns: usize,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl Cells {
    /// The features of image `image`, one row per cell (row-major cells).
    pub fn rows_of(&self, image: usize) -> Vec<f32> {
        let plane = self.rows * self.columns;
        let map = &self.values[image * self.dim * plane..(image + 1) * self.dim * plane];
        let mut out = vec![0.0; plane * self.dim];
        for (c, channel) in map.chunks_exact(plane).enumerate() {
            for (cell, v) in channel.iter().enumerate() {
                out[cell * self.dim + c] = *v;
            }
        }
        out
    }
}

/// A loaded model directory with its session pool.
pub struct Backbone {
    dir: PathBuf,
    manifest: Manifest,
    model: Vec<u8>,
    env: Environment,
    intra_threads: usize,
    pool: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("dir", &self.dir)
            .field("model", &self.manifest.model)
            .finish()
    }
}

impl Backbone {
    /// Loads and verifies the fp32 model of `dir`; sessions run single-threaded
    /// (parallelism comes from the engine running several partitions at once).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_at(dir, Precision::Fp32, 1)
    }

    /// Loads and verifies the model of `precision` in `dir`.
    pub fn load_at(dir: &Path, precision: Precision, intra_threads: usize) -> Result<Self, Error> {
        let manifest = Manifest::load(dir)?.at(precision)?;
        manifest.verify(dir)?;
        let library = manifest.library_path(dir);
        crate::install::check_library(&library)?;
        let env = environment(&library)?;
        let onnx = manifest.onnx_path(dir);
        let model = std::fs::read(&onnx).map_err(|e| Error::io(&onnx, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            model,
            env,
            intra_threads,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The process-wide instance of `dir`'s model of `precision`, loaded on first use.
    pub fn shared(dir: &Path, precision: Precision) -> Result<Arc<Self>, Error> {
        type Cache = Mutex<HashMap<(PathBuf, Precision), Arc<Backbone>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (dir.to_path_buf(), precision);
        if let Some(b) = cache.get(&key) {
            return Ok(b.clone());
        }
        let b = Arc::new(Self::load_at(dir, precision, 1)?);
        cache.insert(key, b.clone());
        Ok(b)
    }

    /// The shared instance of the installed model whose sha256 is `sha256`,
    /// whatever its precision; the fp32 one when none matches, for the caller
    /// to compare and report the mismatch in its own terms.
    pub fn shared_matching(dir: &Path, sha256: &str) -> Result<Arc<Self>, Error> {
        let precision = Manifest::load(dir)?.precision_of(sha256).unwrap_or_default();
        Self::shared(dir, precision)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn precision(&self) -> Precision {
        self.manifest.precision
    }

    /// The process's ONNX Runtime environment (for sessions built elsewhere, e.g. benchmarks).
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a batch of normalised NCHW images of side `size`.
    pub fn run(&self, input: Vec<f32>, batch: usize, size: u32) -> Result<Outputs, Error> {
        self.run_shaped(input, batch, (size, size), false)
    }

    /// Runs a batch of normalised NCHW images of `height × width`, with
    /// their feature maps before pooling if `cells`.
    pub fn run_shaped(
        &self,
        input: Vec<f32>,
        batch: usize,
        (height, width): (u32, u32),
        cells: bool,
    ) -> Result<Outputs, Error> {
        let (h, w) = (height as usize, width as usize);
        if batch == 0 || input.len() != batch * 3 * h * w {
            return Err(Error::Runtime(format!(
                "input has {} values, expected {batch}×3×{h}×{w}",
                input.len()
            )));
        }
        if cells && self.manifest.outputs.cells.is_none() {
            return Err(Error::Manifest(
                "this model has no feature-map output: run `fruits model install --force`".into(),
            ));
        }
        let mut session = self.take_session()?;
        let result = self.run_on(&mut session, input, [batch, 3, h, w], cells);
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(session);
        result
    }

    fn run_on(&self, session: &mut Session, input: Vec<f32>, shape: [usize; 4], cells: bool) -> Result<Outputs, Error> {
        let rt = |e: ort::Error| Error::Runtime(e.to_string());
        let tensor = Tensor::from_array((shape, input)).map_err(rt)?;
        let out = session
            .run(ort::inputs![self.manifest.input.name.as_str() => tensor])
            .map_err(rt)?;
        let extract = |name: &str| -> Result<Vec<f32>, Error> {
            let value = out
                .get(name)
                .ok_or_else(|| Error::Runtime(format!("model has no output '{name}'")))?;
            Ok(value.try_extract_tensor::<f32>().map_err(rt)?.1.to_vec())
        };
        let cells = match (&self.manifest.outputs.cells, cells) {
            (Some(name), true) => {
                let value = out
                    .get(name.as_str())
                    .ok_or_else(|| Error::Runtime(format!("model has no output '{name}'")))?;
                let (dims, values) = value.try_extract_tensor::<f32>().map_err(rt)?;
                let &[_, dim, rows, columns] = &dims[..] else {
                    return Err(Error::Runtime(format!("'{name}' has shape {dims:?}")));
                };
                Some(Cells {
                    rows: rows as usize,
                    columns: columns as usize,
                    dim: dim as usize,
                    values: values.to_vec(),
                })
            }
            _ => None,
        };
        Ok(Outputs {
            features: extract(&self.manifest.outputs.features)?,
            logits: extract(&self.manifest.outputs.logits)?,
            cells,
        })
    }

    /// Makes one session now (and keeps it for the next run): a model or
    /// device that cannot run fails here, before a job starts, not per batch.
    pub fn ready(&self) -> Result<(), Error> {
        let session = self.take_session()?;
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(session);
        Ok(())
    }

    fn take_session(&self) -> Result<Session, Error> {
        if let Some(s) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        session(&self.env, self.intra_threads, &self.model)
    }
}

/// A session of `model` on the process's device, fully optimised (which is
/// what fuses a QDQ graph into integer kernels).
pub(crate) fn session(env: &Environment, intra_threads: usize, model: &[u8]) -> Result<Session, Error> {
    let rt = |e: String| Error::Runtime(format!("cannot create an ONNX Runtime session: {e}"));
    let builder = Session::builder(env).map_err(|e| rt(e.to_string()))?;
    let builder = match device() {
        Device::Cpu => builder,
        Device::Cuda(id) => builder
            .with_execution_providers([ort::ep::CUDA::default().with_device_id(id).build().error_on_failure()])
            .map_err(|e| {
                Error::Runtime(format!(
                    "cannot run on CUDA device {id}: {e} (the installed ONNX Runtime is the pinned CPU \
                     build; run without --device cuda)"
                ))
            })?,
    };
    builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| rt(e.to_string()))?
        .with_intra_threads(intra_threads)
        .map_err(|e| rt(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| rt(e.to_string()))?
        .commit_from_memory(model)
        .map_err(|e| rt(e.to_string()))
}

/// The process's ORT environment, bound to the first library asked for.
pub(crate) fn environment(library: &Path) -> Result<Environment, Error> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        if !library.is_file() {
            return Err(format!("{} does not exist", library.display()));
        }
        let builder = ort::init_from(library).map_err(|e| format!("cannot load {}: {e}", library.display()))?;
        builder.with_name("fruits").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| Error::Runtime(format!("ONNX Runtime: {e}")))
}
