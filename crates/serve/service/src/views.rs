//! Where the model looks in a photo: the whole picture, and unless it is
//! small either a square view around each region the bundle's localiser
//! found, or (a bundle without one) a grid of overlapping square views, so
//! that a fruit off-centre or one of several fruits fills a view the way a
//! Fruits-360 fruit fills its frame. Pixel geometry only: no model, no wire
//! format beyond the box it reports.

use std::borrow::Cow;

use image::RgbImage;

use crate::answer::BoundingBox;

/// Side of a grid view, as a share of the photo's shorter side.
const GRID_SIDE: f32 = 0.6;
/// Distance between grid views, as a share of their side.
const GRID_STEP: f32 = 0.75;
/// Most grid positions along one side. A photo's shorter side always holds
/// 2 (the side is 60 % of it); a 4:3 photo's longer side holds 3, a 16:9 one
/// 4. A 448 × 111,607 strip would hold 550: it gets 4, spread evenly (with
/// gaps between them), so no upload makes more than [`MAX_VIEWS`] views in
/// one backbone batch.
const GRID_MAX_ALONG: u32 = 4;
/// The most views [`plan`] returns: the whole photo, 2 rows of at most
/// [`GRID_MAX_ALONG`] (the shorter side never holds more than 2).
pub const MAX_VIEWS: usize = 1 + 2 * GRID_MAX_ALONG as usize;

/// A square view in decoded-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

/// Least side of a grid view in the original photo, as a share of the
/// model's input side: a 348 px shop photo (views of 209 px) gets a grid, as
/// its training views were cut from such photos; a 100 px studio shot does not.
const GRID_MIN_VIEW: f32 = 0.9;

/// The whole photo, then a grid when its views keep at least
/// [`GRID_MIN_VIEW`] of `size` pixels (`original_shorter`: the photo's
/// shorter side before any reduced-scale decoding).
pub fn plan(width: u32, height: u32, original_shorter: u32, size: u32, regions: bool) -> Vec<Option<View>> {
    let mut views = vec![None];
    if !regions || !worth_a_closer_look(original_shorter, size) {
        return views;
    }
    let side = (width.min(height) as f32 * GRID_SIDE).round() as u32;
    let step = side as f32 * GRID_STEP;
    for y in positions(height, side, step) {
        for x in positions(width, side, step) {
            views.push(Some(View { x, y, side }));
        }
    }
    debug_assert!(views.len() <= MAX_VIEWS);
    views
}

/// Whether a photo whose shorter side is `original_shorter` pixels has
/// parts worth looking at on their own: its grid views would keep at least
/// [`GRID_MIN_VIEW`] of the model's input side `size`.
pub fn worth_a_closer_look(original_shorter: u32, size: u32) -> bool {
    original_shorter as f32 * GRID_SIDE >= GRID_MIN_VIEW * size as f32
}

/// Most regions of a localiser looked at on their own (each one more view).
pub const MAX_REGIONS: usize = 4;
/// Room around a region in its view, as a share of the region's longer side:
/// a Fruits-360 fruit fills its frame with a little white around it.
const REGION_MARGIN: f32 = 0.15;
/// Least side of a region's view, as a share of the photo's shorter side: a
/// one-cell region is too little of a fruit to name.
const REGION_MIN_SIDE: f32 = 0.25;

/// The square view around a box (shares of a `w × h` photo): its longer
/// side plus margins, at least [`REGION_MIN_SIDE`] of the shorter side, at
/// most all of it, centred on the box and moved inside the photo.
pub fn around(bounds: BoundingBox, (w, h): (u32, u32)) -> View {
    let shorter = w.min(h) as f32;
    let longer_side = (bounds.width * w as f32).max(bounds.height * h as f32);
    let side = (longer_side * (1.0 + 2.0 * REGION_MARGIN))
        .max(REGION_MIN_SIDE * shorter)
        .min(shorter)
        .round()
        .max(1.0) as u32;
    let centre = |start: f32, length: f32, total: u32| {
        let c = (start + length / 2.0) * total as f32;
        (c - side as f32 / 2.0).round().clamp(0.0, (total - side) as f32) as u32
    };
    View {
        x: centre(bounds.x, bounds.width, w),
        y: centre(bounds.y, bounds.height, h),
        side,
    }
}

/// Evenly spread starts of `side`-long windows covering `0..length`, at most
/// `step` apart, and at most [`GRID_MAX_ALONG`] of them.
fn positions(length: u32, side: u32, step: f32) -> Vec<u32> {
    let room = length.saturating_sub(side);
    let n = ((room as f32 / step).ceil() as u32 + 1).min(GRID_MAX_ALONG);
    (0..n).map(|i| if n == 1 { 0 } else { room * i / (n - 1) }).collect()
}

pub fn crop(image: &RgbImage, view: Option<View>) -> Cow<'_, RgbImage> {
    match view {
        None => Cow::Borrowed(image),
        Some(v) => Cow::Owned(image::imageops::crop_imm(image, v.x, v.y, v.side, v.side).to_image()),
    }
}

pub fn union(a: BoundingBox, b: BoundingBox) -> BoundingBox {
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    BoundingBox {
        x,
        y,
        width: (a.x + a.width).max(b.x + b.width) - x,
        height: (a.y + a.height).max(b.y + b.height) - y,
    }
}

impl View {
    /// This view as shares of a `w × h` photo.
    pub fn bounds(&self, (w, h): (u32, u32)) -> BoundingBox {
        BoundingBox {
            x: self.x as f32 / w as f32,
            y: self.y as f32 / h as f32,
            width: self.side as f32 / w as f32,
            height: self.side as f32 / h as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_gets_a_square_view_with_margins_inside_the_photo() {
        let b = |x, y, width, height| BoundingBox { x, y, width, height };
        // A 4:3 photo, a region in its left half: 0.4 × 1000 px wide.
        let v = around(b(0.1, 0.25, 0.4, 0.5), (1000, 750));
        assert_eq!(v.side, 520, "400 px and 15 % each side");
        assert_eq!((v.x, v.y), (40, 115));
        // At the corner: moved inside; never larger than the shorter side.
        let v = around(b(0.9, 0.9, 0.1, 0.1), (1000, 750));
        assert_eq!((v.x + v.side, v.y + v.side), (1000, 750));
        assert_eq!(around(b(0.0, 0.0, 1.0, 1.0), (1000, 750)).side, 750);
        // A one-cell region still gets a quarter of the shorter side.
        assert_eq!(around(b(0.5, 0.5, 0.01, 0.01), (1000, 750)).side, 188);
    }

    #[test]
    fn small_images_get_one_view_and_phone_photos_a_grid() {
        assert_eq!(plan(100, 100, 100, 224, true), vec![None]);
        assert_eq!(plan(320, 320, 320, 224, true), vec![None], "views of 192 px");
        assert_eq!(
            plan(348, 348, 348, 224, true).len(),
            5,
            "a shop photo: 2 × 2 views of 209 px"
        );
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
    fn a_long_strip_gets_a_bounded_grid_that_still_spans_it() {
        for (w, h) in [(448, 111_607), (111_607, 448), (4000, 2250)] {
            let views = plan(w, h, w.min(h), 224, true);
            assert!(views.len() <= MAX_VIEWS, "{w}×{h}: {} views", views.len());
            let grid: Vec<View> = views.iter().flatten().copied().collect();
            assert!(grid.iter().all(|v| v.x + v.side <= w && v.y + v.side <= h));
            let far = grid.last().unwrap();
            assert_eq!(
                (far.x + far.side, far.y + far.side),
                (w, h),
                "{w}×{h}: reaches the far corner"
            );
        }
        // 16:9 keeps its full grid: 4 columns, 2 rows.
        assert_eq!(plan(4000, 2250, 2250, 224, true).len(), 9);
    }
}
