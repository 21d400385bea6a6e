//! `fruits run`: the whole pipeline. Featurize both splits (and any folders of
//! real photos) on the engine, fit the PCA on the training split (partial
//! moments on the executors), project every row on the executors, train both
//! classifiers on the client, score them on the test split, train the kind
//! head when there are real photos (crate::kinds), and write:
//!
//! ```text
//! OUTPUT/features/part-JOB-NNNNN.parquet   path, label, split (train, test, photos), features, pca
//! OUTPUT/errors/part-JOB-NNNNN.parquet     path, split, error
//! OUTPUT/model/                            the model bundle (fruits-bundle)
//! OUTPUT/report/metrics.json, index.html
//! OUTPUT/_SUCCESS                          the run summary, written last
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{col, lit, ParquetReadOptions, SessionContext};
use fruits_classify::metrics::{Confidence, Evaluation};
use fruits_output as output;
use fruits_pca::Pca;
use fruits_storage::{Location, ObjectUri};
use futures::StreamExt;
use serde::Serialize;

use crate::featurize::{run_on, view_order, FeaturizeJob, Summary};
use crate::job::JobContext;
use crate::kinds::{
    check_backgrounds, check_photo_folders, featurize_scenes, score_on_studio, studio_sample,
    train_kind_head_off_runtime, KindMetrics,
};
use crate::learn::{
    fit_pca, localiser_if_wanted, save_bundle, score, train_off_runtime, BundleParts, LearnOptions, Learned, Rows,
    Scored,
};
use crate::{Error, Progress};

/// What `fruits run` does.
#[derive(Debug, Clone)]
pub struct RunJob {
    pub train: String,
    pub test: String,
    /// Folders of real photos in `<kind>/<photo>` folders (catalogue kind
    /// ids): with any, the bundle learns to answer the kind.
    pub photos: Vec<String>,
    /// Photographs the kind head's training scenes are composed on (with
    /// photos and `learn.kinds.scenes_per_shot` > 0).
    pub backgrounds: Option<String>,
    pub output: String,
    /// Featurize settings; its `input` and `output` are set per split.
    pub featurize: FeaturizeJob,
    pub learn: LearnOptions,
}

/// `report/metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub classes: usize,
    pub train_rows: usize,
    pub test_rows: usize,
    /// Test rows whose class is not among the training classes (not scored).
    pub test_rows_unknown_class: usize,
    pub pca: PcaMetrics,
    pub classifiers: BTreeMap<String, ClassifierMetrics>,
    pub default_classifier: String,
    pub class_names: Vec<String>,
    /// The kind head's out-of-fold figures on the real photos, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<KindMetrics>,
    /// The localiser's cell-level figures on held-out scenes, if trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localiser: Option<fruits_bundle::localiser::LocaliserMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PcaMetrics {
    pub k: usize,
    pub explained_variance: f64,
    pub input_dim: usize,
}

/// A classifier's scores on the test split (the evaluation's fields at the
/// top level of its JSON object) and its training time.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierMetrics {
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub train_seconds: f64,
    pub confidence: Confidence,
}

/// `_SUCCESS` of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub job_id: String,
    pub output: String,
    pub engine: String,
    pub metrics: Metrics,
    pub stages: Vec<Stage>,
    pub wall_s: f64,
    pub featurize: BTreeMap<String, Summary>,
    /// The data files: `features` (path, label, split, features, pca) and `errors`.
    pub files: crate::featurize::Files,
}

/// One timed stage of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: String,
    pub seconds: f64,
}

/// A stopwatch that records named stages, in order.
#[derive(Default)]
struct Stages(Vec<Stage>, Option<(String, Instant)>);

impl Stages {
    fn start(&mut self, name: &str, progress: &Arc<dyn Progress>) {
        self.stop();
        progress.stage(name);
        tracing::info!(stage = name, "run");
        self.1 = Some((name.into(), Instant::now()));
    }

    fn stop(&mut self) {
        if let Some((name, t)) = self.1.take() {
            self.0.push(Stage {
                stage: name,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }
}

pub async fn run(job: &RunJob, progress: &Arc<dyn Progress>) -> Result<RunSummary, Error> {
    check_photo_folders(&job.photos).await?;
    if let Some(backgrounds) = scene_backgrounds(job)? {
        check_backgrounds(backgrounds).await?;
    }
    if let Some(backgrounds) = job
        .learn
        .localiser_backgrounds(!job.photos.is_empty(), job.backgrounds.as_deref())
    {
        check_backgrounds(backgrounds).await?;
    }
    let opts = fruits_engine::EngineOptions {
        model_dir: job.featurize.model_dir.clone(),
        parallelism: job.featurize.parallelism,
    };
    let ctx = fruits_engine::session(&opts, job.featurize.cluster.as_deref()).await?;
    run_with(&ctx, job, progress).await
}

/// The backgrounds of the kind head's training scenes, when the job makes
/// scenes; an error when it should and has none. Scenes are for the kind
/// head, so a job without photos makes none.
fn scene_backgrounds(job: &RunJob) -> Result<Option<&str>, Error> {
    match job.photos.is_empty() {
        true => Ok(None),
        false => job.learn.kinds.scene_backgrounds(job.backgrounds.as_deref()),
    }
}

async fn run_with(ctx: &SessionContext, job: &RunJob, progress: &Arc<dyn Progress>) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let cx = JobContext::begin(ctx, &job.output).await?;
    let result = run_holding(&cx, job, progress, started).await;
    if result.is_err() {
        output::remove_prefix(&cx.out, &cx.scratch("_work")).await;
        cx.remove_unlisted(&["features", "errors"]).await;
    }
    cx.end().await;
    result
}

/// The run once it holds the output. Nothing readers see changes before the
/// commit: data files carry the job id, model files are named by their
/// content and `model/bundle.json` switches in one put, and the last
/// result's files are removed only once `_SUCCESS` lists the new ones.
async fn run_holding(
    cx: &JobContext<'_>,
    job: &RunJob,
    progress: &Arc<dyn Progress>,
    started: Instant,
) -> Result<RunSummary, Error> {
    let mut stages = Stages::default();
    let featurized = featurize_splits(cx, job, &mut stages, progress).await?;

    stages.start("fit PCA", progress);
    let train_folder = format!("{}/features", work(cx, "train"));
    let pca = fit_pca(cx.ctx, &[train_folder + "/"], job.learn.components).await?;
    // The projection reads the PCA from the job's scratch, not the model folder.
    let scratch = Location::parse(&cx.scratch("_work").to_string())?;
    let pca_file = fruits_bundle::put(&scratch, "pca.json", pca.to_json()).await?;
    let pca_model = PcaModel {
        pca: &pca,
        uri: scratch.child("pca.json"),
        sha256: pca_file.sha256,
    };

    stages.start("project and write", progress);
    let projected = project_and_write(cx, job, &pca_model, job.featurize.sorted).await?;
    let errors = write_errors(cx, job).await?;

    let views = read_views(cx, job).await?;

    stages.start("train", progress);
    let learned = train_off_runtime(projected.train, job.learn).await?;

    let scenes = match scene_backgrounds(job)? {
        Some(backgrounds) => {
            stages.start("featurize scenes", progress);
            let scratch = cx.scratch("_work").to_string();
            let studio = (job.train.as_str(), &projected.studio_features);
            let opts = &job.learn.kinds;
            featurize_scenes(cx.ctx, studio, backgrounds, &scratch, &job.featurize, opts, progress).await?
        }
        None => Rows::default(),
    };
    let localiser = match projected.photos.is_empty() {
        true => None,
        false => {
            stages.start("train localiser", progress);
            let model = (job.featurize.model_dir.as_path(), job.featurize.precision);
            let studio = &projected.studio_features;
            localiser_if_wanted(model, &pca, studio, job.backgrounds.as_deref(), &job.learn).await?
        }
    };
    let mut kind_head = match projected.photos.is_empty() {
        true => None,
        false => {
            stages.start("train kinds", progress);
            let (photos, studio, opts) = (projected.photos, projected.studio_features, job.learn.kinds);
            Some(train_kind_head_off_runtime(photos, views, (studio, scenes), &learned.classes, opts).await?)
        }
    };

    stages.start("evaluate", progress);
    let scored: Vec<(Scored, f64)> = learned
        .trained
        .iter()
        .map(|t| score(&t.classifier, &projected.test, &learned.classes).map(|s| (s, t.seconds)))
        .collect::<Result<_, _>>()?;

    stages.start("write model and report", progress);
    let backbone = &featurized["train"];
    let mut metrics = metrics(&learned, &projected.test, &pca, &scored, job.learn.default_classifier);
    if let Some((head, kind_metrics)) = kind_head.as_mut() {
        let default = learned
            .trained
            .iter()
            .find(|t| t.classifier.name() == job.learn.default_classifier)
            .map(|t| &t.classifier);
        if let Some(variety) = default {
            let test = (&projected.test, &projected.test_features);
            score_on_studio(head, variety, test, &learned.classes, kind_metrics)?;
        }
    }
    let (kind_head, kind_metrics) = kind_head.unzip();
    metrics.kinds = kind_metrics;
    metrics.localiser = localiser.as_ref().and_then(|l| l.metrics.clone());
    let parts = BundleParts {
        backbone: &backbone.model,
        input_size: backbone.input_size,
        pca: &pca,
        confidence: scored.iter().map(|(s, _)| (s.name.clone(), s.confidence)).collect(),
        kind_head,
        localiser,
        data: run_lineage(&projected.files, &featurized, &cx.id),
    };
    let model_dir = Location::parse(&cx.out.child("model").to_string())?;
    let (_, model_files) = save_bundle(&model_dir, learned, parts, &job.learn).await?;
    write_report(cx, &metrics, &pca, &scored, &projected.test, &mut stages).await?;

    let files = crate::featurize::Files {
        features: projected.files.uris(),
        errors,
    };
    let summary = RunSummary {
        job_id: cx.id.clone(),
        output: cx.out.uri(),
        engine: backbone.engine.clone(),
        metrics,
        stages: stages.0,
        wall_s: started.elapsed().as_secs_f64(),
        featurize: featurized,
        files,
    };
    cx.commit(&summary).await?;
    cx.remove_stale(&["features", "errors"], &summary.files.all()).await?;
    cx.remove_stale(&["model"], &model_files).await?;
    // Every run's scratch, including what a crashed earlier run left: no
    // other job writes here while this one holds the lease.
    output::remove_prefix(&cx.out, &cx.out.child("_work")).await;
    Ok(summary)
}

/// Where a split is featurized: `OUTPUT/_work/JOB/SPLIT`.
fn work(cx: &JobContext<'_>, split: &str) -> String {
    cx.scratch("_work").to_string() + "/" + split
}

/// Featurizes both splits into the job's scratch, on the job's engine session.
async fn featurize_splits(
    cx: &JobContext<'_>,
    job: &RunJob,
    stages: &mut Stages,
    progress: &Arc<dyn Progress>,
) -> Result<BTreeMap<String, Summary>, Error> {
    let mut featurized = BTreeMap::new();
    let views = job.learn.kinds.training_views();
    let all = splits(job).into_iter().map(|s| (s, None));
    for ((split, input), views) in all.chain(view_splits(job).into_iter().map(|s| (s, views))) {
        stages.start(&format!("featurize {split}"), progress);
        let fj = FeaturizeJob {
            input: input.clone(),
            output: work(cx, &split),
            views,
            // Fresh scratch: nothing earlier to use again.
            incremental: None,
            ..job.featurize.clone()
        };
        featurized.insert(split.to_string(), run_on(cx.ctx, &fj, progress).await?);
    }
    Ok(featurized)
}

/// The training views of the real photos, `views-N` per `--photos`: scratch
/// only (the kind head learns from them; `features/` keeps one row per image).
fn view_splits(job: &RunJob) -> Vec<(String, &String)> {
    match job.learn.kinds.training_views() {
        None => Vec::new(),
        Some(_) => job
            .photos
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("views-{i}"), p))
            .collect(),
    }
}

/// Every featurized folder of a run: its scratch name and input. The real
/// photos are `photos-N`, one per `--photos`, written as split `photos`.
fn splits(job: &RunJob) -> Vec<(String, &String)> {
    let photos = job.photos.iter().enumerate().map(|(i, p)| (format!("photos-{i}"), p));
    [("train".to_string(), &job.train), ("test".to_string(), &job.test)]
        .into_iter()
        .chain(photos)
        .collect()
}

/// The `split` column's value for a scratch split name.
fn split_column(split: &str) -> &str {
    if split.starts_with("photos-") {
        "photos"
    } else {
        split
    }
}

/// `report/metrics.json` and `report/index.html`; stops the stopwatch, so
/// that the report shows every stage.
async fn write_report(
    cx: &JobContext<'_>,
    metrics: &Metrics,
    pca: &Pca,
    scored: &[(Scored, f64)],
    test: &Rows,
    stages: &mut Stages,
) -> Result<(), Error> {
    let report_dir = Location::parse(&cx.out.child("report").to_string())?;
    let json = serde_json::to_vec_pretty(metrics).expect("metrics serialize");
    fruits_bundle::put(&report_dir, "metrics.json", json).await?;
    stages.stop();
    let html = report_html(metrics, pca, scored, test, &stages.0).await;
    fruits_bundle::put(&report_dir, "index.html", html.into_bytes()).await?;
    Ok(())
}

/// What a run's model learned from: the run's own feature files, each
/// input's listing, the featurize jobs and the run.
fn run_lineage(
    files: &fruits_output::Dataset,
    featurized: &BTreeMap<String, Summary>,
    job: &str,
) -> fruits_bundle::DataLineage {
    let features = files
        .files
        .iter()
        .map(|f| fruits_bundle::DataFileRef {
            uri: f.uri.clone(),
            rows: f.rows,
            sha256: f.sha256.clone(),
        })
        .collect();
    let listings = featurized
        .iter()
        .map(|(split, s)| (split.clone(), s.lineage.listing_sha256.clone()))
        .collect();
    let mut jobs: Vec<String> = featurized.values().map(|s| s.job_id.clone()).collect();
    jobs.push(job.to_string());
    fruits_bundle::DataLineage::new(features, listings, jobs)
}

/// The fitted PCA as the engine's `pca_project` reads it: its file and sha256.
struct PcaModel<'a> {
    pca: &'a Pca,
    uri: ObjectUri,
    sha256: String,
}

/// What projecting both splits wrote and kept.
struct Projected {
    files: fruits_output::Dataset,
    /// Reduced rows of each split, sorted by path.
    train: Rows,
    test: Rows,
    /// Feature rows of every real photo (labelled by kind), sorted by path.
    photos: Rows,
    /// When the job has photos (the kind head reads features, not the
    /// projection), else empty: the feature rows of the training split's
    /// [`studio_sample`] (a few per class, not the whole split), and of the
    /// test split in the order of `test`.
    studio_features: Rows,
    test_features: Rows,
}

fn features_schema(k: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("features", fruits_functions::featurize::features_type(), false),
        Field::new("pca", fruits_functions::pca_project::pca_type(k), false),
    ]))
}

/// Projects both splits on the engine and writes `features/`.
async fn project_and_write(
    cx: &JobContext<'_>,
    job: &RunJob,
    model: &PcaModel<'_>,
    sorted: bool,
) -> Result<Projected, Error> {
    let pca = model.pca;
    let schema = features_schema(pca.k);
    let metadata = vec![
        datafusion::parquet::file::metadata::KeyValue::new("fruits.pca_sha256".into(), model.sha256.clone()),
        datafusion::parquet::file::metadata::KeyValue::new("fruits.pca_k".into(), pca.k.to_string()),
    ];
    let mut writer = cx.part_writer("features", schema.clone(), metadata);
    // Reduced rows of train and test for the variety head; feature rows of
    // all three splits for the kind head, when the job has photos.
    let mut reduced: [Rows; 2] = Default::default();
    let mut features: [Rows; 3] = Default::default();
    let keep_features = !job.photos.is_empty();
    // One query per split (a UNION sorted on the split constant trips
    // Ballista 55's adaptive planner), train first; sorted by path when the
    // job asks for it (see `FeaturizeJob::sorted`).
    for (split, _) in splits(job) {
        let column = split_column(&split);
        let at = ["train", "test", "photos"]
            .iter()
            .position(|s| *s == column)
            .unwrap_or(2);
        let df = projected_split(cx, &split, model).await?.select(vec![
            col("path"),
            col("label"),
            lit(column).alias("split"),
            col("features"),
            col("pca"),
        ])?;
        let df = if sorted {
            df.sort(vec![col("path").sort(true, false)])?
        } else {
            df
        };
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = conform(&batch?, &schema)?;
            if let Some(rows) = reduced.get_mut(at) {
                rows.extend(&batch, "pca")?;
            }
            if keep_features {
                features[at].extend(&batch, "features")?;
            }
            writer.write(&batch).await?;
        }
    }
    // Training must not depend on the order tasks finished in.
    reduced.iter_mut().chain(&mut features).for_each(Rows::sort_by_path);
    let [train, test] = reduced;
    let [train_features, test_features, photos] = features;
    let studio_features = studio_sample(&train_features, job.learn.kinds.studio_per_class);
    drop(train_features);
    let files = writer.finish().await?;
    Ok(Projected {
        files,
        train,
        test,
        photos,
        studio_features,
        test_features,
    })
}

/// A featurized split's scratch rows with their `pca` column, on the engine.
async fn projected_split(
    cx: &JobContext<'_>,
    split: &str,
    model: &PcaModel<'_>,
) -> Result<datafusion::dataframe::DataFrame, Error> {
    let project = cx.ctx.udf(fruits_functions::pca_project::NAME)?;
    let call = project.call(vec![
        col("features"),
        lit(model.pca.k as i64),
        lit(model.uri.to_string()),
        lit(model.sha256.clone()),
    ]);
    let df = cx
        .ctx
        .read_parquet(format!("{}/features/", work(cx, split)), ParquetReadOptions::default())
        .await?;
    let mut columns: Vec<_> = df
        .schema()
        .columns()
        .into_iter()
        .map(datafusion::prelude::Expr::Column)
        .collect();
    columns.push(call.alias("pca"));
    Ok(df.select(columns)?)
}

/// The feature rows of the real photos' training views, sorted by (path,
/// view): the kind head's extra rows, in an order that does not depend on
/// the engine.
async fn read_views(cx: &JobContext<'_>, job: &RunJob) -> Result<Rows, Error> {
    let mut rows = Rows::default();
    for (split, _) in view_splits(job) {
        let df = cx
            .ctx
            .read_parquet(format!("{}/features/", work(cx, &split)), ParquetReadOptions::default())
            .await?
            .sort(view_order())?;
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            rows.extend(&batch?, "features")?;
        }
    }
    Ok(rows)
}

/// Casts a batch's columns to a schema's types (the engine may hand back
/// string views where the files hold plain strings).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, Error> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Gathers every split's `errors/` into `OUTPUT/errors/` with a `split` column.
async fn write_errors(cx: &JobContext<'_>, job: &RunJob) -> Result<Vec<String>, Error> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
    ]));
    let mut writer = cx.part_writer("errors", schema.clone(), Vec::new());
    for (split, _) in splits(job) {
        let df = cx
            .ctx
            .read_parquet(format!("{}/errors/", work(cx, &split)), ParquetReadOptions::default())
            .await?
            .select(vec![
                col("path"),
                lit(split_column(&split)).alias("split"),
                col("error"),
            ])?
            .sort(vec![col("path").sort(true, false)])?;
        for batch in df.collect().await? {
            writer.write(&conform(&batch, &schema)?).await?;
        }
    }
    Ok(writer.finish().await?.uris())
}

fn metrics(learned: &Learned, test: &Rows, pca: &Pca, scored: &[(Scored, f64)], default_classifier: &str) -> Metrics {
    let classes = &learned.classes;
    let (_, _, unknown) = test.indexed(classes);
    let classifiers = scored
        .iter()
        .map(|(s, seconds)| {
            let m = ClassifierMetrics {
                evaluation: s.evaluation.clone(),
                train_seconds: *seconds,
                confidence: s.confidence,
            };
            (s.name.clone(), m)
        })
        .collect();
    Metrics {
        classes: classes.len(),
        train_rows: learned.rows.len(),
        test_rows: test.len(),
        test_rows_unknown_class: unknown.len(),
        pca: PcaMetrics {
            k: pca.k,
            explained_variance: pca.explained_variance(),
            input_dim: pca.dim,
        },
        classifiers,
        default_classifier: default_classifier.into(),
        class_names: classes.to_vec(),
        kinds: None,
        localiser: None,
    }
}

/// The HTML report, with up to 3 example images per confused pair.
async fn report_html(metrics: &Metrics, pca: &Pca, scored: &[(Scored, f64)], test: &Rows, stages: &[Stage]) -> String {
    let classes = &metrics.class_names;
    let (_, _, unknown) = test.indexed(classes);
    // Paths of the scored test rows, in the order `score` saw them.
    let scored_paths: Vec<&String> = test
        .paths
        .iter()
        .enumerate()
        .filter(|(i, _)| !unknown.contains(i))
        .map(|(_, p)| p)
        .collect();
    let mut examples = Vec::new();
    for (s, _) in scored {
        for (t, p, _) in s.evaluation.worst_confusions(fruits_report::WORST_PAIRS) {
            if examples.iter().any(|(pair, _)| *pair == (t, p)) {
                continue;
            }
            let mut images = Vec::new();
            for (i, _) in s
                .truth
                .iter()
                .zip(&s.predicted)
                .enumerate()
                .filter(|(_, (&tt, &pp))| (tt as usize, pp as usize) == (t, p))
                .take(3)
            {
                let path = scored_paths[i].clone();
                match ObjectUri::parse(&path) {
                    Ok(uri) => match uri.read().await {
                        Ok(bytes) => images.push((path, bytes.to_vec())),
                        Err(e) => tracing::warn!("report example {path}: {e}"),
                    },
                    Err(e) => tracing::warn!("report example {path}: {e}"),
                }
            }
            examples.push(((t, p), images));
        }
    }
    fruits_report::Report {
        title: "Fruits! run report".into(),
        classes: classes.clone(),
        train_rows: metrics.train_rows,
        test_rows: metrics.test_rows,
        pca_k: pca.k,
        explained_variance_ratio: pca.explained_variance_ratio.clone(),
        classifiers: scored
            .iter()
            .map(|(s, _)| (s.name.clone(), s.evaluation.clone()))
            .collect(),
        timings: stages.iter().map(|s| (s.stage.clone(), s.seconds)).collect(),
        examples,
    }
    .html()
}
