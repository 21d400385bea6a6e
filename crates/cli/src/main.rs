//! `fruits`: the command line of the Fruits! platform. Thin glue: every command
//! parses its arguments, calls one library crate, and prints the outcome.

mod bench;
mod cluster;
mod featurize;
mod learn;
mod model;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fruits",
    version,
    about = "Fruit photos to a fruit classifier, at data-lake scale"
)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` works too.
    #[arg(long, global = true, env = "FRUITS_LOG", default_value = "warn,fruits=info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline: featurize train and test, PCA, classifiers, metrics, report, model bundle.
    Run(learn::RunArgs),
    /// Install or check the backbone model (EfficientNet-Lite0, ImageNet weights).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Featurize every image under a folder or prefix into Parquet.
    Featurize(featurize::FeaturizeArgs),
    /// Measure where the time goes.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a Ballista scheduler for a cluster of `fruits executor`s.
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor that takes tasks from a `fruits scheduler`.
    Executor(cluster::ExecutorArgs),
    /// Choose PCA size and classifier settings on held-out index ranges of a featurized training set.
    Validate(learn::ValidateArgs),
    /// Name the fruits in images with a model bundle (top classes with probabilities).
    Predict(learn::PredictArgs),
    /// Fit PCA and both classifiers on a featurize output; write a model bundle.
    Train(learn::TrainArgs),
    /// Score a model bundle on labelled images or a featurize output.
    Evaluate(learn::EvaluateArgs),
    /// Serve the consumer API and web page: photo in, fruit and facts out.
    Serve(serve::ServeArgs),
}

/// The model directory: the flag, else `$FRUITS_MODEL_DIR`, else the user
/// cache; and the device its models run on.
#[derive(clap::Args, Clone)]
struct ModelDirArg {
    /// Installed model directory [default: $FRUITS_MODEL_DIR or ~/.cache/fruits/models/efficientnet-lite0]
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Run the model on: cpu, or cuda / cuda:N (needs a CUDA build of ONNX
    /// Runtime; the pinned one is the CPU build, so sessions fail and say so).
    #[arg(long, env = "FRUITS_DEVICE", default_value = "cpu")]
    device: fruits_backbone::Device,
}

impl ModelDirArg {
    /// The directory, with this process's sessions set to run on `--device`.
    fn resolve(&self) -> PathBuf {
        if let Err(e) = fruits_backbone::use_device(self.device) {
            tracing::error!("{e}");
        }
        self.model_dir
            .clone()
            .unwrap_or_else(fruits_backbone::default_model_dir)
    }
}

/// Which installed model a job featurizes with.
#[derive(clap::Args, Clone)]
struct PrecisionArg {
    /// int8 (the quantized model, made by `fruits model install --calibration`)
    /// or fp32 (the converted float model).
    #[arg(long, env = "FRUITS_PRECISION", default_value = "int8")]
    precision: fruits_backbone::Precision,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Model(cmd) => model::run(cmd).await,
            Command::Featurize(args) => featurize::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Scheduler(args) => cluster::scheduler(args).await,
            Command::Executor(args) => cluster::executor(args).await,
            Command::Validate(args) => learn::validate_cmd(args).await,
            Command::Run(args) => learn::run_cmd(args).await,
            Command::Predict(args) => learn::predict_cmd(args).await,
            Command::Train(args) => learn::train_cmd(args).await,
            Command::Evaluate(args) => learn::evaluate_cmd(args).await,
            Command::Serve(args) => serve::run(args).await,
        }
    });
    // Dropping a runtime waits for its blocking threads without end; a
    // photo still being decoded after `serve`'s shutdown grace must not
    // keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// One line on stderr, no backtrace, no secret: errors are for people.
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(&e));
    ExitCode::FAILURE
}

/// The error and its causes joined, each said once, on a single line.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    let flat = message.split_whitespace().collect::<Vec<_>>().join(" ");
    fruits_storage::redact(&flat)
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    // Our crates log under `fruits_*` targets, and an `EnvFilter` target
    // matches by prefix: `fruits=info` covers all of them.
    let env = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&env).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
