//! `fruits bench featurize`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fruits_pipeline::bench::{run as bench, BenchOptions};

use crate::ModelDirArg;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// CPU-ms per image per stage, end to end, and a bare ONNX Runtime loop on the same images.
    Featurize {
        /// Images to measure on (a folder of `<class>/<image>` files).
        #[arg(long, default_value = "../shared/fruits-360/Training")]
        input: String,
        /// How many images.
        #[arg(long, default_value_t = 256)]
        images: usize,
        /// Input sides to compare.
        #[arg(long, value_delimiter = ',', default_value = "224,100")]
        sizes: Vec<u32>,
        /// Scratch folder for the end-to-end job's output.
        #[arg(long, default_value = "/tmp/fruits-bench")]
        scratch: PathBuf,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelDirArg,
    },
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    let BenchCommand::Featurize {
        input,
        images,
        sizes,
        scratch,
        json,
        model,
    } = cmd;
    let opts = BenchOptions {
        input,
        images,
        sizes,
        model_dir: model.resolve(),
        scratch,
    };
    let rows = bench(&opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "featurize benchmark: {} images from {}, {cores} cores; CPU-ms per image",
        rows.first().map_or(0, |r| r.images),
        opts.input
    );
    println!(
        "{:>5} {:>8} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9}",
        "size", "decode", "resize", "normalize", "inference", "end-to-end", "bare-ORT", "e2e/bare"
    );
    for r in &rows {
        println!(
            "{:>5} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>11.2} {:>9.2} {:>9.2}",
            r.size,
            r.decode_ms,
            r.resize_ms,
            r.normalize_ms,
            r.inference_ms,
            r.end_to_end_ms,
            r.bare_ort_ms,
            r.ratio()
        );
    }
    Ok(ExitCode::SUCCESS)
}
