//! From one uploaded photo to the fruits in it.
//!
//! The photo is decoded (large JPEGs at a reduced DCT scale), then looked at
//! through several square *views*: the whole picture, and for photos whose
//! views keep nearly the model's input side (a 348 px shop photo and up), a
//! grid of overlapping squares of 60 % of the shorter side (at most 9 views).
//! All views go through the backbone as one batch.
//!
//! The answer leads with the **kind** (`apple`, `tomato`). A bundle trained
//! with real photos has a kind head (fruits-bundle `kinds`): it learned whole
//! real photos and crops of them, so the mean of all views answers, and
//! "confident" is its probability against a threshold calibrated on real
//! photos. A bundle
//! trained on studio shots only sums its varieties' probabilities by kind;
//! as those classifiers never saw anything but fruits on white, their
//! probability is no guide to which view holds a fruit, and the view with the
//! largest share of ImageNet probability on produce classes
//! (`produce_share`) answers, as before kinds. Grid views confident about a
//! kind are grouped by kind; two kinds or more are reported as `regions`.
//!
//! Whatever the head, no answer (nor region) is confident when ImageNet's
//! head gives fruits and vegetables less than the *produce floor*: the
//! classifiers know nothing but fruits, so a face still gets one of them.

use std::borrow::Cow;
use std::time::Instant;

use fruits_bundle::Probabilities;
use fruits_catalog::{Catalog, Lang};
use fruits_preprocess::photo::decode_photo;
use image::RgbImage;

use crate::answer::{
    BoundingBox, FruitFacts, Identification, ImageSize, Kind, Prediction, RankedKind, Region, Timings,
};
use crate::model::Model;
use crate::views::{around, crop, plan, union, worth_a_closer_look, View, MAX_REGIONS, MAX_VIEWS};

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

/// Least produce share of the answering view (and of a region) for any
/// confident answer, whatever the classifiers say: they only know fruits, so
/// a face or a keyboard still gets one of them at high probability. ImageNet,
/// which knows a thousand things, gives at least this much to fruits,
/// vegetables and nuts for 99 % of real shop photos (grocery-store `train`:
/// 1 % quantile 0.025) and of held-out studio shots (0.015); most photos
/// without fruit get less (README, "Not a fruit").
const PRODUCE_FLOOR: f32 = 0.015;

/// What the client asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub lang: Lang,
    /// How many ranked predictions to return.
    pub top: usize,
    /// Whether to look at parts of the photo (and report `regions`).
    pub regions: bool,
    /// Whether the parts are where the bundle's localiser finds fruits (if
    /// it has one); otherwise a fixed grid.
    pub localise: bool,
    pub max_pixels: u64,
}

/// Kinds shown in `kinds`.
const TOP_KINDS: usize = 3;
/// Below this produce share (and not confident), the photo is said not to
/// look like a fruit at all.
const NOT_PRODUCE: f32 = 0.05;

/// Identifies the fruits in one encoded photo (CPU-bound: call off the async runtime).
pub fn identify(model: &Model, catalog: &Catalog, bytes: &[u8], ask: &Ask) -> Result<Identification, IdentifyError> {
    let start = Instant::now();
    let size = model.predictor.spec().size;
    let photo = decode_photo(bytes, 2 * size, ask.max_pixels)?;
    let decoded = start.elapsed();
    let (views, boxes) = looks(model, &photo, size, ask)?;
    // The whole photo is borrowed, not copied: a 50 MP strip is 150 MB.
    let crops: Vec<Cow<'_, RgbImage>> = views.iter().map(|v| crop(&photo.image, *v)).collect();
    let outputs = model.predictor.outputs_of(&crops)?;
    let probabilities = model.predictor.bundle.classify(&outputs.features)?;
    let seen = Seen::new(model, catalog, &probabilities, &outputs.logits, views.len());
    let inferred = start.elapsed();

    let best = seen.answering_view();
    let (answer_kinds, answer_classes) = seen.answer(best);
    let kinds = seen.ranked(&answer_kinds);
    let top_kind = kinds.first().map(|(k, p)| (k.clone(), *p));
    let confident = top_kind.as_ref().is_some_and(|(_, p)| *p >= model.threshold)
        && seen.produce[best] >= PRODUCE_FLOOR
        && (seen.has_kind_head || views.len() == 1 || seen.produce[best] >= PRODUCE_MIN);
    let not_a_fruit = !confident && seen.produce[0] < NOT_PRODUCE;
    let predictions: Vec<Prediction> = model
        .predictor
        .bundle
        .rank(&answer_classes, ask.top.max(1))
        .iter()
        .map(|r| Prediction {
            label: r.label.clone(),
            name: display_name(catalog, &r.label, ask.lang),
            probability: r.probability,
        })
        .collect();
    let message = message(catalog, &kinds, confident, not_a_fruit, ask.lang);
    Ok(Identification {
        kind: top_kind.and_then(|(id, p)| catalog.kind(&id).map(|k| Kind::new(k, p, ask.lang))),
        kinds: kinds
            .iter()
            .take(TOP_KINDS)
            .map(|(id, p)| RankedKind {
                id: id.clone(),
                name: kind_name(catalog, id, ask.lang),
                probability: *p,
            })
            .collect(),
        confident,
        not_a_fruit,
        message,
        threshold: model.threshold,
        fruit: catalog.get(&predictions[0].label).map(|f| FruitFacts::new(f, ask.lang)),
        predictions,
        regions: regions(model, catalog, &seen, &boxes, ask.lang),
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
        data: model.data.clone(),
    })
}

/// The part of the photo a view stands for in `regions`: a grid view's own
/// square, or the box of fruit cells the localiser found.
#[derive(Debug, Clone, Copy)]
enum Part {
    Grid(BoundingBox),
    Found(BoundingBox),
}

/// The views of a photo (`None`: the whole of it) and the part each stands for.
type Looks = (Vec<Option<View>>, Vec<Option<Part>>);

/// Least mean fruit score over a grid view for the localiser to keep it.
const GRID_FRUIT: f32 = 0.25;

/// The views to look through, and the part of the photo each stands for
/// in `regions` (`None`: the whole photo). Without a localiser, the whole
/// photo and the fixed grid. With one, the whole photo, a view around each
/// fruit it finds that a grid view would hold (up to [`MAX_REGIONS`]), and
/// the grid views that are mostly fruit (a photo full of fruit keeps them
/// all: the grid is how touching fruits of different kinds are told
/// apart, which fruit-or-not cells cannot do), at most [`MAX_VIEWS`] in all.
/// The whole photo's answer stays in the mean even when little of it is
/// fruit: leaving it out named 2 more of 162 photos in clutter but made
/// confident answers there right 89 % of the time instead of 92 %.
fn looks(model: &Model, photo: &fruits_preprocess::photo::Photo, size: u32, ask: &Ask) -> Result<Looks, IdentifyError> {
    let (w, h) = photo.image.dimensions();
    let closer = ask.regions && worth_a_closer_look(photo.width.min(photo.height), size);
    let map = match closer && ask.localise {
        true => model.predictor.score_map(&photo.image)?,
        false => None,
    };
    let grid = plan(w, h, photo.width.min(photo.height), size, ask.regions);
    let Some(map) = map else {
        let boxes = grid.iter().map(|v| v.map(|v| Part::Grid(v.bounds((w, h))))).collect();
        return Ok((grid, boxes));
    };
    let threshold = model.predictor.bundle.localiser.as_ref().map_or(0.5, |l| l.threshold);
    let grid_side = grid.iter().flatten().map(|v| v.side).next().unwrap_or(w.min(h)) as f32;
    let (mut views, mut boxes) = (vec![None], vec![None]);
    for region in map.regions(threshold, MAX_REGIONS) {
        let (x, y, width, height) = region.bounds(&map);
        let found = BoundingBox { x, y, width, height };
        if (width * w as f32).max(height * h as f32) <= grid_side {
            views.push(Some(around(found, (w, h))));
            boxes.push(Some(Part::Found(found)));
        }
    }
    let mut fruity: Vec<(f32, View)> = grid
        .iter()
        .flatten()
        .map(|v| {
            let b = v.bounds((w, h));
            (map.mean_within((b.x, b.y, b.width, b.height)), *v)
        })
        .filter(|(score, _)| *score >= GRID_FRUIT)
        .collect();
    fruity.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, v) in fruity.into_iter().take(MAX_VIEWS - views.len()) {
        views.push(Some(v));
        boxes.push(Some(Part::Grid(v.bounds((w, h)))));
    }
    Ok((views, boxes))
}

/// What the model made of each view: class and kind probabilities, and
/// how much it looks like produce to ImageNet.
struct Seen<'a> {
    classes: Vec<&'a [f32]>,
    /// Kind ids, indexing each row of `kinds`.
    kind_ids: Vec<String>,
    kinds: Vec<Vec<f32>>,
    produce: Vec<f32>,
    has_kind_head: bool,
}

impl<'a> Seen<'a> {
    fn new(model: &Model, catalog: &Catalog, p: &'a Probabilities, logits: &[f32], views: usize) -> Self {
        let bundle = &model.predictor.bundle;
        let classes: Vec<&[f32]> = p.classes.chunks(model.classes()).collect();
        let produce = logits.chunks(logits.len() / views).map(produce_share).collect();
        let (kind_ids, kinds) = match (&bundle.kind_head, &p.kinds) {
            (Some(head), Some(kinds)) => (
                head.kinds.clone(),
                kinds.chunks(head.kinds.len()).map(<[f32]>::to_vec).collect(),
            ),
            _ => summed_by_kind(catalog, &bundle.manifest.classes, &classes),
        };
        Self {
            classes,
            kind_ids,
            kinds,
            produce,
            has_kind_head: bundle.kind_head.is_some(),
        }
    }

    /// The view whose produce share counts (the whole photo for a kind
    /// head), and that answers without a kind head: the view most like produce.
    fn answering_view(&self) -> usize {
        if self.has_kind_head || self.produce.len() == 1 {
            0
        } else {
            most_produce(&self.produce)
        }
    }

    /// The kind and class probabilities that answer for the photo. A kind
    /// head learned whole photos *and crops of them* (its training views),
    /// so every view is a fair look at the photo: their mean answers
    /// (on `val`, top-1 86.4 % from the whole photo alone → README, "Real
    /// photos"). Without one, the `best` view answers. Both stay consistent:
    /// each view's kinds are sums of its classes, and so are the means.
    fn answer(&self, best: usize) -> (Vec<f32>, Vec<f32>) {
        if !self.has_kind_head {
            return (self.kinds[best].clone(), self.classes[best].to_vec());
        }
        (mean_rows(&self.kinds), mean_rows(&self.classes))
    }

    /// Kinds of one view, most probable first.
    fn ranked_kinds(&self, view: usize) -> Vec<(String, f32)> {
        self.ranked(&self.kinds[view])
    }

    /// Kinds of a row of kind probabilities, most probable first.
    fn ranked(&self, kinds: &[f32]) -> Vec<(String, f32)> {
        fruits_common::top_k(kinds, self.kind_ids.len())
            .into_iter()
            .map(|k| (self.kind_ids[k].clone(), kinds[k]))
            .collect()
    }
}

/// The element-wise mean of equally long rows.
fn mean_rows<R: AsRef<[f32]>>(rows: &[R]) -> Vec<f32> {
    let len = rows.first().map_or(0, |r| r.as_ref().len());
    let mut mean = vec![0.0f32; len];
    for row in rows {
        mean.iter_mut().zip(row.as_ref()).for_each(|(m, p)| *m += p);
    }
    let n = rows.len().max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

/// Kind probabilities as the sum of their classes' (for bundles without a
/// kind head); a class the catalogue lacks is its own kind.
fn summed_by_kind(catalog: &Catalog, labels: &[String], rows: &[&[f32]]) -> (Vec<String>, Vec<Vec<f32>>) {
    let kind_of: Vec<String> = labels
        .iter()
        .map(|l| catalog.get(l).map_or_else(|| l.clone(), |f| f.kind.clone()))
        .collect();
    let mut ids = kind_of.clone();
    ids.sort();
    ids.dedup();
    let index: Vec<usize> = kind_of.iter().map(|k| ids.binary_search(k).expect("listed")).collect();
    let sums = rows
        .iter()
        .map(|row| {
            let mut sum = vec![0.0f32; ids.len()];
            row.iter().zip(&index).for_each(|(p, &k)| sum[k] += p);
            sum
        })
        .collect();
    (ids, sums)
}

/// What to tell the person.
fn message(catalog: &Catalog, kinds: &[(String, f32)], confident: bool, not_a_fruit: bool, lang: Lang) -> String {
    let name = |i: usize| kinds.get(i).map(|(id, _)| kind_name(catalog, id, lang));
    match (confident, lang) {
        (true, _) => name(0).unwrap_or_default(),
        (false, Lang::En) if not_a_fruit => "Not sure: this does not look like a fruit we know".into(),
        (false, Lang::Fr) if not_a_fruit => "Pas sûr : cela ne ressemble à aucun fruit que nous connaissons".into(),
        (false, Lang::En) => format!(
            "Not sure: maybe {} or {}",
            name(0).unwrap_or_default(),
            name(1).unwrap_or_default()
        ),
        (false, Lang::Fr) => format!(
            "Pas sûr : peut-être {} ou {}",
            name(0).unwrap_or_default(),
            name(1).unwrap_or_default()
        ),
    }
}

/// A class's name in `lang`, or its label when the catalogue lacks it.
fn display_name(catalog: &Catalog, label: &str, lang: Lang) -> String {
    catalog.get(label).map_or(label, |f| f.name(lang.code())).to_string()
}

/// A kind's name in `lang`, or its id when the catalogue lacks it.
fn kind_name(catalog: &Catalog, id: &str, lang: Lang) -> String {
    catalog.kind(id).map_or(id, |k| k.name(lang.code())).to_string()
}

/// ImageNet classes of fruits, vegetables and nuts (cabbage to pomegranate,
/// corn, acorn, rose hip, horse chestnut, ear of a cereal).
fn is_produce(class: usize) -> bool {
    matches!(class, 936..=957 | 987..=990 | 998)
}

/// The share of ImageNet probability on produce classes: how much a view
/// looks like a fruit at all, whatever our classifiers think it is.
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

/// Views of parts (`boxes`: the part each view stands for) confident about
/// a kind, grouped by kind; reported when there are two kinds or more. Each
/// region names its most probable variety of that kind in its most
/// confident view.
/// A kind's box is the union of its views' parts, the localiser's boxes
/// alone when it has any (they are tighter than a grid view).
fn regions(model: &Model, catalog: &Catalog, seen: &Seen, parts: &[Option<Part>], lang: Lang) -> Vec<Region> {
    let bundle = &model.predictor.bundle;
    let mut found: Vec<(Region, bool)> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let Some(part) = *part else { continue };
        let Some((kind, probability)) = seen.ranked_kinds(i).into_iter().next() else {
            continue;
        };
        if probability < model.threshold
            || seen.produce[i] < PRODUCE_FLOOR
            || (!seen.has_kind_head && seen.produce[i] < PRODUCE_MIN)
        {
            continue;
        }
        let label = bundle.rank(seen.classes[i], 1)[0].label.clone();
        let (bounds, tight) = match part {
            Part::Grid(b) => (b, false),
            Part::Found(b) => (b, true),
        };
        match found.iter_mut().find(|(r, _)| r.kind == kind) {
            Some((region, was_tight)) => {
                region.bounds = match (tight, *was_tight) {
                    (true, false) => bounds,
                    (false, true) => region.bounds,
                    _ => union(region.bounds, bounds),
                };
                *was_tight |= tight;
                if probability > region.probability {
                    region.name = display_name(catalog, &label, lang);
                    region.label = label;
                    region.probability = probability;
                }
            }
            None => found.push((
                Region {
                    bounds,
                    kind,
                    name: display_name(catalog, &label, lang),
                    label,
                    probability,
                },
                tight,
            )),
        }
    }
    if found.len() < 2 {
        return Vec::new();
    }
    let mut found: Vec<Region> = found.into_iter().map(|(r, _)| r).collect();
    found.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    found
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
