//! ImageNet-1k class names and top-k decoding of the backbone's logits.
//!
//! This is how anyone checks the port: a lemon photo must come out as "lemon".

use std::sync::OnceLock;

/// The 1000 class names in index order (see `data/NOTICE` for their origin).
pub fn labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| include_str!("../data/imagenet_labels.txt").lines().collect())
}

/// One ranked class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

/// Softmax over `logits`, then the `k` most probable classes, best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Ranked> {
    let probs = fruits_common::softmax(logits);
    let names = labels();
    fruits_common::top_k(&probs, k)
        .into_iter()
        .map(|index| Ranked {
            index,
            label: names.get(index).copied().unwrap_or("?").to_string(),
            prob: probs[index],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_imagenet_classes_in_order() {
        let l = labels();
        assert_eq!(l.len(), 1000);
        assert_eq!(l[0], "tench");
        assert_eq!(
            [l[948], l[949], l[951], l[953], l[954], l[957]],
            [
                "Granny Smith apple",
                "strawberry",
                "lemon",
                "pineapple",
                "banana",
                "pomegranate"
            ]
        );
    }

    #[test]
    fn top_k_ranks_by_probability_and_sums_to_one() {
        let mut logits = vec![0.0f32; 1000];
        logits[951] = 9.0;
        logits[954] = 7.0;
        let top = top_k(&logits, 5);
        assert_eq!(top.len(), 5);
        assert_eq!((top[0].index, top[0].label.as_str()), (951, "lemon"));
        assert_eq!(top[1].index, 954);
        assert!(top[0].prob > top[1].prob && top[1].prob > top[2].prob);
        let total: f32 = fruits_common::softmax(&logits).iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
    }
}
