//! The upload path under generated input: 10,000 uploads built from real
//! encodings by truncation, bit flips, insertions, header scribbles, random
//! bytes and multipart wrapping, through [`read_upload`] and
//! [`decode_photo`] exactly as a request goes. Each must give a photo or a
//! 4xx error; none may panic.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use fruits_preprocess::photo::{decode_photo, with_exif_orientation};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};

use crate::api::read_upload;
use crate::error::ApiError;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn seeds() -> Vec<Vec<u8>> {
    let picture = |w, h| RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
    let jpeg = encode(DynamicImage::ImageRgb8(picture(64, 48)), ImageFormat::Jpeg);
    vec![
        jpeg.clone(),
        with_exif_orientation(&jpeg, 6),
        encode(DynamicImage::ImageRgb8(picture(40, 30)), ImageFormat::Png),
        encode(
            DynamicImage::ImageRgba8(RgbaImage::from_fn(20, 20, |x, y| {
                image::Rgba([x as u8, y as u8, 9, (x * 12) as u8])
            })),
            ImageFormat::Png,
        ),
        encode(DynamicImage::ImageRgb8(picture(32, 32)), ImageFormat::WebP),
        // Large enough for the reduced-scale JPEG path.
        encode(DynamicImage::ImageRgb8(picture(960, 900)), ImageFormat::Jpeg),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = bytes.len().max(1);
        match rng.below(6) {
            0 => bytes.truncate(rng.below(len)),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    if !bytes.is_empty() {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
            }
            2 => {
                let at = rng.below(len);
                let junk: Vec<u8> = (0..rng.below(48)).map(|_| rng.next() as u8).collect();
                bytes.splice(at.min(bytes.len())..at.min(bytes.len()), junk);
            }
            3 => {
                // Scribble over the header, where sizes and markers live.
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(64.min(len));
                    if at < bytes.len() {
                        bytes[at] = rng.next() as u8;
                    }
                }
            }
            4 => {
                let keep = 4.min(bytes.len());
                bytes.truncate(keep);
                bytes.extend((0..rng.below(512)).map(|_| rng.next() as u8));
            }
            _ => {
                let from = rng.below(len);
                let to = (from + rng.below(256)).min(bytes.len());
                let copy = bytes[from.min(bytes.len())..to].to_vec();
                bytes.extend_from_slice(&copy);
            }
        }
    }
    bytes
}

/// A content type and body for `bytes`: raw, wrongly typed, or in a form.
fn wrap(rng: &mut Rng, bytes: Vec<u8>) -> (String, Vec<u8>) {
    match rng.below(5) {
        0 => {
            let boundary = "fuzzb";
            let name = if rng.below(8) == 0 { "other" } else { "image" };
            let mut body =
                format!("--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n").into_bytes();
            body.extend_from_slice(&bytes);
            if rng.below(4) != 0 {
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            }
            (format!("multipart/form-data; boundary={boundary}"), body)
        }
        1 => ("application/json".into(), bytes),
        2 => ("image/png".into(), bytes),
        _ => ("image/jpeg".into(), bytes),
    }
}

/// One upload as a request takes it: `Ok` with the photo's size, or the error.
async fn upload(content_type: &str, body: Vec<u8>) -> Result<(u32, u32), ApiError> {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let bytes = read_upload(&headers, Body::from(body), 1 << 20, 0.0).await?;
    let photo = decode_photo(&bytes, 448, 4_000_000)?;
    Ok((photo.width, photo.height))
}

#[test]
fn ten_thousand_generated_uploads_give_a_photo_or_a_4xx_and_never_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut decoded, mut refused) = (0, 0);
    for case in 0..10_000 {
        // The large seed is slow to decode: one case in twenty.
        let seed = if case % 20 == 0 {
            &seeds[5]
        } else {
            &seeds[rng.below(5)]
        };
        let bytes = if rng.below(10) == 0 {
            seed.clone()
        } else {
            mutate(&mut rng, seed)
        };
        let (content_type, body) = wrap(&mut rng, bytes);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(upload(&content_type, body.clone()))
        }));
        match outcome {
            Ok(Ok(_)) => decoded += 1,
            Ok(Err(e)) => {
                assert!(e.status.is_client_error(), "case {case}: {} {}", e.status, e.message);
                refused += 1;
            }
            Err(_) => panic!("case {case} panicked: {content_type}, {} bytes", body.len()),
        }
    }
    assert_eq!(decoded + refused, 10_000);
    assert!(decoded > 500 && refused > 2_000, "{decoded} decoded, {refused} refused");
}
