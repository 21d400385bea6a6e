//! The learning stages shared by `run`, `train`, `evaluate` and `validate`:
//! the PCA fit on the engine, the projection, the classifiers and their scores.

use std::collections::BTreeSet;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{col, ParquetReadOptions, SessionContext};
use fruits_classify::forest::{ForestOptions, RandomForest};
use fruits_classify::logistic::{LogisticOptions, LogisticRegression};
use fruits_classify::metrics::{evaluate, Evaluation};
use fruits_classify::{Classifier, Samples};
use fruits_pca::{Keep, Moments, Pca};
use serde::Serialize;

use crate::Error;

/// How to reduce and learn.
#[derive(Debug, Clone, Copy)]
pub struct LearnOptions {
    pub components: Keep,
    pub logistic: LogisticOptions,
    pub forest: ForestOptions,
    /// The classifier a bundle serves by default.
    pub default_classifier: &'static str,
}

impl Default for LearnOptions {
    /// Chosen on validation (docs/validation.md).
    fn default() -> Self {
        Self {
            components: Keep::Variance(0.95),
            logistic: LogisticOptions::default(),
            forest: ForestOptions::default(),
            default_classifier: "logistic_regression",
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

/// Reads `path`, `label` and a vector column of a Parquet folder on the engine.
pub async fn read_rows(ctx: &SessionContext, folder: &str, vectors: &str) -> Result<Rows, Error> {
    let df = ctx
        .read_parquet(
            format!("{}/", folder.trim_end_matches('/')),
            ParquetReadOptions::default(),
        )
        .await?
        .select(vec![col("path"), col("label"), col(vectors)])?
        .sort(vec![col("path").sort(true, false)])?;
    let mut rows = Rows::default();
    for batch in df.collect().await? {
        rows.extend(&batch, vectors)?;
    }
    Ok(rows)
}

/// Fits the PCA of the `features` column of a Parquet folder: partial
/// moments on the executors, merged by the engine, decomposed here.
pub async fn fit_pca(ctx: &SessionContext, folder: &str, keep: Keep) -> Result<Pca, Error> {
    let moments_fn = ctx.udaf(fruits_pca::udaf::NAME)?;
    let df = ctx
        .read_parquet(
            format!("{}/", folder.trim_end_matches('/')),
            ParquetReadOptions::default(),
        )
        .await?
        .aggregate(vec![], vec![moments_fn.call(vec![col("features")]).alias("m")])?;
    let batches = df.collect().await?;
    let column = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).clone())
        .ok_or(Error::Column("pca_moments result"))?;
    let moments: Moments = fruits_pca::udaf::from_array(column.as_ref())?;
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
}

/// Scores a classifier on reduced rows of known classes.
pub fn score(classifier: &Classifier, rows: &Rows, classes: &[String]) -> Result<Scored, Error> {
    let (y, x, _) = rows.indexed(classes);
    let proba = classifier.predict_proba(rows.dim, &x)?;
    let c = classes.len();
    let predicted = proba
        .chunks(c)
        .map(|p| fruits_classify::metrics::top_k(p, 1)[0] as u32)
        .collect();
    Ok(Scored {
        name: classifier.name().into(),
        evaluation: evaluate(&y, &proba, c),
        predicted,
        truth: y,
    })
}
