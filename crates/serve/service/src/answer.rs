//! What the service answers, as it goes over the wire: the JSON types of
//! `POST /v1/identify` and of the catalogue, with their OpenAPI schemas.
//! Plain data: no decoding, no model, no HTTP status here.

use fruits_catalog::{Fruit, Lang};
use serde::Serialize;
use utoipa::ToSchema;

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

/// Every fruit the model knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct FruitList {
    pub fruits: Vec<FruitFacts>,
}
