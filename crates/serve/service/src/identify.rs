//! From one uploaded photo to the fruits in it.
//!
//! The photo is decoded (large JPEGs at a reduced DCT scale), then looked at
//! through several square *views*: the whole picture, and for photos of at
//! least twice the model's input side, a grid of overlapping squares of 60 %
//! of the shorter side, so that a fruit off-centre or one of several fruits
//! fills a view the way a Fruits-360 fruit fills its frame. All views go
//! through the backbone as one batch.
//!
//! Our classifier only ever saw fruits on white, so its own probability is
//! no guide to which view holds a fruit: on a view of a table it still names
//! some fruit, often with high probability. The backbone's ImageNet head is
//! that guide: the answer is the view with the largest share of ImageNet
//! probability on fruit and vegetable classes (`produce_share`). Grid views
//! that look like produce and are confident are grouped by kind of fruit (two
//! apple varieties seen on one apple are one apple); two or more groups are
//! reported as `regions`.

use std::time::Instant;

use fruits_catalog::{Catalog, Lang};
use fruits_preprocess::photo::decode_photo;
use image::RgbImage;

use crate::answer::{FruitFacts, Identification, ImageSize, Prediction, Region, Timings};
use crate::model::Model;
use crate::views::{crop, plan, union, View};

/// Why a photo could not be identified. Knows nothing of HTTP: the API
/// turns it into a status (`From<IdentifyError> for ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// The upload is not a photo we can read: the client's fault.
    #[error(transparent)]
    Photo(#[from] fruits_preprocess::Error),
    /// The loaded model failed on a decoded photo: ours.
    #[error("the model failed: {0}")]
    Model(#[from] fruits_bundle::Error),
}

/// Least produce share (see [`produce_share`]) of a view counted as showing a fruit.
const PRODUCE_MIN: f32 = 0.2;

/// What the client asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub lang: Lang,
    /// How many ranked predictions to return.
    pub top: usize,
    /// Whether to look at grid views of large photos.
    pub regions: bool,
    pub max_pixels: u64,
}

/// Identifies the fruits in one encoded photo (CPU-bound: call off the async runtime).
pub fn identify(model: &Model, catalog: &Catalog, bytes: &[u8], ask: &Ask) -> Result<Identification, IdentifyError> {
    let start = Instant::now();
    let size = model.predictor.spec().size;
    let photo = decode_photo(bytes, 2 * size, ask.max_pixels)?;
    let decoded = start.elapsed();
    let (w, h) = photo.image.dimensions();
    let views = plan(w, h, photo.width.min(photo.height), size, ask.regions);
    let crops: Vec<RgbImage> = views.iter().map(|v| crop(&photo.image, *v)).collect();
    let bundle = &model.predictor.bundle;
    let outputs = model.predictor.outputs_of(&crops)?;
    let proba = bundle.classify_features(&outputs.features, None)?;
    let classes = model.classes();
    let rows: Vec<&[f32]> = proba.chunks(classes).collect();
    let produce: Vec<f32> = outputs
        .logits
        .chunks(outputs.logits.len() / views.len())
        .map(produce_share)
        .collect();
    let inferred = start.elapsed();

    let best = if views.len() == 1 { 0 } else { most_produce(&produce) };
    let ranked = bundle.rank(rows[best], ask.top.max(1));
    let predictions: Vec<Prediction> = ranked
        .iter()
        .map(|r| Prediction {
            label: r.label.clone(),
            name: display_name(catalog, &r.label, ask.lang),
            probability: r.probability,
        })
        .collect();
    let regions = regions(model, catalog, &views, &rows, &produce, (w, h), ask.lang);
    Ok(Identification {
        confident: predictions[0].probability >= model.threshold && (views.len() == 1 || produce[best] >= PRODUCE_MIN),
        threshold: model.threshold,
        fruit: catalog.get(&predictions[0].label).map(|f| FruitFacts::new(f, ask.lang)),
        predictions,
        regions,
        image: ImageSize {
            width: photo.width,
            height: photo.height,
        },
        views: views.len(),
        timings_ms: Timings {
            decode: ms(decoded),
            inference: ms(inferred - decoded),
            total: ms(start.elapsed()),
        },
        model: model.id.clone(),
    })
}

/// A class's name in `lang`, or its label when the catalogue lacks it.
fn display_name(catalog: &Catalog, label: &str, lang: Lang) -> String {
    catalog.get(label).map_or(label, |f| f.name(lang.code())).to_string()
}

/// ImageNet classes of fruits, vegetables and nuts (cabbage to pomegranate,
/// corn, acorn, rose hip, horse chestnut, ear of a cereal).
fn is_produce(class: usize) -> bool {
    matches!(class, 936..=957 | 987..=990 | 998)
}

/// The share of ImageNet probability on produce classes: how much a view
/// looks like a fruit at all, whatever our classifier thinks it is. Our
/// classifier only ever saw fruits on white, so its own confidence means
/// little on a view of a table or a wall; this does.
fn produce_share(logits: &[f32]) -> f32 {
    let p = fruits_common::softmax(logits);
    p.iter()
        .enumerate()
        .filter(|(i, _)| is_produce(*i))
        .map(|(_, p)| p)
        .sum()
}

/// The view most like produce (the first on ties: the whole photo).
fn most_produce(produce: &[f32]) -> usize {
    (0..produce.len()).fold(0, |best, i| if produce[i] > produce[best] { i } else { best })
}

/// Confident grid views grouped by kind; reported when there are two kinds or more.
fn regions(
    model: &Model,
    catalog: &Catalog,
    views: &[Option<View>],
    rows: &[&[f32]],
    produce: &[f32],
    (w, h): (u32, u32),
    lang: Lang,
) -> Vec<Region> {
    let bundle = &model.predictor.bundle;
    let mut found: Vec<(String, Region)> = Vec::new();
    for ((view, row), &produce) in views.iter().zip(rows).zip(produce) {
        let Some(v) = view else { continue };
        let best = &bundle.rank(row, 1)[0];
        if best.probability < model.threshold || produce < PRODUCE_MIN {
            continue;
        }
        let kind = catalog
            .get(&best.label)
            .map_or(best.label.clone(), |f| f.kind_en.clone());
        let bounds = v.bounds((w, h));
        match found.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, region)) => {
                region.bounds = union(region.bounds, bounds);
                if best.probability > region.probability {
                    region.label = best.label.clone();
                    region.name = display_name(catalog, &best.label, lang);
                    region.probability = best.probability;
                }
            }
            None => found.push((
                kind,
                Region {
                    bounds,
                    label: best.label.clone(),
                    name: display_name(catalog, &best.label, lang),
                    probability: best.probability,
                },
            )),
        }
    }
    if found.len() < 2 {
        return Vec::new();
    }
    let mut regions: Vec<Region> = found.into_iter().map(|(_, r)| r).collect();
    regions.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    regions
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_most_like_produce_wins_and_ties_keep_the_whole_photo() {
        assert_eq!(most_produce(&[0.2, 0.7, 0.5]), 1);
        assert_eq!(most_produce(&[0.4, 0.4]), 0);
        let mut logits = vec![0.0f32; 1000];
        logits[951] = 10.0; // lemon
        assert!(produce_share(&logits) > 0.9);
        logits[951] = 0.0;
        logits[999] = 10.0; // toilet paper
        assert!(produce_share(&logits) < 0.1);
    }
}
