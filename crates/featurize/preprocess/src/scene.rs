//! Training scenes: a studio shot's fruit cut out of its white background and
//! placed on a real photograph, so that what learns kinds sees fruit where
//! people photograph it, not only on white.
//!
//! A scene is a square crop of one background photograph, relit, with one
//! copy of the fruit (or a pile of two to four, as in a shop crate) placed
//! anywhere, scaled, rotated and recoloured, then blurred and given sensor
//! noise. Like [`crate::view::View`], a scene is a pure function of
//! `(seed, key, index)`, the key being the studio shot's URI, and of the
//! backgrounds (in the order given): the same job gives the same scenes on
//! any executor, in any order.

use image::{imageops, Rgb, RgbImage};

use crate::view::{fnv1a, SplitMix};
use crate::Error;

/// Side of a rendered scene in pixels: above the model's input side, so the
/// usual resize applies, and small enough to render in a few milliseconds.
pub const SIDE: u32 = 320;

/// Longer side backgrounds are reduced to when loaded: a crop of one is at
/// least a third of its shorter side, so still sharper than [`SIDE`].
const BACKGROUND_MAX_SIDE: u32 = 1024;

/// Whiteness (the smallest channel) from which a studio pixel is background.
const WHITE: f32 = 235.0;
/// Width of the soft edge below [`WHITE`].
const EDGE: f32 = 35.0;

/// The photographs scenes are composed on, reduced, in a fixed order.
#[derive(Debug, Clone)]
pub struct Backgrounds {
    images: Vec<RgbImage>,
}

impl Backgrounds {
    /// Decodes encoded photographs (in the order given); at least one.
    pub fn decode<B: AsRef<[u8]>>(files: &[B]) -> Result<Self, Error> {
        let images = files
            .iter()
            .map(|bytes| crate::decode(bytes.as_ref()).map(|i| reduce(&i)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(images)
    }

    /// Backgrounds from decoded images; at least one, none smaller than 32 px.
    pub fn new(images: Vec<RgbImage>) -> Result<Self, Error> {
        if images.is_empty() {
            return Err(Error::Decode("no background photographs".into()));
        }
        if images.iter().any(|i| i.width().min(i.height()) < 32) {
            return Err(Error::Decode("a background is smaller than 32 px".into()));
        }
        Ok(Self { images })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Reduces a photograph to at most [`BACKGROUND_MAX_SIDE`] on its longer side.
fn reduce(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let longer = w.max(h);
    if longer <= BACKGROUND_MAX_SIDE {
        return image.clone();
    }
    let scale = f64::from(BACKGROUND_MAX_SIDE) / f64::from(longer);
    let (nw, nh) = (
        ((f64::from(w) * scale) as u32).max(1),
        ((f64::from(h) * scale) as u32).max(1),
    );
    imageops::resize(image, nw, nh, imageops::FilterType::Triangle)
}

/// One copy of the fruit in a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Copy {
    /// Centre, as shares of the scene's side.
    pub x: f32,
    pub y: f32,
    /// Side of the (square) studio shot, as a share of the scene's side.
    pub side: f32,
    /// Rotation in radians.
    pub angle: f32,
}

/// Everything random about one scene, drawn from `(seed, key, index)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Which background, and the square crop of it (corner as shares of the
    /// free room, side as a share of its shorter side).
    pub background: usize,
    pub crop: (f32, f32, f32),
    /// Brightness of the background (the light of the room).
    pub light: f32,
    pub copies: Vec<Copy>,
    /// Per-channel gain on the fruit (its colour under that light).
    pub gain: [f32; 3],
    /// Gaussian blur in pixels of the scene (0: sharp).
    pub blur: f32,
    /// Amplitude of uniform sensor noise.
    pub noise: u8,
}

impl Scene {
    /// The `index`-th scene of the studio shot named `key` under `seed`,
    /// among `backgrounds` photographs.
    pub fn seeded(seed: u64, key: &str, index: u32, backgrounds: usize) -> Scene {
        let mut rng = SplitMix(
            fnv1a(key.as_bytes()) ^ seed.rotate_left(29) ^ u64::from(index).wrapping_mul(0xA24B_AED4_963E_E407),
        );
        let mut u = |lo: f64, hi: f64| (lo + (hi - lo) * rng.unit()) as f32;
        let background = (u(0.0, 1.0) * backgrounds.max(1) as f32) as usize % backgrounds.max(1);
        let crop = (u(0.0, 1.0), u(0.0, 1.0), u(0.35, 1.0));
        let light = u(0.6, 1.2);
        // About half alone, the rest a pile of 2 to 4 of the same fruit.
        let count = if u(0.0, 1.0) < 0.5 {
            1
        } else {
            2 + (u(0.0, 3.0) as usize).min(2)
        };
        let (lo, hi) = if count == 1 { (0.45, 0.95) } else { (0.3, 0.55) };
        let copies = (0..count)
            .map(|_| {
                let side = u(lo, hi);
                // The centre keeps at least half of the copy inside.
                Copy {
                    x: u(0.0, 1.0) * (1.0 - side / 2.0) + side / 4.0,
                    y: u(0.0, 1.0) * (1.0 - side / 2.0) + side / 4.0,
                    side,
                    angle: u(0.0, std::f64::consts::TAU),
                }
            })
            .collect();
        let brightness = u(0.75, 1.15);
        let gain = [0; 3].map(|_| brightness * u(0.9, 1.1));
        let blur = if u(0.0, 1.0) < 0.5 { 0.0 } else { u(0.3, 1.6) };
        let noise = u(0.0, 8.0) as u8;
        Scene {
            background,
            crop,
            light,
            copies,
            gain,
            blur,
            noise,
        }
    }

    /// Renders the scene with `fruit` (a studio shot on white), [`SIDE`] px square.
    pub fn render(&self, fruit: &RgbImage, backgrounds: &Backgrounds, key: &str) -> RgbImage {
        self.render_with_mask(fruit, backgrounds, key).0
    }

    /// [`Scene::render`], and where the fruit is: its opacity per scene
    /// pixel (row-major, [`SIDE`]²), the ground truth a localiser learns.
    pub fn render_with_mask(&self, fruit: &RgbImage, backgrounds: &Backgrounds, key: &str) -> (RgbImage, Vec<f32>) {
        let mut canvas = self.backdrop(backgrounds);
        let mut mask = vec![0.0; (SIDE * SIDE) as usize];
        let alpha = cut_out(fruit);
        for copy in &self.copies {
            self.paste(&mut canvas, &mut mask, fruit, &alpha, copy);
        }
        if self.blur > 0.0 {
            canvas = imageops::fast_blur(&canvas, self.blur);
        }
        if self.noise > 0 {
            let mut rng = SplitMix(fnv1a(key.as_bytes()) ^ u64::from(self.noise));
            let span = 2 * u64::from(self.noise) + 1;
            for px in canvas.pixels_mut() {
                let n = (rng.next() % span) as i32 - i32::from(self.noise);
                px.0 = px.0.map(|c| (i32::from(c) + n).clamp(0, 255) as u8);
            }
        }
        (canvas, mask)
    }

    /// The background crop, resized to [`SIDE`] and relit.
    fn backdrop(&self, backgrounds: &Backgrounds) -> RgbImage {
        let image = &backgrounds.images[self.background % backgrounds.images.len()];
        let (w, h) = image.dimensions();
        let side = ((self.crop.2 * w.min(h) as f32) as u32).clamp(1, w.min(h));
        let x = ((w - side) as f32 * self.crop.0) as u32;
        let y = ((h - side) as f32 * self.crop.1) as u32;
        let crop = imageops::crop_imm(image, x, y, side, side).to_image();
        // Square already, so the usual resize does no cropping; it cannot fail
        // on a non-empty image, and a blank scene is the harmless fallback.
        let mut canvas = crate::resize(&crop, SIDE).unwrap_or_else(|_| RgbImage::new(SIDE, SIDE));
        for px in canvas.pixels_mut() {
            px.0 =
                px.0.map(|c| (f32::from(c) * self.light).round().clamp(0.0, 255.0) as u8);
        }
        canvas
    }

    /// Draws one copy: each scene pixel under the rotated square samples the
    /// studio shot (bilinear) and blends by its alpha.
    fn paste(&self, canvas: &mut RgbImage, mask: &mut [f32], fruit: &RgbImage, alpha: &[f32], copy: &Copy) {
        let (fw, fh) = (fruit.width() as f32, fruit.height() as f32);
        let side = copy.side * SIDE as f32;
        let (cx, cy) = (copy.x * SIDE as f32, copy.y * SIDE as f32);
        let (sin, cos) = copy.angle.sin_cos();
        let reach = side * std::f32::consts::FRAC_1_SQRT_2;
        let lo = |c: f32| (c - reach).floor().max(0.0) as u32;
        let hi = |c: f32| ((c + reach).ceil() as u32).min(SIDE);
        for y in lo(cy)..hi(cy) {
            for x in lo(cx)..hi(cx) {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let u = (dx * cos + dy * sin) / side * fw + fw / 2.0;
                let v = (-dx * sin + dy * cos) / side * fh + fh / 2.0;
                let Some((rgb, a)) = sample(fruit, alpha, u, v) else {
                    continue;
                };
                if a <= 0.0 {
                    continue;
                }
                let covered = &mut mask[(y * SIDE + x) as usize];
                *covered = covered.max(a);
                let under = canvas.get_pixel_mut(x, y);
                for ((u, colour), gain) in under.0.iter_mut().zip(rgb).zip(self.gain) {
                    let top = (colour * gain).clamp(0.0, 255.0);
                    *u = (top * a + f32::from(*u) * (1.0 - a)).round() as u8;
                }
            }
        }
    }
}

/// The mean of a square `side`² `mask` over a `cells × cells` grid (row-major):
/// how much of each cell the fruit covers.
pub fn cell_coverage(mask: &[f32], side: u32, cells: u32) -> Vec<f32> {
    let mut sums = vec![0.0f32; (cells * cells) as usize];
    let mut counts = vec![0u32; sums.len()];
    for (i, a) in mask.iter().enumerate() {
        let (x, y) = (i as u32 % side, i as u32 / side);
        let cell = ((y * cells / side) * cells + x * cells / side) as usize;
        sums[cell] += a;
        counts[cell] += 1;
    }
    sums.iter().zip(counts).map(|(s, n)| s / n.max(1) as f32).collect()
}

/// The fruit's opacity per pixel: the near-white pixels connected to the
/// shot's border are background (soft at the edge), everything else is
/// fruit, so that a white highlight on the fruit does not become a hole.
pub fn cut_out(fruit: &RgbImage) -> Vec<f32> {
    let (w, h) = (fruit.width() as usize, fruit.height() as usize);
    let whiteness = |i: usize| f32::from(fruit.as_raw()[3 * i..3 * i + 3].iter().copied().min().unwrap_or(0));
    let pale = |i: usize| whiteness(i) >= WHITE - EDGE;
    let mut outside = vec![false; w * h];
    let mut stack: Vec<usize> = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]))
        .filter(|&i| pale(i))
        .collect();
    while let Some(i) = stack.pop() {
        if outside[i] {
            continue;
        }
        outside[i] = true;
        let (x, y) = (i % w, i / w);
        let neighbours = [
            (x > 0).then(|| i - 1),
            (x + 1 < w).then(|| i + 1),
            (y > 0).then(|| i - w),
            (y + 1 < h).then(|| i + w),
        ];
        stack.extend(neighbours.into_iter().flatten().filter(|&n| !outside[n] && pale(n)));
    }
    let soft: Vec<f32> = (0..w * h)
        .map(|i| match outside[i] {
            true => ((WHITE - whiteness(i)) / EDGE).clamp(0.0, 1.0),
            false => 1.0,
        })
        .collect();
    // One pixel of erosion: the shot's edge pixels are half white, and kept
    // they draw a pale halo around the fruit on a dark background.
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let mut a = soft[i];
            for n in [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ]
            .into_iter()
            .flatten()
            {
                a = a.min(soft[n]);
            }
            a
        })
        .collect()
}

/// Bilinear colour and alpha at `(u, v)` of the studio shot; `None` outside it.
fn sample(fruit: &RgbImage, alpha: &[f32], u: f32, v: f32) -> Option<([f32; 3], f32)> {
    let (w, h) = (fruit.width() as f32, fruit.height() as f32);
    if u < 0.0 || v < 0.0 || u >= w || v >= h {
        return None;
    }
    let (x, y) = ((u - 0.5).max(0.0), (v - 0.5).max(0.0));
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(fruit.width() - 1), (y0 + 1).min(fruit.height() - 1));
    let (tx, ty) = (x - x0 as f32, y - y0 as f32);
    let mut rgb = [0.0f32; 3];
    let mut a = 0.0;
    for (px, py, weight) in [
        (x0, y0, (1.0 - tx) * (1.0 - ty)),
        (x1, y0, tx * (1.0 - ty)),
        (x0, y1, (1.0 - tx) * ty),
        (x1, y1, tx * ty),
    ] {
        let Rgb(p) = *fruit.get_pixel(px, py);
        let pa = alpha[(py * fruit.width() + px) as usize] * weight;
        for (sum, channel) in rgb.iter_mut().zip(p) {
            *sum += f32::from(channel) * pa;
        }
        a += pa;
    }
    if a > 0.0 {
        rgb = rgb.map(|c| c / a);
    }
    Some((rgb, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20×20 studio shot: a red disc with a white highlight, on white.
    fn studio_shot() -> RgbImage {
        RgbImage::from_fn(20, 20, |x, y| {
            let d = (x as f32 - 9.5).hypot(y as f32 - 9.5);
            match d {
                d if d < 1.5 => Rgb([255, 255, 255]),
                d if d < 7.0 => Rgb([200, 20, 20]),
                _ => Rgb([255, 255, 255]),
            }
        })
    }

    fn backgrounds() -> Backgrounds {
        let grass = RgbImage::from_pixel(64, 48, Rgb([20, 120, 30]));
        let wood = RgbImage::from_fn(80, 40, |x, _| Rgb([120 + (x % 7) as u8, 80, 40]));
        Backgrounds::new(vec![grass, wood]).unwrap()
    }

    #[test]
    fn the_white_around_the_fruit_is_cut_out_but_not_its_highlight() {
        let alpha = cut_out(&studio_shot());
        assert_eq!(alpha[0], 0.0, "a corner is background");
        assert_eq!(alpha[10 * 20 + 10], 1.0, "the highlight inside the fruit stays");
        assert_eq!(alpha[10 * 20 + 5], 1.0, "the fruit stays");
    }

    #[test]
    fn scenes_are_a_function_of_seed_key_and_index() {
        let a = Scene::seeded(7, "s3://lake/Apple/1.jpg", 1, 11);
        assert_eq!(a, Scene::seeded(7, "s3://lake/Apple/1.jpg", 1, 11));
        assert_ne!(a, Scene::seeded(8, "s3://lake/Apple/1.jpg", 1, 11));
        assert_ne!(a, Scene::seeded(7, "s3://lake/Apple/2.jpg", 1, 11));
        assert_ne!(a, Scene::seeded(7, "s3://lake/Apple/1.jpg", 2, 11));
        let (shot, bgs) = (studio_shot(), backgrounds());
        let image = a.render(&shot, &bgs, "s3://lake/Apple/1.jpg");
        assert_eq!(image.dimensions(), (SIDE, SIDE));
        assert_eq!(image, a.render(&shot, &bgs, "s3://lake/Apple/1.jpg"), "deterministic");
    }

    #[test]
    fn scenes_vary_within_their_ranges() {
        let mut piles = 0;
        let mut used = [false; 11];
        for i in 1..=400 {
            let s = Scene::seeded(1, "shot.jpg", i, 11);
            used[s.background] = true;
            piles += usize::from(s.copies.len() > 1);
            assert!((1..=4).contains(&s.copies.len()), "{s:?}");
            assert!(
                s.crop.2 >= 0.35 && s.crop.2 <= 1.0 && (0.6..=1.2).contains(&s.light),
                "{s:?}"
            );
            for c in &s.copies {
                assert!((0.3..=0.95).contains(&c.side), "{c:?}");
                let half = c.side / 4.0;
                assert!(
                    c.x >= half && c.x <= 1.0 - half && c.y >= half && c.y <= 1.0 - half,
                    "{c:?}"
                );
            }
        }
        assert!((140..=260).contains(&piles), "about half are piles: {piles}");
        assert!(used.iter().all(|&u| u), "every background is drawn");
    }

    /// A plain scene (the first background whole, no relighting, blur or
    /// noise) of one copy of the fruit.
    fn one_copy(copy: Copy) -> Scene {
        Scene {
            background: 0,
            crop: (0.0, 0.0, 1.0),
            light: 1.0,
            copies: vec![copy],
            gain: [1.0; 3],
            blur: 0.0,
            noise: 0,
        }
    }

    #[test]
    fn the_mask_covers_the_fruit_and_its_cells_say_where() {
        let scene = one_copy(Copy {
            x: 0.25,
            y: 0.75,
            side: 0.4,
            angle: 0.0,
        });
        let (_, mask) = scene.render_with_mask(&studio_shot(), &backgrounds(), "a");
        assert_eq!(mask.len(), (SIDE * SIDE) as usize);
        // The fruit's centre is covered, the far corner is not.
        assert!(mask[((SIDE * 3 / 4) * SIDE + SIDE / 4) as usize] > 0.9);
        assert_eq!(mask[(SIDE / 8 * SIDE + SIDE * 7 / 8) as usize], 0.0);
        // 40 px cells: the four around the centre (80, 240) are mostly fruit.
        let cells = cell_coverage(&mask, SIDE, 8);
        for (row, column) in [(5, 1), (5, 2), (6, 1), (6, 2)] {
            assert!(cells[row * 8 + column] > 0.5, "({row}, {column}): {cells:?}");
        }
        assert_eq!(cells[7], 0.0, "top right is background");
        assert!(cells.iter().sum::<f32>() < 16.0, "the fruit is a small part");
    }

    #[test]
    fn the_fruit_lands_where_the_scene_puts_it_on_the_background() {
        let scene = one_copy(Copy {
            x: 0.25,
            y: 0.5,
            side: 0.5,
            angle: 1.0,
        });
        let image = scene.render(&studio_shot(), &backgrounds(), "k");
        let at = |x: f32, y: f32| image.get_pixel((x * SIDE as f32) as u32, (y * SIDE as f32) as u32).0;
        let fruit = at(0.25 + 0.1, 0.5);
        assert!(fruit[0] > 180 && fruit[1] < 50, "red fruit at its place: {fruit:?}");
        assert_eq!(at(0.75, 0.5), [20, 120, 30], "grass elsewhere");
        assert_eq!(
            at(0.25 + 0.22, 0.5 + 0.22),
            [20, 120, 30],
            "the shot's white corner is cut out"
        );
    }
}
