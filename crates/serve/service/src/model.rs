//! The loaded model and its hot swap: a request takes an `Arc` of the current
//! model when it starts and keeps it to the end, so a reload never changes a
//! model under a request in flight; the old one is dropped with its last user.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use fruits_bundle::{Bundle, Predictor};

/// Below this top-1 probability an answer is "not sure", for bundles without
/// a calibrated threshold (made by `fruits train`, which has no held-out split).
pub const UNCALIBRATED_THRESHOLD: f32 = 0.5;

/// Where the model comes from; kept for reloads.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// A bundle folder or a `fruits run` output, local or object storage.
    pub uri: String,
    /// The installed backbone.
    pub backbone_dir: PathBuf,
    /// Overrides the bundle's calibrated threshold.
    pub min_confidence: Option<f32>,
}

pub struct Model {
    pub predictor: Predictor,
    /// The "not sure" threshold: on the top kind's probability with a kind
    /// head, else on the default classifier's top class.
    pub threshold: f32,
    /// Where `threshold` comes from: `calibrated`, `configured` or `default`.
    pub threshold_source: &'static str,
    /// sha256 of the default classifier's file: names this model in logs and metrics.
    pub id: String,
    /// The bundle's data digest (`fruits_bundle::DataLineage`): what the
    /// model learned from; empty for bundles made before lineage.
    pub data: String,
    pub loaded_at: SystemTime,
}

impl Model {
    pub async fn load(source: &ModelSource) -> Result<Self, fruits_bundle::Error> {
        let bundle = Bundle::open(&source.uri).await?;
        // A kind head's threshold (on the kind's probability, calibrated on
        // real photos) comes before the variety head's (on studio shots).
        let kind_confidence = bundle.kind_head.as_ref().and_then(|h| h.confidence);
        let (threshold, threshold_source) = match (source.min_confidence, kind_confidence.or(bundle.confidence(None))) {
            (Some(t), _) => (t, "configured"),
            (None, Some(c)) => (c.min_probability, "calibrated"),
            (None, None) => (UNCALIBRATED_THRESHOLD, "default"),
        };
        let id = bundle.manifest.id();
        let data = bundle.manifest.data_digest();
        let dir = source.backbone_dir.clone();
        let predictor = tokio::task::spawn_blocking(move || Predictor::new(bundle, &dir))
            .await
            .expect("loading the backbone does not panic")?;
        Ok(Self {
            predictor,
            threshold,
            threshold_source,
            id,
            data,
            loaded_at: SystemTime::now(),
        })
    }

    pub fn classes(&self) -> usize {
        self.predictor.bundle.manifest.classes.len()
    }
}

/// The current model, swapped whole on reload.
pub struct ModelSlot(RwLock<Arc<Model>>);

impl ModelSlot {
    pub fn new(model: Model) -> Self {
        Self(RwLock::new(Arc::new(model)))
    }

    pub fn current(&self) -> Arc<Model> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, model: Model) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(model);
    }
}
