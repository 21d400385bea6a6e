//! The learning stages shared by `run`, `train`, `evaluate` and `validate`:
//! the PCA fit on the engine, the projection, the classifiers and their scores.

use std::collections::BTreeSet;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{col, ParquetReadOptions, SessionContext};
use fruits_bundle::Bundle;
use fruits_classify::forest::{ForestOptions, RandomForest};
use fruits_classify::logistic::{LogisticOptions, LogisticRegression};
use fruits_classify::metrics::{calibrate, evaluate, top1_answers, Confidence, Evaluation, KEEP_CORRECT};
use fruits_classify::{Classifier, Samples};
use fruits_pca::{Keep, Moments, Pca};
use fruits_storage::Location;
use serde::Serialize;

use crate::job::JobContext;
use crate::Error;

/// How to reduce and learn.
#[derive(Debug, Clone, Copy)]
pub struct LearnOptions {
    pub components: Keep,
    pub logistic: LogisticOptions,
    pub forest: ForestOptions,
    /// The classifier a bundle serves by default.
    pub default_classifier: &'static str,
    /// How the kind head learns from real photos.
    pub kinds: crate::kinds::KindOptions,
    /// How the localiser learns (with real photos and backgrounds; 0 scenes: none).
    pub localiser: fruits_bundle::localiser::LocaliserOptions,
}

impl LearnOptions {
    /// The backgrounds the localiser's scenes are composed on, when these
    /// options train one: with real photos (it is for real photos), scenes
    /// asked for, and backgrounds given.
    pub fn localiser_backgrounds<'a>(&self, photos: bool, backgrounds: Option<&'a str>) -> Option<&'a str> {
        backgrounds.filter(|_| photos && self.localiser.scenes > 0)
    }
}

impl Default for LearnOptions {
    /// Chosen on validation (docs/validation.md).
    fn default() -> Self {
        Self {
            components: Keep::Variance(0.95),
            logistic: LogisticOptions::default(),
            forest: ForestOptions::default(),
            default_classifier: "logistic_regression",
            kinds: crate::kinds::KindOptions::default(),
            localiser: Default::default(),
        }
    }
}

/// Labelled vectors held on the client, row-major.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub dim: usize,
    pub paths: Vec<String>,
    pub labels: Vec<String>,
    pub x: Vec<f32>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Appends the rows of a batch with `path`, `label` and a vector column.
    pub fn extend(&mut self, batch: &RecordBatch, vectors: &str) -> Result<(), Error> {
        let paths = datafusion::arrow::compute::cast(
            batch.column_by_name("path").ok_or(Error::Column("path"))?,
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let labels = datafusion::arrow::compute::cast(
            batch.column_by_name("label").ok_or(Error::Column("label"))?,
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let list = batch
            .column_by_name(vectors)
            .ok_or(Error::Column("vectors"))?
            .as_fixed_size_list();
        self.dim = list.value_length() as usize;
        for i in 0..batch.num_rows() {
            if list.is_null(i) {
                continue;
            }
            self.paths.push(paths.as_string::<i32>().value(i).to_string());
            self.labels.push(labels.as_string::<i32>().value(i).to_string());
            self.x
                .extend_from_slice(list.value(i).as_primitive::<Float32Type>().values());
        }
        Ok(())
    }

    /// Class indices of the rows for `classes`; rows of unknown classes are
    /// left out (their indices are returned apart).
    pub fn indexed(&self, classes: &[String]) -> (Vec<u32>, Vec<f32>, Vec<usize>) {
        let (mut y, mut x, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for (i, label) in self.labels.iter().enumerate() {
            match classes.binary_search(label) {
                Ok(c) => {
                    y.push(c as u32);
                    x.extend_from_slice(&self.x[i * self.dim..(i + 1) * self.dim]);
                }
                Err(_) => unknown.push(i),
            }
        }
        (y, x, unknown)
    }

    /// Puts the rows in path order (the engine returns them in the order
    /// its tasks finished).
    pub fn sort_by_path(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|&a, &b| self.paths[a].cmp(&self.paths[b]));
        let d = self.dim;
        self.paths = order.iter().map(|&i| std::mem::take(&mut self.paths[i])).collect();
        self.labels = order.iter().map(|&i| std::mem::take(&mut self.labels[i])).collect();
        self.x = order
            .iter()
            .flat_map(|&i| self.x[i * d..(i + 1) * d].to_vec())
            .collect();
    }

    /// The sorted distinct labels.
    pub fn classes(&self) -> Vec<String> {
        self.labels
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// Reads `path`, `label` and a vector column of Parquet `files` (URIs of
/// files, or of folders when they end in `/`) on the engine.
pub async fn read_rows(ctx: &SessionContext, files: &[String], vectors: &str) -> Result<Rows, Error> {
    let df = ctx
        .read_parquet(files.to_vec(), ParquetReadOptions::default())
        .await?
        .select(vec![col("path"), col("label"), col(vectors)])?;
    let mut rows = Rows::default();
    for batch in df.collect().await? {
        rows.extend(&batch, vectors)?;
    }
    rows.sort_by_path();
    Ok(rows)
}

/// The `features/` files a committed `fruits featurize` output lists in its
/// `_SUCCESS`: what its readers read, never the whole folder.
pub async fn committed_features(output: &Location) -> Result<Vec<String>, Error> {
    fruits_output::committed_files(output, "features")
        .await
        .map_err(|e| match e {
            fruits_output::Error::Summary { uri, cause } => Error::NotFeatures(format!("{uri}: {cause}")),
            other => other.into(),
        })
}

/// What a model trained on a committed featurize output learned from: its
/// feature files with their sha256 (from its `_SUCCESS`, or hashed here for
/// outputs older than lineage), its listing, its jobs and `job`.
pub async fn lineage_of_featurized(output: &Location, job: &str) -> Result<fruits_bundle::DataLineage, Error> {
    let summary: serde_json::Value = fruits_output::read_committed(output).await?;
    let committed = crate::incremental::CommittedFiles::read(output).await?;
    let mut features = Vec::new();
    for (dir, uri, sha256) in committed.files.map(|p| p.listed).unwrap_or_default() {
        if dir != "features" {
            continue;
        }
        let sha256 = match sha256 {
            Some(sha) => sha,
            None => fruits_common::sha256_hex(&uri.read().await?),
        };
        let rows = summary["lineage"]["files"]
            .as_array()
            .and_then(|files| files.iter().find(|f| f["sha256"] == sha256.as_str()))
            .and_then(|f| f["rows"].as_u64())
            .unwrap_or(0) as usize;
        features.push(fruits_bundle::DataFileRef {
            uri: uri.to_string(),
            rows,
            sha256,
        });
    }
    let listing = summary["lineage"]["listing_sha256"].as_str().unwrap_or_default();
    let listings = vec![("features".to_string(), listing.to_string())];
    let mut jobs: Vec<String> = summary["lineage"]["jobs"]
        .as_array()
        .map(|j| j.iter().filter_map(|j| j.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    jobs.push(job.to_string());
    Ok(fruits_bundle::DataLineage::new(features, listings, jobs))
}

/// The `path`, `label` and `features` rows of a `fruits featurize` output folder.
pub async fn read_featurized(ctx: &SessionContext, output: &Location) -> Result<Rows, Error> {
    read_rows(ctx, &committed_features(output).await?, "features").await
}

/// Fits the PCA of the `features` column of Parquet `files` (as in
/// [`read_rows`]): partial moments on the executors, merged by the engine,
/// decomposed here.
pub async fn fit_pca(ctx: &SessionContext, files: &[String], keep: Keep) -> Result<Pca, Error> {
    let moments_fn = ctx.udaf(fruits_functions::pca_moments::NAME)?;
    let df = ctx
        .read_parquet(files.to_vec(), ParquetReadOptions::default())
        .await?
        .aggregate(vec![], vec![moments_fn.call(vec![col("features")]).alias("m")])?;
    let batches = df.collect().await?;
    let column = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).clone())
        .ok_or(Error::Column("pca_moments result"))?;
    let moments: Moments = fruits_functions::pca_moments::from_array(column.as_ref())?;
    let started = Instant::now();
    let pca = moments.fit(keep)?;
    tracing::info!(
        rows = moments.n,
        k = pca.k,
        explained = pca.explained_variance(),
        ms = started.elapsed().as_millis() as u64,
        "PCA fitted"
    );
    Ok(pca)
}

/// A trained classifier with its training time.
pub struct Trained {
    pub classifier: Classifier,
    pub seconds: f64,
}

/// Trains both classifiers on reduced rows.
pub fn train(rows: &Rows, classes: &[String], opts: &LearnOptions) -> Result<Vec<Trained>, Error> {
    let (y, x, _) = rows.indexed(classes);
    let data = Samples::new(rows.dim, &x, &y, classes.len())?;
    let t = Instant::now();
    let lr = LogisticRegression::fit(&data, opts.logistic)?;
    let lr_s = t.elapsed().as_secs_f64();
    tracing::info!(
        seconds = lr_s,
        iterations = lr.iterations,
        loss = lr.final_loss,
        "logistic regression trained"
    );
    let t = Instant::now();
    let rf = RandomForest::fit(&data, opts.forest)?;
    let rf_s = t.elapsed().as_secs_f64();
    tracing::info!(seconds = rf_s, trees = rf.trees.len(), "random forest trained");
    Ok(vec![
        Trained {
            classifier: Classifier::LogisticRegression(lr),
            seconds: lr_s,
        },
        Trained {
            classifier: Classifier::RandomForest(rf),
            seconds: rf_s,
        },
    ])
}

/// A classifier's scores and its predictions (for examples of mistakes).
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub name: String,
    pub evaluation: Evaluation,
    /// Predicted class of each scored row.
    #[serde(skip)]
    pub predicted: Vec<u32>,
    #[serde(skip)]
    pub truth: Vec<u32>,
    /// The "not sure" threshold these held-out answers give.
    pub confidence: Confidence,
}

/// Scores a classifier on reduced rows of known classes.
pub fn score(classifier: &Classifier, rows: &Rows, classes: &[String]) -> Result<Scored, Error> {
    let (y, x, _) = rows.indexed(classes);
    let proba = classifier.predict_proba(rows.dim, &x)?;
    let c = classes.len();
    let predicted = proba.chunks(c).map(|p| fruits_common::top_k(p, 1)[0] as u32).collect();
    Ok(Scored {
        name: classifier.name().into(),
        evaluation: evaluate(&y, &proba, c),
        confidence: calibrate(&top1_answers(&y, &proba, c), KEEP_CORRECT),
        predicted,
        truth: y,
    })
}

/// Classifiers trained on reduced rows, with what they were trained on.
pub struct Learned {
    pub trained: Vec<Trained>,
    pub rows: Rows,
    /// The sorted training classes: the classifiers' output order.
    pub classes: Vec<String>,
}

/// Trains both classifiers off the async runtime: CPU-bound work of seconds
/// to minutes must not hold an engine or I/O thread.
pub async fn train_off_runtime(rows: Rows, opts: LearnOptions) -> Result<Learned, Error> {
    tokio::task::spawn_blocking(move || {
        let classes = rows.classes();
        train(&rows, &classes, &opts).map(|trained| Learned { trained, rows, classes })
    })
    .await
    .map_err(|e| Error::Training(e.to_string()))?
}

/// What a bundle is made of besides its classifiers.
pub struct BundleParts<'a> {
    pub backbone: &'a fruits_backbone::Manifest,
    pub input_size: u32,
    pub pca: &'a Pca,
    /// Per classifier, its calibrated "not sure" threshold (none from `train`).
    pub confidence: Vec<(String, Confidence)>,
    /// Trained on real photos, if there were any.
    pub kind_head: Option<fruits_bundle::KindHead>,
    /// Trained on composed scenes, if there were backgrounds.
    pub localiser: Option<fruits_bundle::Localiser>,
    /// What it learned from.
    pub data: fruits_bundle::DataLineage,
}

/// Builds the bundle of learned classifiers and writes it to `model_dir`
/// (`bundle.json` last): the one way `run` and `train` save a model. Returns
/// the bundle and the URIs of its files (the folder's others are stale).
pub async fn save_bundle(
    model_dir: &Location,
    learned: Learned,
    parts: BundleParts<'_>,
    opts: &LearnOptions,
) -> Result<(Bundle, Vec<String>), Error> {
    let mut bundle = Bundle::new(
        learned.classes,
        parts.backbone.clone(),
        parts.input_size,
        parts.pca.clone(),
        learned.trained.into_iter().map(|t| t.classifier).collect(),
        opts.default_classifier,
    );
    bundle.manifest.confidence = parts.confidence;
    bundle.kind_head = parts.kind_head;
    bundle.localiser = parts.localiser;
    bundle.manifest.data = Some(parts.data);
    let files = bundle.save(model_dir).await?;
    Ok((bundle, files))
}

/// The localiser, trained when the job has real photos (it is for real
/// photos), `opts` asks for scenes, and there are backgrounds to compose
/// them on; without backgrounds the bundle has none and the service looks
/// through its fixed grid, which is said in the log.
pub async fn localiser_if_wanted(
    model: (&std::path::Path, fruits_backbone::Precision),
    pca: &Pca,
    studio: &Rows,
    backgrounds: Option<&str>,
    opts: &LearnOptions,
) -> Result<Option<fruits_bundle::Localiser>, Error> {
    let Some(backgrounds) = opts.localiser_backgrounds(true, backgrounds) else {
        if opts.localiser.scenes > 0 {
            tracing::warn!("no backgrounds (--backgrounds or FRUITS_BACKGROUNDS): the bundle gets no localiser");
        }
        return Ok(None);
    };
    let localiser = crate::localise::train_localiser(model, pca, &studio.paths, backgrounds, opts.localiser).await?;
    if let Some(m) = &localiser.metrics {
        tracing::info!(
            recall = m.recall,
            precision = m.precision,
            scenes = m.train_scenes,
            seconds = m.train_seconds,
            "localiser trained"
        );
    }
    Ok(Some(localiser))
}

/// What `fruits train` did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub rows: usize,
    pub classes: usize,
    pub k: usize,
    pub explained_variance: f64,
    pub seconds: Vec<(String, f64)>,
    pub bundle: String,
}

/// The backbone manifest and input size a featurize output was made with,
/// from its `_SUCCESS` (the featurize job's own [`Summary`](crate::Summary)).
async fn featurized_with(features: &Location) -> Result<(fruits_backbone::Manifest, u32, String), Error> {
    let summary: crate::Summary = fruits_output::read_committed(features).await.map_err(|e| match e {
        fruits_output::Error::Summary { uri, cause } => Error::NotFeatures(format!("{uri}: {cause}")),
        other => other.into(),
    })?;
    Ok((summary.model, summary.input_size, summary.input))
}

/// Real photos for `fruits train`: their folders, and how to featurize them
/// like the features being trained on (model directory, engine settings).
#[derive(Debug, Clone)]
pub struct TrainPhotos {
    pub folders: Vec<String>,
    pub model_dir: std::path::PathBuf,
    pub parallelism: usize,
    pub cluster: Option<String>,
    /// Photographs the training scenes are composed on (see `RunJob`).
    pub backgrounds: Option<String>,
}

/// `fruits train`: PCA on the engine, classifiers here, the bundle written to
/// `OUTPUT/model/`, then `OUTPUT/_SUCCESS`; with real photos, the kind head
/// too (the photos featurized on the engine into `OUTPUT/_work/`).
pub async fn train_bundle(
    ctx: &SessionContext,
    features: &str,
    output: &str,
    photos: Option<&TrainPhotos>,
    opts: &LearnOptions,
) -> Result<TrainSummary, Error> {
    let features = Location::parse(features)?;
    let (backbone, input_size, input) = featurized_with(&features).await?;
    if let Some(p) = photos {
        crate::kinds::check_photo_folders(&p.folders).await?;
        if let Some(backgrounds) = opts.kinds.scene_backgrounds(p.backgrounds.as_deref())? {
            crate::kinds::check_backgrounds(backgrounds).await?;
        }
        if let Some(backgrounds) = opts.localiser_backgrounds(true, p.backgrounds.as_deref()) {
            crate::kinds::check_backgrounds(backgrounds).await?;
        }
        let installed = fruits_backbone::Backbone::shared_matching(&p.model_dir, &backbone.onnx.sha256)?
            .manifest()
            .onnx
            .sha256
            .clone();
        if installed != backbone.onnx.sha256 {
            return Err(Error::OtherBackbone {
                features: backbone.onnx.sha256.clone(),
                installed,
            });
        }
    }
    let cx = JobContext::begin(ctx, output).await?;
    let featurized = Featurized {
        location: features,
        backbone,
        input_size,
        input,
    };
    let result = train_holding(&cx, &featurized, photos, opts).await;
    cx.end().await;
    result
}

/// A committed featurize output and what made it.
struct Featurized {
    location: Location,
    backbone: fruits_backbone::Manifest,
    input_size: u32,
    /// The images it was made from (where training scenes find their shots).
    input: String,
}

/// `fruits train` once it holds the output: the last bundle stays whole
/// until `model/bundle.json` switches, its files go once `_SUCCESS` is written.
async fn train_holding(
    cx: &JobContext<'_>,
    featurized: &Featurized,
    photos: Option<&TrainPhotos>,
    opts: &LearnOptions,
) -> Result<TrainSummary, Error> {
    let (ctx, input_size) = (cx.ctx, featurized.input_size);
    let files = committed_features(&featurized.location).await?;
    let t = Instant::now();
    let pca = fit_pca(ctx, &files, opts.components).await?;
    let mut seconds = vec![("PCA".to_string(), t.elapsed().as_secs_f64())];
    let rows = read_rows(ctx, &files, "features").await?;
    // The kind head learns from a few studio shots per class, as features.
    let studio = photos.map(|_| crate::kinds::studio_sample(&rows, opts.kinds.studio_per_class));
    let reduced = Rows {
        dim: pca.k,
        x: pca.project(&rows.x)?,
        ..rows
    };
    let learned = train_off_runtime(reduced, *opts).await?;
    seconds.extend(
        learned
            .trained
            .iter()
            .map(|t| (t.classifier.name().to_string(), t.seconds)),
    );
    let localiser = match (photos, &studio) {
        (Some(p), Some(studio)) => {
            let t = Instant::now();
            let model = (p.model_dir.as_path(), featurized.backbone.precision);
            let localiser = localiser_if_wanted(model, &pca, studio, p.backgrounds.as_deref(), opts).await?;
            seconds.push(("localiser".to_string(), t.elapsed().as_secs_f64()));
            localiser
        }
        _ => None,
    };
    let kind_head = match photos.zip(studio) {
        Some((p, studio)) => {
            let t = Instant::now();
            let features = (featurized.input.as_str(), input_size, featurized.backbone.precision);
            let head = learn_kinds(cx, p, features, studio, &learned.classes, opts).await?;
            seconds.push(("kind head".to_string(), t.elapsed().as_secs_f64()));
            Some(head)
        }
        None => None,
    };
    let (rows, classes) = (learned.rows.len(), learned.classes.len());
    let model_dir = Location::parse(&cx.out.child("model").to_string())?;
    let parts = BundleParts {
        backbone: &featurized.backbone,
        input_size,
        pca: &pca,
        confidence: Vec::new(),
        kind_head,
        localiser,
        data: lineage_of_featurized(&featurized.location, &cx.id).await?,
    };
    let (_, model_files) = save_bundle(&model_dir, learned, parts, opts).await?;
    let summary = TrainSummary {
        rows,
        classes,
        k: pca.k,
        explained_variance: pca.explained_variance(),
        seconds,
        bundle: model_dir.uri(),
    };
    cx.commit(&summary).await?;
    cx.remove_stale(&["model"], &model_files).await?;
    Ok(summary)
}

/// Featurizes the real photos and their views (and, when asked, scenes of
/// the `studio` shots, found under `train`) into `OUTPUT/_work/JOB/` and
/// trains the kind head on them and on `studio` (feature rows of studio
/// shots, `classes` the bundle's classes), removing the scratch.
async fn learn_kinds(
    cx: &JobContext<'_>,
    photos: &TrainPhotos,
    (train, input_size, precision): (&str, u32, fruits_backbone::Precision),
    studio: Rows,
    classes: &[String],
    opts: &LearnOptions,
) -> Result<fruits_bundle::KindHead, Error> {
    let (ctx, scratch) = (cx.ctx, cx.scratch("_work"));
    let template = crate::FeaturizeJob {
        input: String::new(),
        output: String::new(),
        limit: None,
        input_size: Some(input_size),
        model_dir: photos.model_dir.clone(),
        precision,
        rows_per_task: 256,
        parallelism: photos.parallelism,
        cluster: photos.cluster.clone(),
        sorted: false,
        views: None,
        backgrounds: None,
        only: None,
        max_object_bytes: crate::featurize::MAX_OBJECT_BYTES,
        incremental: None,
    };
    let quiet: std::sync::Arc<dyn crate::Progress> = std::sync::Arc::new(crate::NoProgress);
    let featurized = async {
        let photo_rows = crate::kinds::featurize_photos(
            ctx,
            &photos.folders,
            &scratch.to_string(),
            &template,
            &opts.kinds,
            &quiet,
        )
        .await?;
        let scenes = match opts.kinds.scene_backgrounds(photos.backgrounds.as_deref())? {
            Some(bg) => {
                let shots = (train, &studio);
                crate::kinds::featurize_scenes(ctx, shots, bg, &scratch.to_string(), &template, &opts.kinds, &quiet)
                    .await?
            }
            None => Rows::default(),
        };
        Ok::<_, Error>((photo_rows, scenes))
    }
    .await;
    fruits_output::remove_prefix(&cx.out, &scratch).await;
    let ((photo_rows, view_rows), scenes) = featurized?;
    let (head, metrics) =
        crate::kinds::train_kind_head_off_runtime(photo_rows, view_rows, (studio, scenes), classes, opts.kinds).await?;
    tracing::info!(
        photos = metrics.photos,
        views = metrics.views,
        scenes = metrics.scene_rows,
        top1 = metrics.top1,
        "kind head trained"
    );
    Ok(head)
}

/// What `fruits evaluate` found.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateResult {
    pub rows: usize,
    pub unknown_class_rows: usize,
    pub classifiers: Vec<(String, Evaluation)>,
}

/// `fruits evaluate`: scores a bundle on labelled images, or on a featurize
/// output made with the bundle's backbone and input size.
pub async fn evaluate_bundle(
    bundle: &Bundle,
    input: &str,
    model_dir: &std::path::Path,
    only: Option<&str>,
) -> Result<EvaluateResult, Error> {
    let location = Location::parse(input)?;
    let opts = fruits_engine::EngineOptions::new(model_dir.to_path_buf());
    let ctx = fruits_engine::session(&opts, None).await?;
    let scratch;
    let features = match featurized_with(&location).await {
        Ok((backbone, size, _)) => {
            if backbone.onnx.sha256 != bundle.manifest.backbone.onnx.sha256 || size != bundle.manifest.input_size {
                return Err(Error::NotFeatures(format!(
                    "{input} was featurized with another backbone or input size than the model's"
                )));
            }
            location
        }
        Err(_) => {
            scratch = tempfile::tempdir().map_err(Error::Scratch)?;
            let job = crate::FeaturizeJob {
                input: input.into(),
                output: scratch.path().display().to_string(),
                limit: None,
                input_size: Some(bundle.manifest.input_size),
                model_dir: model_dir.to_path_buf(),
                precision: bundle.manifest.backbone.precision,
                rows_per_task: 256,
                parallelism: opts.parallelism,
                cluster: None,
                sorted: false,
                views: None,
                backgrounds: None,
                only: None,
                max_object_bytes: crate::featurize::MAX_OBJECT_BYTES,
                incremental: None,
            };
            let quiet: std::sync::Arc<dyn crate::Progress> = std::sync::Arc::new(crate::NoProgress);
            crate::featurize::run_on(&ctx, &job, &quiet).await?;
            Location::parse(&scratch.path().display().to_string())?
        }
    };
    let rows = read_featurized(&ctx, &features).await?;
    let classes = &bundle.manifest.classes;
    let (y, x, unknown) = rows.indexed(classes);
    let mut classifiers = Vec::new();
    for c in &bundle.classifiers {
        if only.is_some_and(|name| name != c.name()) {
            continue;
        }
        let proba = bundle.classify_features(&x, Some(c.name()))?;
        classifiers.push((c.name().to_string(), evaluate(&y, &proba, classes.len())));
    }
    if let Some(name) = only.filter(|_| classifiers.is_empty()) {
        return Err(fruits_bundle::Error::NoSuchClassifier(name.into()).into());
    }
    Ok(EvaluateResult {
        rows: y.len(),
        unknown_class_rows: unknown.len(),
        classifiers,
    })
}
