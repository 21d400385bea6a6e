use super::forest::{ForestOptions, RandomForest};
use super::logistic::{LogisticOptions, LogisticRegression};
use super::metrics::evaluate;
use super::*;
use crate::rng::Rng;

/// `classes` Gaussian-ish blobs in `dim` dimensions, `per` rows each.
fn blobs(classes: usize, dim: usize, per: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut unit = move || (rng.below(1_000_000) as f32 / 1_000_000.0) * 2.0 - 1.0;
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| (0..dim).map(|_| 3.0 * unit()).collect()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..classes * per {
        let c = i % classes;
        x.extend(centres[c].iter().map(|m| m + spread * unit()));
        y.push(c as u32);
    }
    (x, y)
}

#[test]
fn logistic_regression_separates_blobs_and_generalises() {
    let (x, y) = blobs(12, 8, 60, 1.0, 1);
    let (tx, ty) = blobs(12, 8, 20, 1.0, 1);
    let train = Samples::new(8, &x, &y, 12).unwrap();
    let model = LogisticRegression::fit(&train, LogisticOptions::default()).unwrap();
    let proba = model.predict_proba(8, &tx).unwrap();
    let eval = evaluate(&ty, &proba, 12);
    assert!(eval.accuracy > 0.95, "accuracy {}", eval.accuracy);
    for row in proba.chunks(12) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn logistic_regression_reaches_the_known_optimum_on_two_points() {
    // Two 1-d points of two classes with no penalty: the loss goes to 0.
    let x = [-1.0f32, 1.0];
    let y = [0u32, 1];
    let data = Samples::new(1, &x, &y, 2).unwrap();
    let opts = LogisticOptions {
        l2: 0.0,
        standardize: false,
        max_iterations: 200,
        tolerance: 1e-9,
    };
    let model = LogisticRegression::fit(&data, opts).unwrap();
    assert!(model.final_loss < 1e-3, "loss {}", model.final_loss);
}

#[test]
fn forest_separates_blobs_and_is_reproducible() {
    let (x, y) = blobs(10, 6, 80, 1.0, 2);
    let (tx, ty) = blobs(10, 6, 20, 1.0, 2);
    let train = Samples::new(6, &x, &y, 10).unwrap();
    let opts = ForestOptions {
        trees: 30,
        ..Default::default()
    };
    let a = RandomForest::fit(&train, opts).unwrap();
    let eval = evaluate(&ty, &a.predict_proba(6, &tx).unwrap(), 10);
    assert!(eval.accuracy > 0.9, "accuracy {}", eval.accuracy);
    let b = RandomForest::fit(&train, opts).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap(),
        "same seed, same forest"
    );
}

#[test]
fn metrics_by_hand() {
    // Truth 0,0,1,2; predicted 0,1,1,2 → class 0: P 1, R .5; class 1: P .5, R 1; class 2: 1, 1.
    let onehot = |c: usize| {
        let mut r = vec![0.0f32; 3];
        r[c] = 1.0;
        r
    };
    let proba: Vec<f32> = [0, 1, 1, 2].iter().flat_map(|&c| onehot(c)).collect();
    let e = evaluate(&[0, 0, 1, 2], &proba, 3);
    assert_eq!(e.accuracy, 0.75);
    assert_eq!(e.top5_accuracy, 1.0);
    assert!((e.precision_macro - (1.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
    assert!((e.recall_weighted - (0.5 * 2.0 + 1.0 + 1.0) / 4.0).abs() < 1e-12);
    let f1_0 = 2.0 * 0.5 / 1.5;
    assert!((e.f1_macro - (f1_0 + f1_0 + 1.0) / 3.0).abs() < 1e-12);
    assert_eq!(e.confusion[0], vec![1, 1, 0]);
    assert_eq!(e.worst_confusions(5), vec![(0, 1, 1)]);
}

#[test]
fn bad_shapes_are_refused() {
    assert!(Samples::new(2, &[1.0, 2.0, 3.0], &[0], 1).is_err());
    assert!(Samples::new(1, &[1.0], &[3], 2).is_err());
    assert!(Samples::new(1, &[], &[], 2).is_err());
}

#[test]
fn calibration_keeps_the_asked_share_of_right_answers_and_counts_flagged_wrong_ones() {
    use super::metrics::{calibrate, top1_answers};
    // 100 right answers at 0.01, 0.02, …, 1.00 and two wrong ones at 0.015 and 0.9.
    let mut answers: Vec<(f32, bool)> = (1..=100).map(|i| (i as f32 / 100.0, true)).collect();
    answers.extend([(0.015, false), (0.9, false)]);
    let c = calibrate(&answers, 0.98);
    assert_eq!(c.min_probability, 0.03);
    assert!((c.correct_kept - 0.98).abs() < 1e-12);
    assert!((c.wrong_flagged - 0.5).abs() < 1e-12);
    assert_eq!(c.rows, 102);
    // Top-1 of [0.2, 0.8] is class 1: right for truth 1, wrong for truth 0.
    let answers = top1_answers(&[1, 0], &[0.2, 0.8, 0.2, 0.8], 2);
    assert_eq!(answers, vec![(0.8, true), (0.8, false)]);
}

#[test]
fn precision_calibration_picks_the_lowest_threshold_that_is_right_often_enough() {
    use super::metrics::{calibrate_precision, confident_and_right};
    // From the top: 0.9 ✓, 0.8 ✓, 0.7 ✗, 0.6 ✓, 0.5 ✓, 0.4 ✗ ✗.
    let answers = [
        (0.9, true),
        (0.8, true),
        (0.7, false),
        (0.6, true),
        (0.5, true),
        (0.4, false),
        (0.4, false),
    ];
    let c = calibrate_precision(&answers, 0.8);
    assert_eq!(c.min_probability, 0.5, "4 of the top 5 are right");
    assert_eq!(confident_and_right(&answers, c.min_probability), (5.0 / 7.0, 0.8));
    assert!((c.wrong_flagged - 2.0 / 3.0).abs() < 1e-12);
    // Ties are kept together: 0.4 brings both its wrong answers at once
    // (4 of 7 right), never one of them alone (4 of 6).
    assert_eq!(calibrate_precision(&answers, 0.6).min_probability, 0.5);
    assert_eq!(calibrate_precision(&answers, 0.55).min_probability, 0.4);
    // Nothing reaches 100 % below the first wrong answer but the top two.
    assert_eq!(calibrate_precision(&answers, 1.0).min_probability, 0.8);
    // Never reached: nothing is confident.
    let never = calibrate_precision(&[(0.9, false)], 0.5);
    assert!(never.min_probability > 1.0);
    assert_eq!(confident_and_right(&[(0.9, false)], never.min_probability).0, 0.0);
}

#[test]
fn out_of_fold_predicts_every_scored_row_with_a_model_that_never_saw_it() {
    let (x, y) = blobs(3, 4, 30, 0.3, 7);
    let data = Samples::new(4, &x, &y, 3).unwrap();
    let fitted_sizes = std::sync::Mutex::new(Vec::new());
    let proba = out_of_fold(&data, 60, &[], 5, |s| {
        fitted_sizes.lock().unwrap().push(s.len());
        Ok(Classifier::LogisticRegression(LogisticRegression::fit(
            s,
            LogisticOptions::default(),
        )?))
    })
    .unwrap();
    assert_eq!(proba.len(), 60 * 3);
    // Each fold holds out 12 of the 60 scored rows; the 30 others always train.
    assert_eq!(*fitted_sizes.lock().unwrap(), vec![78; 5]);
    let right = proba
        .chunks(3)
        .zip(&y[..60])
        .filter(|(p, &t)| fruits_common::top_k(p, 1)[0] == t as usize)
        .count();
    assert!(right >= 57, "{right} of 60 separable rows right out of fold");
    assert!(proba.chunks(3).all(|p| (p.iter().sum::<f32>() - 1.0).abs() < 1e-4));
}

#[test]
fn companions_leave_the_training_side_with_their_scored_row() {
    let (x, y) = blobs(3, 4, 30, 0.3, 7);
    let data = Samples::new(4, &x, &y, 3).unwrap();
    // Rows 60..90 are companions of rows 0..30 (one per scored row).
    let companions: Vec<(usize, usize)> = (0..30).map(|i| (60 + i, i)).collect();
    let fitted_sizes = std::sync::Mutex::new(Vec::new());
    out_of_fold(&data, 60, &companions, 5, |s| {
        fitted_sizes.lock().unwrap().push(s.len());
        Ok(Classifier::LogisticRegression(LogisticRegression::fit(
            s,
            LogisticOptions::default(),
        )?))
    })
    .unwrap();
    // Each fold holds out 12 scored rows, and the companions of those below
    // row 30: all 12 in folds 0 and 1, 6 in fold 2, none in folds 3 and 4.
    assert_eq!(*fitted_sizes.lock().unwrap(), vec![66, 66, 72, 78, 78]);
}
