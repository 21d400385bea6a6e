//! What the service answers, as it goes over the wire: the JSON types of
//! `POST /v1/identify` and of the catalogue, with their OpenAPI schemas.
//! Plain data: no decoding, no model, no HTTP status here.

use fruits_catalog::{Fruit, KindFacts, Lang, Nutrition};
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

impl From<&Nutrition> for Per100g {
    fn from(n: &Nutrition) -> Self {
        Self {
            kcal: n.kcal,
            carbohydrates_g: n.carbohydrates_g,
            fibre_g: n.fibre_g,
            vitamin_c_mg: n.vitamin_c_mg,
        }
    }
}

impl FruitFacts {
    pub fn new(fruit: &Fruit, lang: Lang) -> Self {
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
            per_100g: Per100g::from(&fruit.per_100g),
        }
    }
}

/// The kind of fruit in the photo (`apple`, `tomato`): what the app says
/// first, with its facts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Kind {
    /// The catalogue's kind id.
    #[schema(example = "apple")]
    pub id: String,
    /// In the requested language.
    #[schema(example = "Apple")]
    pub name: String,
    pub names: Names,
    pub probability: f32,
    pub latin: String,
    pub family: String,
    pub description: String,
    pub season: String,
    pub per_100g: Per100g,
}

/// A name in every language the app speaks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Names {
    pub en: String,
    pub fr: String,
}

impl Kind {
    pub fn new(kind: &KindFacts, probability: f32, lang: Lang) -> Self {
        Self {
            id: kind.id.clone(),
            name: kind.name(lang.code()).to_string(),
            names: Names {
                en: kind.name_en.clone(),
                fr: kind.name_fr.clone(),
            },
            probability,
            latin: kind.latin.clone(),
            family: kind.family.clone(),
            description: kind.description(lang.code()).to_string(),
            season: kind.season(lang.code()).to_string(),
            per_100g: Per100g::from(&kind.per_100g),
        }
    }
}

/// One ranked kind.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RankedKind {
    #[schema(example = "apple")]
    pub id: String,
    pub name: String,
    pub probability: f32,
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
    /// The kind's id, e.g. `apple`.
    pub kind: String,
    /// Its most probable variety (class).
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
    /// The most probable kind of fruit, with its facts: the answer to show first.
    pub kind: Option<Kind>,
    /// The most probable kinds, first first (3 at most).
    pub kinds: Vec<RankedKind>,
    /// Most probable varieties (classes) first, consistent with `kind`.
    pub predictions: Vec<Prediction>,
    /// False when the top kind's probability is under `threshold`, or when
    /// the photo hardly looks like produce at all: say "not sure".
    pub confident: bool,
    /// True when the photo does not look like a fruit or vegetable at all
    /// (a room, a face, a keyboard): never confident, and `message` says so.
    pub not_a_fruit: bool,
    /// What to tell the person, in the requested language: the kind when
    /// confident, else "not sure" (and why).
    pub message: String,
    /// The model's calibrated "not sure" threshold.
    pub threshold: f32,
    /// Facts about the top variety.
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
    /// The sha256 that names the data the model learned from (its bundle's
    /// lineage); empty for a bundle made before lineage.
    pub data: String,
}

/// Every fruit the model knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct FruitList {
    pub fruits: Vec<FruitFacts>,
}
