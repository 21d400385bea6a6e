//! `fruits bench decode`: the pure-Rust JPEG decoders on 12 MP phone-like
//! photos (the ones `bench serve` composes), each brought to what the
//! service needs, a photo whose shorter side keeps at least 448 pixels.
//!
//! - `jpeg-decoder, reduced DCT`: what the service runs
//!   (`fruits_preprocess::photo::decode_photo`), the IDCT at 1/2, 1/4 or 1/8;
//! - `jpeg-decoder, full size + resize`: the same decoder without scaling;
//! - `zune-jpeg (image), full size + resize`: the general decoder every other
//!   path uses (`fruits_preprocess::decode`), which has no reduced scale.
//!
//! Each is timed on one thread over the same photos, in the same run.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::labelled::list_labelled;
use crate::Error;

/// The shorter side the service decodes to (twice the 224² input).
pub const MIN_SIDE: u32 = 448;

#[derive(Debug, Clone)]
pub struct DecodeBenchOptions {
    /// Studio shots the photos are composed from (`DIR/<label>/<image>`).
    pub images: PathBuf,
    pub photos: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub decoder: &'static str,
    pub photos: usize,
    /// Milliseconds per photo, mean and slowest.
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Width and height of what the path hands on (the reduced DCT stops at
    /// the first scale that keeps 448 pixels; the others resize to 448).
    pub decoded: (u32, u32),
}

type Decoder = fn(&[u8]) -> Result<RgbImage, Error>;

pub fn run(opts: &DecodeBenchOptions) -> Result<Vec<Row>, Error> {
    let labelled = list_labelled(&opts.images)?;
    let photos = crate::serve::photo_cases(&labelled, opts.photos.max(1), 1)?;
    let decoders: [(&'static str, Decoder); 3] = [
        ("jpeg-decoder, reduced DCT (the service)", reduced),
        ("jpeg-decoder, full size + resize", jpeg_decoder_full),
        ("zune-jpeg (image), full size + resize", zune_full),
    ];
    let mut rows = Vec::new();
    for (name, decode) in decoders {
        decode(&photos[0].body)?; // warm-up
        let (mut total, mut max, mut decoded) = (0.0f64, 0.0f64, (0, 0));
        for photo in &photos {
            let t = Instant::now();
            let image = decode(&photo.body)?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            (total, max, decoded) = (total + ms, max.max(ms), image.dimensions());
        }
        rows.push(Row {
            decoder: name,
            photos: photos.len(),
            mean_ms: total / photos.len() as f64,
            max_ms: max,
            decoded,
        });
    }
    Ok(rows)
}

fn reduced(bytes: &[u8]) -> Result<RgbImage, Error> {
    let photo = fruits_preprocess::photo::decode_photo(bytes, MIN_SIDE, fruits_preprocess::MAX_PIXELS)
        .map_err(|e| Error::Setup(e.to_string()))?;
    Ok(photo.image)
}

fn jpeg_decoder_full(bytes: &[u8]) -> Result<RgbImage, Error> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let pixels = decoder.decode().map_err(|e| Error::Setup(e.to_string()))?;
    let info = decoder.info().ok_or_else(|| Error::Setup("no JPEG header".into()))?;
    let image = RgbImage::from_raw(info.width.into(), info.height.into(), pixels)
        .ok_or_else(|| Error::Setup("not an RGB JPEG".into()))?;
    shrink(&image)
}

fn zune_full(bytes: &[u8]) -> Result<RgbImage, Error> {
    shrink(&fruits_preprocess::decode(bytes).map_err(|e| Error::Setup(e.to_string()))?)
}

/// Down to `MIN_SIDE` on the shorter side, as the reduced decode ends.
fn shrink(image: &RgbImage) -> Result<RgbImage, Error> {
    let (w, h) = image.dimensions();
    let scale = f64::from(MIN_SIDE) / f64::from(w.min(h));
    let size = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
    fruits_preprocess::resize_exact(image, size(w), size(h)).map_err(|e| Error::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decoder_brings_a_12_mp_photo_to_the_services_side() {
        let scene = crate::scene::compose(4032, 3024, 7, &[]);
        let bytes = crate::scene::jpeg(&scene, 90);
        let reduced = reduced(&bytes).unwrap();
        assert!(
            reduced.height() >= MIN_SIDE && reduced.height() < 2 * MIN_SIDE,
            "{:?}",
            reduced.dimensions()
        );
        for decode in [jpeg_decoder_full, zune_full] {
            assert_eq!(decode(&bytes).unwrap().height(), MIN_SIDE);
        }
    }
}
