//! `fruits run`: the whole pipeline. Featurize both splits on the engine, fit
//! the PCA on the training split (partial moments on the executors), project
//! every row on the executors, train both classifiers on the client, score
//! them on the test split, and write:
//!
//! ```text
//! OUTPUT/features/part-JOB-NNNNN.parquet   path, label, split, features, pca
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
use fruits_bundle::Bundle;
use fruits_classify::metrics::{Confidence, Evaluation};
use fruits_dataset::{Location, ObjectUri};
use fruits_pca::Pca;
use futures::StreamExt;
use serde::Serialize;

use crate::featurize::{run_on, FeaturizeJob, Summary};
use crate::learn::{fit_pca, score, train, LearnOptions, Rows, Scored};
use crate::output::{self, PartWriter};
use crate::{Error, Progress};

/// What `fruits run` does.
#[derive(Debug, Clone)]
pub struct RunJob {
    pub train: String,
    pub test: String,
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
    pub files: Vec<String>,
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
    let opts = fruits_engine::EngineOptions {
        model_dir: job.featurize.model_dir.clone(),
        parallelism: job.featurize.parallelism,
    };
    let ctx = match &job.featurize.cluster {
        None => fruits_engine::in_process(&opts).await?,
        Some(url) => fruits_engine::cluster::remote(url, &opts).await?,
    };
    run_with(&ctx, job, progress).await
}

async fn run_with(ctx: &SessionContext, job: &RunJob, progress: &Arc<dyn Progress>) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let out = Location::parse(&job.output)?;
    let job_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    output::begin(&out).await?;
    let work = |split: &str| out.child(&format!("_work/{job_id}/{split}")).to_string();
    let mut stages = Stages::default();
    let mut featurized = BTreeMap::new();
    for (split, input) in [("train", &job.train), ("test", &job.test)] {
        stages.start(&format!("featurize {split}"), progress);
        let fj = FeaturizeJob {
            input: input.clone(),
            output: work(split),
            ..job.featurize.clone()
        };
        featurized.insert(split.to_string(), run_on(ctx, &fj, progress).await?);
    }

    stages.start("fit PCA", progress);
    let pca = fit_pca(ctx, &format!("{}/features", work("train")), job.learn.components).await?;
    let model_dir = Location::parse(&out.child("model").to_string())?;
    let pca_json = pca.to_json();
    let pca_ref = fruits_bundle::put(&model_dir, "pca.json", pca_json).await?;

    stages.start("project and write", progress);
    let (features, train_rows, test_rows) = project_and_write(
        ctx,
        &out,
        &job_id,
        &work,
        &pca,
        &model_dir.child("pca.json"),
        &pca_ref.sha256,
        job.featurize.sorted,
    )
    .await?;
    let errors = write_errors(ctx, &out, &job_id, &work).await?;

    stages.start("train", progress);
    let classes = train_rows.classes();
    let learn = job.learn;
    let (trained, train_rows, test_rows, classes) = tokio::task::spawn_blocking(move || {
        train(&train_rows, &classes, &learn).map(|t| (t, train_rows, test_rows, classes))
    })
    .await
    .map_err(|e| Error::Bench(format!("training failed: {e}")))??;

    stages.start("evaluate", progress);
    let scored: Vec<(Scored, f64)> = trained
        .iter()
        .map(|t| score(&t.classifier, &test_rows, &classes).map(|s| (s, t.seconds)))
        .collect::<Result<_, _>>()?;
    let (_, _, unknown) = test_rows.indexed(&classes);

    stages.start("write model and report", progress);
    let featurize_summary = &featurized["train"];
    let mut bundle = Bundle::new(
        classes.clone(),
        featurize_summary.model.clone(),
        featurize_summary.input_size,
        pca.clone(),
        trained.into_iter().map(|t| t.classifier).collect(),
        job.learn.default_classifier,
    );
    bundle.manifest.confidence = scored.iter().map(|(s, _)| (s.name.clone(), s.confidence)).collect();
    bundle.save(&model_dir).await?;
    let metrics = metrics(
        &classes,
        &train_rows,
        &test_rows,
        unknown.len(),
        &pca,
        &scored,
        job.learn.default_classifier,
    );
    let report_dir = Location::parse(&out.child("report").to_string())?;
    fruits_bundle::put(
        &report_dir,
        "metrics.json",
        serde_json::to_vec_pretty(&metrics).expect("metrics serialize"),
    )
    .await?;
    stages.stop();
    let html = report_html(&metrics, &pca, &scored, &test_rows, &stages.0).await;
    fruits_bundle::put(&report_dir, "index.html", html.into_bytes()).await?;

    output::remove_stale(&out, "features", &features).await?;
    output::remove_stale(&out, "errors", &errors).await?;
    // Every run's scratch, including what a crashed earlier run left.
    output::remove_prefix(&out, &out.child("_work")).await;
    let summary = RunSummary {
        job_id,
        output: out.uri(),
        engine: featurize_summary.engine.clone(),
        metrics,
        stages: stages.0,
        wall_s: started.elapsed().as_secs_f64(),
        featurize: featurized,
        files: features.into_iter().chain(errors).collect(),
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    output::commit(&out, &json).await?;
    Ok(summary)
}

fn features_schema(k: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("features", fruits_featurize::features_type(), false),
        Field::new("pca", fruits_pca::udf::pca_type(k), false),
    ]))
}

/// Projects both splits on the engine and writes `features/`; returns the
/// files written and the reduced rows of each split, sorted by path.
#[allow(clippy::too_many_arguments)]
async fn project_and_write(
    ctx: &SessionContext,
    out: &Location,
    job_id: &str,
    work: &dyn Fn(&str) -> String,
    pca: &Pca,
    pca_uri: &ObjectUri,
    pca_sha: &str,
    sorted: bool,
) -> Result<(Vec<String>, Rows, Rows), Error> {
    let project = ctx.udf(fruits_pca::udf::NAME)?;
    let schema = features_schema(pca.k);
    let metadata = vec![
        datafusion::parquet::file::metadata::KeyValue::new("fruits.pca_sha256".into(), pca_sha.to_string()),
        datafusion::parquet::file::metadata::KeyValue::new("fruits.pca_k".into(), pca.k.to_string()),
    ];
    let mut writer = PartWriter::new(out, "features", job_id, schema.clone(), metadata);
    let mut rows = [Rows::default(), Rows::default()];
    // One query per split (a UNION sorted on the split constant trips
    // Ballista 55's adaptive planner), train first; sorted by path when the
    // job asks for it (see `FeaturizeJob::sorted`).
    for (split, target) in ["train", "test"].into_iter().zip(rows.iter_mut()) {
        let call = project.call(vec![
            col("features"),
            lit(pca.k as i64),
            lit(pca_uri.to_string()),
            lit(pca_sha.to_string()),
        ]);
        let df = ctx
            .read_parquet(format!("{}/features/", work(split)), ParquetReadOptions::default())
            .await?
            .select(vec![
                col("path"),
                col("label"),
                lit(split).alias("split"),
                col("features"),
                call.alias("pca"),
            ])?;
        let df = if sorted {
            df.sort(vec![col("path").sort(true, false)])?
        } else {
            df
        };
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = conform(&batch?, &schema)?;
            target.extend(&batch, "pca")?;
            writer.write(&batch).await?;
        }
    }
    let [mut train, mut test] = rows;
    // Training must not depend on the order tasks finished in.
    train.sort_by_path();
    test.sort_by_path();
    let (files, _) = writer.finish().await?;
    Ok((files, train, test))
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

/// Gathers both splits' `errors/` into `OUTPUT/errors/` with a `split` column.
async fn write_errors(
    ctx: &SessionContext,
    out: &Location,
    job_id: &str,
    work: &dyn Fn(&str) -> String,
) -> Result<Vec<String>, Error> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
    ]));
    let mut writer = PartWriter::new(out, "errors", job_id, schema.clone(), Vec::new());
    for split in ["train", "test"] {
        let df = ctx
            .read_parquet(format!("{}/errors/", work(split)), ParquetReadOptions::default())
            .await?
            .select(vec![col("path"), lit(split).alias("split"), col("error")])?
            .sort(vec![col("path").sort(true, false)])?;
        for batch in df.collect().await? {
            writer.write(&conform(&batch, &schema)?).await?;
        }
    }
    Ok(writer.finish().await?.0)
}

fn metrics(
    classes: &[String],
    train: &Rows,
    test: &Rows,
    unknown: usize,
    pca: &Pca,
    scored: &[(Scored, f64)],
    default_classifier: &str,
) -> Metrics {
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
        train_rows: train.len(),
        test_rows: test.len(),
        test_rows_unknown_class: unknown,
        pca: PcaMetrics {
            k: pca.k,
            explained_variance: pca.explained_variance(),
            input_dim: pca.dim,
        },
        classifiers,
        default_classifier: default_classifier.into(),
        class_names: classes.to_vec(),
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
