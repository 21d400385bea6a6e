//! `fruits validate`: choose the reduction and the classifiers' settings on a
//! held-out split of the training images. Neighbouring frames of a Fruits-360
//! video are near-duplicates, so the split holds out *whole index ranges*: per
//! class and per file-name series (`12_100.jpg`, `r_12_100.jpg`, …), the
//! highest indices go to validation.

use std::collections::BTreeMap;
use std::time::Instant;

use fruits_classify::forest::ForestOptions;
use fruits_classify::logistic::LogisticOptions;
use fruits_pca::{Keep, Moments};
use serde::Serialize;

use crate::learn::{score, LearnOptions, Rows};
use crate::Error;

/// The series and index of a Fruits-360 file name: `r2_113_100.jpg` →
/// `("r2_", 113)`; names without a number sort as index 0 of their own series.
pub fn series_and_index(path: &str) -> (String, u64) {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split('.').next().unwrap_or(name);
    let parts: Vec<&str> = stem.split('_').collect();
    for (i, part) in parts.iter().enumerate() {
        if let Ok(n) = part.parse::<u64>() {
            return (parts[..i].iter().map(|p| format!("{p}_")).collect(), n);
        }
    }
    (stem.to_string(), 0)
}

/// Splits rows into (train, validation): per class and series, the last
/// `holdout` fraction of indices is held out.
pub fn split_by_index_ranges(rows: &Rows, holdout: f64) -> (Rows, Rows) {
    let mut groups: BTreeMap<(String, String), Vec<(u64, usize)>> = BTreeMap::new();
    for (i, (path, label)) in rows.paths.iter().zip(&rows.labels).enumerate() {
        let (series, index) = series_and_index(path);
        groups.entry((label.clone(), series)).or_default().push((index, i));
    }
    let (mut train, mut valid) = (
        Rows {
            dim: rows.dim,
            ..Default::default()
        },
        Rows {
            dim: rows.dim,
            ..Default::default()
        },
    );
    for members in groups.values_mut() {
        members.sort();
        let keep = members.len() - ((members.len() as f64 * holdout).round() as usize).min(members.len());
        for (rank, &(_, i)) in members.iter().enumerate() {
            let target = if rank < keep { &mut train } else { &mut valid };
            target.paths.push(rows.paths[i].clone());
            target.labels.push(rows.labels[i].clone());
            target.x.extend_from_slice(&rows.x[i * rows.dim..(i + 1) * rows.dim]);
        }
    }
    (train, valid)
}

/// One validated setting.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub classifier: String,
    pub components: String,
    pub k: usize,
    pub explained_variance: f64,
    pub setting: String,
    pub accuracy: f64,
    pub top5_accuracy: f64,
    pub f1_macro: f64,
    pub train_seconds: f64,
}

/// What to try.
#[derive(Debug, Clone)]
pub struct Grid {
    pub components: Vec<Keep>,
    pub l2: Vec<f64>,
    pub standardize: Vec<bool>,
    pub trees: Vec<usize>,
}

/// Fits PCA on the train part, then every classifier setting, scored on the
/// held-out part. Calls `report` after each trial.
pub fn validate(rows: &Rows, holdout: f64, grid: &Grid, report: &mut dyn FnMut(&Trial)) -> Result<Vec<Trial>, Error> {
    let (train, valid) = split_by_index_ranges(rows, holdout);
    let classes = train.classes();
    tracing::info!(
        train = train.len(),
        validation = valid.len(),
        classes = classes.len(),
        "validation split"
    );
    let mut moments = Moments::new(rows.dim);
    moments.add_rows(&train.x);
    let mut trials = Vec::new();
    for &keep in &grid.components {
        let pca = moments.fit(keep)?;
        let reduce = |r: &Rows| -> Result<Rows, Error> {
            Ok(Rows {
                dim: pca.k,
                paths: r.paths.clone(),
                labels: r.labels.clone(),
                x: pca.project(&r.x)?,
            })
        };
        let (rt, rv) = (reduce(&train)?, reduce(&valid)?);
        let (y, x, _) = rt.indexed(&classes);
        let data = fruits_classify::Samples::new(rt.dim, &x, &y, classes.len())?;
        let mut record =
            |classifier: fruits_classify::Classifier, setting: String, seconds: f64| -> Result<(), Error> {
                let s = score(&classifier, &rv, &classes)?;
                let trial = Trial {
                    classifier: s.name,
                    components: format!("{keep:?}"),
                    k: pca.k,
                    explained_variance: pca.explained_variance(),
                    setting,
                    accuracy: s.evaluation.accuracy,
                    top5_accuracy: s.evaluation.top5_accuracy,
                    f1_macro: s.evaluation.f1_macro,
                    train_seconds: seconds,
                };
                report(&trial);
                trials.push(trial);
                Ok(())
            };
        for &l2 in &grid.l2 {
            for &standardize in &grid.standardize {
                let opts = LogisticOptions {
                    l2,
                    standardize,
                    ..LearnOptions::default().logistic
                };
                let t = Instant::now();
                let lr = fruits_classify::logistic::LogisticRegression::fit(&data, opts)?;
                let setting = format!("l2={l2:e} standardize={standardize}");
                record(
                    fruits_classify::Classifier::LogisticRegression(lr),
                    setting,
                    t.elapsed().as_secs_f64(),
                )?;
            }
        }
        for &trees in &grid.trees {
            let opts = ForestOptions {
                trees,
                ..LearnOptions::default().forest
            };
            let t = Instant::now();
            let rf = fruits_classify::forest::RandomForest::fit(&data, opts)?;
            record(
                fruits_classify::Classifier::RandomForest(rf),
                format!("trees={trees}"),
                t.elapsed().as_secs_f64(),
            )?;
        }
    }
    Ok(trials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_series_and_index() {
        assert_eq!(series_and_index("s3://b/Apple 1/113_100.jpg"), ("".into(), 113));
        assert_eq!(series_and_index("/x/Apple 1/r_7_100.jpg"), ("r_".into(), 7));
        assert_eq!(series_and_index("r2_12_100.jpg"), ("r2_".into(), 12));
        assert_eq!(series_and_index("photo.jpg"), ("photo".into(), 0));
    }

    #[test]
    fn the_highest_indices_of_each_series_are_held_out() {
        let mut rows = Rows {
            dim: 1,
            ..Default::default()
        };
        for (label, name) in [
            ("A", "1_100.jpg"),
            ("A", "2_100.jpg"),
            ("A", "3_100.jpg"),
            ("A", "10_100.jpg"),
            ("A", "r_1_100.jpg"),
            ("A", "r_2_100.jpg"),
            ("B", "5_100.jpg"),
            ("B", "6_100.jpg"),
        ] {
            rows.paths.push(format!("/d/{label}/{name}"));
            rows.labels.push(label.into());
            rows.x.push(0.0);
        }
        let (train, valid) = split_by_index_ranges(&rows, 0.5);
        let names = |r: &Rows| {
            r.paths
                .iter()
                .map(|p| p.rsplit('/').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&valid), ["3_100.jpg", "10_100.jpg", "r_2_100.jpg", "6_100.jpg"]);
        assert_eq!(train.len(), 4);
    }
}
