//! `fruits featurize`: the job, a progress bar, and the summary.

use std::process::ExitCode;
use std::sync::Arc;

use fruits_pipeline::{FeaturizeJob, Progress, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ModelDirArg;

#[derive(clap::Args)]
pub struct FeaturizeArgs {
    /// Folder or prefix holding `<class>/<image>` files (a path, file://, s3://).
    #[arg(long)]
    input: String,
    /// Where `features/`, `errors/` and `_SUCCESS` go (a path, file://, s3://).
    #[arg(long)]
    output: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Featurize every image, using nothing of earlier results. By default
    /// only new and changed images are featurized: unchanged ones keep the
    /// rows of the committed result (same path, etag, size, model, input
    /// size and preprocessing), and a job that died is resumed.
    #[arg(long, conflicts_with = "from")]
    full: bool,
    /// Take unchanged rows from this committed result (a featurize output or
    /// feature store) instead of OUTPUT's own.
    #[arg(long)]
    from: Option<String>,
    #[command(flatten)]
    job: JobArgs,
}

/// How a job featurizes and where it runs: shared by `featurize` and `run`.
#[derive(clap::Args)]
pub struct JobArgs {
    /// Featurize at most this many images (per split for `run`).
    #[arg(long)]
    limit: Option<usize>,
    /// Square input side in pixels [default: the model manifest's].
    #[arg(long)]
    input_size: Option<u32>,
    /// Images per engine task.
    #[arg(long, default_value_t = 256)]
    rows_per_task: usize,
    /// Tasks run at once in-process [default: number of cores].
    #[arg(long)]
    parallelism: Option<usize>,
    /// Run on a Ballista cluster (`df://HOST:PORT` of `fruits scheduler`) instead of in-process.
    #[arg(long)]
    cluster: Option<String>,
    /// Write rows sorted by path: byte-identical output on any engine. The
    /// client sorts each group of tasks and merges the groups at the end,
    /// holding one batch per group.
    #[arg(long)]
    sorted: bool,
    /// Objects larger than this many bytes are not read: each is an errors/ row
    #[arg(long, default_value_t = fruits_pipeline::featurize::MAX_OBJECT_BYTES)]
    max_object_bytes: u64,
    #[command(flatten)]
    model: ModelDirArg,
    #[command(flatten)]
    precision: crate::PrecisionArg,
}

impl JobArgs {
    pub fn featurize_job(self, input: String, output: String) -> FeaturizeJob {
        FeaturizeJob {
            input,
            output,
            limit: self.limit,
            input_size: self.input_size,
            model_dir: self.model.resolve(),
            precision: self.precision.precision,
            rows_per_task: self.rows_per_task,
            parallelism: self.parallelism.unwrap_or_else(fruits_engine::cores),
            cluster: self.cluster,
            sorted: self.sorted,
            views: None,
            backgrounds: None,
            only: None,
            max_object_bytes: self.max_object_bytes,
            incremental: None,
        }
    }
}

pub async fn run(args: FeaturizeArgs) -> anyhow::Result<ExitCode> {
    let mut job = args.job.featurize_job(args.input, args.output);
    job.incremental = (!args.full).then_some(fruits_pipeline::incremental::Incremental { from: args.from });
    let bar = Arc::new(Bar::new());
    let progress: Arc<dyn Progress> = bar.clone();
    let summary = fruits_pipeline::featurize::run(&job, &progress).await;
    bar.0.finish_and_clear();
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(s: &Summary) {
    println!(
        "featurized {} of {} images ({} failed, listed in errors/) in {:.1} s: {:.1} images/s, {:.1} MB read",
        s.featurized,
        s.objects_listed,
        s.failed,
        s.wall_ms as f64 / 1000.0,
        s.images_per_s,
        s.bytes_read as f64 / 1e6
    );
    let c = &s.changes;
    println!(
        "{} new, {} changed, {} deleted; {} unchanged rows carried over, {} resumed from a job that did not finish{}",
        c.new,
        c.changed,
        c.deleted,
        c.unchanged,
        c.resumed,
        c.recomputed_all
            .as_ref()
            .map_or(String::new(), |why| format!(" ({why})"))
    );
    println!(
        "stages: list {:.1} s, featurize+write {:.1} s, commit {:.1} s",
        s.stages_ms.list as f64 / 1000.0,
        s.stages_ms.featurize_and_write as f64 / 1000.0,
        s.stages_ms.commit as f64 / 1000.0,
    );
    // Worker counters live in the executor's process: only an in-process run has them.
    if s.worker_ms.images > 0 {
        println!(
            "worker time (summed over threads): read {:.1} s, preprocess {:.1} s, inference {:.1} s",
            s.worker_ms.read_ms as f64 / 1000.0,
            s.worker_ms.preprocess_ms as f64 / 1000.0,
            s.worker_ms.infer_ms as f64 / 1000.0
        );
    }
    println!(
        "engine: {}, {} executor(s): {}",
        s.engine,
        s.executors_used.len(),
        s.executors_used.join(", ")
    );
    println!(
        "output: {} (input {}², model sha256 {}…, _SUCCESS written)",
        s.output,
        s.input_size,
        fruits_common::short_digest(&s.model.onnx.sha256, 12)
    );
}

/// An indicatif bar on stderr (hidden when stderr is not a terminal).
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    /// Draws nothing until the job reports, so log lines come first.
    pub(crate) fn new() -> Self {
        Self(ProgressBar::new_spinner())
    }
}

impl Progress for Bar {
    fn listed(&self, n: usize) {
        self.0.set_message(format!("listed {n} images"));
        self.0.tick();
    }

    fn featurized(&self, done: usize, total: usize) {
        if self.0.length() != Some(total as u64) {
            self.0.set_length(total as u64);
            let style =
                ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, {elapsed} elapsed, eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            self.0.set_style(style);
        }
        self.0.set_position(done as u64);
    }

    fn stage(&self, name: &str) {
        self.0.set_style(ProgressStyle::default_spinner());
        self.0.set_length(0);
        self.0.set_message(name.to_string());
        self.0.tick();
    }
}
