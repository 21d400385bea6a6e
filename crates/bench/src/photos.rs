//! `fruits bench photos`: how well a model names the **kind** of fruit in
//! real photos (`DIR/<kind>/<photo>`, folders named by catalogue kind ids,
//! e.g. `../shared/real-photos/grocery-store/val`), one photo at a time
//! through the service's own `identify`, as the app would answer.
//!
//! The kinds are the answer's own `kinds` (the kind head's, or the varieties'
//! probabilities summed by kind for a model without one). Reported: top-1 and top-3 kind accuracy,
//! per-kind recall, the most confused pairs, the share of answers marked
//! confident and how often those are right, and the latency of one photo.
//!
//! With `not_fruit` (a folder of photos without any fruit: a face, a room,
//! grass), also how many of those get a confident fruit name (false alarms)
//! and how many are told "this does not look like a fruit we know". With
//! `pairs`, photos of two fruits made of two of them ([`crate::pairs`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fruits_catalog::{Catalog, Lang};
use fruits_serve::identify::{identify, Ask, IdentifyError};
use fruits_serve::{Limits, Model, ModelSource};
use serde::Serialize;

use crate::labelled::{label_folders, list_images, list_labelled, read, spread};
use crate::pairs::{PairAnswer, PairsReport};
use crate::Error;

#[derive(Debug, Clone)]
pub struct PhotosBenchOptions {
    /// `DIR/<kind>/<photo>`.
    pub input: PathBuf,
    /// At most this many photos (spread over the kinds); all when `None`.
    pub limit: Option<usize>,
    /// `DIR/<photo>`: photos without fruit.
    pub not_fruit: Option<PathBuf>,
    /// Photos of two fruits to make of the photos (0: none).
    pub pairs: usize,
    /// Photos in clutter to make of the photos and the `not_fruit` ones
    /// ([`crate::pairs::in_clutter`]; 0: none).
    pub clutter: usize,
    /// Look through the fixed grid even when the model has a localiser
    /// (the reference the localiser is measured against).
    pub grid: bool,
}

/// What the model said of photos without fruit.
#[derive(Debug, Clone, Serialize)]
pub struct NotFruitReport {
    pub photos: usize,
    /// Share named as a fruit with confidence: false alarms.
    pub confident: f64,
    /// Share told "this does not look like a fruit we know".
    pub said_not_a_fruit: f64,
    /// The photos named with confidence, and the kind they were given.
    pub false_alarms: Vec<(String, String)>,
}

/// One kind's share of right answers.
#[derive(Debug, Clone, Serialize)]
pub struct KindRecall {
    pub kind: String,
    pub photos: usize,
    pub recall: f64,
}

/// A true kind answered as another, and how often.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub truth: String,
    pub answered: String,
    pub photos: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhotosReport {
    pub photos: usize,
    /// Photos the service refused (not decodable): counted as wrong.
    pub refused: usize,
    pub top1: f64,
    pub top3: f64,
    /// Share of answers marked confident.
    pub confident: f64,
    /// Share of the confident answers whose kind is right.
    pub right_when_confident: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_kind: Vec<KindRecall>,
    /// The most frequent wrong answers, most frequent first (10 at most).
    pub confused: Vec<Confusion>,
    pub not_fruit: Option<NotFruitReport>,
    pub pairs: Option<PairsReport>,
    /// The kinds of real photos shrunk onto photos without fruit.
    pub clutter: Option<ClutterReport>,
}

/// How well the kind of a fruit photo shrunk into clutter is named.
#[derive(Debug, Clone, Serialize)]
pub struct ClutterReport {
    pub photos: usize,
    pub top1: f64,
    pub top3: f64,
    pub confident: f64,
    pub right_when_confident: f64,
}

/// One photo's outcome.
struct Answer {
    truth: String,
    /// Kinds, most probable first (empty when refused).
    ranked: Vec<String>,
    confident: bool,
    not_a_fruit: bool,
    ms: f64,
}

pub async fn run(source: ModelSource, opts: &PhotosBenchOptions) -> Result<PhotosReport, Error> {
    let catalog = Catalog::embedded();
    let photos = list_kind_photos(&opts.input, catalog, opts.limit)?;
    let not_fruit = opts.not_fruit.as_deref().map(list_images).transpose()?;
    let model = Model::load(&source).await.map_err(fruits_serve::Error::Model)?;
    let (pairs, ask, clutter) = (opts.pairs, ask(!opts.grid), opts.clutter);
    let rooms = not_fruit.unwrap_or_default();
    let (answers, not_fruit, pairs, cluttered) = tokio::task::spawn_blocking(move || {
        let answers = photos
            .iter()
            .map(|(kind, path)| answer(&model, catalog, kind, path, &ask))
            .collect::<Result<Vec<_>, Error>>()?;
        let not_fruit = rooms
            .iter()
            .map(|path| answer(&model, catalog, "", path, &ask).map(|a| (path.clone(), a)))
            .collect::<Result<Vec<_>, Error>>()?;
        let pairs = crate::pairs::pick(&photos.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), pairs)
            .into_iter()
            .map(|(a, b)| pair_answer(&model, catalog, (&photos[a], &photos[b]), &ask))
            .collect::<Result<Vec<_>, Error>>()?;
        // Photos spread over the kinds, each on the next room.
        let n = if rooms.is_empty() { 0 } else { clutter.min(photos.len()) };
        let cluttered = (0..n)
            .map(|i| {
                let (kind, path) = &photos[i * photos.len() / n];
                cluttered_answer(&model, catalog, (kind, path), &rooms[i % rooms.len()], i, &ask)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok::<_, Error>((answers, not_fruit, pairs, cluttered))
    })
    .await
    .map_err(|e| Error::Setup(format!("the benchmark thread died: {e}")))??;
    let mut r = report(&answers);
    r.not_fruit = opts.not_fruit.is_some().then(|| not_fruit_report(&not_fruit));
    // None when asked for none, or when the photos hold a single kind.
    r.pairs = (!pairs.is_empty()).then(|| crate::pairs::report(&pairs));
    r.clutter = (!cluttered.is_empty()).then(|| clutter_report(&cluttered));
    Ok(r)
}

/// What every photo is asked, as the app asks by default (`localise`:
/// unless the grid is the reference).
fn ask(localise: bool) -> Ask {
    Ask {
        lang: Lang::En,
        top: 5,
        regions: true,
        localise,
        max_pixels: Limits::default().pixels,
    }
}

/// Two photos side by side, through `identify` with regions.
fn pair_answer(
    model: &Model,
    catalog: &Catalog,
    ((kind_a, a), (kind_b, b)): (&(String, PathBuf), &(String, PathBuf)),
    ask: &Ask,
) -> Result<PairAnswer, Error> {
    let decode =
        |p: &Path| fruits_preprocess::decode(&read(p)?).map_err(|e| Error::Setup(format!("{}: {e}", p.display())));
    let photo = crate::scene::jpeg(&crate::pairs::side_by_side(&decode(a)?, &decode(b)?), 90);
    let answer = identify(model, catalog, &photo, ask).map_err(|e| Error::Setup(e.to_string()))?;
    Ok(PairAnswer {
        kinds: (kind_a.clone(), kind_b.clone()),
        ranked: answer.kinds.into_iter().map(|k| k.id).collect(),
        regions: answer.regions.into_iter().map(|r| r.kind).collect(),
    })
}

/// One photo shrunk into a photo without fruit, through `identify`.
fn cluttered_answer(
    model: &Model,
    catalog: &Catalog,
    (kind, path): (&String, &PathBuf),
    room: &Path,
    seed: usize,
    ask: &Ask,
) -> Result<Answer, Error> {
    let decode =
        |p: &Path| fruits_preprocess::decode(&read(p)?).map_err(|e| Error::Setup(format!("{}: {e}", p.display())));
    let photo = crate::scene::jpeg(
        &crate::pairs::in_clutter(&decode(path)?, &decode(room)?, seed as u64),
        90,
    );
    let start = Instant::now();
    let answer = identify(model, catalog, &photo, ask).map_err(|e| Error::Setup(e.to_string()))?;
    Ok(Answer {
        truth: kind.clone(),
        ranked: answer.kinds.into_iter().map(|k| k.id).collect(),
        confident: answer.confident,
        not_a_fruit: answer.not_a_fruit,
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

fn clutter_report(answers: &[Answer]) -> ClutterReport {
    let r = report(answers);
    ClutterReport {
        photos: r.photos,
        top1: r.top1,
        top3: r.top3,
        confident: r.confident,
        right_when_confident: r.right_when_confident,
    }
}

fn not_fruit_report(answers: &[(PathBuf, Answer)]) -> NotFruitReport {
    let n = answers.len().max(1) as f64;
    let false_alarms: Vec<(String, String)> = answers
        .iter()
        .filter(|(_, a)| a.confident)
        .map(|(path, a)| {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (name, a.ranked.first().cloned().unwrap_or_default())
        })
        .collect();
    NotFruitReport {
        photos: answers.len(),
        confident: false_alarms.len() as f64 / n,
        said_not_a_fruit: answers.iter().filter(|(_, a)| a.not_a_fruit).count() as f64 / n,
        false_alarms,
    }
}

/// Every photo under `dir/<kind>/`, kinds checked against the catalogue
/// before any work; spread over the kinds when limited.
fn list_kind_photos(dir: &Path, catalog: &Catalog, limit: Option<usize>) -> Result<Vec<(String, PathBuf)>, Error> {
    for (kind, folder) in label_folders(dir)? {
        if !catalog.is_kind(&kind) {
            return Err(Error::Setup(format!(
                "{}: '{kind}' is not a kind of the catalogue (folders must be kind ids such as apple, banana, bell_pepper_ripe)",
                folder.display()
            )));
        }
    }
    let photos = list_labelled(dir)?;
    Ok(match limit {
        Some(n) => spread(&photos, n).into_iter().cloned().collect(),
        None => photos,
    })
}

fn answer(model: &Model, catalog: &Catalog, truth: &str, path: &Path, ask: &Ask) -> Result<Answer, Error> {
    let bytes = read(path)?;
    let start = Instant::now();
    let result = identify(model, catalog, &bytes, ask);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let (ranked, confident, not_a_fruit) = match result {
        Ok(answer) => (
            answer.kinds.into_iter().map(|k| k.id).collect(),
            answer.confident,
            answer.not_a_fruit,
        ),
        Err(IdentifyError::Photo(_)) => (Vec::new(), false, false),
        Err(e @ IdentifyError::Model(_)) => return Err(Error::Setup(e.to_string())),
    };
    Ok(Answer {
        truth: truth.to_string(),
        ranked,
        confident,
        not_a_fruit,
        ms,
    })
}

fn report(answers: &[Answer]) -> PhotosReport {
    let n = answers.len().max(1) as f64;
    let right_at = |a: &Answer, k: usize| a.ranked.iter().take(k).any(|r| *r == a.truth);
    let confident: Vec<&Answer> = answers.iter().filter(|a| a.confident).collect();
    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut confused: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for a in answers {
        let entry = per_kind.entry(&a.truth).or_default();
        entry.0 += 1;
        match a.ranked.first() {
            Some(top) if *top == a.truth => entry.1 += 1,
            Some(top) => *confused.entry((&a.truth, top)).or_default() += 1,
            None => {}
        }
    }
    let mut confused: Vec<Confusion> = confused
        .into_iter()
        .map(|((truth, answered), photos)| Confusion {
            truth: truth.into(),
            answered: answered.into(),
            photos,
        })
        .collect();
    confused.sort_by(|a, b| b.photos.cmp(&a.photos).then(a.truth.cmp(&b.truth)));
    confused.truncate(10);
    let mut ms: Vec<f64> = answers.iter().map(|a| a.ms).collect();
    ms.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    PhotosReport {
        photos: answers.len(),
        refused: answers.iter().filter(|a| a.ranked.is_empty()).count(),
        top1: answers.iter().filter(|a| right_at(a, 1)).count() as f64 / n,
        top3: answers.iter().filter(|a| right_at(a, 3)).count() as f64 / n,
        confident: confident.len() as f64 / n,
        right_when_confident: confident.iter().filter(|a| right_at(a, 1)).count() as f64
            / confident.len().max(1) as f64,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        per_kind: per_kind
            .into_iter()
            .map(|(kind, (photos, right))| KindRecall {
                kind: kind.into(),
                photos,
                recall: right as f64 / photos as f64,
            })
            .collect(),
        confused,
        not_fruit: None,
        pairs: None,
        clutter: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(truth: &str, ranked: &[&str], confident: bool, ms: f64) -> Answer {
        Answer {
            truth: truth.into(),
            ranked: ranked.iter().map(|s| s.to_string()).collect(),
            confident,
            not_a_fruit: false,
            ms,
        }
    }

    #[test]
    fn photos_without_fruit_count_false_alarms_and_not_a_fruit_answers() {
        let mut said = answer("", &["tomato"], false, 1.0);
        said.not_a_fruit = true;
        let answers = [
            (PathBuf::from("d/face.png"), answer("", &["apple", "pear"], true, 1.0)),
            (PathBuf::from("d/room.jpg"), answer("", &["lemon"], false, 1.0)),
            (PathBuf::from("d/grass.png"), said),
            (PathBuf::from("d/cat.png"), answer("", &[], false, 1.0)),
        ];
        let r = not_fruit_report(&answers);
        assert_eq!((r.photos, r.confident, r.said_not_a_fruit), (4, 0.25, 0.25));
        assert_eq!(r.false_alarms, [("face.png".to_string(), "apple".to_string())]);
    }

    #[test]
    fn the_report_counts_kinds_ranks_and_confident_answers() {
        let answers = [
            answer("apple", &["apple", "pear"], true, 10.0),
            answer("apple", &["pear", "apple"], true, 20.0),
            answer("lemon", &["lime", "orange", "lemon"], false, 30.0),
            answer("lemon", &[], false, 40.0),
        ];
        let r = report(&answers);
        assert_eq!((r.photos, r.refused), (4, 1));
        assert_eq!((r.top1, r.top3), (0.25, 0.75));
        assert_eq!((r.confident, r.right_when_confident), (0.5, 0.5));
        assert_eq!((r.p50_ms, r.p99_ms), (30.0, 40.0));
        let apple = r.per_kind.iter().find(|k| k.kind == "apple").unwrap();
        assert_eq!((apple.photos, apple.recall), (2, 0.5));
        assert_eq!(r.confused.len(), 2);
        assert!(r.confused.iter().all(|c| c.photos == 1));
    }

    #[test]
    fn folders_that_are_not_kinds_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("apple")).unwrap();
        std::fs::write(dir.path().join("apple/a.jpg"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("Apple Braeburn 1")).unwrap();
        let err = list_kind_photos(dir.path(), Catalog::embedded(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'Apple Braeburn 1' is not a kind"), "{err}");
        std::fs::remove_dir(dir.path().join("Apple Braeburn 1")).unwrap();
        let photos = list_kind_photos(dir.path(), Catalog::embedded(), Some(5)).unwrap();
        assert_eq!(photos.len(), 1);
    }
}
