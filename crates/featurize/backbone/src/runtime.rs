//! Running the backbone: ONNX Runtime loaded from the installed shared library.
//!
//! One ORT environment per process (ORT allows no more). Sessions are pooled: a
//! caller takes one, runs a batch, puts it back, so each engine worker thread ends
//! up with its own single-threaded session, created once and reused for the life of
//! the process (the weights are loaded once per session, never per batch).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use crate::manifest::Manifest;
use crate::Error;

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
    /// Loads and verifies `dir`; sessions run single-threaded (parallelism comes
    /// from the engine running several partitions at once).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_with_threads(dir, 1)
    }

    pub fn load_with_threads(dir: &Path, intra_threads: usize) -> Result<Self, Error> {
        let manifest = Manifest::load(dir)?;
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

    /// The process-wide instance for `dir`, loaded on first use.
    pub fn shared(dir: &Path) -> Result<Arc<Self>, Error> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Backbone>>>> = OnceLock::new();
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(b) = cache.get(dir) {
            return Ok(b.clone());
        }
        let b = Arc::new(Self::load(dir)?);
        cache.insert(dir.to_path_buf(), b.clone());
        Ok(b)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
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

    fn take_session(&self) -> Result<Session, Error> {
        if let Some(s) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        let rt = |e: String| Error::Runtime(format!("cannot create an ONNX Runtime session: {e}"));
        Session::builder(&self.env)
            .map_err(|e| rt(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| rt(e.to_string()))?
            .with_intra_threads(self.intra_threads)
            .map_err(|e| rt(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| rt(e.to_string()))?
            .commit_from_memory(&self.model)
            .map_err(|e| rt(e.to_string()))
    }
}

/// The process's ORT environment, bound to the first library asked for.
fn environment(library: &Path) -> Result<Environment, Error> {
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
