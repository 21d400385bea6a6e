//! `fruits bench classify`: training and prediction time of both classifiers
//! on reduced vectors, at the featurized rows ×1, ×2, ×4 (×4 of the shared
//! sample is the full Fruits-360 training set's 67,692 rows), so that the
//! scaling shows in one run.

use std::time::Instant;

use fruits_classify::forest::RandomForest;
use fruits_classify::logistic::LogisticRegression;
use fruits_classify::Samples;
use fruits_pca::Moments;
use serde::Serialize;

use crate::Error;
use fruits_pipeline::learn::{LearnOptions, Rows};

/// One measured size.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyBench {
    pub rows: usize,
    pub k: usize,
    pub classes: usize,
    pub pca_fit_s: f64,
    pub logistic_train_s: f64,
    pub logistic_iterations: usize,
    pub forest_train_s: f64,
    pub logistic_predict_rows_per_s: f64,
    pub forest_predict_rows_per_s: f64,
}

/// Measures at each replication factor of `rows` (copies of the rows, each
/// copy nudged by a tiny deterministic offset so that no two rows are equal).
pub fn run(
    rows: &Rows,
    factors: &[usize],
    opts: &LearnOptions,
    report: &mut dyn FnMut(&ClassifyBench),
) -> Result<Vec<ClassifyBench>, Error> {
    let classes = rows.classes();
    let mut out = Vec::new();
    for &factor in factors {
        let mut x = Vec::with_capacity(rows.x.len() * factor);
        for copy in 0..factor {
            x.extend(rows.x.iter().map(|v| v + copy as f32 * 1e-4));
        }
        let t = Instant::now();
        let mut moments = Moments::new(rows.dim);
        moments.add_rows(&x);
        let pca = moments.fit(opts.components)?;
        let pca_fit_s = t.elapsed().as_secs_f64();
        let reduced = pca.project(&x)?;
        let (y1, _, _) = rows.indexed(&classes);
        let y: Vec<u32> = (0..factor).flat_map(|_| y1.iter().copied()).collect();
        let data = Samples::new(pca.k, &reduced, &y, classes.len())?;
        let t = Instant::now();
        let lr = LogisticRegression::fit(&data, opts.logistic)?;
        let logistic_train_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let rf = RandomForest::fit(&data, opts.forest)?;
        let forest_train_s = t.elapsed().as_secs_f64();
        let per_s = |f: &dyn Fn() -> Result<Vec<f32>, fruits_classify::Error>| -> Result<f64, Error> {
            let t = Instant::now();
            f()?;
            Ok(y.len() as f64 / t.elapsed().as_secs_f64())
        };
        let row = ClassifyBench {
            rows: y.len(),
            k: pca.k,
            classes: classes.len(),
            pca_fit_s,
            logistic_train_s,
            logistic_iterations: lr.iterations,
            forest_train_s,
            logistic_predict_rows_per_s: per_s(&|| lr.predict_proba(pca.k, &reduced))?,
            forest_predict_rows_per_s: per_s(&|| rf.predict_proba(pca.k, &reduced))?,
        };
        report(&row);
        out.push(row);
    }
    Ok(out)
}
