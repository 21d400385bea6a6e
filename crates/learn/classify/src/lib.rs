//! Classifiers on reduced feature vectors, and how to judge them.
//!
//! - [`logistic`]: multinomial logistic regression (softmax, L2), fitted by
//!   L-BFGS on the whole training set with faer's matrix products.
//! - [`forest`]: a random forest of CART trees (Gini), split on pre-binned
//!   features, trees grown in parallel.
//! - [`metrics`]: accuracy, top-5, per-class precision/recall/F1 (macro and
//!   weighted) and the confusion matrix.
//!
//! Both models are ours rather than `smartcore`'s or `linfa`'s: measured on
//! 17,000 × 100 vectors of 131 classes, smartcore 0.7 took 191 s for logistic
//! regression and 209 s for a 100-tree forest, where these take seconds
//! (`fruits bench classify` measures them on 67,692 rows).
//!
//! Must not depend on an engine, a store or the backbone: vectors and labels
//! in, models and scores out.

pub mod forest;
pub mod logistic;
pub mod metrics;
mod rng;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no training rows")]
    Empty,
    #[error("{rows} rows of {dim} values do not match {labels} labels")]
    Shape { rows: usize, dim: usize, labels: usize },
    #[error("label {label} is out of range for {classes} classes")]
    Label { label: u32, classes: usize },
    #[error("a model for vectors of {expected} values was given {got}")]
    Dimension { expected: usize, got: usize },
}

/// Rows (row-major `n × dim`) with their class indices.
#[derive(Debug, Clone)]
pub struct Samples<'a> {
    pub dim: usize,
    pub x: &'a [f32],
    pub y: &'a [u32],
    pub classes: usize,
}

impl<'a> Samples<'a> {
    pub fn new(dim: usize, x: &'a [f32], y: &'a [u32], classes: usize) -> Result<Self, Error> {
        if dim == 0 || x.len() != y.len() * dim {
            return Err(Error::Shape {
                rows: x.len() / dim.max(1),
                dim,
                labels: y.len(),
            });
        }
        if let Some(&label) = y.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::Label { label, classes });
        }
        if y.is_empty() {
            return Err(Error::Empty);
        }
        Ok(Self { dim, x, y, classes })
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
}

/// Out-of-fold probabilities (`n × classes`, row-major) of the first
/// `scored` rows of `data`: each of those rows is predicted by a model
/// `fit` on every other row (of all of `data`) but its fold's. Folds are
/// stratified and contiguous: a class's scored rows, in order, are cut into
/// `folds` runs. Rows in order are often shots of one session (photos named
/// `Royal-Gala_012`, `_013`): interleaved folds would put near-copies on both
/// sides and score too high. Rows past `scored` are always on the training
/// side (e.g. studio shots that help but are not what is being judged),
/// except those `companions` names: `(row, scored row)` pairs of rows that
/// leave the training side with their scored row's fold (a photo's crops
/// must not teach the model the photo it is judged on).
pub fn out_of_fold(
    data: &Samples,
    scored: usize,
    companions: &[(usize, usize)],
    folds: usize,
    fit: impl Fn(&Samples) -> Result<Classifier, Error>,
) -> Result<Vec<f32>, Error> {
    let folds = folds.max(2);
    let mut total = vec![0usize; data.classes];
    data.y[..scored].iter().for_each(|&c| total[c as usize] += 1);
    let mut seen = vec![0usize; data.classes];
    let fold: Vec<usize> = data.y[..scored]
        .iter()
        .map(|&c| {
            let j = seen[c as usize];
            seen[c as usize] += 1;
            j * folds / total[c as usize]
        })
        .collect();
    let mut fold_of: Vec<Option<usize>> = (0..data.len()).map(|i| fold.get(i).copied()).collect();
    for &(row, owner) in companions {
        if row >= scored && row < data.len() && owner < scored {
            fold_of[row] = Some(fold[owner]);
        }
    }
    let mut proba = vec![0.0f32; scored * data.classes];
    for f in 0..folds {
        let held: Vec<usize> = (0..scored).filter(|&i| fold[i] == f).collect();
        if held.is_empty() {
            continue;
        }
        let keep = (0..data.len()).filter(|&i| fold_of[i] != Some(f));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in keep {
            x.extend_from_slice(data.row(i));
            y.push(data.y[i]);
        }
        let model = fit(&Samples::new(data.dim, &x, &y, data.classes)?)?;
        let held_x: Vec<f32> = held.iter().flat_map(|&i| data.row(i).to_vec()).collect();
        let p = model.predict_proba(data.dim, &held_x)?;
        for (row, &i) in p.chunks(data.classes).zip(&held) {
            proba[i * data.classes..(i + 1) * data.classes].copy_from_slice(row);
        }
    }
    Ok(proba)
}

/// Checks that `x` holds whole rows of the `expected` width; returns the row count.
pub(crate) fn rows_of(expected: usize, dim: usize, x: &[f32]) -> Result<usize, Error> {
    if dim != expected || !x.len().is_multiple_of(dim) {
        return Err(Error::Dimension { expected, got: dim });
    }
    Ok(x.len() / dim)
}

/// Either trained model, as stored in a model bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Classifier {
    LogisticRegression(logistic::LogisticRegression),
    RandomForest(forest::RandomForest),
}

impl Classifier {
    pub fn name(&self) -> &'static str {
        match self {
            Classifier::LogisticRegression(_) => "logistic_regression",
            Classifier::RandomForest(_) => "random_forest",
        }
    }

    /// Class probabilities, row-major `n × classes`.
    pub fn predict_proba(&self, dim: usize, x: &[f32]) -> Result<Vec<f32>, Error> {
        match self {
            Classifier::LogisticRegression(m) => m.predict_proba(dim, x),
            Classifier::RandomForest(m) => m.predict_proba(dim, x),
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Classifier::LogisticRegression(m) => m.classes,
            Classifier::RandomForest(m) => m.classes,
        }
    }

    /// Length of the input rows it was trained on.
    pub fn dim(&self) -> usize {
        match self {
            Classifier::LogisticRegression(m) => m.dim,
            Classifier::RandomForest(m) => m.dim,
        }
    }
}

#[cfg(test)]
mod tests;
