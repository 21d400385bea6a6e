//! `fruits validate`, `fruits run`, `fruits train`, `fruits evaluate` and
//! `fruits predict`: reduce, learn, judge, and name fruits.

use std::process::ExitCode;

use fruits_pca::Keep;
use fruits_pipeline::validate::{validate, Grid, Trial};

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// A `fruits featurize` output folder (its `features/` is read).
    #[arg(long)]
    features: String,
    /// Fraction of each class's index ranges held out for validation.
    #[arg(long, default_value_t = 0.25)]
    holdout: f64,
    /// PCA sizes to try: counts (64) or variance fractions (0.95).
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95,0.99")]
    components: Vec<Keep>,
    /// Logistic-regression L2 penalties to try.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,1e-3")]
    l2: Vec<f64>,
    /// Whether to standardize inputs of the logistic regression.
    #[arg(long, value_delimiter = ',', default_value = "true")]
    standardize: Vec<bool>,
    /// Random-forest sizes to try (0 to skip forests).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    trees: Vec<usize>,
    /// One JSON object per trial instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn validate_cmd(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let ctx = fruits_engine::session(
        &fruits_engine::EngineOptions::new(fruits_backbone::default_model_dir()),
        None,
    )
    .await?;
    let output = fruits_storage::Location::parse(&args.features)?;
    let rows = fruits_pipeline::learn::read_featurized(&ctx, &output).await?;
    let grid = Grid {
        components: args.components,
        l2: args.l2,
        standardize: args.standardize,
        trees: args.trees.into_iter().filter(|&t| t > 0).collect(),
    };
    if !args.json {
        println!("| classifier | PCA | k | variance | setting | accuracy | top-5 | F1 macro | train s |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    }
    let json = args.json;
    let mut print = move |t: &Trial| {
        if json {
            println!("{}", serde_json::to_string(t).expect("a trial serializes"));
        } else {
            println!(
                "| {} | {} | {} | {:.3} | {} | {:.2} % | {:.2} % | {:.4} | {:.1} |",
                t.classifier,
                t.components,
                t.k,
                t.explained_variance,
                t.setting,
                100.0 * t.accuracy,
                100.0 * t.top5_accuracy,
                t.f1_macro,
                t.train_seconds
            );
        }
    };
    let holdout = args.holdout;
    tokio::task::spawn_blocking(move || validate(&rows, holdout, &grid, &mut print)).await??;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Training images: `<class>/<image>` under this folder or prefix.
    #[arg(long)]
    train: String,
    /// Test images, same layout; scored with the model fitted on --train.
    #[arg(long)]
    test: String,
    /// Real photos in `<kind>/<photo>` folders named by catalogue kind
    /// (`apple`, `tomato`); repeatable. With any, the model also learns to
    /// answer the kind of fruit in real photos.
    #[arg(long)]
    photos: Vec<String>,
    /// Seeded training views (crops, some mirrored) of each real photo the
    /// kind head also learns from, 0 to 64; 0 turns them off.
    #[arg(long, default_value_t = fruits_pipeline::kinds::KindOptions::default().views_per_photo,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    photo_views: u32,
    /// Seeded training scenes per studio shot of the kind head's sample (the
    /// fruit cut out and placed on a --backgrounds photograph), 0 to 16; 0
    /// turns them off. Only with --photos.
    #[arg(long, default_value_t = fruits_pipeline::kinds::KindOptions::default().scenes_per_shot,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    studio_scenes: u32,
    /// Composed scenes the localiser (where the fruits are in a photo)
    /// learns from, 0 to 10000; 0 trains none and the service looks through
    /// a fixed grid. Only with --photos and --backgrounds.
    #[arg(long, default_value_t = fruits_bundle::localiser::LocaliserOptions::default().scenes as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    localiser_scenes: u64,
    /// Photographs without fruit that training scenes are composed on
    /// (scripts/backgrounds installs 11 into ~/.cache/fruits/backgrounds).
    #[arg(long, env = "FRUITS_BACKGROUNDS")]
    backgrounds: Option<String>,
    /// Where features/, errors/, model/, report/ and _SUCCESS go.
    #[arg(long)]
    output: String,
    /// PCA size: a count (128) or the variance to keep (0.95).
    #[arg(long, default_value = "0.95")]
    components: Keep,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    job: crate::featurize::JobArgs,
}

fn localiser_options(scenes: u64) -> fruits_bundle::localiser::LocaliserOptions {
    fruits_bundle::localiser::LocaliserOptions {
        scenes: scenes as usize,
        ..Default::default()
    }
}

pub async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Input and output are set per split by the run.
    let featurize = args.job.featurize_job(String::new(), String::new());
    let job = fruits_pipeline::run::RunJob {
        train: args.train,
        test: args.test,
        photos: args.photos,
        backgrounds: args.backgrounds,
        output: args.output,
        featurize,
        learn: fruits_pipeline::learn::LearnOptions {
            components: args.components,
            kinds: fruits_pipeline::kinds::KindOptions {
                views_per_photo: args.photo_views,
                scenes_per_shot: args.studio_scenes,
                ..Default::default()
            },
            localiser: localiser_options(args.localiser_scenes),
            ..Default::default()
        },
    };
    let bar = std::sync::Arc::new(crate::featurize::Bar::new());
    let progress: std::sync::Arc<dyn fruits_pipeline::Progress> = bar.clone();
    let summary = fruits_pipeline::run::run(&job, &progress).await;
    bar.0.finish_and_clear();
    let s = summary?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &s.metrics;
    println!(
        "{} classes, {} training and {} test images; PCA {} → {} components ({:.1} % of the variance)",
        m.classes,
        m.train_rows,
        m.test_rows,
        m.pca.input_dim,
        m.pca.k,
        100.0 * m.pca.explained_variance
    );
    for (name, c) in &m.classifiers {
        let (e, seconds) = (&c.evaluation, c.train_seconds);
        println!(
            "{name:<20} accuracy {:.2} %  top-5 {:.2} %  precision(w) {:.4}  recall(w) {:.4}  F1(macro) {:.4}  trained in {:.1} s",
            100.0 * e.accuracy,
            100.0 * e.top5_accuracy,
            e.precision_weighted,
            e.recall_weighted,
            e.f1_macro,
            seconds
        );
    }
    if let Some(k) = &m.kinds {
        println!(
            "kinds: {} real photos (+{} views), {} kinds; out of fold ({} folds): top-1 {:.1} %, top-3 {:.1} %, confident {:.1} % (right {:.1} % of those, threshold {:.3}); studio test: kind {:.2} %, served variety {:.2} %",
            k.photos,
            k.views,
            k.kinds.len(),
            k.folds,
            100.0 * k.top1,
            100.0 * k.top3,
            100.0 * k.confident,
            100.0 * k.right_when_confident,
            k.confidence.min_probability,
            100.0 * k.studio_kind_accuracy,
            100.0 * k.studio_served_accuracy,
        );
    }
    let stages: Vec<String> = s
        .stages
        .iter()
        .map(|st| format!("{} {:.1} s", st.stage, st.seconds))
        .collect();
    println!("stages: {}; wall {:.1} s", stages.join(", "), s.wall_s);
    let failed: usize = s.featurize.values().map(|f| f.failed).sum();
    println!(
        "output: {} (model/, report/index.html, {failed} unreadable images in errors/, _SUCCESS written)",
        s.output
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A model bundle: `OUTPUT/model` of `fruits run`, or OUTPUT itself.
    #[arg(long)]
    model: String,
    /// Only this classifier's classes [default: the bundle's, with the kinds
    /// of its kind head first when it has one].
    #[arg(long)]
    classifier: Option<String>,
    /// Classes shown per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// One JSON line per image.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backbone: crate::ModelDirArg,
    /// Images (paths or URIs).
    #[arg(required = true)]
    images: Vec<String>,
}

/// A bundle folder or a `fruits run` output.
pub async fn load_bundle(uri: &str) -> anyhow::Result<fruits_bundle::Bundle> {
    Ok(fruits_bundle::Bundle::open(uri).await?)
}

pub async fn predict_cmd(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let bundle = load_bundle(&args.model).await?;
    let (model, data) = (bundle.manifest.id(), bundle.manifest.data_digest());
    let predictor = fruits_bundle::Predictor::new(bundle, &args.backbone.resolve())?;
    let mut failures = 0;
    for image in &args.images {
        let result = async {
            let bytes = fruits_storage::ObjectUri::from_arg(image)?.read().await?;
            Ok::<_, anyhow::Error>(match args.classifier.as_deref() {
                None => predictor.answer(&bytes, args.top)?,
                Some(name) => fruits_bundle::Answer {
                    kinds: Vec::new(),
                    classes: predictor.predict(&bytes, args.top, Some(name))?,
                },
            })
        }
        .await;
        match result {
            Ok(answer) if args.json => println!(
                "{}",
                serde_json::json!({"path": image, "kinds": answer.kinds, "top": answer.classes, "model": model, "data": data})
            ),
            Ok(answer) => {
                println!("{image}");
                if !answer.kinds.is_empty() {
                    let kinds: Vec<String> = answer
                        .kinds
                        .iter()
                        .map(|k| format!("{} {:.3}", k.label, k.probability))
                        .collect();
                    println!("  kind: {}", kinds.join(", "));
                }
                for r in answer.classes {
                    println!("  {:<32} {:.3}", r.label, r.probability);
                }
            }
            Err(e) => {
                failures += 1;
                let message = crate::one_line(&e);
                if args.json {
                    println!("{}", serde_json::json!({"path": image, "error": message}));
                } else {
                    eprintln!("{image}: {message}");
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

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A `fruits featurize` output folder.
    #[arg(long)]
    features: String,
    /// Where the bundle (`model/`) and `_SUCCESS` go.
    #[arg(long)]
    output: String,
    /// PCA size: a count (128) or the variance to keep (0.95).
    #[arg(long, default_value = "0.95")]
    components: Keep,
    /// Fit the PCA on a Ballista cluster (`df://HOST:PORT`) instead of in-process.
    #[arg(long)]
    cluster: Option<String>,
    /// Real photos in `<kind>/<photo>` folders named by catalogue kind;
    /// repeatable. With any, the bundle also learns the kind (as `fruits run`).
    #[arg(long)]
    photos: Vec<String>,
    /// Seeded training views of each real photo, 0 to 64 (see `fruits run`).
    #[arg(long, default_value_t = fruits_pipeline::kinds::KindOptions::default().views_per_photo,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    photo_views: u32,
    /// Training scenes per studio shot, 0 to 16 (see `fruits run`); the
    /// shots are read from the images the features were made from.
    #[arg(long, default_value_t = fruits_pipeline::kinds::KindOptions::default().scenes_per_shot,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    studio_scenes: u32,
    /// Composed scenes the localiser learns from, 0 to 10000 (see `fruits run`).
    #[arg(long, default_value_t = fruits_bundle::localiser::LocaliserOptions::default().scenes as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    localiser_scenes: u64,
    /// Photographs training scenes are composed on (see `fruits run`).
    #[arg(long, env = "FRUITS_BACKGROUNDS")]
    backgrounds: Option<String>,
    #[command(flatten)]
    model: crate::ModelDirArg,
}

pub async fn train_cmd(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let opts = fruits_engine::EngineOptions::new(args.model.resolve());
    let ctx = fruits_engine::session(&opts, args.cluster.as_deref()).await?;
    let learn = fruits_pipeline::learn::LearnOptions {
        components: args.components,
        kinds: fruits_pipeline::kinds::KindOptions {
            views_per_photo: args.photo_views,
            scenes_per_shot: args.studio_scenes,
            ..Default::default()
        },
        localiser: localiser_options(args.localiser_scenes),
        ..Default::default()
    };
    let photos = (!args.photos.is_empty()).then(|| fruits_pipeline::learn::TrainPhotos {
        folders: args.photos,
        model_dir: opts.model_dir.clone(),
        parallelism: opts.parallelism,
        cluster: args.cluster.clone(),
        backgrounds: args.backgrounds,
    });
    let s = fruits_pipeline::learn::train_bundle(&ctx, &args.features, &args.output, photos.as_ref(), &learn).await?;
    println!(
        "trained on {} rows of {} classes: PCA {} components ({:.1} % of the variance); {}",
        s.rows,
        s.classes,
        s.k,
        100.0 * s.explained_variance,
        s.seconds
            .iter()
            .map(|(n, t)| format!("{n} {t:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("model bundle: {}", s.bundle);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// A model bundle: `OUTPUT/model` of `fruits run` or `fruits train`, or OUTPUT itself.
    #[arg(long)]
    model: String,
    /// Labelled images (`<class>/<image>`), or a `fruits featurize` output folder.
    #[arg(long)]
    input: String,
    /// Only this classifier [default: every one in the bundle].
    #[arg(long)]
    classifier: Option<String>,
    /// Print the evaluations as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backbone: crate::ModelDirArg,
}

pub async fn evaluate_cmd(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let bundle = load_bundle(&args.model).await?;
    let model_dir = args.backbone.resolve();
    let results =
        fruits_pipeline::learn::evaluate_bundle(&bundle, &args.input, &model_dir, args.classifier.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} rows scored ({} of classes the model does not know left out)",
        results.rows, results.unknown_class_rows
    );
    for (name, e) in &results.classifiers {
        println!(
            "{name:<20} accuracy {:.2} %  top-5 {:.2} %  precision(w) {:.4}  recall(w) {:.4}  F1(macro) {:.4}",
            100.0 * e.accuracy,
            100.0 * e.top5_accuracy,
            e.precision_weighted,
            e.recall_weighted,
            e.f1_macro
        );
    }
    Ok(ExitCode::SUCCESS)
}
