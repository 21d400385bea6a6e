//! The model bundle: everything needed to name a fruit from a photo, saved
//! next to the data (`OUTPUT/model/`) and loaded by `predict`, `evaluate` and
//! the service.
//!
//! ```text
//! model/bundle.json                     the manifest: classes, backbone, input size, files and their sha256
//! model/pca-SHA.json                    the fitted PCA (fruits-pca)
//! model/logistic_regression-SHA.json    the classifiers (fruits-classify)
//! model/random_forest-SHA.json
//! model/kinds-SHA.json, domain-SHA.json the kind head, when trained with real photos (kinds)
//! ```
//!
//! Files are named by their content (`SHA`: the first 16 hex digits of their
//! sha256), so a new bundle is written beside the last one without touching
//! it; `bundle.json`, written last in one put, switches readers over. A
//! service that loads the folder mid-save gets the whole old bundle or the
//! whole new one. `bundle.json` is read first; every file it names is
//! checked against its sha256 when loaded. The backbone itself is not copied:
//! the manifest pins its ONNX sha256, and [`Predictor`] refuses a backbone
//! directory holding another model.
//!
//! Must not depend on an engine (DataFusion, Ballista): the service loads
//! bundles and has no engine. It reads and writes through `fruits-storage`.

use std::sync::Arc;

use fruits_backbone::{Backbone, Manifest, Outputs};
use fruits_classify::metrics::Confidence;
use fruits_classify::Classifier;
use fruits_common::top_k;
use fruits_pca::Pca;
use fruits_preprocess::{RgbImage, Spec};
use fruits_storage::{Location, ObjectUri};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

pub mod kinds;
pub mod localiser;

pub use kinds::{KindAnswer, KindHead, KindHeadRef, KindInput};
pub use localiser::{Localiser, LocaliserRef, ScoreMap};

pub const MANIFEST: &str = "bundle.json";
pub const FORMAT: u32 = 1;
/// How many times a load starts again on a bundle.json that changed under it.
const COMMIT_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] fruits_storage::Error),
    #[error(transparent)]
    Backbone(#[from] fruits_backbone::Error),
    #[error(transparent)]
    Pca(#[from] fruits_pca::Error),
    #[error(transparent)]
    Classify(#[from] fruits_classify::Error),
    #[error("{uri}: {cause}")]
    Invalid { uri: String, cause: String },
    #[error("the bundle has no classifier named '{0}'")]
    NoSuchClassifier(String),
    #[error(
        "the bundle was trained on backbone sha256 {bundle}…, the installed one is {installed}…: install the same model"
    )]
    BackboneMismatch { bundle: String, installed: String },
    #[error("cannot use this image: {0}")]
    Image(#[from] fruits_preprocess::Error),
    #[error("cannot train the localiser: {0}")]
    Localiser(String),
}

/// One file of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub sha256: String,
}

/// `bundle.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    /// Class names (the training folder names), indexed like the classifiers' outputs.
    pub classes: Vec<String>,
    pub backbone: Manifest,
    pub input_size: u32,
    pub pca: FileRef,
    /// By name (`logistic_regression`, `random_forest`).
    pub classifiers: Vec<(String, FileRef)>,
    /// The classifier used unless one is asked for: chosen on validation.
    pub default_classifier: String,
    /// Per classifier, the "not sure" threshold calibrated on the held-out
    /// split (`fruits run`); empty when trained without one (`fruits train`).
    #[serde(default)]
    pub confidence: Vec<(String, Confidence)>,
    /// The kind head (see [`kinds`]), when trained with real photos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_head: Option<KindHeadRef>,
    /// The localiser (see [`localiser`]), when trained with backgrounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localiser: Option<LocaliserRef>,
    /// What the model learned from; bundles before lineage have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataLineage>,
}

/// The data a model learned from: the feature files (each with its sha256),
/// the listings they were made from and the jobs that made them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLineage {
    /// sha256 over the sorted sha256 of every feature file: names the data,
    /// wherever the files were copied.
    pub digest: String,
    /// The feature files trained on.
    pub features: Vec<DataFileRef>,
    /// Per input (split, photo folder), the sha256 of its listing.
    pub listings: Vec<(String, String)>,
    /// The jobs whose rows the model learned from, and the job that trained it.
    pub jobs: Vec<String>,
}

/// One feature file a model learned from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFileRef {
    pub uri: String,
    pub rows: usize,
    pub sha256: String,
}

impl DataLineage {
    /// The lineage of `features`, with its digest.
    pub fn new(features: Vec<DataFileRef>, listings: Vec<(String, String)>, jobs: Vec<String>) -> Self {
        let mut digests: Vec<&str> = features.iter().map(|f| f.sha256.as_str()).collect();
        digests.sort_unstable();
        let digest = fruits_common::sha256_hex(digests.join("\n").as_bytes());
        Self {
            digest,
            features,
            listings,
            jobs,
        }
    }
}

impl BundleManifest {
    /// Names this model in answers, logs and metrics: the first 12 hex digits
    /// of its default classifier's sha256.
    pub fn id(&self) -> String {
        self.classifiers
            .iter()
            .find(|(name, _)| *name == self.default_classifier)
            .map(|(_, f)| fruits_common::short_digest(&f.sha256, 12).to_string())
            .unwrap_or_default()
    }

    /// The data digest of its lineage; empty for a bundle made before lineage.
    pub fn data_digest(&self) -> String {
        self.data.as_ref().map(|d| d.digest.clone()).unwrap_or_default()
    }

    /// Checks what `bundle.json` says before anything is read on its word:
    /// digests are sha256 hex, files are plain names in the bundle folder,
    /// sizes and thresholds are in range. A damaged or hand-edited manifest
    /// becomes one clear error, never a panic or a read outside the folder.
    pub fn check(&self) -> Result<(), String> {
        if self.classes.is_empty() || self.classes.iter().any(|c| c.trim().is_empty()) {
            return Err("classes must be a list of non-empty names".into());
        }
        if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&self.input_size) {
            return Err(format!(
                "input_size {} is outside {MIN_INPUT_SIZE}..={MAX_INPUT_SIZE}",
                self.input_size
            ));
        }
        check_sha256("backbone.onnx.sha256", &self.backbone.onnx.sha256)?;
        for (what, file) in self.file_refs() {
            check_file_name(what, &file.file)?;
            check_sha256(what, &file.sha256)?;
        }
        let thresholds = self.confidence.iter().map(|(_, c)| c);
        for c in thresholds.chain(self.kind_head.iter().filter_map(|h| h.confidence.as_ref())) {
            if !(0.0..=1.0).contains(&c.min_probability) {
                return Err(format!(
                    "a confidence threshold of {} is not a probability",
                    c.min_probability
                ));
            }
        }
        Ok(())
    }
}

impl BundleManifest {
    /// The files the manifest names, each with what it is.
    fn file_refs(&self) -> Vec<(&str, &FileRef)> {
        let mut files = vec![("pca", &self.pca)];
        files.extend(self.classifiers.iter().map(|(name, f)| (name.as_str(), f)));
        if let Some(head) = &self.kind_head {
            files.extend([
                ("kind_head.classifier", &head.classifier),
                ("kind_head.domain", &head.domain),
            ]);
        }
        if let Some(localiser) = &self.localiser {
            files.push(("localiser.classifier", &localiser.classifier));
        }
        files
    }

    /// The names of the files the manifest names (not `bundle.json` itself).
    pub fn files(&self) -> Vec<&str> {
        self.file_refs().into_iter().map(|(_, f)| f.file.as_str()).collect()
    }
}

/// Smallest and largest backbone input side a bundle may ask for.
const MIN_INPUT_SIZE: u32 = 32;
const MAX_INPUT_SIZE: u32 = 1024;

fn check_sha256(what: &str, sha: &str) -> Result<(), String> {
    match sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => Ok(()),
        false => Err(format!(
            "{what}: sha256 is not 64 hex digits ({} characters)",
            sha.chars().count()
        )),
    }
}

fn check_file_name(what: &str, file: &str) -> Result<(), String> {
    let plain = !file.is_empty() && file != "." && file != ".." && !file.contains(['/', '\\']);
    match plain {
        true => Ok(()),
        false => Err(format!(
            "{what}: file '{}' is not a plain name in the bundle folder",
            file.chars().take(64).collect::<String>().escape_debug()
        )),
    }
}

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: BundleManifest,
    pub pca: Pca,
    pub classifiers: Vec<Classifier>,
    pub kind_head: Option<KindHead>,
    pub localiser: Option<Localiser>,
}

/// Probabilities of feature rows, row-major.
#[derive(Debug, Clone)]
pub struct Probabilities {
    /// `n × classes`; consistent with `kinds` when the bundle has a kind head.
    pub classes: Vec<f32>,
    /// `n × kinds` of the kind head, if any.
    pub kinds: Option<Vec<f32>>,
    /// Per row, how much it looks like a studio shot (the kind head's gate), if any.
    pub studio: Option<Vec<f32>>,
}

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub label: String,
    pub probability: f32,
}

impl Bundle {
    /// A bundle to be saved; `save` fills in the file names and sha256s.
    pub fn new(
        classes: Vec<String>,
        backbone: Manifest,
        input_size: u32,
        pca: Pca,
        classifiers: Vec<Classifier>,
        default_classifier: &str,
    ) -> Self {
        let unsaved = FileRef {
            file: String::new(),
            sha256: String::new(),
        };
        Self {
            manifest: BundleManifest {
                format: FORMAT,
                classes,
                backbone,
                input_size,
                pca: unsaved,
                classifiers: Vec::new(),
                default_classifier: default_classifier.into(),
                confidence: Vec::new(),
                kind_head: None,
                localiser: None,
                data: None,
            },
            pca,
            classifiers,
            kind_head: None,
            localiser: None,
        }
    }

    /// Writes every file under a name made of its content, then
    /// `bundle.json`; returns the URIs of the bundle's files, `bundle.json`
    /// included (the folder's other files belong to earlier bundles).
    pub async fn save(&self, dir: &Location) -> Result<Vec<String>, Error> {
        let mut manifest = self.manifest.clone();
        let pca = self.pca.to_json();
        manifest.pca = put_addressed(dir, "pca", pca).await?;
        manifest.classifiers.clear();
        for c in &self.classifiers {
            let bytes = serde_json::to_vec(c).expect("a classifier serializes");
            manifest
                .classifiers
                .push((c.name().into(), put_addressed(dir, c.name(), bytes).await?));
        }
        manifest.kind_head = match &self.kind_head {
            None => None,
            Some(head) => {
                let bytes = serde_json::to_vec(&head.classifier).expect("a classifier serializes");
                let domain = serde_json::to_vec(&head.domain).expect("a classifier serializes");
                Some(KindHeadRef {
                    kinds: head.kinds.clone(),
                    class_kinds: head.class_kinds(),
                    classifier: put_addressed(dir, "kinds", bytes).await?,
                    domain: put_addressed(dir, "domain", domain).await?,
                    confidence: head.confidence,
                    input: head.input,
                })
            }
        };
        manifest.localiser = match &self.localiser {
            None => None,
            Some(l) => {
                let bytes = serde_json::to_vec(&l.classifier).expect("a classifier serializes");
                Some(LocaliserRef {
                    classifier: put_addressed(dir, "localiser", bytes).await?,
                    threshold: l.threshold,
                    side: l.side,
                    metrics: l.metrics.clone(),
                })
            }
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        put(dir, MANIFEST, json).await?;
        Ok(manifest
            .files()
            .into_iter()
            .chain([MANIFEST])
            .map(|f| dir.child(f).to_string())
            .collect())
    }

    /// Loads `uri/bundle.json`, else `uri/model/bundle.json`: a bundle folder
    /// or the output folder of `fruits run`.
    pub async fn open(uri: &str) -> Result<Self, Error> {
        match Self::load(uri).await {
            Err(Error::Storage(e)) if e.is_not_found() => {
                Self::load(&format!("{}/model", uri.trim_end_matches('/'))).await
            }
            other => other,
        }
    }

    /// Loads a bundle folder (local path or URI) and checks every file.
    pub async fn load(dir: &str) -> Result<Self, Error> {
        let dir = Location::parse(dir)?;
        let manifest = dir.child(MANIFEST).read().await?.to_vec();
        Self::load_from(&dir, manifest).await
    }

    /// Loads the bundle of `dir` whose bundle.json was read as `manifest`.
    async fn load_from(dir: &Location, mut manifest: Vec<u8>) -> Result<Self, Error> {
        let manifest_uri = dir.child(MANIFEST);
        // A rerun's commit switches bundle.json and then deletes the files the
        // old one named; a reader caught between its two reads sees a file
        // gone. If bundle.json changed meanwhile, the newer bundle is read.
        for _ in 0..COMMIT_RETRIES {
            match Self::load_manifest(dir, &manifest).await {
                Err(e) => {
                    let now = manifest_uri.read().await?.to_vec();
                    if now == manifest {
                        return Err(e);
                    }
                    tracing::debug!("{MANIFEST} changed while loading ({e}); reading the new one");
                    manifest = now;
                }
                loaded => return loaded,
            }
        }
        Self::load_manifest(dir, &manifest).await
    }

    /// Loads the bundle `manifest` (the bytes of `dir`'s bundle.json) names.
    async fn load_manifest(dir: &Location, manifest: &[u8]) -> Result<Self, Error> {
        let manifest_uri = dir.child(MANIFEST);
        let manifest: BundleManifest = serde_json::from_slice(manifest).map_err(|e| invalid(&manifest_uri, e))?;
        if manifest.format != FORMAT {
            return Err(invalid(
                &manifest_uri,
                format!("format {} (this build reads {FORMAT})", manifest.format),
            ));
        }
        manifest.check().map_err(|e| invalid(&manifest_uri, e))?;
        let pca_uri = dir.child(&manifest.pca.file);
        let pca_bytes = read_checked(&pca_uri, &manifest.pca.sha256).await?;
        let pca = Pca::from_json(&pca_uri.to_string(), &pca_bytes)?;
        let mut classifiers = Vec::new();
        for (name, file) in &manifest.classifiers {
            let uri = dir.child(&file.file);
            let bytes = read_checked(&uri, &file.sha256).await?;
            let c: Classifier = serde_json::from_slice(&bytes).map_err(|e| invalid(&uri, e))?;
            if c.name() != name || c.classes() != manifest.classes.len() {
                return Err(invalid(&uri, "does not match bundle.json"));
            }
            classifiers.push(c);
        }
        let kind_head = match &manifest.kind_head {
            None => None,
            Some(head) => Some(load_kind_head(dir, head, manifest.classes.len(), &pca).await?),
        };
        let localiser = match &manifest.localiser {
            None => None,
            Some(l) => Some(load_localiser(dir, l, &pca).await?),
        };
        let bundle = Self {
            manifest,
            pca,
            classifiers,
            kind_head,
            localiser,
        };
        bundle.classifier(None)?;
        Ok(bundle)
    }

    /// The named classifier, or the default one.
    pub fn classifier(&self, name: Option<&str>) -> Result<&Classifier, Error> {
        let name = name.unwrap_or(&self.manifest.default_classifier);
        self.classifiers
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::NoSuchClassifier(name.into()))
    }

    /// Class probabilities (`n × classes`) of backbone feature rows.
    pub fn classify_features(&self, features: &[f32], classifier: Option<&str>) -> Result<Vec<f32>, Error> {
        let reduced = self.pca.project(features)?;
        Ok(self.classifier(classifier)?.predict_proba(self.pca.k, &reduced)?)
    }

    /// Class probabilities of the default classifier (consistent with the
    /// kind head's) and kind probabilities, of backbone feature rows.
    pub fn classify(&self, features: &[f32]) -> Result<Probabilities, Error> {
        let reduced = self.pca.project(features)?;
        let classes = self.classifier(None)?.predict_proba(self.pca.k, &reduced)?;
        let Some(head) = &self.kind_head else {
            return Ok(Probabilities {
                classes,
                kinds: None,
                studio: None,
            });
        };
        let dim = head.input.dim(self.pca.dim, self.pca.k);
        let x = head.input.rows(features, &reduced);
        let kind_p = head.classifier.predict_proba(dim, &x)?;
        let domain = head.domain.predict_proba(dim, &x)?;
        let c = self.manifest.classes.len();
        let (mut mixed, mut kinds, mut studio) = (Vec::with_capacity(classes.len()), Vec::new(), Vec::new());
        let rows = classes.chunks(c).zip(kind_p.chunks(head.kinds.len()));
        for ((cp, kp), d) in rows.zip(domain.chunks(2)) {
            let a = head.answer(kp, cp, d[1]);
            mixed.extend(a.classes);
            kinds.extend(a.kinds);
            studio.push(a.studio);
        }
        Ok(Probabilities {
            classes: mixed,
            kinds: Some(kinds),
            studio: Some(studio),
        })
    }

    /// The calibrated "not sure" threshold of a classifier (the default one
    /// when `None`), if the bundle was made with a held-out split.
    pub fn confidence(&self, classifier: Option<&str>) -> Option<Confidence> {
        let name = classifier.unwrap_or(&self.manifest.default_classifier);
        self.manifest
            .confidence
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }

    /// The `k` most probable classes of one probability row.
    pub fn rank(&self, probabilities: &[f32], k: usize) -> Vec<Ranked> {
        top_k(probabilities, k)
            .into_iter()
            .map(|c| Ranked {
                label: self.manifest.classes[c].clone(),
                probability: probabilities[c],
            })
            .collect()
    }
}

/// One image at both levels: kinds (empty without a kind head) and classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Kind ids, most probable first.
    pub kinds: Vec<Ranked>,
    /// Classes, most probable first, consistent with `kinds`.
    pub classes: Vec<Ranked>,
}

/// A bundle with the backbone it was trained on: photos in, classes out.
pub struct Predictor {
    pub bundle: Bundle,
    backbone: Arc<Backbone>,
    spec: Spec,
}

impl Predictor {
    pub fn new(bundle: Bundle, model_dir: &std::path::Path) -> Result<Self, Error> {
        let backbone = Backbone::shared_matching(model_dir, &bundle.manifest.backbone.onnx.sha256)?;
        let (want, have) = (&bundle.manifest.backbone.onnx.sha256, &backbone.manifest().onnx.sha256);
        if want != have {
            return Err(Error::BackboneMismatch {
                bundle: fruits_common::short_digest(want, 12).into(),
                installed: fruits_common::short_digest(have, 12).into(),
            });
        }
        let m = backbone.manifest();
        let spec = Spec {
            size: bundle.manifest.input_size,
            mean: m.input.mean,
            std: m.input.std,
        };
        Ok(Self { bundle, backbone, spec })
    }

    /// The backbone features of one encoded image.
    pub fn features(&self, bytes: &[u8]) -> Result<Vec<f32>, Error> {
        let mut input = Vec::with_capacity(self.spec.len());
        fruits_preprocess::prepare(bytes, &self.spec, &mut input)?;
        Ok(self.backbone.run(input, 1, self.spec.size)?.features)
    }

    /// How images become backbone input for this bundle.
    pub fn spec(&self) -> Spec {
        self.spec
    }

    /// Backbone outputs (features and ImageNet logits) of decoded images, one
    /// batch, prepared as in [`Predictor::features`].
    pub fn outputs_of<I: std::borrow::Borrow<RgbImage>>(&self, images: &[I]) -> Result<Outputs, Error> {
        let mut input = Vec::with_capacity(images.len() * self.spec.len());
        for image in images {
            fruits_preprocess::prepare_decoded(image.borrow(), &self.spec, &mut input)?;
        }
        Ok(self.backbone.run(input, images.len(), self.spec.size)?)
    }

    /// Where the fruits are in a decoded photo, if the bundle has a
    /// localiser: one dense pass of the backbone over the whole photo.
    pub fn score_map(&self, image: &RgbImage) -> Result<Option<ScoreMap>, Error> {
        let Some(localiser) = &self.bundle.localiser else {
            return Ok(None);
        };
        let (w, h) = localiser::dense_shape(image.width(), image.height(), localiser.side);
        let resized = fruits_preprocess::resize_exact(image, w, h)?;
        let mut input = Vec::with_capacity((3 * w * h) as usize);
        fruits_preprocess::normalize_into(&resized, &self.spec, &mut input);
        let out = self.backbone.run_shaped(input, 1, (h, w), true)?;
        let cells = out.cells.expect("asked for cells");
        let map = localiser.score(&self.bundle.pca, &cells.rows_of(0), (cells.rows, cells.columns))?;
        Ok(Some(map))
    }

    /// The backbone this predictor runs.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The top 3 kinds and the top `k` classes of one encoded image, as the
    /// kind head and the default classifier answer together (the whole
    /// image, one view: the service's `identify` also looks at parts).
    pub fn answer(&self, bytes: &[u8], k: usize) -> Result<Answer, Error> {
        let features = self.features(bytes)?;
        let p = self.bundle.classify(&features)?;
        let kinds = match (&p.kinds, &self.bundle.kind_head) {
            (Some(kp), Some(head)) => top_k(kp, 3)
                .into_iter()
                .map(|i| Ranked {
                    label: head.kinds[i].clone(),
                    probability: kp[i],
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Answer {
            kinds,
            classes: self.bundle.rank(&p.classes, k),
        })
    }

    /// The top `k` classes of one encoded image by one classifier.
    pub fn predict(&self, bytes: &[u8], k: usize, classifier: Option<&str>) -> Result<Vec<Ranked>, Error> {
        let features = self.features(bytes)?;
        let proba = self.bundle.classify_features(&features, classifier)?;
        Ok(self.bundle.rank(&proba, k))
    }
}

async fn load_localiser(dir: &Location, found: &LocaliserRef, pca: &Pca) -> Result<Localiser, Error> {
    let uri = dir.child(&found.classifier.file);
    let bytes = read_checked(&uri, &found.classifier.sha256).await?;
    let classifier: Classifier = serde_json::from_slice(&bytes).map_err(|e| invalid(&uri, e))?;
    let localiser = Localiser {
        classifier,
        threshold: found.threshold,
        side: found.side,
        metrics: found.metrics.clone(),
    };
    localiser.check(pca).map_err(|e| invalid(&uri, e))?;
    Ok(localiser)
}

async fn load_kind_head(dir: &Location, head: &KindHeadRef, classes: usize, pca: &Pca) -> Result<KindHead, Error> {
    let load = |file: &FileRef| {
        let uri = dir.child(&file.file);
        let sha256 = file.sha256.clone();
        async move {
            let bytes = read_checked(&uri, &sha256).await?;
            let c: Classifier = serde_json::from_slice(&bytes).map_err(|e| invalid(&uri, e))?;
            Ok::<_, Error>((uri, c))
        }
    };
    let (uri, classifier) = load(&head.classifier).await?;
    let (domain_uri, domain) = load(&head.domain).await?;
    let sorted = head.kinds.windows(2).all(|w| w[0] < w[1]);
    if classifier.classes() != head.kinds.len() || head.class_kinds.len() != classes || !sorted {
        return Err(invalid(&uri, "does not match bundle.json's kind head"));
    }
    if domain.classes() != 2 {
        return Err(invalid(&domain_uri, "the domain gate has two outputs"));
    }
    let dim = head.input.dim(pca.dim, pca.k);
    if classifier.dim() != dim || domain.dim() != dim {
        return Err(invalid(
            &uri,
            format!("the kind head reads {:?} rows of {dim} values", head.input),
        ));
    }
    Ok(KindHead::new(
        head.kinds.clone(),
        &head.class_kinds,
        (classifier, domain),
        head.input,
        head.confidence,
    ))
}

/// Writes `bytes` to `dir/STEM-SHA.json`, named by its content; returns the
/// file's name and sha256.
pub async fn put_addressed(dir: &Location, stem: &str, bytes: Vec<u8>) -> Result<FileRef, Error> {
    let sha256 = fruits_common::sha256_hex(&bytes);
    let file = format!("{stem}-{}.json", fruits_common::short_digest(&sha256, 16));
    put(dir, &file, bytes).await
}

/// Writes `bytes` to `dir/file`; returns the file's name and sha256.
pub async fn put(dir: &Location, file: &str, bytes: Vec<u8>) -> Result<FileRef, Error> {
    let uri = dir.child(file);
    let sha256 = fruits_common::sha256_hex(&bytes);
    dir.store
        .put(&uri.path, PutPayload::from(bytes))
        .await
        .map_err(|e| uri.err(e))?;
    Ok(FileRef {
        file: file.into(),
        sha256,
    })
}

async fn read_checked(uri: &ObjectUri, sha256: &str) -> Result<Vec<u8>, Error> {
    let bytes = uri.read().await?.to_vec();
    if fruits_common::sha256_hex(&bytes) != sha256 {
        return Err(invalid(uri, "sha256 differs from bundle.json (changed or damaged)"));
    }
    Ok(bytes)
}

fn invalid(uri: &ObjectUri, cause: impl std::fmt::Display) -> Error {
    Error::Invalid {
        uri: uri.to_string(),
        cause: cause.to_string(),
    }
}

#[cfg(test)]
mod tests;
