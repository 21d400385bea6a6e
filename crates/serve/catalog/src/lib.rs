//! What the app tells people about a fruit: for every Fruits-360 class, names,
//! a one-line description and the season in English and French, Latin name,
//! family, and energy, carbohydrates, fibre and vitamin C per 100 g.
//!
//! The facts live in `data/fruits.toml`, written by us from public reference
//! knowledge and compiled into the binary. A class maps to a *kind* (a species
//! or crop) that holds the shared facts; the class gives its own display
//! names and, for a notable variety, its own description.
//!
//! Must not depend on any other crate of the workspace: it is data, shared
//! by the service and whoever needs a class's kind.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const DATA: &str = include_str!("../data/fruits.toml");

/// A display language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fruits.toml: {0}")]
    Parse(String),
    #[error("class '{class}' names kind '{kind}', which is not defined")]
    UnknownKind { class: String, kind: String },
    #[error("class '{0}' has a description without its French translation (description_fr)")]
    Untranslated(String),
}

/// Per 100 g of the raw edible part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nutrition {
    pub kcal: f64,
    pub carbohydrates_g: f64,
    pub fibre_g: f64,
    pub vitamin_c_mg: f64,
}

/// The facts shown for one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fruit {
    /// The class folder name (the classifier's label).
    pub label: String,
    pub name_en: String,
    pub name_fr: String,
    /// The kind's id (`apple`, `bell_pepper_ripe`): what real-photo folders
    /// are named after, and the coarser answer a photo can always get.
    pub kind: String,
    /// The species or crop in general ("Apple", "Pomme").
    pub kind_en: String,
    pub kind_fr: String,
    pub latin: String,
    pub family: String,
    pub description_en: String,
    pub description_fr: String,
    pub season_en: String,
    pub season_fr: String,
    pub per_100g: Nutrition,
}

impl Fruit {
    /// The one-line description in `lang` (`fr`, else English).
    pub fn description(&self, lang: &str) -> &str {
        in_lang(lang, &self.description_en, &self.description_fr)
    }

    /// The main harvest season in `lang` (`fr`, else English).
    pub fn season(&self, lang: &str) -> &str {
        in_lang(lang, &self.season_en, &self.season_fr)
    }

    /// The display name in `lang` (`fr`, else English).
    pub fn name(&self, lang: &str) -> &str {
        in_lang(lang, &self.name_en, &self.name_fr)
    }
}

/// The facts of one kind (a species or crop): what the app answers first
/// for a real photo, before any variety.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindFacts {
    /// The kind's id (`apple`, `bell_pepper_ripe`).
    pub id: String,
    pub name_en: String,
    pub name_fr: String,
    pub latin: String,
    pub family: String,
    pub description_en: String,
    pub description_fr: String,
    pub season_en: String,
    pub season_fr: String,
    pub per_100g: Nutrition,
}

impl KindFacts {
    /// The display name in `lang` (`fr`, else English).
    pub fn name(&self, lang: &str) -> &str {
        in_lang(lang, &self.name_en, &self.name_fr)
    }

    /// The one-line description in `lang` (`fr`, else English).
    pub fn description(&self, lang: &str) -> &str {
        in_lang(lang, &self.description_en, &self.description_fr)
    }

    /// The main harvest season in `lang` (`fr`, else English).
    pub fn season(&self, lang: &str) -> &str {
        in_lang(lang, &self.season_en, &self.season_fr)
    }
}

/// `fr` when `lang` is French, else `en`: one rule for every text of the catalogue.
fn in_lang<'a>(lang: &str, en: &'a str, fr: &'a str) -> &'a str {
    if lang.starts_with("fr") {
        fr
    } else {
        en
    }
}

#[derive(Debug, Deserialize)]
struct Kind {
    en: String,
    fr: String,
    latin: String,
    family: String,
    description: String,
    description_fr: String,
    season: String,
    season_fr: String,
    #[serde(flatten)]
    nutrition: Nutrition,
}

impl Kind {
    fn facts(&self, id: &str) -> KindFacts {
        KindFacts {
            id: id.into(),
            name_en: self.en.clone(),
            name_fr: self.fr.clone(),
            latin: self.latin.clone(),
            family: self.family.clone(),
            description_en: self.description.clone(),
            description_fr: self.description_fr.clone(),
            season_en: self.season.clone(),
            season_fr: self.season_fr.clone(),
            per_100g: self.nutrition.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Class {
    kind: String,
    en: String,
    fr: String,
    description: Option<String>,
    description_fr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct File {
    kinds: BTreeMap<String, Kind>,
    classes: BTreeMap<String, Class>,
}

/// Every class's facts, by label.
#[derive(Debug, Clone)]
pub struct Catalog {
    fruits: BTreeMap<String, Fruit>,
    /// The kinds some class uses, by id.
    kinds: BTreeMap<String, KindFacts>,
    /// Kinds no class uses (a data-file mistake the tests catch).
    pub unused_kinds: Vec<String>,
}

impl Catalog {
    /// The catalogue compiled into this binary.
    pub fn embedded() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| Catalog::parse(DATA).expect("the embedded fruits.toml is valid (tested)"))
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let file: File = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        let mut fruits = BTreeMap::new();
        for (label, class) in &file.classes {
            let kind = file.kinds.get(&class.kind).ok_or_else(|| Error::UnknownKind {
                class: label.clone(),
                kind: class.kind.clone(),
            })?;
            let fruit = Fruit {
                label: label.clone(),
                name_en: class.en.clone(),
                name_fr: class.fr.clone(),
                kind: class.kind.clone(),
                kind_en: kind.en.clone(),
                kind_fr: kind.fr.clone(),
                latin: kind.latin.clone(),
                family: kind.family.clone(),
                description_en: class.description.clone().unwrap_or_else(|| kind.description.clone()),
                description_fr: match (&class.description, &class.description_fr) {
                    (None, None) => kind.description_fr.clone(),
                    (Some(_), Some(fr)) => fr.clone(),
                    _ => return Err(Error::Untranslated(label.clone())),
                },
                season_en: kind.season.clone(),
                season_fr: kind.season_fr.clone(),
                per_100g: kind.nutrition.clone(),
            };
            fruits.insert(label.clone(), fruit);
        }
        let (used, unused): (Vec<_>, Vec<_>) = file
            .kinds
            .iter()
            .partition(|(id, _)| file.classes.values().any(|c| &c.kind == *id));
        let kinds = used.into_iter().map(|(id, k)| (id.clone(), k.facts(id))).collect();
        let unused_kinds = unused.into_iter().map(|(id, _)| id.clone()).collect();
        Ok(Self {
            fruits,
            kinds,
            unused_kinds,
        })
    }

    /// Whether `id` is a kind some class belongs to.
    pub fn is_kind(&self, id: &str) -> bool {
        self.kinds.contains_key(id)
    }

    /// The facts of the kind `id`, if some class belongs to it.
    pub fn kind(&self, id: &str) -> Option<&KindFacts> {
        self.kinds.get(id)
    }

    /// Every kind some class belongs to, sorted by id.
    pub fn kinds(&self) -> impl Iterator<Item = &KindFacts> {
        self.kinds.values()
    }

    pub fn get(&self, label: &str) -> Option<&Fruit> {
        self.fruits.get(label)
    }

    /// Every fruit, sorted by label.
    pub fn all(&self) -> impl Iterator<Item = &Fruit> {
        self.fruits.values()
    }

    pub fn len(&self) -> usize {
        self.fruits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fruits.is_empty()
    }
}

#[cfg(test)]
mod tests;
