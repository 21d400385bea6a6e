//! How good a classifier is on labelled rows: accuracy, top-5 accuracy,
//! precision/recall/F1 per class, macro (every class counts the same) and
//! weighted (by support), and the confusion matrix.

use fruits_common::top_k;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub rows: usize,
    pub accuracy: f64,
    pub top5_accuracy: f64,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    pub precision_weighted: f64,
    pub recall_weighted: f64,
    pub f1_weighted: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose true class this is.
    pub support: usize,
}

/// Scores probabilities (row-major `n × classes`) against true labels.
pub fn evaluate(truth: &[u32], proba: &[f32], classes: usize) -> Evaluation {
    let n = truth.len();
    assert_eq!(proba.len(), n * classes, "one probability row per label");
    let mut confusion = vec![vec![0u32; classes]; classes];
    let mut top5 = 0;
    for (i, &t) in truth.iter().enumerate() {
        let best = top_k(&proba[i * classes..(i + 1) * classes], 5);
        confusion[t as usize][best[0]] += 1;
        top5 += usize::from(best.contains(&(t as usize)));
    }
    let per_class: Vec<ClassMetrics> = (0..classes).map(|c| class_metrics(&confusion, c)).collect();
    let correct: u32 = (0..classes).map(|c| confusion[c][c]).sum();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let macro_of =
        |f: fn(&ClassMetrics) -> f64| present.iter().map(|m| f(m)).sum::<f64>() / present.len().max(1) as f64;
    let weighted_of =
        |f: fn(&ClassMetrics) -> f64| present.iter().map(|m| f(m) * m.support as f64).sum::<f64>() / n.max(1) as f64;
    Evaluation {
        rows: n,
        accuracy: f64::from(correct) / n.max(1) as f64,
        top5_accuracy: top5 as f64 / n.max(1) as f64,
        precision_macro: macro_of(|m| m.precision),
        recall_macro: macro_of(|m| m.recall),
        f1_macro: macro_of(|m| m.f1),
        precision_weighted: weighted_of(|m| m.precision),
        recall_weighted: weighted_of(|m| m.recall),
        f1_weighted: weighted_of(|m| m.f1),
        per_class,
        confusion,
    }
}

fn class_metrics(confusion: &[Vec<u32>], c: usize) -> ClassMetrics {
    let hit = f64::from(confusion[c][c]);
    let support: u32 = confusion[c].iter().sum();
    let predicted: u32 = confusion.iter().map(|row| row[c]).sum();
    let ratio = |a: f64, b: u32| if b == 0 { 0.0 } else { a / f64::from(b) };
    let (precision, recall) = (ratio(hit, predicted), ratio(hit, support));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    ClassMetrics {
        precision,
        recall,
        f1,
        support: support as usize,
    }
}

impl Evaluation {
    /// The most frequent confusions, `(true, predicted, count)`, largest first.
    pub fn worst_confusions(&self, limit: usize) -> Vec<(usize, usize, u32)> {
        let mut pairs: Vec<(usize, usize, u32)> = self
            .confusion
            .iter()
            .enumerate()
            .flat_map(|(t, row)| row.iter().enumerate().map(move |(p, &k)| (t, p, k)))
            .filter(|&(t, p, k)| t != p && k > 0)
            .collect();
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        pairs.truncate(limit);
        pairs
    }
}

/// How far to trust a top-1 probability: a threshold chosen on held-out
/// answers, below which a client should say "not sure" rather than a name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    /// Top-1 probability at or above which an answer counts as confident.
    pub min_probability: f32,
    /// Share of the held-out correct answers at or above the threshold.
    pub correct_kept: f64,
    /// Share of the held-out wrong answers below it (1 when there were none).
    pub wrong_flagged: f64,
    /// Held-out answers it was chosen on.
    pub rows: usize,
}

/// Share of correct held-out answers a calibrated threshold keeps confident.
pub const KEEP_CORRECT: f64 = 0.98;

/// The threshold keeping `keep` of the correct answers confident: the
/// `1 - keep` quantile of their top-1 probabilities. `answers` holds each
/// held-out row's top-1 probability and whether that answer was right.
pub fn calibrate(answers: &[(f32, bool)], keep: f64) -> Confidence {
    let mut right: Vec<f32> = answers.iter().filter(|a| a.1).map(|a| a.0).collect();
    right.sort_by(f32::total_cmp);
    let cut = ((1.0 - keep.clamp(0.0, 1.0)) * right.len() as f64).floor() as usize;
    let min_probability = right.get(cut).copied().unwrap_or(0.5);
    let kept = right.iter().filter(|&&p| p >= min_probability).count();
    let wrong: Vec<f32> = answers.iter().filter(|a| !a.1).map(|a| a.0).collect();
    let flagged = wrong.iter().filter(|&&p| p < min_probability).count();
    Confidence {
        min_probability,
        correct_kept: kept as f64 / right.len().max(1) as f64,
        wrong_flagged: if wrong.is_empty() {
            1.0
        } else {
            flagged as f64 / wrong.len() as f64
        },
        rows: answers.len(),
    }
}

/// The lowest threshold whose confident answers are right at least
/// `precision` of the time (answers at or above it, ties kept together):
/// "confident" then means what it says on rows like these. Nothing is
/// confident (threshold above 1) when no threshold reaches `precision`.
pub fn calibrate_precision(answers: &[(f32, bool)], precision: f64) -> Confidence {
    let mut sorted = answers.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut right = 0usize;
    let mut best = None;
    for (i, &(p, ok)) in sorted.iter().enumerate() {
        right += usize::from(ok);
        let boundary = sorted.get(i + 1).is_none_or(|next| next.0 < p);
        if boundary && right as f64 >= precision * (i + 1) as f64 {
            best = Some(p);
        }
    }
    let min_probability = best.unwrap_or(f32::from_bits(1.0f32.to_bits() + 1));
    let kept_right = answers.iter().filter(|a| a.1 && a.0 >= min_probability).count();
    let wrong = answers.iter().filter(|a| !a.1).count();
    let flagged = answers.iter().filter(|a| !a.1 && a.0 < min_probability).count();
    Confidence {
        min_probability,
        correct_kept: kept_right as f64 / answers.iter().filter(|a| a.1).count().max(1) as f64,
        wrong_flagged: if wrong == 0 { 1.0 } else { flagged as f64 / wrong as f64 },
        rows: answers.len(),
    }
}

/// Share of `answers` at or above `threshold`, and the share of those that are right.
pub fn confident_and_right(answers: &[(f32, bool)], threshold: f32) -> (f64, f64) {
    let confident: Vec<bool> = answers.iter().filter(|a| a.0 >= threshold).map(|a| a.1).collect();
    let right = confident.iter().filter(|&&ok| ok).count();
    (
        confident.len() as f64 / answers.len().max(1) as f64,
        right as f64 / confident.len().max(1) as f64,
    )
}

/// Each row's top-1 probability and whether it names the true class.
pub fn top1_answers(truth: &[u32], proba: &[f32], classes: usize) -> Vec<(f32, bool)> {
    truth
        .iter()
        .zip(proba.chunks(classes))
        .map(|(&t, p)| {
            let best = top_k(p, 1)[0];
            (p[best], best == t as usize)
        })
        .collect()
}
