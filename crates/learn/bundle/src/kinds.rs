//! The kind head: a second classifier over catalogue *kinds* (`apple`,
//! `tomato`), trained on real photos labelled by kind and on studio shots
//! whose class maps to a kind. It answers the kind first; the variety head
//! (the Fruits-360 classes) then ranks varieties *within* that answer:
//!
//! `p(class) = p(kind of class) · p_variety(class) / Σ p_variety(classes of that kind)`
//!
//! so that the varieties shown never contradict the kind shown, and a photo
//! the studio classes cannot place still gets a kind.
//!
//! A third, binary classifier, the *domain* gate, says how much a picture
//! looks like a studio shot (one fruit on white) rather than a real photo.
//! The answer is the mixture of the two experts it weighs: on a studio shot
//! the variety head alone (it is right 99.7 % of the time there, where the
//! kind head, which saw only a few studio shots per class, is not), on a
//! real photo the kind head and the varieties within its kinds.
//!
//! Both read [`KindInput`]: the square roots of the backbone features, not
//! the variety head's PCA. That PCA keeps 95 % of the variance *of studio
//! shots*; what tells a cantaloupe from a potato in a shop photo lies partly
//! outside it, and the square root evens out the few features a cluttered
//! photo fires strongly (on the grocery-store `val` photos, top-1 kind
//! 84.6 % → see README, "Real photos").

use fruits_classify::metrics::Confidence;
use fruits_classify::Classifier;
use serde::{Deserialize, Serialize};

use crate::FileRef;

/// What the kind head and the gate read of a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindInput {
    /// The bundle's PCA projection (what bundles recorded before `input`).
    #[default]
    Reduced,
    /// `√x` of each backbone feature (features are averages of ReLU6
    /// outputs, so never negative; a negative one is read as 0).
    SqrtFeatures,
}

impl KindInput {
    /// Length of one input row, given the features' and the PCA's lengths.
    pub fn dim(self, features: usize, reduced: usize) -> usize {
        match self {
            KindInput::Reduced => reduced,
            KindInput::SqrtFeatures => features,
        }
    }

    /// The input rows of rows of `features`, whose PCA projection is `reduced`.
    pub fn rows<'a>(self, features: &[f32], reduced: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match self {
            KindInput::Reduced => std::borrow::Cow::Borrowed(reduced),
            KindInput::SqrtFeatures => std::borrow::Cow::Owned(sqrt_features(features)),
        }
    }
}

/// [`KindInput::SqrtFeatures`] of rows of backbone features.
pub fn sqrt_features(features: &[f32]) -> Vec<f32> {
    features.iter().map(|v| v.max(0.0).sqrt()).collect()
}

/// The kind head as `bundle.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindHeadRef {
    /// Kind ids, sorted, indexed like the kind classifier's outputs.
    pub kinds: Vec<String>,
    /// The kind of each class (indexed like `classes`): the catalogue's
    /// class → kind map as it was when trained.
    pub class_kinds: Vec<String>,
    pub classifier: FileRef,
    /// The domain gate: outputs `[real photo, studio shot]`.
    pub domain: FileRef,
    /// The "not sure" threshold on the top kind's probability, chosen on
    /// out-of-fold answers for real photos.
    pub confidence: Option<Confidence>,
    /// What both classifiers read; absent in bundles made before it was
    /// recorded, which read the PCA projection.
    #[serde(default)]
    pub input: KindInput,
}

/// A loaded kind head.
#[derive(Debug, Clone)]
pub struct KindHead {
    pub kinds: Vec<String>,
    /// Index into `kinds` of each class's kind (`None` if the kind is unknown to the head).
    pub class_kind: Vec<Option<usize>>,
    pub classifier: Classifier,
    /// Outputs `[real photo, studio shot]`.
    pub domain: Classifier,
    pub confidence: Option<Confidence>,
    pub input: KindInput,
}

/// One row's answer: kind and class probabilities that agree.
#[derive(Debug, Clone, PartialEq)]
pub struct KindAnswer {
    pub kinds: Vec<f32>,
    pub classes: Vec<f32>,
    /// How much the picture looks like a studio shot (the gate's weight).
    pub studio: f32,
}

impl KindHead {
    /// A head over `kinds` (sorted) reading `input`; `class_kinds` is the
    /// kind id of each class.
    pub fn new(
        kinds: Vec<String>,
        class_kinds: &[String],
        (classifier, domain): (Classifier, Classifier),
        input: KindInput,
        confidence: Option<Confidence>,
    ) -> Self {
        let class_kind = class_kinds.iter().map(|k| kinds.binary_search(k).ok()).collect();
        Self {
            kinds,
            class_kind,
            classifier,
            domain,
            confidence,
            input,
        }
    }

    /// The mixture of the two experts for one row (see the module doc):
    /// `kind_p` from the kind head, `class_p` from the variety head,
    /// `studio` the gate's probability of a studio shot.
    pub fn answer(&self, kind_p: &[f32], class_p: &[f32], studio: f32) -> KindAnswer {
        let within = self.combine(kind_p, class_p);
        let classes = class_p
            .iter()
            .zip(&within)
            .map(|(v, w)| studio * v + (1.0 - studio) * w)
            .collect();
        let mut kinds: Vec<f32> = kind_p.iter().map(|p| (1.0 - studio) * p).collect();
        for (c, p) in class_p.iter().enumerate() {
            if let Some(k) = self.class_kind[c] {
                kinds[k] += studio * p;
            }
        }
        KindAnswer { kinds, classes, studio }
    }

    /// The kind id of each class, for `bundle.json`.
    pub fn class_kinds(&self) -> Vec<String> {
        self.class_kind
            .iter()
            .map(|k| k.map_or_else(String::new, |k| self.kinds[k].clone()))
            .collect()
    }

    /// Class probabilities consistent with the kind probabilities of one row
    /// (see the module doc): each kind's mass shared among its classes as
    /// the variety head shares it.
    pub fn combine(&self, kind_p: &[f32], class_p: &[f32]) -> Vec<f32> {
        let mut within = vec![0.0f32; self.kinds.len()];
        for (c, p) in class_p.iter().enumerate() {
            if let Some(k) = self.class_kind[c] {
                within[k] += p;
            }
        }
        class_p
            .iter()
            .enumerate()
            .map(|(c, p)| match self.class_kind[c] {
                Some(k) if within[k] > 0.0 => kind_p[k] * p / within[k],
                _ => 0.0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fruits_classify::logistic::{LogisticOptions, LogisticRegression};
    use fruits_classify::Samples;

    fn head() -> KindHead {
        let (x, y) = ([0.0f32, 1.0, 2.0, 3.0], [0u32, 0, 1, 1]);
        let lr = LogisticRegression::fit(&Samples::new(1, &x, &y, 2).unwrap(), LogisticOptions::default()).unwrap();
        let class_kinds = ["apple", "pear", "apple"].map(String::from);
        KindHead::new(
            vec!["apple".into(), "pear".into()],
            &class_kinds,
            (
                Classifier::LogisticRegression(lr.clone()),
                Classifier::LogisticRegression(lr),
            ),
            KindInput::SqrtFeatures,
            None,
        )
    }

    #[test]
    fn the_gate_hands_studio_shots_to_the_variety_head_and_photos_to_the_kind_head() {
        let head = head();
        let (kind_p, class_p) = ([0.9, 0.1], [0.1, 0.8, 0.1]);
        let studio = head.answer(&kind_p, &class_p, 1.0);
        assert_eq!(studio.classes, class_p);
        assert!((studio.kinds[0] - 0.2).abs() < 1e-6 && (studio.kinds[1] - 0.8).abs() < 1e-6);
        let photo = head.answer(&kind_p, &class_p, 0.0);
        assert_eq!(photo.kinds, kind_p);
        assert_eq!(photo.classes, head.combine(&kind_p, &class_p));
        let half = head.answer(&kind_p, &class_p, 0.5);
        assert!((half.kinds[0] - 0.55).abs() < 1e-6, "{:?}", half.kinds);
        // Kinds and classes agree: a kind's classes sum to the kind.
        assert!((half.classes[0] + half.classes[2] - half.kinds[0]).abs() < 1e-6);
    }

    #[test]
    fn varieties_share_their_kinds_probability_as_the_variety_head_does() {
        let head = head();
        // The variety head likes the pear class; the kind head says apple.
        let combined = head.combine(&[0.9, 0.1], &[0.1, 0.8, 0.1]);
        let expect = [0.45, 0.1, 0.45];
        for (c, e) in combined.iter().zip(expect) {
            assert!((c - e).abs() < 1e-6, "{combined:?}");
        }
        assert!((combined.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(head.class_kinds(), ["apple", "pear", "apple"]);
    }

    #[test]
    fn the_sqrt_input_reads_features_and_the_reduced_input_the_projection() {
        let (features, reduced) = ([4.0f32, 0.25, -1e-7, 0.0], [7.0f32]);
        assert_eq!(*KindInput::SqrtFeatures.rows(&features, &reduced), [2.0, 0.5, 0.0, 0.0]);
        assert_eq!(*KindInput::Reduced.rows(&features, &reduced), [7.0]);
        assert_eq!(KindInput::SqrtFeatures.dim(1280, 301), 1280);
        assert_eq!(KindInput::Reduced.dim(1280, 301), 301);
        // Bundles written before the field existed read the projection.
        let old: KindInput = serde_json::from_str::<Option<KindInput>>("null")
            .unwrap()
            .unwrap_or_default();
        assert_eq!(old, KindInput::Reduced);
    }

    #[test]
    fn a_class_of_a_kind_the_head_does_not_know_gets_nothing() {
        let mut head = head();
        head.class_kind[1] = None;
        let combined = head.combine(&[0.5, 0.5], &[0.2, 0.6, 0.2]);
        assert_eq!(combined[1], 0.0);
        assert!((combined[0] - 0.25).abs() < 1e-6);
    }
}
