//! `fruits bench incremental`: a full featurize run over a folder, then the
//! rerun into the same output after 1 % new images arrived, in one run: wall
//! time of each and their ratio (the goal: the rerun costs ≤ 5 % of the full
//! run). A third row reruns with nothing changed: the fixed cost of a rerun.
//!
//! The folder is a mirror of symbolic links to the input's images, made in
//! a scratch folder: every 1/`share`-th image (in sorted order) is held back
//! and linked in before the rerun.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fruits_pipeline::incremental::Incremental;
use fruits_pipeline::{FeaturizeJob, NoProgress, Progress};

use crate::Error;

#[derive(Debug, Clone)]
pub struct IncrementalBenchOptions {
    /// `DIR/<label>/<image>`: a local folder.
    pub input: PathBuf,
    pub scratch: PathBuf,
    /// Share of the images that arrive before the rerun, in percent.
    pub new_percent: f64,
    pub rows_per_task: usize,
    pub model_dir: PathBuf,
    pub precision: fruits_backbone::Precision,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IncrementalRow {
    pub run: String,
    pub images: usize,
    pub featurized: usize,
    pub carried: usize,
    pub wall_s: f64,
    /// This run's wall time over the full run's.
    pub of_full: f64,
}

pub async fn run(opts: &IncrementalBenchOptions) -> Result<Vec<IncrementalRow>, Error> {
    let lake = opts.scratch.join("lake");
    let out = opts.scratch.join("out");
    let _ = std::fs::remove_dir_all(&opts.scratch);
    let images: Vec<PathBuf> = crate::labelled::list_labelled(&opts.input)?
        .into_iter()
        .map(|(_, path)| path)
        .filter(|p| fruits_storage::is_image_name(&p.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    let every = (100.0 / opts.new_percent).round().max(1.0) as usize;
    let (late, early): (Vec<_>, Vec<_>) = images.iter().enumerate().partition(|(k, _)| k % every == every - 1);
    link_all(&opts.input, &lake, early.iter().map(|(_, p)| p.as_path()))?;
    let job = |incremental: Option<Incremental>| FeaturizeJob {
        input: lake.display().to_string(),
        output: out.display().to_string(),
        limit: None,
        input_size: None,
        model_dir: opts.model_dir.clone(),
        precision: opts.precision,
        rows_per_task: opts.rows_per_task,
        parallelism: fruits_engine::cores(),
        cluster: None,
        sorted: false,
        views: None,
        backgrounds: None,
        only: None,
        max_object_bytes: fruits_pipeline::featurize::MAX_OBJECT_BYTES,
        incremental,
    };
    let mut rows = Vec::new();
    rows.push(timed("full", &job(None)).await?);
    link_all(&opts.input, &lake, late.iter().map(|(_, p)| p.as_path()))?;
    rows.push(
        timed(
            &format!("+{} % new", opts.new_percent),
            &job(Some(Incremental::default())),
        )
        .await?,
    );
    rows.push(timed("nothing new", &job(Some(Incremental::default()))).await?);
    let full = rows[0].wall_s;
    for row in &mut rows {
        row.of_full = row.wall_s / full;
    }
    let _ = std::fs::remove_dir_all(&opts.scratch);
    Ok(rows)
}

async fn timed(name: &str, job: &FeaturizeJob) -> Result<IncrementalRow, Error> {
    let progress: Arc<dyn Progress> = Arc::new(NoProgress);
    let started = Instant::now();
    let summary = fruits_pipeline::featurize::run(job, &progress).await?;
    Ok(IncrementalRow {
        run: name.into(),
        images: summary.objects_listed,
        featurized: summary.featurized,
        carried: summary.changes.unchanged + summary.changes.resumed,
        wall_s: started.elapsed().as_secs_f64(),
        of_full: 0.0,
    })
}

/// Links each image under `input` to the same relative place under `lake`.
fn link_all<'a>(input: &Path, lake: &Path, images: impl Iterator<Item = &'a Path>) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Setup(format!("{}: {e}", lake.display()));
    for image in images {
        let relative = image.strip_prefix(input).unwrap_or(image);
        let target = lake.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let source = std::fs::canonicalize(image).map_err(io)?;
        std::os::unix::fs::symlink(source, target).map_err(io)?;
    }
    Ok(())
}
