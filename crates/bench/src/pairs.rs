//! Photos of two fruits for `fruits bench photos --pairs N`: two real photos
//! of different kinds side by side, each scaled to 1,024 px high, stored as
//! a JPEG (about 2 MP, so the service looks at it in parts as it does a
//! phone photo). No photo of several fruits ships with the project; these
//! stand in for them, and both kinds are known.
//!
//! A fruit is *found* when its kind is the answer's kind or one of its
//! `regions`; the report says how often either fruit leads, how often one
//! is in the top 3 kinds, and how many of all the fruits are found.

use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;

/// Height of each half.
const HALF_HEIGHT: u32 = 1024;

/// What the model found in photos of two fruits.
#[derive(Debug, Clone, Serialize)]
pub struct PairsReport {
    pub photos: usize,
    /// Share whose top kind is one of the two.
    pub either_top1: f64,
    /// Share with one of the two among the top 3 kinds.
    pub either_top3: f64,
    /// Share of all the fruits present (two per photo) that were found.
    pub fruits_found: f64,
    /// Share of photos with both fruits found.
    pub both_found: f64,
}

/// What the service answered for one pair: kinds ranked, and the regions' kinds.
pub struct PairAnswer {
    pub kinds: (String, String),
    pub ranked: Vec<String>,
    pub regions: Vec<String>,
}

/// `n` pairs of indices into `kinds` (one kind per photo, sorted by kind),
/// of different kinds, spread over the list; deterministic.
pub fn pick(kinds: &[String], n: usize) -> Vec<(usize, usize)> {
    let len = kinds.len();
    if len < 2 {
        return Vec::new();
    }
    (0..n)
        .filter_map(|i| {
            let a = (i * 7919) % len;
            // The first photo of another kind, half the list away and on.
            (0..len)
                .map(|k| (a + len / 2 + k) % len)
                .find(|&b| kinds[b] != kinds[a])
                .map(|b| (a, b))
        })
        .collect()
}

/// The two photos side by side, each `HALF_HEIGHT` high.
pub fn side_by_side(left: &RgbImage, right: &RgbImage) -> RgbImage {
    let scaled = |im: &RgbImage| {
        let w = (u64::from(im.width()) * u64::from(HALF_HEIGHT) / u64::from(im.height().max(1))).max(1) as u32;
        image::imageops::resize(im, w, HALF_HEIGHT, FilterType::Triangle)
    };
    let (l, r) = (scaled(left), scaled(right));
    let mut out = RgbImage::new(l.width() + r.width(), HALF_HEIGHT);
    image::imageops::replace(&mut out, &l, 0, 0);
    image::imageops::replace(&mut out, &r, i64::from(l.width()), 0);
    out
}

/// Size of a photo in clutter, and of its fruit photo's longer side in it.
const CLUTTER: (u32, u32) = (1600, 1200);
const SMALL_SIDE: u32 = 480;

/// A photo of a fruit in clutter: `fruit` shrunk to 480 px on its
/// longer side, placed at a position drawn from `seed`, on `clutter` (a
/// photograph without fruit) scaled to 1600 × 1200: a shop photo seen from
/// afar, in a room, the way a phone photo holds a fruit among other things.
pub fn in_clutter(fruit: &RgbImage, clutter: &RgbImage, seed: u64) -> RgbImage {
    let mut out = image::imageops::resize(clutter, CLUTTER.0, CLUTTER.1, FilterType::Triangle);
    let scale = SMALL_SIDE as f32 / fruit.width().max(fruit.height()).max(1) as f32;
    let (w, h) = (
        ((fruit.width() as f32 * scale) as u32).max(1),
        ((fruit.height() as f32 * scale) as u32).max(1),
    );
    let small = image::imageops::resize(fruit, w, h, FilterType::Triangle);
    // A multiplicative hash of the seed: positions spread over the photo.
    let r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let x = (r >> 16) % u64::from(CLUTTER.0 - w + 1);
    let y = (r >> 40) % u64::from(CLUTTER.1 - h + 1);
    image::imageops::replace(&mut out, &small, x as i64, y as i64);
    out
}

pub fn report(answers: &[PairAnswer]) -> PairsReport {
    let n = answers.len().max(1) as f64;
    let is_either = |a: &PairAnswer, k: &String| *k == a.kinds.0 || *k == a.kinds.1;
    let found = |a: &PairAnswer, kind: &String| a.ranked.first() == Some(kind) || a.regions.contains(kind);
    let found_in = |a: &PairAnswer| usize::from(found(a, &a.kinds.0)) + usize::from(found(a, &a.kinds.1));
    PairsReport {
        photos: answers.len(),
        either_top1: answers
            .iter()
            .filter(|a| a.ranked.first().is_some_and(|k| is_either(a, k)))
            .count() as f64
            / n,
        either_top3: answers
            .iter()
            .filter(|a| a.ranked.iter().take(3).any(|k| is_either(a, k)))
            .count() as f64
            / n,
        fruits_found: answers.iter().map(found_in).sum::<usize>() as f64 / (2.0 * n),
        both_found: answers.iter().filter(|a| found_in(a) == 2).count() as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_in_clutter_holds_the_fruit_small_somewhere_seeded() {
        let fruit = RgbImage::from_pixel(300, 200, image::Rgb([250, 0, 0]));
        let room = RgbImage::from_pixel(64, 48, image::Rgb([0, 0, 250]));
        let photo = in_clutter(&fruit, &room, 7);
        assert_eq!(photo.dimensions(), CLUTTER);
        let red = photo.pixels().filter(|p| p.0[0] > 200).count() as u32;
        assert_eq!(red, SMALL_SIDE * SMALL_SIDE * 2 / 3, "480 × 320 of fruit");
        assert_eq!(in_clutter(&fruit, &room, 7), photo, "a function of the seed");
        assert_ne!(in_clutter(&fruit, &room, 8), photo);
    }

    #[test]
    fn pairs_are_of_different_kinds_and_deterministic() {
        let kinds: Vec<String> = ["apple", "apple", "apple", "banana", "kiwi"].map(String::from).to_vec();
        let pairs = pick(&kinds, 6);
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|&(a, b)| kinds[a] != kinds[b]), "{pairs:?}");
        assert_eq!(pairs, pick(&kinds, 6));
        assert!(pick(&kinds[..1], 3).is_empty());
    }

    #[test]
    fn halves_keep_their_shape_and_sit_side_by_side() {
        let left = RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 0]));
        let right = RgbImage::from_pixel(100, 100, image::Rgb([0, 0, 255]));
        let both = side_by_side(&left, &right);
        assert_eq!(both.dimensions(), (1536 + 1024, 1024));
        assert_eq!(both.get_pixel(10, 10).0, [255, 0, 0]);
        assert_eq!(both.get_pixel(2000, 500).0, [0, 0, 255]);
    }

    #[test]
    fn a_fruit_is_found_as_the_answer_or_as_a_region() {
        let answer = |ranked: &[&str], regions: &[&str]| PairAnswer {
            kinds: ("apple".into(), "kiwi".into()),
            ranked: ranked.iter().map(|s| s.to_string()).collect(),
            regions: regions.iter().map(|s| s.to_string()).collect(),
        };
        let r = report(&[
            answer(&["apple", "pear", "kiwi"], &["apple", "kiwi"]),
            answer(&["pear", "lemon", "kiwi"], &[]),
            answer(&["kiwi"], &[]),
            answer(&["pear"], &["pear", "lime"]),
        ]);
        assert_eq!(r.photos, 4);
        assert_eq!((r.either_top1, r.either_top3), (0.5, 0.75));
        assert_eq!((r.fruits_found, r.both_found), (3.0 / 8.0, 0.25));
    }
}
