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
//! probability on fruit and vegetable classes ([`produce_share`]). Grid views
//! that look like produce and are confident are grouped by kind of fruit (two
//! apple varieties seen on one apple are one apple); two or more groups are
//! reported as `regions`.

use std::time::Instant;

use fruits_catalog::{Catalog, Fruit};
use fruits_preprocess::photo::decode_photo;
use image::RgbImage;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::model::Model;

/// Side of a grid view, as a share of the photo's shorter side.
const GRID_SIDE: f32 = 0.6;
/// Distance between grid views, as a share of their side.
const GRID_STEP: f32 = 0.75;
/// Least produce share (see [`produce_share`]) of a view counted as showing a fruit.
const PRODUCE_MIN: f32 = 0.2;

/// A display language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Fr,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().get(..2)? {
            "en" => Some(Self::En),
            "fr" => Some(Self::Fr),
            _ => None,
        }
    }

    /// The first supported language of an `Accept-Language` header.
    pub fn from_accept_language(header: &str) -> Option<Self> {
        header.split(',').find_map(|part| Self::parse(part.split(';').next()?))
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Fr => "fr",
        }
    }
}

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

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Prediction {
    /// The class: the training folder's name.
    #[schema(example = "Apple Braeburn 1")]
    pub label: String,
    /// Display name in the requested language.
    #[schema(example = "Braeburn apple")]
    pub name: String,
    pub probability: f32,
}

/// Facts about a fruit, names in the requested language.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FruitFacts {
    pub label: String,
    pub name: String,
    /// The species or crop, e.g. "Apple".
    pub kind: String,
    pub latin: String,
    pub family: String,
    /// One line.
    pub description: String,
    pub season: String,
    pub per_100g: Per100g,
}

/// Typical values per 100 g of the raw edible part.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Per100g {
    pub kcal: f64,
    pub carbohydrates_g: f64,
    pub fibre_g: f64,
    pub vitamin_c_mg: f64,
}

impl FruitFacts {
    pub fn new(fruit: &Fruit, lang: Lang) -> Self {
        let n = &fruit.per_100g;
        Self {
            label: fruit.label.clone(),
            name: fruit.name(lang.code()).to_string(),
            kind: match lang {
                Lang::En => fruit.kind_en.clone(),
                Lang::Fr => fruit.kind_fr.clone(),
            },
            latin: fruit.latin.clone(),
            family: fruit.family.clone(),
            description: fruit.description(lang.code()).to_string(),
            season: fruit.season(lang.code()).to_string(),
            per_100g: Per100g {
                kcal: n.kcal,
                carbohydrates_g: n.carbohydrates_g,
                fibre_g: n.fibre_g,
                vitamin_c_mg: n.vitamin_c_mg,
            },
        }
    }
}

/// A part of the photo, as shares of its width and height (oriented).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct BoundingBox {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

/// One of several distinct fruits found in a photo.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Region {
    #[serde(rename = "box")]
    pub bounds: BoundingBox,
    pub label: String,
    pub name: String,
    pub probability: f32,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

/// Milliseconds spent.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Timings {
    pub decode: f64,
    pub inference: f64,
    pub total: f64,
}

/// The answer to one photo.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identification {
    /// Most probable classes first.
    pub predictions: Vec<Prediction>,
    /// False when the top probability is under `threshold`: say "not sure".
    pub confident: bool,
    /// The model's calibrated "not sure" threshold.
    pub threshold: f32,
    /// Facts about the top class.
    pub fruit: Option<FruitFacts>,
    /// Distinct fruits found in different parts of the photo; empty unless two or more.
    pub regions: Vec<Region>,
    /// The uploaded image's size, oriented.
    pub image: ImageSize,
    /// How many views of the photo the model looked at.
    pub views: usize,
    pub timings_ms: Timings,
    /// Identifies the model that answered (changes on reload).
    pub model: String,
}

/// A square view in decoded-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct View {
    x: u32,
    y: u32,
    side: u32,
}

/// The whole photo, then a grid for photos of at least twice `size` (its
/// original shorter side `original_shorter`).
fn plan(width: u32, height: u32, original_shorter: u32, size: u32, regions: bool) -> Vec<Option<View>> {
    let mut views = vec![None];
    if !regions || original_shorter < 2 * size {
        return views;
    }
    let side = (width.min(height) as f32 * GRID_SIDE).round() as u32;
    let step = side as f32 * GRID_STEP;
    for y in positions(height, side, step) {
        for x in positions(width, side, step) {
            views.push(Some(View { x, y, side }));
        }
    }
    views
}

/// Evenly spread starts of `side`-long windows covering `0..length`, at most `step` apart.
fn positions(length: u32, side: u32, step: f32) -> Vec<u32> {
    let room = length.saturating_sub(side);
    let n = (room as f32 / step).ceil() as u32 + 1;
    (0..n).map(|i| if n == 1 { 0 } else { room * i / (n - 1) }).collect()
}

/// Identifies the fruits in one encoded photo (CPU-bound: call off the async runtime).
pub fn identify(model: &Model, catalog: &Catalog, bytes: &[u8], ask: &Ask) -> Result<Identification, ApiError> {
    let start = Instant::now();
    let size = model.predictor.spec().size;
    let photo = decode_photo(bytes, 2 * size, ask.max_pixels)?;
    let decoded = start.elapsed();
    let (w, h) = photo.image.dimensions();
    let views = plan(w, h, photo.width.min(photo.height), size, ask.regions);
    let crops: Vec<RgbImage> = views.iter().map(|v| crop(&photo.image, *v)).collect();
    let bundle = &model.predictor.bundle;
    let internal = |e: fruits_bundle::Error| ApiError::internal(e.to_string());
    let outputs = model.predictor.outputs_of(&crops).map_err(internal)?;
    let proba = bundle.classify_features(&outputs.features, None).map_err(internal)?;
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

fn crop(image: &RgbImage, view: Option<View>) -> RgbImage {
    match view {
        None => image.clone(),
        Some(v) => image::imageops::crop_imm(image, v.x, v.y, v.side, v.side).to_image(),
    }
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
    let p = fruits_backbone::imagenet::softmax(logits);
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
        let bounds = BoundingBox {
            x: v.x as f32 / w as f32,
            y: v.y as f32 / h as f32,
            width: v.side as f32 / w as f32,
            height: v.side as f32 / h as f32,
        };
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

fn union(a: BoundingBox, b: BoundingBox) -> BoundingBox {
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    BoundingBox {
        x,
        y,
        width: (a.x + a.width).max(b.x + b.width) - x,
        height: (a.y + a.height).max(b.y + b.height) - y,
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_images_get_one_view_and_phone_photos_a_grid() {
        assert_eq!(plan(100, 100, 100, 224, true), vec![None]);
        let views = plan(1008, 756, 3024, 224, true);
        // 4:3 landscape: three columns, two rows, plus the whole photo.
        assert_eq!(views.len(), 7);
        let side = (756.0f32 * GRID_SIDE).round() as u32;
        for v in views.iter().flatten() {
            assert_eq!(v.side, side);
            assert!(v.x + v.side <= 1008 && v.y + v.side <= 756, "{v:?} inside");
        }
        let last = views.last().unwrap().unwrap();
        assert_eq!(
            (last.x + last.side, last.y + last.side),
            (1008, 756),
            "the grid reaches the far corner"
        );
        assert_eq!(plan(1008, 756, 3024, 224, false).len(), 1);
    }

    #[test]
    fn languages_come_from_the_query_or_accept_language() {
        assert_eq!(Lang::parse("FR"), Some(Lang::Fr));
        assert_eq!(Lang::parse("de"), None);
        assert_eq!(Lang::from_accept_language("de-DE,fr-CA;q=0.8,en;q=0.5"), Some(Lang::Fr));
        assert_eq!(Lang::from_accept_language("de"), None);
    }

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
