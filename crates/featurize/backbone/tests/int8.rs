//! The int8 model `fruits model install --calibration` makes, checked like
//! the port was: against the fp32 model on real images it was not
//! calibrated on, and as a graph ONNX Runtime runs in integer arithmetic.

use std::path::{Path, PathBuf};

use fruits_backbone::onnx::{ModelProto, INT8};
use fruits_backbone::{Backbone, Manifest, Precision};
use fruits_preprocess::Spec;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../../shared")
}

/// Files under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn cosine(x: &[f32], y: &[f32]) -> f32 {
    let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
    dot / (norm(x) * norm(y))
}

/// Mean and lowest cosine between the two precisions' features, and the
/// share of images whose fp32 ImageNet top-1 is in the int8 top 5.
fn agreement(images: &[PathBuf]) -> (f32, f32, f32) {
    let dir = fruits_backbone::default_model_dir();
    let fp32 = Backbone::load_at(&dir, Precision::Fp32, 2).unwrap();
    let int8 = Backbone::load_at(&dir, Precision::Int8, 2).unwrap();
    let spec = Spec {
        size: 224,
        mean: 127.0,
        std: 128.0,
    };
    let (mut cosines, mut kept) = (Vec::new(), 0);
    for chunk in images.chunks(16) {
        let mut input = Vec::new();
        for path in chunk {
            fruits_preprocess::prepare(&std::fs::read(path).unwrap(), &spec, &mut input).unwrap();
        }
        let (a, b) = (
            fp32.run(input.clone(), chunk.len(), 224).unwrap(),
            int8.run(input, chunk.len(), 224).unwrap(),
        );
        for i in 0..chunk.len() {
            cosines.push(cosine(
                &a.features[i * 1280..(i + 1) * 1280],
                &b.features[i * 1280..(i + 1) * 1280],
            ));
            let logits = |o: &fruits_backbone::Outputs| o.logits[i * 1000..(i + 1) * 1000].to_vec();
            let top1 = fruits_backbone::imagenet::top_k(&logits(&a), 1)[0].index;
            kept += usize::from(
                fruits_backbone::imagenet::top_k(&logits(&b), 5)
                    .iter()
                    .any(|r| r.index == top1),
            );
        }
    }
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    let lowest = cosines.iter().copied().fold(1.0, f32::min);
    (mean, lowest, kept as f32 / images.len() as f32)
}

#[test]
#[ignore = "needs the int8 model (`fruits model install --calibration`); scripts/test runs it"]
fn int8_features_agree_with_fp32_on_photos_it_was_not_calibrated_on() {
    // The real-photo val split is never in the calibration set (train is).
    let photos = files(&shared().join("real-photos/grocery-store/val"));
    assert!(photos.len() >= 100, "{} photos", photos.len());
    let (mean, lowest, top5) = agreement(&photos);
    println!(
        "val photos ({}): cosine mean {mean:.4}, lowest {lowest:.4}; fp32 top-1 in int8 top-5 {top5:.3}",
        photos.len()
    );
    assert!(mean >= 0.985 && lowest >= 0.9, "cosine mean {mean}, lowest {lowest}");
    assert!(top5 >= 0.98, "{top5}");
    // Studio shots: the last image of each class (the calibration set is a
    // seeded sample of 256 out of 16,963: few, if any, of these are in it).
    let studio: Vec<_> = std::fs::read_dir(shared().join("fruits-360/Training"))
        .unwrap()
        .filter_map(|e| files(&e.unwrap().path()).pop())
        .collect();
    let (mean, lowest, top5) = agreement(&studio);
    println!(
        "studio shots ({}): cosine mean {mean:.4}, lowest {lowest:.4}; fp32 top-1 in int8 top-5 {top5:.3}",
        studio.len()
    );
    assert!(mean >= 0.97 && lowest >= 0.85, "cosine mean {mean}, lowest {lowest}");
    assert!(top5 >= 0.97, "{top5}");
}

#[test]
#[ignore = "needs the int8 model (`fruits model install --calibration`); scripts/test runs it"]
fn the_int8_model_is_a_qdq_graph_with_every_convolution_in_int8() {
    let dir = fruits_backbone::default_model_dir();
    let manifest = Manifest::load(&dir).unwrap();
    let q = manifest.int8.as_ref().expect("the int8 model is installed");
    assert_eq!(q.method, fruits_backbone::quantize::METHOD);
    assert!(q.calibration.images >= 64, "{:?}", q.calibration);
    let bytes = std::fs::read(dir.join(&q.file)).unwrap();
    let model: ModelProto = prost::Message::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("Conv"), 49, "Lite0 has 49 convolutions");
    let int8_weights = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == INT8 && t.name.ends_with(".w.int8"))
        .count();
    assert_eq!(int8_weights, 49, "every convolution's weights are int8");
    // One pair per activation a convolution or add reads: the input, 49
    // convolutions, 9 residual adds.
    assert_eq!(count("QuantizeLinear"), 1 + 49 + 9);
    // Less than half the fp32 file: the weights are a quarter of their size.
    let fp32 = std::fs::metadata(manifest.onnx_path(&dir)).unwrap().len();
    assert!((bytes.len() as u64) < fp32 / 2, "{} vs {fp32}", bytes.len());
    // The manifest of the int8 model names it, and says it is int8.
    let at = manifest.at(Precision::Int8).unwrap();
    assert_eq!(
        (at.precision, at.onnx.sha256.as_str()),
        (Precision::Int8, q.sha256.as_str())
    );
    at.verify(&dir).unwrap();
}
