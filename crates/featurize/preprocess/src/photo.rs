//! Phone photos for the web service: a 12 MP JPEG is decoded at the smallest
//! DCT scale (1/2, 1/4 or 1/8, chosen by the decoder's reduced IDCT) that still
//! leaves `min_side` pixels on the shorter side. That saves the full-size
//! IDCT, colour conversion and a 36 MB buffer; the entropy decoding remains.
//! Everything else goes through the general [`decode_limited`].
//!
//! Both paths apply the EXIF orientation, refuse images over a pixel limit
//! before allocating for them, and refuse JPEGs whose entropy-coded data ends
//! early (a truncated upload), which decoders would otherwise pad with grey.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};
use jpeg_decoder::PixelFormat;

use crate::{check_pixels, decode_limited, Error};

/// A decoded photo.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The pixels, oriented, possibly at a reduced scale.
    pub image: RgbImage,
    /// Width and height of the original image, oriented.
    pub width: u32,
    pub height: u32,
}

/// Decodes `bytes` keeping at least `min_side` pixels on the shorter side
/// where the image has them. A decoder panicking on hostile bytes is an
/// error about this image, not the end of the process or request.
pub fn decode_photo(bytes: &[u8], min_side: u32, max_pixels: u64) -> Result<Photo, Error> {
    std::panic::catch_unwind(|| decode_unguarded(bytes, min_side, max_pixels))
        .unwrap_or_else(|_| Err(Error::Decode("the decoder failed on this file".into())))
}

fn decode_unguarded(bytes: &[u8], min_side: u32, max_pixels: u64) -> Result<Photo, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if is_jpeg(bytes) {
        check_complete_jpeg(bytes)?;
        check_scan_count(bytes)?;
        if let Some(photo) = scaled_jpeg(bytes, min_side, max_pixels)? {
            return Ok(photo);
        }
    }
    let image = decode_limited(bytes, max_pixels)?;
    Ok(Photo {
        width: image.width(),
        height: image.height(),
        image,
    })
}

pub(crate) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// A complete JPEG ends with its EOI marker, possibly followed by padding or
/// an appended blob (motion photos append a video); a truncated one has no
/// EOI after its last start-of-scan.
fn check_complete_jpeg(bytes: &[u8]) -> Result<(), Error> {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let eoi_after = |start: usize| bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]);
    match last_sos {
        Some(sos) if eoi_after(sos) => Ok(()),
        Some(_) => Err(Error::Decode("the JPEG data ends early (truncated file?)".into())),
        None => Err(Error::Decode("the JPEG has no image data (truncated file?)".into())),
    }
}

/// Most start-of-scan markers a JPEG may hold. A progressive JPEG has about
/// 10 scans; the decoder accepts any number of repeated refinement scans,
/// and 20,000 of them over a 7000 × 7000 image cost minutes of CPU.
const MAX_JPEG_SCANS: usize = 100;

/// Refuses a JPEG with more than [`MAX_JPEG_SCANS`] scans before decoding it.
/// Entropy-coded data stuffs every 0xFF byte as 0xFF 0x00, so 0xFF 0xDA is
/// always a marker: counting it is exact and takes one pass over the bytes.
pub(crate) fn check_scan_count(bytes: &[u8]) -> Result<(), Error> {
    let scans = bytes.windows(2).filter(|w| *w == [0xFF, 0xDA]).count();
    if scans > MAX_JPEG_SCANS {
        return Err(Error::Decode(format!(
            "the JPEG has {scans} scans, more than the {MAX_JPEG_SCANS} a photo needs"
        )));
    }
    Ok(())
}

/// `None` when the image is small or not plain RGB/grey: the general decoder takes it.
fn scaled_jpeg(bytes: &[u8], min_side: u32, max_pixels: u64) -> Result<Option<Photo>, Error> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    if decoder.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, max_pixels)?;
    let shorter = width.min(height);
    let plain = matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8);
    if shorter < 2 * min_side.max(1) || !plain {
        return Ok(None);
    }
    // Ask for both sides so that the shorter one keeps `min_side` pixels.
    let want = |side: u32| (u64::from(side) * u64::from(min_side)).div_ceil(u64::from(shorter)) as u16;
    let (w, h) = decoder
        .scale(want(width), want(height))
        .map_err(|e| Error::Decode(e.to_string()))?;
    decoder.set_max_decoding_buffer_size(usize::from(w) * usize::from(h) * 3 + (1 << 20));
    let pixels = decoder.decode().map_err(|e| Error::Decode(e.to_string()))?;
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => RgbImage::from_raw(w.into(), h.into(), pixels),
        _ => image::GrayImage::from_raw(w.into(), h.into(), pixels).map(|g| DynamicImage::ImageLuma8(g).into_rgb8()),
    }
    .ok_or_else(|| Error::Decode("the JPEG decoder returned a short buffer".into()))?;
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    let (width, height) = if swaps_sides(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Some(Photo {
        image: image.into_rgb8(),
        width,
        height,
    }))
}

fn swaps_sides(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Inserts an EXIF block holding only `orientation` (1–8) right after a
/// JPEG's start marker: what a phone writes when it was held sideways.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD right after the header
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]); // padding of the 4-byte value field
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = Vec::with_capacity(jpeg.len() + app1.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::Rgb;

    /// A landscape JPEG, red on its left half and blue on its right.
    fn halves(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                Rgb([220, 20, 20])
            } else {
                Rgb([20, 20, 220])
            }
        });
        let mut out = Vec::new();
        img.write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))
            .unwrap();
        out
    }

    #[test]
    fn large_jpegs_are_decoded_at_a_reduced_scale_keeping_the_shorter_side() {
        let bytes = halves(2000, 1200);
        let photo = decode_photo(&bytes, 224, 64_000_000).unwrap();
        assert_eq!((photo.width, photo.height), (2000, 1200));
        // 1/4 gives 300 ≥ 224 on the shorter side; 1/8 would give 150.
        assert_eq!(photo.image.dimensions(), (500, 300));
        assert!(photo.image.get_pixel(10, 150).0[0] > 150, "left is red");
    }

    #[test]
    fn small_images_keep_their_size() {
        let photo = decode_photo(&halves(100, 100), 224, 64_000_000).unwrap();
        assert_eq!(photo.image.dimensions(), (100, 100));
    }

    #[test]
    fn exif_orientation_is_applied_on_both_paths() {
        for (w, h) in [(2000, 1200), (120, 80)] {
            let rotated = with_exif_orientation(&halves(w, h), 6); // rotate 90° clockwise
            let photo = decode_photo(&rotated, 224, 64_000_000).unwrap();
            assert_eq!((photo.width, photo.height), (h, w));
            let (iw, ih) = photo.image.dimensions();
            assert!(ih > iw, "portrait after rotation");
            // Red (the left half) is now on top.
            assert!(photo.image.get_pixel(iw / 2, 2).0[0] > 150);
            assert!(photo.image.get_pixel(iw / 2, ih - 3).0[2] > 150);
        }
    }

    #[test]
    fn truncated_jpegs_and_pixel_bombs_are_refused() {
        let bytes = halves(2000, 1200);
        for cut in [bytes.len() / 2, bytes.len() - 2, 400] {
            let err = decode_photo(&bytes[..cut], 224, 64_000_000).unwrap_err();
            assert!(matches!(err, Error::Decode(_)), "{cut}: {err:?}");
        }
        let err = decode_photo(&bytes, 224, 1_000_000).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn a_jpeg_with_thousands_of_scans_is_refused_before_decoding() {
        // The image's one scan (SOS up to EOI) repeated: a scan bomb's shape.
        let bytes = halves(64, 64);
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let scan = &bytes[sos..bytes.len() - 2];
        let mut bomb = bytes[..sos].to_vec();
        for _ in 0..2_000 {
            bomb.extend_from_slice(scan);
        }
        bomb.extend_from_slice(&[0xFF, 0xD9]);
        let err = decode_photo(&bomb, 224, 64_000_000).unwrap_err();
        assert!(matches!(&err, Error::Decode(m) if m.contains("2000 scans")), "{err:?}");
        // A progressive JPEG's handful of scans is fine.
        let mut few = bytes[..sos].to_vec();
        for _ in 0..MAX_JPEG_SCANS {
            few.extend_from_slice(scan);
        }
        few.extend_from_slice(&[0xFF, 0xD9]);
        assert!(check_scan_count(&few).is_ok());
        assert!(decode_photo(&bytes, 224, 64_000_000).is_ok());
    }
}
