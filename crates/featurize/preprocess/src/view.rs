//! Training views of a real photo: seeded random crops, some mirrored.
//!
//! A phone photo of a crate of apples shows the fruit at one scale and one
//! framing; the photos people send frame it every other way. Cropping part of
//! the photo (35–80 % of its area, anywhere) and mirroring half of the crops
//! teaches the kind head that the fruit, not the framing, names the kind. On
//! the grocery-store `val` photos this lifts top-1 from about 79 % to 86–88 %;
//! colour jitter and rotations measured no gain (README, "Real photos").
//!
//! A view is a pure function of `(seed, key, index)`, the key being the
//! image's URI: the same job gives the same views on any executor, in any
//! order. Index 0 is the image as it is.

use image::imageops;

use crate::RgbImage;

/// Smallest and largest share of the photo's area a crop keeps.
const AREA: (f64, f64) = (0.35, 0.80);

/// One view: a square-ratio crop (fractions of width and height) and a mirror.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub x: f64,
    pub y: f64,
    /// Side of the crop as a share of each side (`side²` of the area).
    pub side: f64,
    pub mirror: bool,
}

impl View {
    /// The whole image, unmirrored.
    pub const WHOLE: View = View {
        x: 0.0,
        y: 0.0,
        side: 1.0,
        mirror: false,
    };

    /// The `index`-th view of the image named `key` under `seed`; index 0 is [`View::WHOLE`].
    pub fn seeded(seed: u64, key: &str, index: u32) -> View {
        if index == 0 {
            return View::WHOLE;
        }
        let mut rng =
            SplitMix(fnv1a(key.as_bytes()) ^ seed.rotate_left(17) ^ u64::from(index).wrapping_mul(0x9E37_79B9));
        let area = AREA.0 + (AREA.1 - AREA.0) * rng.unit();
        let side = area.sqrt();
        View {
            x: (1.0 - side) * rng.unit(),
            y: (1.0 - side) * rng.unit(),
            side,
            mirror: rng.unit() < 0.5,
        }
    }

    /// Cuts this view out of `image` (at least one pixel each way).
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        if *self == View::WHOLE {
            return image.clone();
        }
        let (w, h) = image.dimensions();
        let px = |f: f64, n: u32| ((f * f64::from(n)) as u32).min(n - 1);
        let (x, y) = (px(self.x, w), px(self.y, h));
        let cw = ((self.side * f64::from(w)) as u32).clamp(1, w - x);
        let ch = ((self.side * f64::from(h)) as u32).clamp(1, h - y);
        let crop = imageops::crop_imm(image, x, y, cw, ch).to_image();
        if self.mirror {
            imageops::flip_horizontal(&crop)
        } else {
            crop
        }
    }
}

/// FNV-1a, 64 bits: a stable hash of the key (std's hasher may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: small, fast, and the same on every platform.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_a_function_of_seed_key_and_index() {
        let a = View::seeded(7, "s3://lake/apple/1.jpg", 3);
        assert_eq!(a, View::seeded(7, "s3://lake/apple/1.jpg", 3));
        assert_ne!(a, View::seeded(8, "s3://lake/apple/1.jpg", 3));
        assert_ne!(a, View::seeded(7, "s3://lake/apple/2.jpg", 3));
        assert_ne!(a, View::seeded(7, "s3://lake/apple/1.jpg", 4));
        assert_eq!(View::seeded(7, "any", 0), View::WHOLE);
    }

    #[test]
    fn crops_keep_their_share_of_the_area_and_stay_inside() {
        let mut mirrored = 0;
        for i in 1..=400 {
            let v = View::seeded(1, "photo.jpg", i);
            let area = v.side * v.side;
            assert!((AREA.0..=AREA.1).contains(&area), "{v:?}");
            assert!(
                v.x >= 0.0 && v.y >= 0.0 && v.x + v.side <= 1.0 && v.y + v.side <= 1.0,
                "{v:?}"
            );
            mirrored += usize::from(v.mirror);
        }
        assert!((150..=250).contains(&mirrored), "about half mirrored: {mirrored}");
    }

    #[test]
    fn a_view_cuts_and_mirrors_the_pixels_it_names() {
        // A 4×2 image whose pixel (x, y) holds x in red and y in green.
        let image = RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let v = View {
            x: 0.5,
            y: 0.0,
            side: 0.5,
            mirror: true,
        };
        let out = v.apply(&image);
        assert_eq!(out.dimensions(), (2, 1));
        assert_eq!(
            out.get_pixel(0, 0).0,
            [3, 0, 0],
            "mirrored: the right column comes first"
        );
        assert_eq!(out.get_pixel(1, 0).0, [2, 0, 0]);
        assert_eq!(View::WHOLE.apply(&image), image);
        let tiny = RgbImage::new(1, 1);
        assert_eq!(View::seeded(3, "t", 5).apply(&tiny).dimensions(), (1, 1));
    }
}
