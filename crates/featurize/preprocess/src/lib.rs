//! From image bytes to the backbone's input tensor: decode, resize, normalise.
//!
//! This is the one preprocessing path of the product, so the same image always
//! gives the same features: the batch pipeline calls [`prepare`] (decode, then
//! [`prepare_decoded`]); the service decodes phone photos with
//! [`photo::decode_photo`] and then calls the same [`prepare_decoded`] on each
//! view (through `fruits_bundle::Predictor`). The steps are also public one by
//! one for benchmarks.
//!
//! - decode: JPEG, PNG or WebP, format sniffed from the bytes (never from the file
//!   name), EXIF orientation applied, alpha composited on white (the Fruits-360
//!   background), with limits on pixels and memory against decompression bombs;
//! - resize: shorter side to `size` and centre crop to `size × size` in one
//!   SIMD pass (bilinear, antialiased when shrinking): a plain resize for square
//!   images;
//! - normalise: `(rgb - mean) / std`, planar NCHW `f32`.
//!
//! [`photo`] decodes large phone photos at a reduced scale for the web service;
//! [`view`] cuts seeded training views (crops, mirrors) out of real photos;
//! [`scene`] composes seeded training scenes: a studio shot's fruit cut out of
//! its white background and placed on a real photograph.
//!
//! Must not depend on a model runtime, an engine or a store: pixels in, tensors out.

pub mod photo;
pub mod scene;
pub mod view;

use std::io::Cursor;

use std::cell::RefCell;

use fast_image_resize::{self as fir, ResizeAlg, ResizeOptions, Resizer};
pub use image::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// The version of what [`prepare`] computes from bytes. Recorded with every
/// feature row, so that a change here (decoder, resize filter, crop,
/// normalisation) makes incremental jobs recompute, exactly as a new model
/// does. Raise it with any change that can move a feature.
pub const VERSION: u32 = 1;

/// Decoding refuses images above this many pixels (a 12 MP photo is 12e6).
pub const MAX_PIXELS: u64 = 64_000_000;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    #[error("empty file")]
    Empty,
    #[error("not a supported image (JPEG, PNG or WebP)")]
    UnknownFormat,
    #[error("image is {width}×{height}, over the limit of {max} pixels")]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("cannot decode image: {0}")]
    Decode(String),
}

/// How pixels become model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub size: u32,
    pub mean: f32,
    pub std: f32,
}

impl Spec {
    /// EfficientNet-Lite's training normalisation `(x - 127) / 128`.
    pub fn lite(size: u32) -> Self {
        Self {
            size,
            mean: 127.0,
            std: 128.0,
        }
    }

    /// Number of `f32` values one image takes.
    pub fn len(&self) -> usize {
        3 * (self.size as usize) * (self.size as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Decodes, resizes and normalises one image, appending its tensor to `out`.
pub fn prepare(bytes: &[u8], spec: &Spec, out: &mut Vec<f32>) -> Result<(), Error> {
    prepare_decoded(&decode(bytes)?, spec, out)
}

/// [`prepare`] of one training view of the image (see [`view`]); the whole
/// image ([`view::View::WHOLE`]) is prepared as it is, without a copy.
pub fn prepare_view(bytes: &[u8], view: &view::View, spec: &Spec, out: &mut Vec<f32>) -> Result<(), Error> {
    let image = decode(bytes)?;
    match *view == view::View::WHOLE {
        true => prepare_decoded(&image, spec, out),
        false => prepare_decoded(&view.apply(&image), spec, out),
    }
}

/// [`prepare`] after decoding: resizes and normalises an image already
/// decoded (by [`photo`], say), appending its tensor to `out`.
pub fn prepare_decoded(image: &RgbImage, spec: &Spec, out: &mut Vec<f32>) -> Result<(), Error> {
    let resized = resize(image, spec.size)?;
    normalize_into(&resized, spec, out);
    Ok(())
}

/// Decodes to 8-bit RGB with EXIF orientation applied.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, Error> {
    decode_limited(bytes, MAX_PIXELS)
}

/// [`decode`] refusing images of more than `max_pixels` before decoding them.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if photo::is_jpeg(bytes) {
        photo::check_scan_count(bytes)?;
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(Error::UnknownFormat);
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels * 4 + (64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, max_pixels)?;
    let orientation = decoder.orientation().map_err(|e| Error::Decode(e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| Error::Decode(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(to_rgb_on_white(image))
}

fn check_pixels(width: u32, height: u32, max: u64) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(Error::Decode("image has no pixels".into()));
    }
    if u64::from(width) * u64::from(height) > max {
        return Err(Error::TooLarge { width, height, max });
    }
    Ok(())
}

/// Transparent pixels blended onto white. RGBA becomes RGB in its own
/// buffer: a 50 MP RGBA PNG peaks at its 200 MB, not 200 + 150 MB.
fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let (width, height) = (image.width(), image.height());
    let mut pixels = image.into_rgba8().into_raw();
    let n = pixels.len() / 4;
    for i in 0..n {
        // Pixel i moves from 4i to 3i ≤ 4i: nothing unread is overwritten.
        let [r, g, b, a] = [pixels[4 * i], pixels[4 * i + 1], pixels[4 * i + 2], pixels[4 * i + 3]];
        let blend = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        pixels[3 * i..3 * i + 3].copy_from_slice(&[blend(r), blend(g), blend(b)]);
    }
    pixels.truncate(3 * n);
    pixels.shrink_to_fit();
    RgbImage::from_raw(width, height, pixels).expect("3 bytes per pixel")
}

/// Shorter side to `size`, then centre crop to a square, in one pass
/// (`fast_image_resize`, SIMD bilinear convolution: antialiased when shrinking).
pub fn resize(image: &RgbImage, size: u32) -> Result<RgbImage, Error> {
    if image.dimensions() == (size, size) {
        return Ok(image.clone());
    }
    thread_local! {
        // Keeps the resizer's scratch buffers between images.
        static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
    }
    let mut out = RgbImage::new(size, size);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .fit_into_destination(None);
    RESIZER
        .with(|r| r.borrow_mut().resize(image, &mut out, &options))
        .map_err(|e| Error::Decode(format!("cannot resize: {e}")))?;
    Ok(out)
}

/// Resizes to exactly `width × height`, the aspect not kept (no crop).
pub fn resize_exact(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, Error> {
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let mut out = RgbImage::new(width, height);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(fir::FilterType::Bilinear));
    Resizer::new()
        .resize(image, &mut out, &options)
        .map_err(|e| Error::Decode(format!("cannot resize: {e}")))?;
    Ok(out)
}

/// Appends `(rgb - mean) / std` as planar R, G, B.
pub fn normalize_into(image: &RgbImage, spec: &Spec, out: &mut Vec<f32>) {
    let plane = (image.width() * image.height()) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let (r, rest) = out[start..].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let inv = 1.0 / spec.std;
    let pixels = image.as_raw().chunks_exact(3);
    for (((p, r), g), b) in pixels.zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()) {
        *r = (f32::from(p[0]) - spec.mean) * inv;
        *g = (f32::from(p[1]) - spec.mean) * inv;
        *b = (f32::from(p[2]) - spec.mean) * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, Rgba, RgbaImage};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn planar_normalisation_of_a_known_pixel() {
        let img = RgbImage::from_pixel(2, 2, Rgb([255, 127, 0]));
        let bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let mut out = Vec::new();
        prepare(&bytes, &Spec::lite(2), &mut out).unwrap();
        assert_eq!(out.len(), 12);
        assert_eq!(&out[0..4], &[1.0; 4]);
        assert_eq!(&out[4..8], &[0.0; 4]);
        assert_eq!(&out[8..12], &[-127.0 / 128.0; 4]);
    }

    #[test]
    fn non_square_images_are_centre_cropped() {
        let mut img = RgbImage::from_pixel(300, 100, Rgb([0, 0, 0]));
        for y in 0..100 {
            for x in 100..200 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let out = resize(&img, 50).unwrap();
        assert_eq!(out.dimensions(), (50, 50));
        assert!(out.pixels().all(|p| p.0[0] > 200), "the centre square is white");
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = RgbaImage::from_pixel(4, 4, Rgba([10, 20, 30, 0]));
        let bytes = encode(DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let rgb = decode(&bytes).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        // Opaque pixels keep their colour, half-transparent ones go halfway
        // to white, each in its place.
        let img = RgbaImage::from_fn(3, 2, |x, y| match (x + y) % 3 {
            0 => Rgba([10, 20, 30, 255]),
            1 => Rgba([0, 100, 255, 128]),
            _ => Rgba([1, 2, 3, 0]),
        });
        let rgb = decode(&encode(DynamicImage::ImageRgba8(img), ImageFormat::Png)).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        for (x, y, p) in rgb.enumerate_pixels() {
            let want = [[10, 20, 30], [127, 177, 255], [255, 255, 255]][((x + y) % 3) as usize];
            assert_eq!(p.0, want, "pixel ({x}, {y})");
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert_eq!(decode(b""), Err(Error::Empty));
        assert_eq!(decode(b"this is text with a .jpg name"), Err(Error::UnknownFormat));
        let jpeg = encode(DynamicImage::ImageRgb8(RgbImage::new(64, 64)), ImageFormat::Jpeg);
        for cut in [3, 20, jpeg.len() / 2] {
            assert!(decode(&jpeg[..cut]).is_err(), "truncated at {cut} must fail");
        }
    }

    #[test]
    fn jpeg_and_png_of_the_same_flat_image_agree() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([200, 100, 50])));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        prepare(&encode(img.clone(), ImageFormat::Png), &Spec::lite(8), &mut a).unwrap();
        prepare(&encode(img, ImageFormat::Jpeg), &Spec::lite(8), &mut b).unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 0.05, "max difference {worst}");
    }
}
