//! `fruits bench featurize | classify | cluster | serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fruits_bench::cluster::{run as bench_cluster, ClusterBenchOptions};
use fruits_bench::featurize::{run as bench, BenchOptions};

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
        /// Precisions to compare (each needs its model installed).
        #[arg(long, value_delimiter = ',', default_value = "fp32,int8")]
        precisions: Vec<fruits_backbone::Precision>,
        /// Scratch folder for the end-to-end job's output.
        #[arg(long, default_value = "/tmp/fruits-bench")]
        scratch: PathBuf,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelDirArg,
    },
    /// Training and prediction time of both classifiers at 1×, 2×, 4× the featurized rows.
    Classify {
        /// A `fruits featurize` output folder.
        #[arg(long)]
        features: String,
        /// Replication factors of the rows.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        factors: Vec<usize>,
        /// PCA size: a count or the variance to keep.
        #[arg(long, default_value = "0.95")]
        components: fruits_pca::Keep,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// images/s of one featurize job on local clusters of 1, 2, … executors, the speed-up, executor memory.
    Cluster {
        /// Images to featurize (a path or URI, e.g. s3://bucket/prefix).
        #[arg(long, default_value = "../shared/fruits-360/Training")]
        input: String,
        /// Where each run writes (`OUTPUT/executors-N`).
        #[arg(long, default_value = "/tmp/fruits-bench-cluster")]
        output: String,
        /// Executor counts to compare.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        executors: Vec<usize>,
        /// Task slots per executor.
        #[arg(long, default_value_t = 1)]
        slots: usize,
        /// Featurize at most this many images.
        #[arg(long)]
        limit: Option<usize>,
        /// Square input side [default: the manifest's].
        #[arg(long)]
        input_size: Option<u32>,
        /// Images per engine task.
        #[arg(long, default_value_t = 64)]
        rows_per_task: usize,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelDirArg,
        #[command(flatten)]
        precision: crate::PrecisionArg,
    },
    /// A full featurize run, then the rerun into the same output after 1 % new images arrived: wall times and ratio.
    Incremental {
        /// Images (`DIR/<label>/<image>`, a local folder).
        #[arg(long, default_value = "../shared/fruits-360/Training")]
        input: PathBuf,
        /// Scratch folder for the linked lake and the output (removed at the end).
        #[arg(long, default_value = "out/bench-incremental")]
        scratch: PathBuf,
        /// Share of the images that arrive before the rerun, in percent.
        #[arg(long, default_value_t = 1.0)]
        new_percent: f64,
        /// Images per engine task.
        #[arg(long, default_value_t = 256)]
        rows_per_task: usize,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelDirArg,
        #[command(flatten)]
        precision: crate::PrecisionArg,
    },
    /// The pure-Rust JPEG decoders on composed 12 MP photos, each down to what the service needs.
    Decode {
        /// Studio shots the photos are composed from (`DIR/<label>/<image>`).
        #[arg(long, default_value = "../shared/fruits-360/Training")]
        images: PathBuf,
        /// How many photos.
        #[arg(long, default_value_t = 16)]
        photos: usize,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load test of `fruits serve` on 127.0.0.1: req/s and p50/p99 latency for studio shots and 12 MP photos.
    Serve(ServeBenchArgs),
    /// How well a model names the kind of fruit in real photos (`DIR/<kind>/<photo>`): top-1/top-3, confident, latency.
    Photos(PhotosBenchArgs),
}

#[derive(clap::Args)]
pub struct PhotosBenchArgs {
    /// The model: a bundle folder or a `fruits run` output.
    #[arg(long, default_value = "out/run")]
    model: String,
    /// Real photos in folders named by catalogue kind (`apple/`, `banana/`, …).
    #[arg(long, default_value = "../shared/real-photos/grocery-store/val")]
    input: PathBuf,
    /// At most this many photos, spread over the kinds.
    #[arg(long)]
    limit: Option<usize>,
    /// Also a folder of photos without fruit (`DIR/<photo>`, e.g. what
    /// scripts/non-fruit-photos installs): how many get a confident fruit name.
    #[arg(long, value_name = "DIR")]
    not_fruit: Option<PathBuf>,
    /// Also this many photos of two fruits, each two of the photos side by
    /// side (different kinds): how often both are found.
    #[arg(long, default_value_t = 0)]
    pairs: usize,
    /// Also this many photos in clutter, each one of the photos shrunk to
    /// 480 px and placed on one of the --not-fruit photos (1600 × 1200): how
    /// often its kind is named.
    #[arg(long, default_value_t = 0, requires = "not_fruit")]
    clutter: usize,
    /// Look through the fixed grid of views even when the model has a
    /// localiser: the reference to compare it with.
    #[arg(long)]
    grid: bool,
    /// "Not sure" below this top-1 probability [default: the bundle's calibrated threshold]
    #[arg(long)]
    min_confidence: Option<f32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backbone: ModelDirArg,
}

#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// The model: a bundle folder or a `fruits run` output.
    #[arg(long, default_value = "out/run")]
    model: String,
    /// Labelled images the model was not trained on (`<class>/<image>`), e.g. the test side of `scripts/holdout-split`.
    #[arg(long, default_value = "out/split/test")]
    images: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Requests per scenario.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Time cap per scenario, seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Distinct composed 12 MP photos per photo scenario.
    #[arg(long, default_value_t = 16)]
    photos: usize,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: crate::serve::LimitArgs,
    #[command(flatten)]
    backbone: ModelDirArg,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Featurize {
            input,
            images,
            sizes,
            precisions,
            scratch,
            json,
            model,
        } => {
            featurize(
                BenchOptions {
                    input,
                    images,
                    sizes,
                    precisions,
                    model_dir: model.resolve(),
                    scratch,
                },
                json,
            )
            .await
        }
        BenchCommand::Classify {
            features,
            factors,
            components,
            json,
        } => classify(&features, &factors, components, json).await,
        BenchCommand::Cluster {
            input,
            output,
            executors,
            slots,
            limit,
            input_size,
            rows_per_task,
            json,
            model,
            precision,
        } => {
            let binary = std::env::current_exe()?;
            let model_dir = model.resolve();
            let opts = ClusterBenchOptions {
                binary,
                input,
                output,
                executors,
                slots,
                limit,
                input_size,
                rows_per_task,
                model_dir,
                precision: precision.precision,
            };
            cluster(opts, json).await
        }
        BenchCommand::Incremental {
            input,
            scratch,
            new_percent,
            rows_per_task,
            json,
            model,
            precision,
        } => {
            let opts = fruits_bench::incremental::IncrementalBenchOptions {
                input,
                scratch,
                new_percent,
                rows_per_task,
                model_dir: model.resolve(),
                precision: precision.precision,
            };
            incremental(&opts, json).await
        }
        BenchCommand::Decode { images, photos, json } => {
            let opts = fruits_bench::decode::DecodeBenchOptions { images, photos };
            let rows = tokio::task::spawn_blocking(move || fruits_bench::decode::run(&opts)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "decode benchmark: composed 4032×3024 JPEGs, one thread, to ≥ {} px on the shorter side",
                    fruits_bench::decode::MIN_SIDE
                );
                println!(
                    "{:<42} {:>6} {:>9} {:>9} {:>11}",
                    "decoder", "photos", "mean ms", "max ms", "decoded"
                );
                for r in &rows {
                    let decoded = format!("{}×{}", r.decoded.0, r.decoded.1);
                    println!(
                        "{:<42} {:>6} {:>9.1} {:>9.1} {:>11}",
                        r.decoder, r.photos, r.mean_ms, r.max_ms, decoded
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Serve(args) => serve(args).await,
        BenchCommand::Photos(args) => photos(args).await,
    }
}

async fn incremental(
    opts: &fruits_bench::incremental::IncrementalBenchOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rows = fruits_bench::incremental::run(opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "incremental benchmark: {} ({} precision), in-process, {} cores; the rerun goes into the same output",
        opts.input.display(),
        opts.precision,
        fruits_engine::cores()
    );
    println!(
        "{:<14} {:>7} {:>11} {:>8} {:>8} {:>8}",
        "run", "images", "featurized", "carried", "wall s", "of full"
    );
    for r in &rows {
        println!(
            "{:<14} {:>7} {:>11} {:>8} {:>8.2} {:>7.1}%",
            r.run,
            r.images,
            r.featurized,
            r.carried,
            r.wall_s,
            r.of_full * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn photos(args: PhotosBenchArgs) -> anyhow::Result<ExitCode> {
    let source = fruits_serve::ModelSource {
        uri: args.model.clone(),
        backbone_dir: args.backbone.resolve(),
        min_confidence: args.min_confidence,
    };
    let opts = fruits_bench::photos::PhotosBenchOptions {
        input: args.input.clone(),
        limit: args.limit,
        not_fruit: args.not_fruit.clone(),
        pairs: args.pairs,
        grid: args.grid,
        clutter: args.clutter,
    };
    let r = fruits_bench::photos::run(source, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "photos benchmark: {} on {} ({} photos, {} refused), one at a time through identify",
        args.model,
        args.input.display(),
        r.photos,
        r.refused
    );
    println!(
        "kind top-1 {:.1} %, top-3 {:.1} %; confident {:.1} %, right when confident {:.1} %; p50 {:.1} ms, p99 {:.1} ms",
        100.0 * r.top1,
        100.0 * r.top3,
        100.0 * r.confident,
        100.0 * r.right_when_confident,
        r.p50_ms,
        r.p99_ms
    );
    println!("{:<18} {:>6} {:>7}", "kind", "photos", "recall");
    for k in &r.per_kind {
        println!("{:<18} {:>6} {:>6.1}%", k.kind, k.photos, 100.0 * k.recall);
    }
    println!("most confused (true → answered):");
    for c in &r.confused {
        println!("  {} → {}: {}", c.truth, c.answered, c.photos);
    }
    if let Some(nf) = &r.not_fruit {
        println!(
            "photos without fruit: {}; named with confidence {:.1} %, told \"does not look like a fruit\" {:.1} %",
            nf.photos,
            100.0 * nf.confident,
            100.0 * nf.said_not_a_fruit
        );
        for (photo, kind) in &nf.false_alarms {
            println!("  {photo} → {kind}");
        }
    }
    if args.pairs > 0 && r.pairs.is_none() {
        println!("photos of two fruits: none made (the photos hold a single kind)");
    }
    if let Some(p) = &r.pairs {
        println!(
            "photos of two fruits: {}; either leads {:.1} %, either in the top 3 {:.1} %; fruits found {:.1} %, both found {:.1} %",
            p.photos,
            100.0 * p.either_top1,
            100.0 * p.either_top3,
            100.0 * p.fruits_found,
            100.0 * p.both_found
        );
    }
    if let Some(c) = &r.clutter {
        println!(
            "photos in clutter: {}; top-1 kind {:.1} %, top-3 {:.1} %, confident {:.1} % (right {:.1} % of those)",
            c.photos,
            100.0 * c.top1,
            100.0 * c.top3,
            100.0 * c.confident,
            100.0 * c.right_when_confident
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeBenchArgs) -> anyhow::Result<ExitCode> {
    let source = fruits_serve::ModelSource {
        uri: args.model.clone(),
        backbone_dir: args.backbone.resolve(),
        min_confidence: None,
    };
    let opts = fruits_bench::serve::ServeBenchOptions {
        images: args.images.clone(),
        clients: args.clients,
        requests: args.requests,
        seconds: args.seconds,
        photos: args.photos,
        limits: args.limits.limits()?,
    };
    let rows = fruits_bench::serve::run(source, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "serve benchmark: {} over HTTP on 127.0.0.1, {} clients, {} workers, {} cores; direct = one call at a time, no HTTP",
        args.model,
        args.clients,
        opts.limits.workers,
        fruits_engine::cores()
    );
    println!(
        "{:<24} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:>10} {:>6} {:>7} {:>9} {:>14} {:>9}",
        "scenario",
        "requests",
        "failed",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "direct ms",
        "views",
        "right",
        "confident",
        "right if conf.",
        "all found"
    );
    for r in &rows {
        println!(
            "{:<24} {:>8} {:>6} {:>7.1} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>6.1} {:>6.1}% {:>8.1}% {:>13.1}% {:>9}",
            r.scenario,
            r.requests,
            r.failed,
            r.requests_per_second,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.direct_ms,
            r.views,
            100.0 * r.right,
            100.0 * r.confident,
            100.0 * r.right_when_confident,
            r.all_found.map_or("-".to_string(), |f| format!("{:.1}%", 100.0 * f))
        );
    }
    println!(
        "peak RSS of this process (service, load generator and its photos): {:.0} MiB",
        fruits_bench::process::peak_rss_mib(std::process::id())
    );
    Ok(ExitCode::SUCCESS)
}

async fn cluster(opts: ClusterBenchOptions, json: bool) -> anyhow::Result<ExitCode> {
    let rows = bench_cluster(&opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "cluster benchmark: {} -> {}, {} slot(s) per executor",
        opts.input, opts.output, opts.slots
    );
    println!(
        "{:>9} {:>8} {:>8} {:>9} {:>8}  executor peak RSS (MiB)",
        "executors", "images", "wall s", "images/s", "speed-up"
    );
    let base = rows.first().map_or(1.0, |r| r.images_per_s);
    for r in &rows {
        let rss: Vec<String> = r.executor_peak_rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "{:>9} {:>8} {:>8.1} {:>9.1} {:>8.2}  {}",
            r.executors,
            r.images,
            r.wall_s,
            r.images_per_s,
            r.images_per_s / base,
            rss.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn featurize(opts: BenchOptions, json: bool) -> anyhow::Result<ExitCode> {
    let rows = bench(&opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let cores = fruits_engine::cores();
    println!(
        "featurize benchmark: {} images from {}, {cores} cores; CPU-ms per image",
        rows.first().map_or(0, |r| r.images),
        opts.input
    );
    println!(
        "{:>9} {:>5} {:>8} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9} {:>9}",
        "precision",
        "size",
        "decode",
        "resize",
        "normalize",
        "inference",
        "end-to-end",
        "bare-ORT",
        "e2e/bare",
        "images/s"
    );
    for r in &rows {
        println!(
            "{:>9} {:>5} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>11.2} {:>9.2} {:>9.2} {:>9.1}",
            r.precision.as_str(),
            r.size,
            r.decode_ms,
            r.resize_ms,
            r.normalize_ms,
            r.inference_ms,
            r.end_to_end_ms,
            r.bare_ort_ms,
            r.ratio(),
            r.end_to_end_images_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn classify(
    features: &str,
    factors: &[usize],
    components: fruits_pca::Keep,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ctx = fruits_engine::session(
        &fruits_engine::EngineOptions::new(fruits_backbone::default_model_dir()),
        None,
    )
    .await?;
    let output = fruits_storage::Location::parse(features)?;
    let rows = fruits_pipeline::learn::read_featurized(&ctx, &output).await?;
    let opts = fruits_pipeline::learn::LearnOptions {
        components,
        ..Default::default()
    };
    if !json {
        println!("| rows | k | classes | PCA fit s | LR train s (iterations) | RF train s (100 trees) | LR predict rows/s | RF predict rows/s |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    }
    let mut print = move |b: &fruits_bench::classify::ClassifyBench| {
        if json {
            println!("{}", serde_json::to_string(b).expect("a bench row serializes"));
        } else {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} ({}) | {:.1} | {:.0} | {:.0} |",
                b.rows,
                b.k,
                b.classes,
                b.pca_fit_s,
                b.logistic_train_s,
                b.logistic_iterations,
                b.forest_train_s,
                b.logistic_predict_rows_per_s,
                b.forest_predict_rows_per_s
            );
        }
    };
    let factors = factors.to_vec();
    tokio::task::spawn_blocking(move || fruits_bench::classify::run(&rows, &factors, &opts, &mut print)).await??;
    Ok(ExitCode::SUCCESS)
}
