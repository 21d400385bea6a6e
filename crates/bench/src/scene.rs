//! Phone-like photos composed from studio shots, for benchmarks and tests: a
//! cluttered background (a table's wood grain, objects, sensor noise) with
//! Fruits-360 fruits cut out of their white background, scaled up and placed
//! anywhere. No real phone photos ship with the project; these stand in for
//! them, and their labels are known.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// One fruit in a scene.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub fruit: &'a RgbImage,
    /// Centre, as shares of the scene's width and height.
    pub centre: (f32, f32),
    /// Side, as a share of the scene's shorter side.
    pub side: f32,
}

/// A `width × height` scene holding `fruits`, deterministic in `seed`.
pub fn compose(width: u32, height: u32, seed: u64, fruits: &[Placement]) -> RgbImage {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let tone = [
        150 + (next() % 60) as i32,
        100 + (next() % 50) as i32,
        60 + (next() % 40) as i32,
    ];
    let mut scene = RgbImage::from_fn(width, height, |x, y| {
        let grain = ((y as f32 / 9.0 + (x as f32 / 140.0).sin() * 6.0).sin() * 18.0) as i32;
        Rgb(tone.map(|c| (c + grain).clamp(0, 255) as u8))
    });
    for _ in 0..12 {
        let (w, h) = (
            width / 12 + (next() % u64::from(width / 5)) as u32,
            height / 12 + (next() % u64::from(height / 5)) as u32,
        );
        let (x0, y0) = ((next() % u64::from(width)) as u32, (next() % u64::from(height)) as u32);
        let colour = Rgb([
            (next() % 200) as u8 + 30,
            (next() % 200) as u8 + 30,
            (next() % 200) as u8 + 30,
        ]);
        for y in y0..(y0 + h).min(height) {
            for x in x0..(x0 + w).min(width) {
                scene.put_pixel(x, y, colour);
            }
        }
    }
    let shorter = width.min(height) as f32;
    for p in fruits {
        let side = (p.side * shorter).round().max(1.0) as u32;
        let big = image::imageops::resize(p.fruit, side, side, FilterType::Triangle);
        let x0 = (p.centre.0 * width as f32 - side as f32 / 2.0).round() as i64;
        let y0 = (p.centre.1 * height as f32 - side as f32 / 2.0).round() as i64;
        paste_cut_out(&mut scene, &big, x0, y0);
    }
    for px in scene.pixels_mut() {
        let noise = (next() % 9) as i32 - 4;
        px.0 = px.0.map(|c| (i32::from(c) + noise).clamp(0, 255) as u8);
    }
    scene
}

/// Pastes `fruit` leaving out its near-white studio background, with a soft edge.
fn paste_cut_out(scene: &mut RgbImage, fruit: &RgbImage, x0: i64, y0: i64) {
    for (x, y, p) in fruit.enumerate_pixels() {
        let (sx, sy) = (x0 + i64::from(x), y0 + i64::from(y));
        if sx < 0 || sy < 0 || sx >= i64::from(scene.width()) || sy >= i64::from(scene.height()) {
            continue;
        }
        let whiteness = p.0.iter().copied().min().unwrap_or(0);
        let alpha = ((235.0 - f32::from(whiteness)) / 35.0).clamp(0.0, 1.0);
        if alpha == 0.0 {
            continue;
        }
        let under = scene.get_pixel_mut(sx as u32, sy as u32);
        for c in 0..3 {
            under.0[c] = (f32::from(p.0[c]) * alpha + f32::from(under.0[c]) * (1.0 - alpha)).round() as u8;
        }
    }
}

/// JPEG bytes of `image` at `quality` (1–100).
pub fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_with_encoder(JpegEncoder::new_with_quality(&mut out, quality))
        .expect("encoding to memory does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fruits_are_cut_out_of_white_and_placed_where_asked() {
        let mut fruit = RgbImage::from_pixel(10, 10, Rgb([255, 255, 255]));
        for y in 3..7 {
            for x in 3..7 {
                fruit.put_pixel(x, y, Rgb([200, 10, 10]));
            }
        }
        let place = |centre| Placement {
            fruit: &fruit,
            centre,
            side: 0.5,
        };
        let scene = compose(400, 200, 7, &[place((0.25, 0.5))]);
        assert_eq!(scene.dimensions(), (400, 200));
        let red = scene.get_pixel(100, 100).0;
        assert!(red[0] > 180 && red[1] < 40, "the fruit is at its centre: {red:?}");
        let corner = scene.get_pixel(55, 55).0;
        assert!(corner != [255, 255, 255], "its white background was cut out");
        assert_eq!(compose(400, 200, 7, &[place((0.25, 0.5))]), scene, "deterministic");
    }
}
